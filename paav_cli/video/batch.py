"""`paav render`: prompts in, videos out (cached renders copied or linked into an output folder)."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

from paav_cli import registry
from paav_cli.errors import UserError
from paav_cli.prompt_files import PromptRecord
from paav_cli.video.jobs import RenderJob
from paav_cli.video.render import RenderOptions, VideoGenerator


def _place(src: Path, dest: Path) -> None:
    """Put a cached render at `dest`: a hard link where the file system allows, else a copy (atomic)."""
    if dest.exists() and dest.stat().st_size == src.stat().st_size and dest.read_bytes() == src.read_bytes():
        return
    tmp = dest.with_name(f".{dest.name}.partial")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def _safe_name(value) -> str:
    text = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(value)).strip("._")
    return text[:80] or "video"


def render_records(
    records: list[PromptRecord], generator: str, template: RenderJob, options: RenderOptions,
    out_dir: str | None = None, progress=None,
) -> list[dict]:
    """Render every record's prompt with the job settings of `template`; one result record each."""
    entry = registry.Registry.load().get(generator, "generators")
    gen = VideoGenerator(entry, options)
    jobs = [replace(template, prompt=r.prompt) for r in records]
    gen.resolve(jobs)  # every bad setting is reported before anything renders
    dest = Path(out_dir) if out_dir else None
    if dest is not None:
        if dest.exists() and not dest.is_dir():
            raise UserError(f"output {dest} is a file; give a folder for -o.")
        dest.mkdir(parents=True, exist_ok=True)
    try:
        paths = gen.render(jobs, progress)
    finally:
        gen.free()
    results = []
    for record, path in zip(records, paths):
        sidecar = gen.cache.sidecar(path.stem) or {}
        final = path
        if dest is not None:
            final = dest / f"{_safe_name(record.id)}{path.suffix}"
            _place(path, final)
        results.append({
            "id": record.id, "prompt": record.prompt, "path": str(final), "key": path.stem,
            "generator": generator, "frames": sidecar.get("frames_produced"), "fps": sidecar.get("fps"),
            "seed": template.seed, "seconds": sidecar.get("seconds"),
        })
    return results
