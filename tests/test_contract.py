"""The contract every generator and every reward model keeps, run against the tiny model of each.

In the spirit of diffusers' PipelineTesterMixin: one set of checks, parametrised over the registry's
tiny entries (`builder = "tiny"`), so a new tiny entry is checked with no new test; and a coverage
check that every generator family and every reward kind a real entry names has a tiny entry of the
same family or kind standing in for it, so a new family without a tiny model fails here.

The tiny models are random weights in the real classes, loaded by the real code path; renders are
shared through one module-wide render cache, so the reward checks score what the generator checks
rendered without loading a pipeline again.
"""

from __future__ import annotations

import inspect
import json
import math
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from paav_cli import registry
from paav_cli.errors import UserError
from paav_cli.registry import Registry
from paav_cli.rewards import REWARD_CLASSES, check_scorable, load_reward
from paav_cli.testing.tiny_text import WORDS
from paav_cli.video.cache import RenderCache
from paav_cli.video.files import read_frames
from paav_cli.video.jobs import MAX_SCALE, RenderJob, frame_rule_allows
from paav_cli.video.render import (
    IGNORES_NEGATIVE,
    PIPELINES,
    RenderOptions,
    VideoGenerator,
    accelerator,
    render_prompts,
)


@contextmanager
def _without_user_models():
    """The shipped registry only: a developer's own models.toml must not change what is collected."""
    saved = {k: os.environ.get(k) for k in ("PAAV_MODELS", "XDG_CONFIG_HOME")}
    os.environ.pop("PAAV_MODELS", None)
    os.environ["XDG_CONFIG_HOME"] = "/nonexistent-paav-contract-config"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


with _without_user_models():
    REG = Registry.load()


def _entries(role: str, *, tiny: bool):
    return [e for e in REG.by_role(role) if (e.builder == "tiny") == tiny]


TINY_GENERATORS = _entries("generators", tiny=True)
REAL_GENERATORS = _entries("generators", tiny=False)
TINY_REWARDS = [e for e in _entries("rewards", tiny=True) if e.kind in REWARD_CLASSES]
NOT_REWARDS = [e for e in REG.by_role("rewards") if e.kind not in REWARD_CLASSES]  # backbones
REAL_REWARDS = _entries("rewards", tiny=False)

# Families and kinds a real entry names that have no tiny model yet. Each is an expected failure of the
# coverage check, strict: adding the tiny model makes it pass, and the entry must then go from here.
MISSING_TINY = {
    "hunyuanvideo": "no tiny HunyuanVideo pipeline in paav_cli/testing yet (Llama + CLIP text encoders)",
}

PROMPTS = ["a red fox running through the snow", "a blue boat on the lake at night",
           "a child flying a kite on the beach", "golden light over the mountain sea"]
NEGATIVE = "blurry, low quality, distorted"


def _ids(entries):
    return [e.name for e in entries]


def _with_gap(values):
    return [pytest.param(v, marks=pytest.mark.xfail(strict=True, reason=MISSING_TINY[v])) if v in MISSING_TINY else v
            for v in values]


def built(entry) -> Path:
    """The tiny model's local path, building it into paav's cache if it is not there yet."""
    path = registry.local_path(entry)
    if path is None:
        from paav_cli.testing import build_tiny_model

        path = build_tiny_model(entry, registry.model_cache_dir(entry))
    return path


def frames_of(path: Path) -> np.ndarray:
    return read_frames(path)


def prompt_for(entry) -> str:
    return PROMPTS[[e.name for e in TINY_GENERATORS].index(entry.name) % len(PROMPTS)]


@pytest.fixture(scope="module")
def module_env(shared_cache, tmp_path_factory):
    """What the autouse `isolated` fixture sets per test, for the module-wide models and renders."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("contract")
    mp.setenv("PAAV_CACHE", str(shared_cache))
    mp.setenv("XDG_CONFIG_HOME", str(root / "config"))
    mp.delenv("PAAV_MODELS", raising=False)
    mp.setenv("HF_HOME", str(root / "hf"))
    mp.setenv("HF_HUB_OFFLINE", "1")
    yield root
    mp.undo()


@pytest.fixture(scope="module")
def renders(module_env) -> RenderCache:
    """The module's render cache: generator checks fill it, reward checks read their inputs from it."""
    return RenderCache(module_env / "renders")


# ----------------------------------------------------------------------------------------- coverage


def _real_families():
    return sorted({e.family for e in REAL_GENERATORS})


@pytest.mark.parametrize("family", _with_gap([f for f in _real_families() if f in PIPELINES]))
def test_every_renderable_family_has_a_tiny_model(family):
    real = [e for e in REAL_GENERATORS if e.family == family]
    tiny = [e for e in TINY_GENERATORS if e.family == family]
    assert tiny, f"no tiny generator of family {family!r} (real ones: {_ids(real)})"
    for t in tiny:  # it stands in for the real ones: what it makes and how it reads a prompt
        assert t.output in {e.output for e in real}, t.name
        assert t.text_encoder.kind in {e.text_encoder.kind for e in real}, t.name
        assert t.frame_rule in {e.frame_rule for e in real}, t.name


@pytest.mark.parametrize("entry", [e for e in REAL_GENERATORS if e.family not in PIPELINES], ids=lambda e: e.name)
def test_a_family_paav_cannot_render_is_refused_before_any_download(entry, tmp_path):
    gen = VideoGenerator(entry, cache=RenderCache(tmp_path / "renders"))
    with pytest.raises(UserError, match="cannot render"):
        gen.render([RenderJob("a cat")])
    assert gen.pipe is None and not (tmp_path / "renders").exists()


@pytest.mark.parametrize("entry", [e for e in REG.by_role("generators") if e.family in IGNORES_NEGATIVE],
                         ids=lambda e: e.name)
def test_a_family_that_would_drop_the_negative_prompt_refuses_it(entry):
    """HunyuanVideo's pipeline reads a negative prompt only under true CFG, which paav does not run:
    refused before anything loads, rather than rendered as if it were there."""
    gen = VideoGenerator(entry)
    with pytest.raises(UserError, match="negative"):
        gen.resolve([RenderJob("a cat"), RenderJob("a cat", negative=NEGATIVE)])
    assert gen.resolve([RenderJob("a cat")])[0].negative == ""


def test_every_tiny_generator_is_of_a_family_paav_renders():
    assert TINY_GENERATORS
    assert all(e.family in PIPELINES for e in TINY_GENERATORS), [(e.name, e.family) for e in TINY_GENERATORS]


@pytest.mark.parametrize("kind", _with_gap(sorted({e.kind for e in REAL_REWARDS})))
def test_every_reward_kind_has_a_tiny_model(kind):
    real = [e for e in REAL_REWARDS if e.kind == kind]
    tiny = [e for e in _entries("rewards", tiny=True) if e.kind == kind]
    assert tiny, f"no tiny reward of kind {kind!r} (real ones: {_ids(real)})"
    for t in tiny:
        assert t.dims in [e.dims for e in real], (t.name, t.dims)


@pytest.mark.parametrize("entry", NOT_REWARDS, ids=_ids(NOT_REWARDS))
def test_a_backbone_is_not_a_reward(entry):
    with pytest.raises(UserError, match="not a reward"):
        check_scorable(entry)


# --------------------------------------------------------------------------------------- generators


@pytest.fixture(scope="module", params=TINY_GENERATORS, ids=_ids(TINY_GENERATORS))
def gen(request, module_env, renders):
    """The tiny generator, loaded once for all of its checks, rendering into the module's cache."""
    entry = request.param
    built(entry)
    g = VideoGenerator(entry, cache=renders)
    yield g
    g.free()


def _allowed_frames(entry) -> list[int]:
    if entry.output == "image":
        return [1]
    return [f for f in range(1, MAX_SCALE * entry.frames + 1) if frame_rule_allows(entry.frame_rule, f)]


def test_renders_the_declared_output(gen):
    e = gen.entry
    [path] = gen.render([RenderJob(prompt_for(e))])
    assert path.suffix == (".png" if e.output == "image" else ".mp4")
    assert frames_of(path).shape == (e.frames, e.height, e.width, 3)
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert (sidecar["frames_produced"], sidecar["height"], sidecar["width"]) == (e.frames, e.height, e.width)
    assert sidecar["settings"]["generator"] == e.name and sidecar["settings"]["prompt"] == prompt_for(e)
    assert sidecar["fps"] == e.fps and "diffusers" in sidecar["versions"]


def test_renders_the_fewest_and_most_frames_its_rule_allows(gen):
    e = gen.entry
    allowed = _allowed_frames(e)
    assert e.frames in allowed
    for frames in sorted({allowed[0], allowed[-1]} - {e.frames}):
        [path] = gen.render([RenderJob(prompt_for(e), frames=frames)])
        assert frames_of(path).shape == (frames, e.height, e.width, 3), frames


def test_the_seed_decides_the_frames(gen, tmp_path):
    prompt = prompt_for(gen.entry)
    fresh = VideoGenerator(gen.entry, cache=RenderCache(tmp_path))
    try:
        one, two, one_again = fresh.render([RenderJob(prompt, seed=1), RenderJob(prompt, seed=2), RenderJob(prompt, seed=1)])
        assert fresh.loads == 1  # one load for the batch, the repeated job rendered once
    finally:
        fresh.free()
    assert one == one_again != two
    assert not np.array_equal(frames_of(one), frames_of(two))
    # The same seed through another load of the pipeline, into another cache: the same frames.
    [elsewhere] = gen.render([RenderJob(prompt, seed=1)])
    assert elsewhere != one and elsewhere.name == one.name
    assert np.array_equal(frames_of(elsewhere), frames_of(one))


def test_a_prompt_past_the_text_encoders_limit_is_truncated_there(gen):
    """What the code does: paav passes the entry's max_tokens to the pipeline, which cuts the prompt
    there (a CLIP encoder at its own 77); nothing refuses a long prompt. So words past the limit change
    nothing, and the last word within it still reaches the model."""
    e = gen.entry
    tokenizer = gen.load().tokenizer
    limit = e.text_encoder.max_tokens
    if "max_sequence_length" not in inspect.signature(gen.pipe.__call__).parameters:
        assert tokenizer.model_max_length == limit, "the entry's max_tokens is not what its encoder reads"
    single = [w for w in WORDS if len(tokenizer(w, add_special_tokens=False).input_ids) == 1]
    kept = limit - tokenizer.num_special_tokens_to_add()  # prompt tokens that fit beside BOS/EOS
    words = [single[i % len(single)] for i in range(limit + 8)]
    assert len(tokenizer(" ".join(words), add_special_tokens=False).input_ids) == len(words) > limit

    def variant(index):
        changed = list(words)
        changed[index] = next(w for w in single if w != words[index])
        return " ".join(changed)

    base, past, within = gen.render([RenderJob(" ".join(words)), RenderJob(variant(kept)), RenderJob(variant(kept - 1))])
    assert len({base, past, within}) == 3  # the prompt is in the key, whole
    assert frames_of(base).shape == (e.frames, e.height, e.width, 3)
    assert np.array_equal(frames_of(base), frames_of(past))
    assert not np.array_equal(frames_of(base), frames_of(within))


def test_the_negative_prompt_reaches_the_model(gen):
    prompt = prompt_for(gen.entry)
    if gen.entry.family in IGNORES_NEGATIVE:
        with pytest.raises(UserError, match="negative"):
            gen.render([RenderJob(prompt, negative=NEGATIVE)])
        return
    plain, negative = gen.render([RenderJob(prompt), RenderJob(prompt, negative=NEGATIVE)])
    assert plain != negative
    assert not np.array_equal(frames_of(plain), frames_of(negative))


@pytest.mark.skipif(accelerator() is not None, reason="this machine has an accelerator")
@pytest.mark.parametrize("memory", ["model", "sequential"])
def test_offload_is_refused_without_an_accelerator(gen, memory, tmp_path):
    offloaded = VideoGenerator(gen.entry, RenderOptions(memory=memory), cache=RenderCache(tmp_path / "renders"))
    with pytest.raises(UserError, match="accelerator"):
        offloaded.render([RenderJob(prompt_for(gen.entry), seed=7)])
    assert offloaded.pipe is None and offloaded.loads == 0 and not (tmp_path / "renders").exists()


@pytest.mark.skipif(accelerator() is None, reason="needs an accelerator")
@pytest.mark.parametrize("memory", ["model", "sequential"])
def test_offload_renders_the_declared_output(gen, memory, tmp_path):
    e = gen.entry
    offloaded = VideoGenerator(e, RenderOptions(memory=memory, vae_tiling=True), cache=RenderCache(tmp_path))
    try:
        [path] = offloaded.render([RenderJob(prompt_for(e), seed=7)])
    finally:
        offloaded.free()
    assert frames_of(path).shape == (e.frames, e.height, e.width, 3)


def test_an_unknown_memory_mode_is_refused(gen):
    with pytest.raises(UserError, match="memory mode"):
        VideoGenerator(gen.entry, RenderOptions(memory="disk"))


def test_a_cached_render_loads_nothing(gen, monkeypatch):
    import diffusers

    job = RenderJob(prompt_for(gen.entry))
    [path] = gen.render([job])

    def refuse(*args, **kwargs):
        raise AssertionError("a cached render loaded the pipeline")

    monkeypatch.setattr(getattr(diffusers, PIPELINES[gen.entry.family]), "from_pretrained", refuse)
    other = VideoGenerator(gen.entry, cache=gen.cache)
    assert other.render([job]) == [path]
    assert other.loads == 0 and other.pipe is None


def test_free_drops_the_pipeline_and_the_entry_point_frees_it(gen, monkeypatch, tmp_path):
    fresh = VideoGenerator(gen.entry, cache=RenderCache(tmp_path))
    fresh.load()
    fresh.free()
    assert fresh.pipe is None and fresh.loads == 1
    fresh.free()  # freeing twice is harmless

    freed = []
    real_free = VideoGenerator.free
    monkeypatch.setattr(VideoGenerator, "free", lambda self: (freed.append(self.pipe is not None), real_free(self)))
    e = gen.entry
    [path] = render_prompts(e.name, [RenderJob(f"{prompt_for(e)} from the entry point", seed=5)])
    assert frames_of(path).shape == (e.frames, e.height, e.width, 3)
    assert freed == [True]


# ------------------------------------------------------------------------------------------ rewards


@pytest.fixture(scope="module")
def rendered(renders) -> tuple[list[Path], list[str]]:
    """One output of every tiny generator (videos and an image) and the prompt it was rendered from:
    cache hits when the generator checks ran first, else rendered here."""
    videos, prompts = [], []
    for entry in TINY_GENERATORS:
        g = VideoGenerator(entry, cache=renders)
        if g.cache.lookup(g.resolve([RenderJob(prompt_for(entry))])[0], entry.output) is None:
            built(entry)
        try:
            [path] = g.render([RenderJob(prompt_for(entry))])
        finally:
            g.free()
        videos.append(path)
        prompts.append(prompt_for(entry))
    return videos, prompts


def _load(entry):
    built(entry)
    if entry.backbone:
        built(REG.get(entry.backbone, "rewards"))
    return load_reward(entry)


@pytest.fixture(scope="module", params=TINY_REWARDS, ids=_ids(TINY_REWARDS))
def reward(request, module_env):
    model = _load(request.param)
    yield model
    model.close()


def _assert_scores(entry, scores, n):
    assert len(scores) == n
    for s in scores:
        assert list(s) == list(entry.dims)
        assert all(isinstance(v, float) and math.isfinite(v) for v in s.values()), s


def test_scores_every_output_in_the_declared_dims(reward, rendered):
    videos, prompts = rendered
    entry = reward.entry
    assert reward.name == entry.name and reward.dims == tuple(entry.dims)
    scores = reward.score(videos, prompts)
    _assert_scores(entry, scores, len(videos))
    assert len({tuple(s.values()) for s in scores}) > 1, "every output scored alike"


def test_the_same_input_gives_the_same_scores_across_loads(reward, rendered):
    videos, prompts = rendered
    first = reward.score(videos, prompts)
    assert reward.score(videos, prompts) == first
    again = _load(reward.entry)  # a weight left to random init would differ here
    try:
        assert again.score(videos, prompts) == first
    finally:
        again.close()
    again.close()  # closing twice is harmless


def test_a_batch_scores_as_one_at_a_time(reward, rendered):
    videos, prompts = rendered
    batch = reward.score(videos, prompts)
    alone = [reward.score([v], [p])[0] for v, p in zip(videos, prompts)]
    for b, a in zip(batch, alone):
        assert b == pytest.approx(a, rel=1e-3, abs=1e-3)


def test_videos_and_prompts_must_pair_up(reward, rendered):
    videos, prompts = rendered
    with pytest.raises(ValueError):
        reward.score(videos, prompts[:-1])


def test_the_score_cache_key_follows_the_model_revision(reward, rendered, monkeypatch, tmp_path):
    from paav_cli.rewards.scoring import ScoreCache, ScoreStats, score_videos, video_key

    videos, prompts = rendered
    entry = reward.entry
    vk = video_key(videos[0])
    key = ScoreCache.key(vk, entry, prompts[0])
    assert ScoreCache.key(vk, entry, prompts[0]) == key
    assert ScoreCache.key(vk, entry.model_copy(update={"revision": "0" * 40}), prompts[0]) != key

    class Borrowed:  # the loaded model, lent to the engine without being closed by it
        name, dims = reward.name, reward.dims

        def score(self, v, p):
            return reward.score(v, p)

        def close(self):
            pass

    monkeypatch.setattr("paav_cli.rewards.scoring.load_reward", lambda e: Borrowed())
    cache = ScoreCache(tmp_path)

    def run():
        stats = ScoreStats()
        return score_videos(videos, prompts, [entry.name], cache=cache, stats=stats), stats

    first, stats = run()
    assert stats.scored == len(videos)
    _assert_scores(entry, [r["scores"] for r in first], len(videos))
    again, stats = run()
    assert stats.cached == len(videos) and stats.scored == 0 and again == first
    real_revision = registry.revision_of
    monkeypatch.setattr(registry, "revision_of", lambda e: f"{real_revision(e)}-retrained")
    _, stats = run()
    assert stats.scored == len(videos) and stats.cached == 0  # a new revision is new work
