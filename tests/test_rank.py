"""`paav rank`: the pairing presets on synthetic scores, and the stage on tiny models (resumable)."""

from __future__ import annotations

from pathlib import Path

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


# ---------------------------------------------------------------------------------------------
# Text rewards: nothing rendered


class TextDraws:
    """A rank sampler (the `draws` interface of GgufSampler) with fixed draws of each prompt: one faithful
    and long, one faithful and short, one that invents a person, and one unusable draw."""

    sources_per_batch = 2

    def __init__(self, samples: int = 4):
        self.calls, self.seeds, self.samples = 0, [], samples

    def draws(self, prompts, seeds):
        self.calls += 1
        self.seeds += seeds
        out = []
        for prompt in prompts:
            head = prompt[0].upper() + prompt[1:] + "."
            out.append([
                {"prompt": f"{head} Warm golden light falls across the scene as the camera slowly glides closer, "
                           "soft shadows stretching over the ground.", "raw": "x"},
                {"prompt": f"{head} Soft light."},
                {"prompt": f"{head} A man stands beside it and watches, smiling in the bright afternoon sun."},
                {"prompt": prompt, "raw": f"{head} {head} {head}", "fallback": True, "problem": "a loop"},
            ][: self.samples])
        return out

    def close(self):
        pass


def text_recipe(**rank) -> Recipe:
    settings = {"rewards": ["faithfulness", "detail", "budget"], "target": "cogvideox-5b", "samples": 4, "margin": 0.25}
    return Recipe(rank=Rank(**{**settings, **rank}))


@pytest.fixture
def no_video(monkeypatch):
    """Any render or video score fails the test: a text rank must not reach them."""
    from paav_cli import rewards
    from paav_cli.evolve import phases

    def refuse(*args, **kwargs):
        raise AssertionError("a text-reward rank rendered or scored a video")

    monkeypatch.setattr(phases, "render_phase", refuse)
    monkeypatch.setattr(phases, "score_phase", refuse)
    monkeypatch.setattr(rewards, "score_videos", refuse)


def test_text_rank_pairs_best_against_worst_and_renders_nothing(tmp_path, no_video):
    from paav_cli.train.rank import text_scorer_for

    prompts = tmp_path / "sources.txt"
    prompts.write_text("a dog running in a park\na cat sleeping on a sofa\na red car on a road\n")
    recipe = text_recipe()
    assert recipe.models.generator is None  # no generator anywhere
    sampler = TextDraws()
    result = run_rank(str(prompts), recipe, tmp_path / "run", sampler_factory=lambda: sampler)
    assert sampler.calls == 2 and sampler.seeds == [0, 1000, 2000]  # 2 prompts a batch; source i: seed + 1000 i
    assert result.record["rendered"] == 0 and result.record["scored"] == 12
    assert result.figures["samples"] == 12 and result.figures["fallbacks"] == 3 and result.figures["rewards"] == "text"
    triples = read_journal(tmp_path / "run" / "rank" / "triples.jsonl")
    assert len(triples) == 3 == result.figures["triples"]
    preset = text_scorer_for(recipe).preset()
    for t in triples:
        chosen, rejected = preset.combined(t["scores"]["chosen"]), preset.combined(t["scores"]["rejected"])
        assert chosen - rejected == pytest.approx(t["margin"], abs=1e-3) and t["margin"] > 0.25
        assert t["chosen"].startswith(t["prompt"][0].upper() + t["prompt"][1:]) and "Warm golden light" in t["chosen"]
        # the worst is the unusable draw, and what the model wrote for it is rejected
        assert t["rejected_fallback"] == "a loop" and t["rejected"].count(".") == 3
        assert t["scores"]["rejected"] == {"faithfulness": 0.0, "detail": 0.0, "budget": 0.0}
        assert t["preset"] == "text"
    stage = read_manifest(tmp_path / "run")["stages"]["rank"]
    assert stage["scorer"]["weights"] == {"faithfulness": 2.0, "detail": 1.0, "budget": 1.0}
    assert stage["scorer"]["budget"]["limit"] == 226 and stage["preset"]["name"] == "text"
    journal = {(r["source"], r["k"]): r["scores"] for r in read_journal(tmp_path / "run" / "rank" / "journal.jsonl")}
    assert journal[("1", 2)]["faithfulness"] < 1.0  # the invented man is read
    assert journal[("1", 1)]["detail"] == pytest.approx(2 / 60, abs=1e-4)


def test_text_rank_without_unusable_draws_pairs_the_faithful_against_the_invented(tmp_path, no_video):
    prompts = tmp_path / "sources.txt"
    prompts.write_text("a dog running in a park\n")

    def three():
        return TextDraws(samples=3)

    [t] = read_journal(Path(run_rank(str(prompts), text_recipe(samples=3), tmp_path / "run",
                                     sampler_factory=three).outputs["triples"]))
    assert "A man" in t["rejected"] and "Warm golden light" in t["chosen"] and "rejected_fallback" not in t
    assert t["scores"]["rejected"]["faithfulness"] < t["scores"]["chosen"]["faithfulness"]
    # a margin above every pair's: none kept
    result = run_rank(str(prompts), text_recipe(samples=3, margin=5.0), tmp_path / "run2", sampler_factory=three)
    assert result.figures["triples"] == 0


def test_text_rank_resumes_without_resampling_or_rescoring(tmp_path, no_video, monkeypatch):
    from paav_cli.rewards.text import TextScorer

    prompts = tmp_path / "sources.txt"
    prompts.write_text("a dog running in a park\na cat sleeping on a sofa\na red car on a road\n")

    class Interrupted(TextDraws):
        def draws(self, prompts, seeds):
            if self.calls == 1:
                raise KeyboardInterrupt
            return super().draws(prompts, seeds)

    with pytest.raises(KeyboardInterrupt):
        run_rank(str(prompts), text_recipe(), tmp_path / "run", sampler_factory=Interrupted)
    assert {r["source"] for r in read_journal(tmp_path / "run" / "rank" / "samples.jsonl")} == {"1", "2"}
    rest = TextDraws()
    first = run_rank(str(prompts), text_recipe(), tmp_path / "run", sampler_factory=lambda: rest)
    assert rest.seeds == [2000]  # only the source not drawn, seeded as in an uninterrupted run
    assert first.figures["samples"] == 12 and first.record["scored"] == 12

    def never(*args, **kwargs):
        raise AssertionError("resampled")

    monkeypatch.setattr(TextScorer, "score", never)
    again = run_rank(str(prompts), text_recipe(), tmp_path / "run", sampler_factory=never)
    assert again.record["scored"] == 0 and again.figures == first.figures
    assert len(read_journal(tmp_path / "run" / "rank" / "journal.jsonl")) == 12


def test_rank_that_renders_without_a_generator_is_one_sentence(tmp_path):
    from paav_cli.errors import UserError

    prompts = tmp_path / "sources.txt"
    prompts.write_text("a dog running in a park\n")
    with pytest.raises(UserError) as err:
        run_rank(str(prompts), Recipe(), tmp_path / "run", sampler_factory=TextDraws)
    message = str(err.value)
    assert "names no generator in [models], and rank renders its samples" in message
    assert '[rank] rewards = ["faithfulness", "detail", "budget"]' in message and "\n" not in message
    assert not (tmp_path / "run").exists()  # stopped before the run folder
    with pytest.raises(UserError, match="budget reward but names no target generator"):
        run_rank(str(prompts), Recipe(rank=Rank(rewards=["budget"])), tmp_path / "run", sampler_factory=TextDraws)
