"""Write the example sessions in sessions/ (run again to regenerate them).

    python scripts/make_example_sessions.py

Each is a short investigation on the demo model; the tests replay every one.  The induction
heads and IOI sessions replay the circuits of ``docs/demo-model.md`` ("Circuits").
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "engine"))

from mlxterp import demo_circuits  # noqa: E402
from mlxterp import interventions as iv  # noqa: E402
from mlxterp.session import Session, SessionManager  # noqa: E402


def factual_recall(manager: SessionManager, folder: Path) -> None:
    s = Session.new("demo", folder / "factual-recall.toml", manager)
    prompt = "The capital of France is"
    s.run(manager, "trace", text=prompt)
    s.run(manager, "logit_lens", text=prompt, target=" Paris")
    s.run(
        manager,
        "activation_patching",
        clean=prompt,
        corrupted="The capital of Germany is",
        component="mlp",
        metric="logit_diff",
        answer=[" Paris", " Berlin"],
    )
    s.run(
        manager,
        "activation_patching",
        clean=prompt,
        corrupted="The capital of Germany is",
        component="output",
        metric="logit_diff",
        answer=[" Paris", " Berlin"],
        by_position=True,
    )
    s.run(
        manager,
        "attribution_patching",
        clean=prompt,
        corrupted="The capital of Germany is",
        answer=[" Paris", " Berlin"],
    )
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
    s.run(manager, "generate", prompt="river king apple garden letter river king", max_tokens=3)


def induction_heads(manager: SessionManager, folder: Path) -> None:
    s = Session.new("demo", folder / "induction-heads.toml", manager)
    s.run(
        manager,
        "head_detectors",
        detections=["previous_token", "induction"],
        seq_len=40,
        batch=8,
        seed=3,
    )
    clean, corrupted, answer = demo_circuits.repeated_pair(manager.model("demo"))
    pair = dict(clean=clean, corrupted=corrupted, metric="logit_diff", answer=list(answer))
    s.run(manager, "head_patching", **pair)
    s.run(manager, "attention", text=clean, layer=demo_circuits.INDUCTION_HEADS[0][0])
    for layer, head in demo_circuits.INDUCTION_HEADS:
        s.set_intervention(f"layers.{layer}.attn.heads.{head}", iv.zero_out)
    s.run(manager, "trace", text=clean)
    s.clear_interventions()
    s.run(manager, "trace", text=clean)


def ioi(manager: SessionManager, folder: Path) -> None:
    s = Session.new("demo", folder / "ioi.toml", manager)
    clean, corrupted, answer = demo_circuits.ioi_pair(0)
    s.run(manager, "trace", text=clean)
    s.run(manager, "direct_logit_attribution", text=clean, target=answer[0], baseline=answer[1])
    pair = dict(clean=clean, corrupted=corrupted, metric="logit_diff", answer=list(answer))
    s.run(manager, "head_patching", **pair)
    suppressors = demo_circuits.IOI_SUBJECT_SUPPRESSORS
    senders = [f"layers.{layer}.attn.heads.{head}" for layer, head in suppressors]
    s.run(manager, "path_patching", senders=senders, **pair)


def steering(manager: SessionManager, folder: Path) -> None:
    s = Session.new("demo", folder / "steering.toml", manager)
    step = s.run(
        manager,
        "steering",
        positive=["I love this movie. It is", "I love this book. It is"],
        negative=["I hate this movie. It is", "I hate this book. It is"],
        layer=11,
        prompt="I hate this song. It is",
        coefficient=2.0,
        max_tokens=4,
    )
    # the same vector as an intervention: it turns the next generations positive as well
    s.set_intervention("layers.11", iv.add_vector(step.summary["vector"] * 2.0))
    s.run(manager, "generate", prompt="I hate this game. It is", max_tokens=4)
    s.remove_intervention("layers.11")
    s.run(manager, "generate", prompt="I hate this game. It is", max_tokens=4)


def main() -> int:
    folder = ROOT / "sessions"
    folder.mkdir(exist_ok=True)
    manager = SessionManager()
    for make in (factual_recall, induction, induction_heads, ioi, steering):
        make(manager, folder)
    print("wrote", ", ".join(sorted(p.name for p in folder.iterdir())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
