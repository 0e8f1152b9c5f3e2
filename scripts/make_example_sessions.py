"""Write the example sessions in sessions/ (run again to regenerate them).

    python scripts/make_example_sessions.py

Each is a short investigation on the demo model; the tests replay all three.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "engine"))

from mlxterp import interventions as iv  # noqa: E402
from mlxterp.session import Session, SessionManager  # noqa: E402


def factual_recall(manager: SessionManager, folder: Path) -> None:
    s = Session.new("demo", folder / "factual-recall.toml", manager)
    prompt = "The capital of France is"
    s.run(manager, "trace", text=prompt)
    s.run(manager, "logit_lens", text=prompt, target=" Paris")
    s.run(manager, "activation_patching", clean=prompt, corrupted="The capital of Germany is",
          component="mlp", metric="logit_diff", answer=[" Paris", " Berlin"])
    s.run(manager, "activation_patching", clean=prompt, corrupted="The capital of Germany is",
          component="output", metric="logit_diff", answer=[" Paris", " Berlin"], by_position=True)
    s.run(manager, "attribution_patching", clean=prompt, corrupted="The capital of Germany is",
          answer=[" Paris", " Berlin"])
    s.set_intervention("layers.4", iv.zero_out.at(4))  # erase " France" from the residual
    s.run(manager, "trace", text=prompt)
    s.clear_interventions()


def induction(manager: SessionManager, folder: Path) -> None:
    s = Session.new("demo", folder / "induction.toml", manager)
    text = "river king apple garden letter river king apple garden"
    s.run(manager, "trace", text=text)
    s.run(manager, "logit_lens", text=text, target=" letter")
    for layer in (2, 5, 9):
        s.run(manager, "attention", text=text, layer=layer)
    s.run(manager, "generate", prompt="song bird coat market song bird", max_tokens=4)


def steering(manager: SessionManager, folder: Path) -> None:
    s = Session.new("demo", folder / "steering.toml", manager)
    s.run(manager, "steering", positive=["I love this movie", "I love this book"],
          negative=["I hate this movie", "I hate this book"], layer=6,
          prompt="I think this song", coefficient=6.0, max_tokens=6)
    s.set_intervention("layers.10", iv.scale(0.5))
    s.run(manager, "generate", prompt="I love this game. It is", max_tokens=3)
    s.clear_interventions()


def main() -> int:
    folder = ROOT / "sessions"
    folder.mkdir(exist_ok=True)
    manager = SessionManager()
    for make in (factual_recall, induction, steering):
        make(manager, folder)
    print("wrote", ", ".join(sorted(p.name for p in folder.iterdir())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
