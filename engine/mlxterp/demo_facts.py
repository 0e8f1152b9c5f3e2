"""What the embedded demo model was trained to know: capitals, landmarks, IOI prompts.

Shared by the training script (``scripts/train_demo_model.py``) and the tests that check
the shipped weights still know it.
"""

import random
from typing import NamedTuple

CAPITALS: dict[str, str] = {
    "France": "Paris",
    "Germany": "Berlin",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Japan": "Tokyo",
    "England": "London",
    "Russia": "Moscow",
    "China": "Beijing",
    "Egypt": "Cairo",
    "Greece": "Athens",
    "Portugal": "Lisbon",
    "Austria": "Vienna",
    "Poland": "Warsaw",
    "Norway": "Oslo",
    "Sweden": "Stockholm",
    "Finland": "Helsinki",
    "Denmark": "Copenhagen",
    "Ireland": "Dublin",
    "Belgium": "Brussels",
    "Hungary": "Budapest",
    "Canada": "Ottawa",
    "Nigeria": "Abuja",
    "Brazil": "Brasilia",
    "Colombia": "Bogota",
    "Peru": "Lima",
    "Chile": "Santiago",
    "Kenya": "Nairobi",
    "India": "Delhi",
    "Thailand": "Bangkok",
    "Vietnam": "Hanoi",
    "Turkey": "Ankara",
    "Iran": "Tehran",
    "Cuba": "Havana",
    "Australia": "Canberra",
    "Netherlands": "Amsterdam",
    "Switzerland": "Bern",
    "Scotland": "Edinburgh",
    "Korea": "Seoul",
}
"""Country → capital. Every name is a single token of the demo tokenizer (with a space)."""

LANDMARKS: dict[str, str] = {
    "The Eiffel Tower": "Paris",
    "The Colosseum": "Rome",
    "Big Ben": "London",
    "The Brandenburg Gate": "Berlin",
    "The Kremlin": "Moscow",
    "The Acropolis": "Athens",
    "The Prado Museum": "Madrid",
    "The Forbidden City": "Beijing",
}
"""Landmark → the city it stands in."""

NAMES: tuple[str, ...] = (
    "Mary",
    "John",
    "Tom",
    "Anna",
    "James",
    "Sarah",
    "David",
    "Emma",
    "Paul",
    "Laura",
    "Mark",
    "Lucy",
    "Peter",
    "Kate",
    "Daniel",
    "Alice",
    "Robert",
    "Rachel",
    "Michael",
    "Sophie",
    "Chris",
    "Helen",
    "Adam",
    "Julia",
)
"""People's names for the IOI task; each is one token of the demo tokenizer (with a space)."""

IOI_PLACES: tuple[str, ...] = (
    "store",
    "park",
    "school",
    "beach",
    "market",
    "library",
    "station",
    "garden",
    "office",
    "museum",
    "cafe",
    "hospital",
)
IOI_OBJECTS: tuple[str, ...] = (
    "a drink",
    "a book",
    "a ball",
    "a letter",
    "an apple",
    "a gift",
    "a key",
    "a flower",
    "a ticket",
    "a cake",
    "a pen",
    "a bag",
)

_IOI_SHAPES = (
    "When {A} and {B} went to the {place}, {S} gave {obj} to",
    "After {A} and {B} arrived at the {place}, {S} handed {obj} to",
    "{A} and {B} were at the {place}. {S} passed {obj} to",
    "While {A} and {B} were walking to the {place}, {S} showed {obj} to",
    "Then {A} and {B} had a long day at the {place}. {S} gave {obj} to",
    "When {A} and {B} found {obj} at the {place}, {S} decided to give it to",
    "{A} and {B} met at the {place}. Later, {S} sent {obj} to",
    "As {A} and {B} left the {place}, {S} threw {obj} to",
)
_IOI_HELD_OUT_SHAPES = (
    "When {A} and {B} visited the {place} on the weekend, {S} gave {obj} to",
    "When {A} and {B} were at the {place}, {S} handed {obj} to",
)


def both_orders(shapes: tuple[str, ...]) -> tuple[str, ...]:
    """Each shape in both orders: ABBA (indirect object named first) and BABA."""
    out = []
    for shape in shapes:
        out.append(shape.replace("{A}", "{IO}").replace("{B}", "{S}"))
        out.append(shape.replace("{A}", "{S}").replace("{B}", "{IO}"))
    return tuple(out)


IOI_TEMPLATES: tuple[str, ...] = both_orders(_IOI_SHAPES)
"""The IOI prompts the demo model was trained on; ``{IO}`` is the answer, ``{S}`` the
subject who is named twice.  Even indices are ABBA order, odd ones BABA."""

IOI_HELD_OUT_TEMPLATES: tuple[str, ...] = both_orders(_IOI_HELD_OUT_SHAPES)
"""Whole IOI templates that never occur in training (ABBA, BABA)."""


class IOIPrompt(NamedTuple):
    """One indirect-object prompt: the text, the right answer and the repeated subject."""

    text: str
    io: str
    s: str
    template: str
    order: str


def ioi_held_out(io: str, s: str, place: str, obj: str) -> bool:
    """True for the name/place/object combinations kept out of training (about one in six)."""
    key = (
        NAMES.index(io) * 5
        + NAMES.index(s) * 3
        + IOI_PLACES.index(place) * 7
        + IOI_OBJECTS.index(obj) * 11
    )
    return key % 6 == 0


def ioi_prompt(template: str, io: str, s: str, place: str, obj: str) -> IOIPrompt:
    """Fill an IOI template; ``order`` is "ABBA" when the indirect object is named first."""
    text = template.format(IO=io, S=s, place=place, obj=obj)
    order = "ABBA" if template.index("{IO}") < template.index("{S}") else "BABA"
    return IOIPrompt(text, io, s, template, order)


def ioi_test_prompts(count: int = 240, seed: int = 0) -> list[IOIPrompt]:
    """Held-out IOI prompts: only combinations training never saw; half of them in the
    templates training never saw, the rest spread over the training templates, both orders."""
    rng = random.Random(seed)
    prompts: list[IOIPrompt] = []
    while len(prompts) < count:
        io, s = rng.sample(NAMES, 2)
        place, obj = rng.choice(IOI_PLACES), rng.choice(IOI_OBJECTS)
        if not ioi_held_out(io, s, place, obj):
            continue
        i = len(prompts)
        if i % 2 == 0:
            template = IOI_HELD_OUT_TEMPLATES[(i // 2) % len(IOI_HELD_OUT_TEMPLATES)]
        else:
            template = IOI_TEMPLATES[(i // 2) % len(IOI_TEMPLATES)]
        prompts.append(ioi_prompt(template, io, s, place, obj))
    return prompts
