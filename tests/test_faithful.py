"""The conservative pair filter for the default booster's training data."""

from __future__ import annotations

import json

from paav_cli.text.faithful import added_words, conservative_pairs, keeps_subjects, start_with_source, trim_words


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
    benchmarks = data.parent / "benchmarks"
    held_out = {line.strip() for name in ("vbench_test.txt", "webvid_test.txt")
                for line in open(benchmarks / name, encoding="utf-8") if line.strip()}
    assert shipped == conservative_pairs(rows, exclude=held_out)
    assert all(keeps_subjects(p["source"], p["target"]) for p in shipped)
    assert all(len(p["target"].split()) <= 80 for p in shipped)
    # No benchmark prompt the booster is evaluated on is trained on (VBench's test prompts are in the source).
    sources = {p["source"].lower().strip(" .") for p in shipped}
    assert not sources & {p.lower().strip(" .") for p in held_out}


def test_targets_are_trimmed_to_whole_sentences():
    text = "A cat sleeps. Sun falls on the rug. A clock ticks slowly on the wall nearby. Dust drifts."
    assert trim_words(text, 12) == "A cat sleeps. Sun falls on the rug."  # at least two sentences
    assert trim_words(text, 16) == "A cat sleeps. Sun falls on the rug. A clock ticks slowly on the wall nearby."
    assert trim_words(text, 100) == text


def test_excluded_prompts_are_left_out_whatever_their_case_or_full_stop():
    rows = [{"source": "A person is crying", "target": "A person is crying. Rain streaks the window."},
            {"source": "a red car", "target": "A red car. Rain streaks the window."}]
    kept = conservative_pairs(rows, exclude={"a person is crying."})
    assert [r["source"] for r in kept] == ["a red car"]
