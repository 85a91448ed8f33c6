"""Prompts plainly not in English are told apart, and `paav enhance` says so once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import paav

from paav_cli.text.language import guess_language

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("prompt", "language"),
    [
        ("un chat noir qui dort sur un canapé rouge", "French"),
        ("una mujer cocinando paella en una cocina pequeña", "Spanish"),
        ("ein Fuchs, der über einen gefrorenen See läuft", "German"),
        ("un cavallo che galoppa nella prateria", "Italian"),
        ("一只黑猫在沙发上睡觉", "Chinese or Japanese"),
        ("고양이가 소파에서 자고 있다", "Korean"),
        ("кошка спит на диване", "a Cyrillic language"),
    ],
)
def test_a_prompt_in_another_language_is_named(prompt, language):
    assert guess_language(prompt) == language


@pytest.mark.parametrize(
    "prompt",
    ["a cat playing piano", "A person is shining shoes", "Pacific coast, carmel by the sea ocean and waves.",
     "Gwen Stacy reading a book", "a croissant and a café au lait on a table in Paris", "Tai chi", "", "1961"],
)
def test_english_and_unclear_prompts_are_not(prompt):
    assert guess_language(prompt) is None


def test_no_prompt_paav_ships_or_trains_on_is_taken_for_another_language():
    prompts = [line for name in ("vbench_test.txt", "webvid_test.txt", "vbench_all_category.txt")
               for line in (ROOT / "benchmarks" / name).read_text(encoding="utf-8").splitlines()]
    prompts += [json.loads(line)["source"] for line in (ROOT / "data" / "rewrite_pairs.jsonl").open(encoding="utf-8")]
    assert len(prompts) > 4000
    assert [p for p in prompts if guess_language(p)] == []


def test_enhance_warns_once_in_one_line_and_still_enhances(tiny_models, shared_cache, tmp_path):
    env = {"PAAV_CACHE": str(shared_cache)}
    single = paav("un chat noir qui dort sur un canapé rouge", "-m", "tiny", env=env)
    assert single.returncode == 0 and single.stdout.strip()
    lines = [ln for ln in single.stderr.splitlines() if ln.startswith("warning:")]
    assert len(lines) == 1 and "this prompt looks French" in lines[0] and "reads English" in lines[0]

    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat playing piano\nun gato blanco durmiendo junto a la ventana\nein Hund, der am Strand läuft\n", encoding="utf-8")
    batch = paav("-i", str(prompts), "-o", str(tmp_path / "out.jsonl"), "-m", "tiny", env=env)
    assert batch.returncode == 0
    lines = [ln for ln in batch.stderr.splitlines() if "looks" in ln]
    assert len(lines) == 1 and 'prompt "2" looks Spanish' in lines[0] and "said once" in lines[0]
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 3

    english = paav("a cat playing piano", "-m", "tiny", env=env)
    assert "looks" not in english.stderr
