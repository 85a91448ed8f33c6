"""The whole training chain on the CPU with the shipped tiny-cpu recipe: sft -> rank -> dpo (2 rounds) -> merge."""

from __future__ import annotations

import json

from conftest import assert_user_error, paav

from paav_cli.recipe import load_recipe
from paav_cli.runs import read_journal, read_manifest
from paav_cli.train.rank import run_rank
from paav_cli.train.rounds import dpo_round
from paav_cli.train.sft import run_sft

PAIRS = [
    ("a cat playing piano", "A cat playing piano. Warm light fills the room; the camera pans slowly."),
    ("a fox in the snow", "A fox in the snow. Soft morning light; the camera follows it from the side."),
    ("a red car in the rain", "A red car in the rain. Streetlights shine on the wet road; a slow tracking shot."),
    ("a boat on the lake", "A boat on the lake. Mist over calm water at dawn; a wide, still shot."),
]


def test_sft_rank_dpo_two_rounds_and_merge(tmp_path):
    recipe = load_recipe("tiny-cpu")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"source": s, "target": t}) + "\n" for s, t in PAIRS * 3))
    held_out = tmp_path / "held_out.txt"
    held_out.write_text("a horse in a field\na child flying a kite\n")
    run = tmp_path / "run"

    sft = run_sft(pairs, recipe, run, progress=False)
    assert (run / "sft" / "adapter_config.json").is_file() and sft.done

    ranked = run_rank(str(held_out), recipe, run)  # samples from the merged SFT model through transformers
    assert ranked.figures["samples"] == 2 * recipe.rank.samples or ranked.figures["samples"] > 0
    assert (run / "sft" / "merged" / "config.json").is_file()
    triples = read_journal(run / "rank" / "triples.jsonl")
    assert ranked.figures["triples"] == len(triples)

    if triples:  # random tiny models can tie on every sample; then there is nothing to prefer
        first = dpo_round(recipe, run, 1, progress=False)
        assert (run / "dpo-1" / "adapter_config.json").is_file() and first.record["round"] == 1
        second = dpo_round(recipe, run, 2, progress=False)  # re-ranks with round 1's merged model
        assert (run / "rank-2" / "triples.jsonl").is_file() and (run / "dpo-1" / "merged" / "config.json").is_file()
        assert second.stage == "dpo-2" and second.record["round"] == 2
        stages = read_manifest(run)["stages"]
        assert {"sft", "rank", "dpo-1", "rank-2", "dpo-2"} <= set(stages)
        assert all(stages[name]["status"] == "done" for name in ("sft", "rank", "dpo-1", "rank-2", "dpo-2"))
        adapter = run / "dpo-2"
    else:
        adapter = run / "sft"
    proc = paav("merge", str(adapter), "-o", str(tmp_path / "booster"), "--base",
                str(run / ("dpo-1" if adapter.name == "dpo-2" else "sft") / "merged")
                if adapter.name == "dpo-2" else "tiny-llama")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "booster" / "config.json").is_file()


def test_cli_training_bad_input(tmp_path):
    empty = tmp_path / "pairs.jsonl"
    empty.write_text("")
    assert_user_error(paav("sft", str(empty), "--recipe", "tiny-cpu", "--run", str(tmp_path / "r")), "no pairs")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"source": "a", "target": "b"}\nnot json\n')
    assert_user_error(paav("sft", str(bad), "--recipe", "tiny-cpu", "--run", str(tmp_path / "r")), "line 2")
    good = tmp_path / "good.jsonl"
    good.write_text('{"source": "a cat", "target": "A cat sleeps."}\n')
    assert_user_error(paav("sft", str(good), "--recipe", "tiny-cpu", "--run", str(tmp_path / "r"), "--quant", "4bit"),
                      "4bit")
    assert_user_error(paav("dpo", "--recipe", "tiny-cpu", "--run", str(tmp_path / "r")), "paav rank")
