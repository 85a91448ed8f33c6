"""The real offline default booster (Gemma 3 270M, Q4_K_M, from its PyPI package)."""

import json

import pytest
from conftest import paav

from paav_cli.text.clean import split_sentences

pytestmark = pytest.mark.real_model

PROMPTS = ["a cat playing piano", "A person is shining shoes", "an old man walking his dog in the rain",
           "a red kite flying over a beach", "A person is ice skating", "fireworks over a city at night"]


def test_default_booster_keeps_the_users_words_and_stays_valid(tmp_path):
    (tmp_path / "in.txt").write_text("\n".join(PROMPTS) + "\n")
    proc = paav("-i", "in.txt", "-o", "out.jsonl", "--seed", "7", "--target", "cogvideox-5b")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(records) == len(PROMPTS)
    fallbacks = sum(r["fallback"] for r in records)
    assert fallbacks <= 2, records
    for r in records:
        if r["fallback"]:
            assert r["enhanced"] == r["prompt"]
            continue
        first = r["enhanced"].split(". ")[0].rstrip(".").lower()
        assert first == r["prompt"].lower().rstrip("."), r
        assert 2 <= len(split_sentences(r["enhanced"])) <= 8
        assert r["target_tokens"] <= 226 and r["tokens"] > 0


def test_a_fixed_seed_reproduces_a_batch(tmp_path):
    (tmp_path / "in.txt").write_text("\n".join(PROMPTS[:4]) + "\n")
    runs = []
    for name in ("a.jsonl", "b.jsonl"):
        proc = paav("-i", "in.txt", "-o", name, "--seed", "3")
        assert proc.returncode == 0, proc.stderr
        runs.append([json.loads(x)["enhanced"] for x in (tmp_path / name).read_text().splitlines()])
    assert runs[0] == runs[1]
    # Across batch sizes llama.cpp's logits differ in the last bits, so texts may part ways after
    # a few tokens (bench/enhance.py counts how often); the user's own first sentence never does.
    single = paav(PROMPTS[0], "--seed", "3").stdout.strip()
    assert single.split(". ")[0] == runs[0][0].split(". ")[0]


def test_a_seed_gives_the_same_text_whatever_the_booster_decoded_before():
    # Through `paav serve`: the same prompt and seed gave another text when repeated, or after another
    # prompt, than as a loaded booster's first request (llama.cpp rounds by the shape of each decode
    # call, and the previous request's cells were reused). Both comparisons below failed then.
    from paav_cli import load_booster

    prompt, other = "a cat playing piano", "a cat playing guitar on a roof"
    with load_booster("default") as booster:
        greedy = booster.enhance(prompt, seed=3, max_tokens=48)[0].text  # saves the prefix state
        assert booster.enhance(prompt, seed=3, max_tokens=48)[0].text == greedy
        booster.enhance(other, n=3, seed=3, max_tokens=48)
        sampled = [r.text for r in booster.enhance(prompt, n=3, seed=3, max_tokens=48)]
    with load_booster("default") as booster:  # the prefix state loaded from its file
        assert [r.text for r in booster.enhance(prompt, n=3, seed=3, max_tokens=48)] == sampled
        assert booster.enhance(prompt, seed=3, max_tokens=48)[0].text == greedy
