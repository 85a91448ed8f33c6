"""Run files: atomic writes and append-only JSONL journals that survive interruption.

A journal is a JSONL file written one flushed line per finished record. After a crash the only
damage possible is a last line without its newline; `read_journal` cuts it off so that the next
append starts clean and no record is ever half-written or duplicated.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from paav_cli.errors import UserError


def default_file_mode() -> int:
    """0o666 less the umask: what `open()` would give, since mkstemp makes files private (0o600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` through a temp file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, default_file_mode())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def truncate_partial_line(path: Path) -> int:
    """Cut a trailing line that has no newline (a write interrupted mid-line); return bytes cut."""
    path = Path(path)
    if not path.exists():
        return 0
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return 0
    keep = data.rfind(b"\n") + 1
    with open(path, "r+b") as f:
        f.truncate(keep)
    return len(data) - keep


def iter_jsonl(path: Path, fix: str = "fix or remove that line"):
    """(line number, parsed value) for every non-blank line; a bad line is one sentence ending in `fix`."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"{path} line {number} is not valid JSON; {fix}.") from None


def read_journal(path: Path) -> list[dict]:
    """Every complete record of a JSONL journal, after repairing an interrupted last line."""
    path = Path(path)
    if not path.exists():
        return []
    truncate_partial_line(path)
    fix = "fix or remove that line, or write to another output file"
    return [record for _, record in iter_jsonl(path, fix)]


class Journal:
    """Appends one JSON line per record and flushes it, so a kill loses at most the record in flight."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")

    def append(self, record: dict) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# Run folders


def prepare_run_folder(run: Path) -> Path:
    """Create the run folder (and check it is writable) before any work starts."""
    run = Path(run)
    try:
        run.mkdir(parents=True, exist_ok=True)
        probe = run / ".paav-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to the run folder {run} ({e.strerror}); choose another --run folder.") from None
    return run


def read_manifest(run: Path) -> dict:
    path = Path(run) / "manifest.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise UserError(f"{path} is not valid JSON; restore it or start a new run folder.") from None


def update_manifest(run: Path, **changes) -> dict:
    """Merge `changes` into RUN/manifest.json (nested dicts merged one level deep), atomically."""
    manifest = read_manifest(run)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(manifest.get(key), dict):
            manifest[key] = {**manifest[key], **value}
        else:
            manifest[key] = value
    atomic_write_json(Path(run) / "manifest.json", manifest)
    return manifest
