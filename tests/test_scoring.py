"""The scoring engine: every dimension, one model in memory at a time, the score cache, presets, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import assert_user_error, paav

from paav_cli import paths, rewards
from paav_cli.rewards.presets import PRESETS, get_preset
from paav_cli.rewards.scoring import ScoreStats, score_videos
from paav_cli.video.files import write_frames

TINY_REWARDS = {
    "tiny-videoscore": ("VQ", "TC", "DD", "TVA", "FC"),
    "tiny-aesthetic": ("AES",),
    "tiny-mps": ("MPS",),
    "tiny-clip-score": ("CLIP",),
}


@pytest.fixture
def videos(tmp_path):
    rng = np.random.default_rng(0)
    out = []
    for i in range(3):
        path = tmp_path / f"clip{i}.mp4"
        frames = (rng.random((12, 32, 32, 3)) * 255).astype(np.uint8)
        frames[:, : 8 * (i + 1)] = 40 * i  # each video visibly different
        write_frames(frames, path, fps=8)
        out.append(path)
    return out


def test_every_reward_returns_every_dimension(videos):
    prompts = ["a cat playing piano", "a red car", "a fox in the snow"]
    records = score_videos(videos, prompts, list(TINY_REWARDS))
    expected = {d for dims in TINY_REWARDS.values() for d in dims}
    for record in records:
        assert set(record["scores"]) == expected
        assert all(isinstance(v, float) and np.isfinite(v) for v in record["scores"].values())
        assert record["combined"] == PRESETS["paper"].combined(record["scores"])
    assert len({r["scores"]["AES"] for r in records}) == 3


def test_one_reward_model_in_memory_at_a_time(videos, monkeypatch):
    live, peak, loaded = set(), [0], []
    real_load = rewards.load_reward

    def tracking_load(entry):
        model = real_load(entry)
        live.add(entry.name)
        loaded.append(entry.name)
        peak[0] = max(peak[0], len(live))
        real_close = model.close

        def close():
            live.discard(entry.name)
            real_close()

        model.close = close
        return model

    monkeypatch.setattr("paav_cli.rewards.scoring.load_reward", tracking_load)
    stats = ScoreStats()
    score_videos(videos, ["a cat"] * 3, ["tiny-aesthetic", "tiny-videoscore", "tiny-clip-score"], stats=stats)
    assert peak[0] == 1 and not live
    assert loaded == ["tiny-aesthetic", "tiny-videoscore", "tiny-clip-score"]  # once each, not once per video
    assert stats.loads == 3 and stats.scored == 9


def test_scores_are_cached_per_video_model_and_prompt(videos, monkeypatch):
    first = score_videos(videos, ["a cat"] * 3, ["tiny-aesthetic", "tiny-clip-score"])

    def refuse(entry):
        raise AssertionError("a cached score loaded a model")

    with monkeypatch.context() as patch:
        patch.setattr("paav_cli.rewards.scoring.load_reward", refuse)
        stats = ScoreStats()
        assert score_videos(videos, ["a cat"] * 3, ["tiny-aesthetic", "tiny-clip-score"], stats=stats) == first
    assert stats.loads == 0 and stats.cached == 6
    stats = ScoreStats()
    score_videos(videos[:1], ["another prompt"], ["tiny-clip-score"], stats=stats)
    assert stats.scored == 1  # the prompt is part of the key: alignment depends on it


def test_presets_follow_the_published_formulas():
    raw = {"VQ": 3.0, "TC": 2.8, "DD": 2.0, "TVA": 3.1, "FC": 2.7, "AES": 6.4, "MPS": 12.0}
    evo = get_preset("released-evolution").combined(raw)
    assert evo == pytest.approx(3.0 + 2.8 + 2.7 + 3.1 + 0.5 * 2.0 + 6.4 * 5 / 8 + 12.0 / 4, abs=1e-4)
    dpo = get_preset("released-dpo")
    assert dpo.combined(raw) == pytest.approx(3.0 + 2.8 + 2.7 + 1.1 * 2.0 + 1.3 * 3.1 + 0.8 * 6.4 + 12.0 / 3, abs=1e-4)
    assert not dpo.passes_gates(raw)  # DD 2.0 is under the 2.65 gate
    assert dpo.passes_gates({**raw, "DD": 2.7})
    paper = get_preset("paper").normalise(raw)
    assert paper["VQ"] == pytest.approx(10 / 3) and paper["AES"] == pytest.approx(3.0) and paper["MPS"] == 3.0


def test_cli_table_and_json(videos):
    proc = paav("score", *map(str, videos[:2]), "--prompt", "a cat", "--rewards", "tiny-aesthetic,tiny-clip-score")
    assert proc.returncode == 0, proc.stderr
    assert "AES" in proc.stdout and "CLIP" in proc.stdout and "clip1.mp4" in proc.stdout
    proc = paav("score", *map(str, videos[:2]), "--prompt", "a cat", "--prompt", "a dog",
                "--rewards", "tiny-aesthetic", "--json", "--preset", "released-evolution")
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["prompt"] for r in records] == ["a cat", "a dog"]
    assert all(r["preset"] == "released-evolution" and set(r["scores"]) == {"AES"} for r in records)


def test_cli_scores_a_render_against_the_prompt_it_was_rendered_from():
    proc = paav("render", "a horse in the field", "-g", "tiny-wan")
    video = proc.stdout.strip()
    proc = paav("score", video, "--rewards", "tiny-clip-score", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["prompt"] == "a horse in the field"


def _cached_scores() -> set:
    return set(paths.scores_dir().iterdir()) if paths.scores_dir().exists() else set()


@pytest.mark.parametrize(
    "make, fragments",
    [
        (lambda d: d / "missing.mp4", ("does not exist",)),
        (lambda d: (d / "bad.mp4").write_bytes(b"\x00not a video" * 50) and d / "bad.mp4", ("corrupt",)),
        (lambda d: (d / "empty.mp4").write_bytes(b"") or d / "empty.mp4", ("empty",)),
    ],
)
def test_missing_or_corrupt_video(tmp_path, make, fragments):
    video = make(tmp_path)
    before = _cached_scores()
    assert_user_error(paav("score", str(video), "--prompt", "x", "--rewards", "tiny-aesthetic"), *fragments)
    assert _cached_scores() == before


@pytest.mark.parametrize(
    "args, fragments",
    [
        (("--rewards", "no-such-reward"), ("unknown reward",)),
        (("--rewards", "tiny-aesthetic-clip"), ("not a reward",)),
        (("--rewards", "tiny-aesthetic", "--preset", "best"), ("unknown score preset",)),
        (("--rewards", "videoscore"), ("paav models pull videoscore",)),
    ],
)
def test_bad_reward_choices(videos, args, fragments):
    assert_user_error(paav("score", str(videos[0]), "--prompt", "x", *args), *fragments)


def test_video_without_prompt_needs_one(videos):
    assert_user_error(paav("score", str(videos[0]), "--rewards", "tiny-aesthetic"), "--prompt")
