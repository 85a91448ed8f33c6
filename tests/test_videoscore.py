"""VideoScore on transformers 5: the tiny random checkpoint loads and scores through the real code path."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from paav_cli import registry
from paav_cli.errors import UserError
from paav_cli.video.files import write_frames

DIMS = ["VQ", "TC", "DD", "TVA", "FC"]
PROMPT = "a cat playing the piano in a warm room"


def make_video(path: Path, seed: int, frames: int = 20) -> Path:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(1, 32, 48, 3))
    drift = np.arange(frames).reshape(frames, 1, 1, 1) * (seed + 3)
    write_frames(((base + drift) % 256).astype(np.uint8), path, fps=8)
    return path


@pytest.fixture
def entry():
    return registry.Registry.load().get("tiny-videoscore")


@pytest.fixture
def reward(entry):
    from paav_cli.rewards.videoscore import VideoScoreReward

    r = VideoScoreReward(entry)
    yield r
    r.close()


@pytest.fixture
def videos(tmp_path):
    return [make_video(tmp_path / "a.mp4", 1), make_video(tmp_path / "b.mp4", 2)]


def test_scores_two_videos(reward, videos):
    assert reward.dims == tuple(DIMS)
    scores = reward.score(videos, [PROMPT, "a dog running on the beach"])
    assert len(scores) == 2
    for s in scores:
        assert list(s) == DIMS
        assert all(isinstance(v, float) and np.isfinite(v) for v in s.values())
        assert all(round(v, 3) == v for v in s.values())


def test_deterministic_and_sensitive(reward, videos):
    a, b = videos
    first = reward.score([a], [PROMPT])[0]
    assert reward.score([a], [PROMPT])[0] == first
    assert reward.score([a], ["a red car on a city street at night"])[0] != first
    assert reward.score([b], [PROMPT])[0] != first


def test_query_is_the_published_template():
    from paav_cli.rewards.videoscore import REGRESSION_QUERY_PROMPT, build_query

    query = build_query(PROMPT, 16)
    text = REGRESSION_QUERY_PROMPT.format(text_prompt=PROMPT)
    assert query == text + "<image> " * 16
    assert query.count("<image>") == 16
    # Whitespace the published string has and an edited copy would easily lose.
    assert text.startswith("\nSuppose you are an expert")
    assert "performs in that sub-score, \nthe lowest 1.0" in text
    assert text.endswith(f'the text prompt is "{PROMPT}",\nall the frames of video are as follows:\n')
    assert build_query(PROMPT, 3).count("<image>") == 3


def test_processor_expands_each_frame(reward, videos):
    batch = reward.inputs(videos[0], PROMPT)
    ids = batch["input_ids"][0].tolist()
    tok = reward.processor.tokenizer
    image_id = reward.model.config.image_token_id
    assert image_id == tok.convert_tokens_to_ids("<image>")
    per_frame = reward.model.config.perceiver_config.resampler_n_latents
    assert ids.count(image_id) == 16 * per_frame
    assert ids.count(tok.convert_tokens_to_ids("<fake_token_around_image>")) == 32
    assert tuple(batch["pixel_values"].shape[:2]) == (1, 16)


def test_head_reads_the_last_token(reward, videos):
    import torch

    from paav_cli.rewards.videoscore import last_token_index

    model = reward.model
    batch = reward.inputs(videos[0], PROMPT)
    with torch.inference_mode():
        logits = model(**batch)
        hidden = model.model(**batch, use_cache=False).last_hidden_state
        assert torch.allclose(logits[0], model.score(hidden[0, -1]), atol=1e-5)
        assert not torch.allclose(logits[0], model.score(hidden[0, -2]), atol=1e-3)
        # One more token at the end moves what the head reads.
        longer = dict(batch)
        longer["input_ids"] = torch.cat([batch["input_ids"], batch["input_ids"][:, 5:6]], dim=1)
        longer["attention_mask"] = torch.ones_like(longer["input_ids"])
        assert not torch.allclose(model(**longer)[0], logits[0], atol=1e-3)
    # Padding: the last attended position, whichever side the pads are on.
    dummy = torch.zeros(3, 5, 2)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 0, 1, 1, 1]])
    assert last_token_index(mask, dummy).tolist() == [4, 2, 4]
    assert last_token_index(None, dummy).tolist() == [4, 4, 4]


def test_missing_head_weights_are_refused(entry, tmp_path):
    from safetensors.torch import load_file, save_file

    from paav_cli.registry import RewardEntry
    from paav_cli.rewards.videoscore import VideoScoreReward

    broken = tmp_path / "broken-videoscore"
    shutil.copytree(registry.require_path(entry), broken)
    weights = load_file(broken / "model.safetensors")
    del weights["score.weight"]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    bad = RewardEntry(name="broken-videoscore", path=str(broken), kind="videoscore", dims=DIMS)
    with pytest.raises(UserError, match=r"score\.weight"):
        VideoScoreReward(bad)
