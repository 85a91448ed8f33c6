"""Rendering with tiny random diffusers pipelines: cache, determinism, frame rules, bad input."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from conftest import assert_user_error, paav

from paav_cli import paths
from paav_cli.errors import UserError
from paav_cli.registry import Registry
from paav_cli.video import RenderJob
from paav_cli.video.files import read_frames
from paav_cli.video.jobs import frame_rule_allows, resolve_job
from paav_cli.video.render import RenderOptions, VideoGenerator, accelerator


def generator(name: str, **options) -> VideoGenerator:
    return VideoGenerator(Registry.load().get(name, "generators"), RenderOptions(**options))


@pytest.mark.parametrize(
    "name, shape",
    [
        ("tiny-cogvideox", (9, 16, 16, 3)),
        ("tiny-wan", (9, 16, 16, 3)),
        ("tiny-ltx", (9, 32, 32, 3)),
        ("tiny-sd", (1, 32, 32, 3)),
    ],
)
def test_every_family_renders_through_from_pretrained(name, shape):
    gen = generator(name)
    [path] = gen.render([RenderJob("a cat playing piano", seed=3)])
    assert gen.loads == 1
    assert path.suffix == (".png" if name == "tiny-sd" else ".mp4")
    assert read_frames(path).shape == shape
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["frames_produced"] == shape[0]
    assert sidecar["settings"]["prompt"] == "a cat playing piano"
    assert "diffusers" in sidecar["versions"]


def test_cached_render_loads_no_pipeline(monkeypatch):
    first = generator("tiny-cogvideox")
    [path] = first.render([RenderJob("a red car in the rain", seed=11)])
    stamp = path.stat().st_mtime_ns

    import diffusers

    def refuse(*args, **kwargs):
        raise AssertionError("a cached render loaded the pipeline")

    monkeypatch.setattr(diffusers.CogVideoXPipeline, "from_pretrained", refuse)
    second = generator("tiny-cogvideox")
    assert second.render([RenderJob("a red car in the rain", seed=11)]) == [path]
    assert second.loads == 0
    assert path.stat().st_mtime_ns == stamp


def test_one_load_for_many_jobs_and_duplicates_rendered_once():
    gen = generator("tiny-wan")
    jobs = [RenderJob("a fox in the snow", seed=s) for s in (1, 2, 1)]
    paths_ = gen.render(jobs)
    assert gen.loads == 1
    assert paths_[0] == paths_[2] != paths_[1]


def test_same_seed_same_video_other_seed_other_video(tmp_path):
    from paav_cli.video.cache import RenderCache

    job = RenderJob("a boat on the lake at night", seed=5)
    entry = Registry.load().get("tiny-ltx")
    a = VideoGenerator(entry, cache=RenderCache(tmp_path / "a")).render([job])[0]
    b = VideoGenerator(entry, cache=RenderCache(tmp_path / "b")).render([job])[0]
    c = VideoGenerator(entry, cache=RenderCache(tmp_path / "c")).render([replace(job, seed=6)])[0]
    assert a.name == b.name
    assert np.array_equal(read_frames(a), read_frames(b))
    assert not np.array_equal(read_frames(a), read_frames(c))


def test_key_covers_every_setting_but_not_memory_options():
    entry = Registry.load().get("tiny-cogvideox")
    base = resolve_job(entry, RenderJob("a cat"), "fp32")
    changes = dict(prompt="a dog", negative="blurry", seed=1, frames=17, height=32, width=32, steps=3, guidance=2.0)
    for field, value in changes.items():
        other = resolve_job(entry, replace(RenderJob("a cat"), **{field: value}), "fp32")
        assert other.key() != base.key(), field
    assert resolve_job(entry, RenderJob("a cat"), "bf16").key() != base.key()
    g1, g2 = generator("tiny-cogvideox", memory="none"), generator("tiny-cogvideox", vae_tiling=True, dtype="fp32")
    assert g1.resolve([RenderJob("a cat")])[0].key() == g2.resolve([RenderJob("a cat")])[0].key()


@pytest.mark.parametrize("rule, good, bad", [("8k+1", [1, 9, 49], [8, 48, 50]), ("4k+1", [5, 81], [80, 82]),
                                             ("16k+1", [81, 161], [48, 57]), ("any", [1, 7], [0])])
def test_frame_rules(rule, good, bad):
    assert all(frame_rule_allows(rule, f) for f in good)
    assert not any(frame_rule_allows(rule, f) for f in bad)


def test_impossible_request_is_refused_before_anything_renders():
    entry = Registry.load().get("tiny-cogvideox")
    for job in (RenderJob("a cat", frames=10), RenderJob("a cat", height=20), RenderJob("  ")):
        with pytest.raises(UserError):
            resolve_job(entry, job, "fp32")


def test_failed_write_leaves_nothing_in_the_cache(monkeypatch):
    import imageio.v2 as imageio

    real = imageio.get_writer

    class Broken:
        def __init__(self, *a, **k):
            self.inner = real(*a, **k)

        def __enter__(self):
            return self

        def append_data(self, frame):
            self.inner.append_data(frame)
            raise OSError("disk full")

        def __exit__(self, *exc):
            self.inner.close()

    gen = generator("tiny-wan")
    [settings] = gen.resolve([RenderJob("a broken write", seed=99)])
    with monkeypatch.context() as patch:
        patch.setattr(imageio, "get_writer", Broken)
        with pytest.raises(OSError):
            gen.render([RenderJob("a broken write", seed=99)])
    assert not [p for p in paths.renders_dir().iterdir() if p.name.startswith(".") or settings.key() in p.name]
    [path] = generator("tiny-wan").render([RenderJob("a broken write", seed=99)])
    assert read_frames(path).shape[0] == 9


@pytest.mark.skipif(accelerator() is not None, reason="this machine has an accelerator")
def test_offload_without_accelerator_is_a_user_error():
    proc = paav("render", "a cat", "-g", "tiny-cogvideox", "--memory", "sequential")
    assert_user_error(proc, "accelerator", "--memory none")


def test_cli_renders_into_a_folder_and_reruns_from_cache(tmp_path):
    out = tmp_path / "videos"
    args = ("render", "a cat playing piano", "a dog in the snow", "-g", "tiny-wan", "-o", str(out), "--seed", "4", "--json")
    proc = paav(*args)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["path"] for r in records] == [str(out / "1.mp4"), str(out / "2.mp4")]
    assert all(r["frames"] == 9 for r in records)
    cached = paths.renders_dir() / f"{records[0]['key']}.mp4"
    stamp = cached.stat().st_mtime_ns
    again = paav(*args)
    assert again.returncode == 0 and again.stdout == proc.stdout
    assert cached.stat().st_mtime_ns == stamp


@pytest.mark.parametrize(
    "args, fragments",
    [
        (("render", "a cat", "-g", "no-such-model"), ("unknown generator",)),
        (("render", "a cat", "-g", "tiny-cogvideox", "--frames", "12"), ("8k+1", "9 or 17")),
        (("render", "a cat", "-g", "tiny-sd", "--frames", "9"), ("images",)),
        (("render", "-g", "tiny-wan"), ("give either prompts or -i FILE",)),
    ],
)
def test_cli_bad_render_input(args, fragments):
    before = set(paths.renders_dir().iterdir()) if paths.renders_dir().exists() else set()
    assert_user_error(paav(*args), *fragments)
    after = set(paths.renders_dir().iterdir()) if paths.renders_dir().exists() else set()
    assert after == before
