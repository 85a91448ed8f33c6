"""`paav rank`: the pairing presets on synthetic scores, and the stage on tiny models (resumable)."""

from __future__ import annotations

import pytest

from paav_cli.recipe import Models, Rank, Recipe
from paav_cli.runs import read_journal, read_manifest
from paav_cli.train.rank import pair_best_worst, pair_released, run_rank

GOOD = {"VQ": 3.0, "TC": 3.0, "FC": 3.0, "AES": 6.0, "TVA": 3.2, "MPS": 10.0, "DD": 3.0}


def sample(name: str, **changes) -> dict:
    return {"prompt": f"{name} a cat plays the piano", "scores": {**GOOD, **changes}}


def test_best_worst_pairs_the_top_and_bottom_by_normalised_sum():
    samples = [sample("mid"), sample("top", VQ=3.8), sample("low", AES=2.0), sample("mid2", TC=2.9)]
    [triple] = pair_best_worst(samples, Rank())
    assert triple["chosen"].startswith("top") and triple["rejected"].startswith("low")
    assert triple["margin"] == pytest.approx((0.8 * 5 / 3) + (4.0 * 5 / 9), abs=1e-3)
    assert pair_best_worst([sample("only")], Rank()) == []
    assert pair_best_worst([sample("a"), sample("b")], Rank()) == []  # equal scores: no preference


def test_released_pairing_gates_margins_ranks_and_length():
    top = sample("top", VQ=3.6, TVA=3.6)  # weighted raw score highest
    second = sample("second", VQ=3.4)
    rest = [sample(f"r{i}", VQ=1.0, TC=1.0, AES=5.0) for i in range(3)]  # far below: margins > 1.4
    triples = pair_released([top, second, *rest], Rank())
    pairs = {(t["chosen"].split()[0], t["rejected"].split()[0]) for t in triples}
    # rank 1 against ranks 2-5 only where the margin > 1.4 (not against `second`), rank 2 against 3-5
    assert pairs == {("top", "r0"), ("top", "r1"), ("top", "r2"), ("second", "r0"), ("second", "r1"), ("second", "r2")}
    assert all(t["margin"] > 1.4 for t in triples)
    gated = pair_released([sample("top", DD=2.0), *rest], Rank())  # DD under the 2.65 gate
    assert gated == []
    long = {"prompt": " ".join(["word"] * 131), "scores": top["scores"]}
    assert pair_released([long, *rest], Rank()) == []  # chosen over 130 words dropped
    many = [sample("top", VQ=3.6, TVA=3.6), sample("second", VQ=3.6, TVA=3.5),
            *(sample(f"r{i}", VQ=1.0, TC=1.0, AES=5.0) for i in range(3))]
    assert len(pair_released(many, Rank())) <= 7


class ScriptedSampler:
    parallel_safe = False

    def __init__(self):
        self.calls = 0

    def generate(self, messages, *, n=1, temperature=1.0, max_tokens=64, seed=None):
        self.calls += 1
        original = messages[0]["content"].split("Original prompt:\n")[1].split("\nNew prompt:")[0]
        return [f"{original}, variant {k} {'in warm light ' * k}" for k in range(n)]

    def close(self):
        pass


def test_rank_stage_samples_renders_scores_pairs_and_resumes(tmp_path):
    prompts = tmp_path / "held_out.txt"
    prompts.write_text("a cat playing piano\na fox in the snow\n")
    recipe = Recipe(models=Models(generator="tiny-wan", rewards=["tiny-aesthetic", "tiny-clip-score"]),
                    rank=Rank(samples=4))
    sampler = ScriptedSampler()
    result = run_rank(str(prompts), recipe, tmp_path / "run", sampler_factory=lambda: sampler)
    assert sampler.calls == 2 and result.figures["samples"] == 8 and result.record["rendered"] == 8
    triples = read_journal(tmp_path / "run" / "rank" / "triples.jsonl")
    assert result.figures["triples"] == len(triples) <= 2
    assert result.outputs == {"triples": str(tmp_path / "run" / "rank" / "triples.jsonl")}
    stage = read_manifest(tmp_path / "run")["stages"]["rank"]
    assert stage["status"] == "done" and stage["figures"] == result.figures
    assert stage["prompts"] == str(prompts.resolve())  # DPO round 2 re-ranks these
    for t in triples:
        assert t["prompt"] in ("a cat playing piano", "a fox in the snow") and t["chosen"] != t["rejected"]
        assert t["margin"] > 0 and set(t["scores"]) == {"chosen", "rejected"}
    again = ScriptedSampler()
    result = run_rank(str(prompts), recipe, tmp_path / "run", sampler_factory=lambda: again)
    assert again.calls == 0 and result.record["rendered"] == 0 and result.record["scored"] == 0
    assert len(read_journal(tmp_path / "run" / "rank" / "journal.jsonl")) == 8
