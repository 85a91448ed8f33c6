"""The conservative pair filter for the default booster's training data."""

from __future__ import annotations

import json

from paav_cli.text.faithful import added_words, conservative_pairs, keeps_subjects, start_with_source


def test_added_people_animals_and_actions_are_caught():
    assert added_words("a fox on a frozen lake", "A fox walks on a frozen lake while a man watches.") == {"man"}
    assert added_words("otters in a meadow", "Otters swimming in a meadow stream.") == {"swimming"}
    assert keeps_subjects("a man feeding pigeons", "A man feeds the pigeons; the pigeons fly off.") is True
    assert keeps_subjects("a dog running", "Two dogs run across the grass.") is True  # forms of the same word


def test_targets_start_with_the_users_words():
    assert start_with_source("a red car", "A red car drives through rain.") == "A red car drives through rain."
    restated = start_with_source("a red car in the rain", "A red car sits in the rain. Streetlights glow.")
    assert restated == "A red car in the rain. Streetlights glow."
    assert start_with_source("castle", "Ivy climbs old stones.") == "Castle. Ivy climbs old stones."


def test_shipped_pairs_are_the_filter_of_the_shipped_source():
    from pathlib import Path

    data = Path(__file__).resolve().parents[1] / "data"
    rows = [json.loads(line) for line in open(data / "rewrite_pairs.jsonl", encoding="utf-8")]
    shipped = [json.loads(line) for line in open(data / "default_booster_pairs.jsonl", encoding="utf-8")]
    assert shipped == conservative_pairs(rows)
    assert all(keeps_subjects(p["source"], p["target"]) for p in shipped)
