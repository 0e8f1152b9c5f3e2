"""What the embedded demo model was trained to know: capitals, landmarks, phrases.

Shared by the training script (``scripts/train_demo_model.py``) and the tests that check
the shipped weights still know it.
"""

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
