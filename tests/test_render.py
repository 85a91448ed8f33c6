"""Rendering with tiny random diffusers pipelines: cache, determinism, frame rules, bad input."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

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
    assert [r["path"] for r in records] == [str(out / f"{i}-{r['key'][:12]}.mp4") for i, r in enumerate(records, 1)]
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


def test_a_second_render_into_the_same_folder_keeps_the_first(tmp_path):
    out = tmp_path / "videos"
    first = paav("render", "a cat playing piano", "-g", "tiny-wan", "-o", str(out), "--json")
    assert first.returncode == 0, first.stderr
    [kept] = [json.loads(line) for line in first.stdout.splitlines()]
    frames = read_frames(kept["path"])
    second = paav("render", "a dog in the snow", "-g", "tiny-wan", "-o", str(out), "--json")
    assert second.returncode == 0, second.stderr
    [other] = [json.loads(line) for line in second.stdout.splitlines()]
    assert other["path"] != kept["path"]
    assert np.array_equal(read_frames(kept["path"]), frames)  # the first video is still the cat
    assert len(list(out.iterdir())) == 2
    again = paav("render", "a cat playing piano", "-g", "tiny-wan", "-o", str(out), "--json")
    assert json.loads(again.stdout)["path"] == kept["path"]  # stable: the same request, the same name


LONG = "x" * 80
CLASHING_IDS = ["a/b", "a_b", "a:b", ".", "..", "", "_", "video", LONG + "1", LONG + "2", LONG,
                "../escape", "/etc/passwd", "nul\x00byte"]


def test_ids_that_sanitise_alike_get_distinct_files_inside_the_folder(tmp_path):
    source = tmp_path / "ids.jsonl"
    source.write_text("".join(json.dumps({"id": i, "prompt": "a lighthouse at night"}) + "\n" for i in CLASHING_IDS))
    out = tmp_path / "videos"
    proc = paav("render", "-i", str(source), "-g", "tiny-wan", "-o", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(records) == len(CLASHING_IDS)
    files = sorted(out.iterdir())
    assert len(files) == len(CLASHING_IDS)  # one file per id: none overwrote another
    assert {Path(r["path"]) for r in records} == set(files)
    assert all(f.parent == out and not f.name.startswith(".") for f in files)
    assert str(out / "a_b.mp4") in {r["path"] for r in records}  # a safe id keeps its own name
    assert not (tmp_path / "escape.mp4").exists()
    rerun = paav("render", "-i", str(source), "-g", "tiny-wan", "-o", str(out), "--json")
    assert rerun.stdout == proc.stdout and sorted(out.iterdir()) == files


def test_file_names_stay_short_enough_for_the_file_system():
    from paav_cli.video.batch import output_name

    key = "0" * 64
    for rid in ("\U0001d400" * 300, "猫" * 300, "a" * 1000):
        assert len(output_name(rid, key).encode()) + len(".mp4") <= 255


@pytest.mark.parametrize(
    "args, fragments",
    [
        (("--height", "100000", "--width", "100000"), ("at most 32x32", "got 100000x100000")),
        (("--width", "48"), ("at most 32x32", "got 16x48")),
        (("--frames", "100001"), ("at most 17 frames", "got 100001")),
    ],
)
def test_sizes_beyond_the_generator_are_refused_with_the_limit(args, fragments):
    start = time.monotonic()
    assert_user_error(paav("render", "a cat", "-g", "tiny-wan", *args), *fragments)
    assert time.monotonic() - start < 60


def test_twice_the_default_still_renders():
    entry = Registry.load().get("tiny-wan")
    settings = resolve_job(entry, RenderJob("a cat", height=32, width=32, frames=17), "fp32")
    assert (settings.height, settings.width, settings.frames) == (32, 32, 17)
