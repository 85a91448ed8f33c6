"""The faithfulness scorer: each kind of unfaithful rewrite it is meant to see, and rewrites it must pass."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest

from paav_cli.text.faithfulness import noun_lemma, read_faithfulness, verb_lemma

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("prompt", "rewrite", "fragment"),
    [
        # invented beings (the "an owner appears beside 'dog'")
        (
            "a dog running on the beach",
            "A dog running on the beach. Its owner throws a stick.",
            "adds a person",
        ),
        (
            "Aerial shot of tropical island",
            "Aerial shot of tropical island. Seagulls glide above the palms.",
            "adds an animal",
        ),
        (
            "A person is counting money",
            "A person is counting money. People walk by in a busy street.",
            "adds people",
        ),
        # stated conditions contradicted
        (
            "a stormy sea at night",
            "A stormy sea at night. Tranquil water glows in the twilight.",
            "time of day",
        ),
        ("rain on a car window", "Rain on a car window. Warm sunlight floods the glass.", "weather"),
        (
            "a fox trotting across a frozen lake",
            "A fox trotting across a frozen lake. The water swirls around it.",
            "state",
        ),
        (
            "An old dumbbell on a white background",
            "An old dumbbell on a white background. It rests on a wooden table in an antique room.",
            "backdrop",
        ),
        (
            "Young woman using smartphone while sitting on sofa",
            "Young woman using smartphone while sitting on sofa. She sits at a kitchen counter, a phone in hand.",
            "moves the seat",
        ),
        (
            "Timelapse sunrise in the mountains",
            "Timelapse sunrise in the mountains. As the sun sets, the sky glows.",
            "time of day",
        ),
        # the action replaced, dropped, reversed or turned around
        (
            "A person is grooming dog",
            "A person is grooming dog. A woman sits at a wooden table in a cozy room. Her jeans are blue.",
            "drops the action",
        ),
        (
            "A person is playing harp",
            "A person is playing harp. Their hands rest on their hips by a tree.",
            "hands",
        ),
        (
            "A person is cutting nails",
            "A person is cutting nails. The camera follows the nail as it cuts the grass.",
            "do what the subject does",
        ),
        (
            "Climber beginning to descend from the rocks",
            "Climber beginning to descend from the rocks. He begins his ascent to the summit.",
            "opposite",
        ),
        (
            "A person is sword fighting",
            "A person is sword fighting. They sit on a bench, swords at their side.",
            "sits down",
        ),
        (
            "Vampire makeup face of beautiful girl, red contact lenses.",
            "Vampire makeup face of beautiful girl, red contact lenses. Her silver contacts glow.",
            "silver",
        ),
    ],
)
def test_each_kind_of_unfaithful_rewrite_is_named(prompt, rewrite, fragment):
    reading = read_faithfulness(prompt, rewrite)
    assert not reading.faithful
    assert reading.score < 1.0
    assert any(fragment in p for p in reading.problems), reading.problems


@pytest.mark.parametrize(
    ("prompt", "rewrite"),
    [
        # specialising the subject is keeping it: a woman is a person, a golden retriever a dog
        (
            "A person is playing harp",
            "A person is playing harp. She plucks the strings, eyes closed, in a sunlit room.",
        ),
        (
            "A person is petting animal (not cat)",
            "A person is petting animal (not cat). A golden retriever leans into their hand on a green meadow.",
        ),
        # an action that brings a second person: the barber, the one whose hand is shaken
        (
            "A person is getting a haircut",
            "A person sits in a barbershop. The barber trims their hair for a fresh haircut as they watch.",
        ),
        (
            "A person is shaking hands",
            "A person is shaking hands. Both individuals smile as the handshake ends.",
        ),
        # another word for the action, or what it acts on
        ("A person is crying", "A person is crying. Tears stream down her cheeks by the window."),
        (
            "a giraffe taking a peaceful walk",
            "A giraffe taking a peaceful walk. It strides slowly across the plain.",
        ),
        # nothing added is nothing contradicted
        ("fire, garbage.", "fire, garbage."),
        # "no people" is not people
        (
            "A person is bending metal",
            "A person is bending metal. The old forge has no buildings or people around it.",
        ),
    ],
)
def test_faithful_rewrites_pass(prompt, rewrite):
    reading = read_faithfulness(prompt, rewrite)
    assert reading.faithful, reading.problems
    assert reading.score == 1.0


def test_only_what_the_rewrite_adds_is_read():
    # the default booster repeats the prompt first: its words are never "added"
    text = "A man feeding pigeons at night. He scatters the crumbs under a streetlight."
    assert read_faithfulness("A man feeding pigeons at night", text).faithful
    # a rewrite that does not start with the prompt is read whole
    assert not read_faithfulness(
        "a man feeding pigeons at night", "A woman feeds pigeons on a sunny afternoon."
    ).faithful


def test_lemmas_follow_wordnet():
    assert (
        noun_lemma("geese") == "goose" and noun_lemma("fields") == "field" and noun_lemma("shoes") == "shoe"
    )
    assert verb_lemma("trotting") == "trot" and verb_lemma("ran") == "run" and verb_lemma("dunking") == "dunk"
    assert verb_lemma("table") is None or verb_lemma("table") == "table"


def test_a_reading_takes_about_a_millisecond():
    read_faithfulness("warm", "warm. the lexicon loads once")
    rows = [
        json.loads(line)
        for line in (ROOT / "benchmarks" / "faithfulness_readings.jsonl").read_text().splitlines()
    ]
    start = time.perf_counter()
    for r in rows[:100]:
        read_faithfulness(r["prompt"], r["text"])
    assert (time.perf_counter() - start) / 100 < 0.02  # generous: the bench measures ~1 ms on 2 cores


def test_agreement_with_the_strict_readings_does_not_fall():
    """A guard, not a goal: the scorer's agreement with the 440 strict readings as measured when it
    was written (79.3 % overall, 65 % on the 80 held-out ones); a change that loses agreement fails."""
    spec = importlib.util.spec_from_file_location(
        "faithfulness_agreement", ROOT / "bench" / "faithfulness_agreement.py"
    )
    bench = importlib.util.module_from_spec(spec)
    sys.modules["faithfulness_agreement"] = bench
    spec.loader.exec_module(bench)
    rows = [
        json.loads(line) for line in bench.READINGS.read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    for r in rows:
        r["scored"] = read_faithfulness(r["prompt"], r["text"]).faithful
    overall = bench.figures(rows)
    held_out = bench.figures([r for r in rows if r["part"] == "held-out"])
    assert overall["n"] == 440 and held_out["n"] == 80
    assert overall["agreement"] >= 0.78 and overall["precision"] >= 0.8
    assert held_out["agreement"] >= 0.6


def test_the_lexicon_ships_with_the_package():
    from paav_cli.text import faithfulness

    assert faithfulness._LEXICON.is_file()
    assert (faithfulness._LEXICON.parent / "LICENSE-WordNet").is_file()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert "text/lexicon/wordnet.json.gz" in pyproject and "text/lexicon/LICENSE-WordNet" in pyproject
