"""`paav render`: prompts in, videos out (cached renders copied or linked into an output folder)."""

from __future__ import annotations

import hashlib
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


NAME_LIMIT = 80  # characters of an id kept in its file name
NAME_BYTES = 160  # and at most this many bytes of UTF-8: file systems limit names to 255 bytes


def output_name(record_id, key: str) -> str:
    """A video's file name in `-o DIR` (without suffix), unique per id and the same on every run.

    A number names a position as a rule (a prompt on the command line, a .txt line, a .jsonl or .csv
    without ids) and says nothing about what was rendered, so its name adds the render key: a second
    batch into the same folder never replaces the first one's videos, and the same request gets the
    same name again. Any other id keeps its own name when it is already a safe file name; otherwise
    (slashes, `..`, an empty id, too long) the safe part gets a hash of the raw id, so that ids which
    sanitise alike (`a/b` and `a_b`) stay apart.
    """
    raw = str(record_id)
    if raw.isascii() and raw.isdigit() and len(raw) <= 20:
        return f"{raw}-{key[:12]}"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in raw).strip("._")[:NAME_LIMIT]
    safe = safe.encode("utf-8")[:NAME_BYTES].decode("utf-8", "ignore") or "video"
    if safe == raw:
        return safe
    return f"{safe}-{hashlib.sha256(raw.encode('utf-8', 'surrogatepass')).hexdigest()[:10]}"


def render_records(
    records: list[PromptRecord], generator: str, template: RenderJob, options: RenderOptions,
    out_dir: str | None = None, progress=None,
) -> list[dict]:
    """Render every record's prompt with the job settings of `template`; one result record each."""
    entry = registry.Registry.load().get(generator, "generators")
    gen = VideoGenerator(entry, options)
    jobs = [replace(template, prompt=r.prompt) for r in records]
    settings = gen.resolve(jobs)  # every bad setting is reported before anything renders
    names = [output_name(r.id, s.key()) for r, s in zip(records, settings)]
    if out_dir and len(set(names)) < len(names):
        # Only an id made to look like another's hashed name gets here; refuse rather than overwrite.
        twice = next(n for n in names if names.count(n) > 1)
        raise UserError(f"two ids of this batch would both be written as {twice}; give them distinct ids.")
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
    for record, path, name in zip(records, paths, names):
        sidecar = gen.cache.sidecar(path.stem) or {}
        final = path
        if dest is not None:
            final = dest / f"{name}{path.suffix}"
            _place(path, final)
        results.append({
            "id": record.id, "prompt": record.prompt, "path": str(final), "key": path.stem,
            "generator": generator, "frames": sidecar.get("frames_produced"), "fps": sidecar.get("fps"),
            "seed": template.seed, "seconds": sidecar.get("seconds"),
        })
    return results
