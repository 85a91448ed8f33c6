"""Run files: atomic writes and append-only JSONL journals that survive interruption.

A journal is a JSONL file written one flushed line per finished record. After a crash the only
damage possible is a last line without its newline; `read_journal` cuts it off so that the next
append starts clean and no record is ever half-written or duplicated.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

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
    # Only the tail is read: a resumed output or journal can be far larger than the memory a
    # rerun should need.
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        end = size
        while end > 0:
            start = max(0, end - 65536)
            f.seek(start)
            chunk = f.read(end - start)
            if end == size and chunk.endswith(b"\n"):
                return 0
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            end = start
        else:
            keep = 0
        f.truncate(keep)
    return size - keep


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


# ---------------------------------------------------------------------------------------------
# The stage contract


@dataclass
class StageResult:
    """What every stage function returns (evolve, sft, rank, dpo, export, eval).

    `figures` are the few numbers a person reads (printed by every command the same way and shown
    by `paav runs show`); `outputs` name what the stage wrote, by role ("pairs", "adapter", "gguf");
    `stopped` says why a stage ended before its work was done (a budget, Ctrl-C), with status
    "stopped"; `record` is the detail kept in the manifest but not printed (settings, versions).
    """

    stage: str
    status: str = "done"
    figures: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    stopped: str | None = None
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.status == "done"

    @classmethod
    def from_entry(cls, stage: str, entry: dict, run: Path | None = None) -> StageResult:
        """A stage as RUN/manifest.json records it; outputs kept relative to the run folder come back
        under `run`."""
        outputs = {role: str(Path(run) / path) if run is not None else path
                   for role, path in (entry.get("outputs") or {}).items()}
        record = {k: v for k, v in entry.items() if k not in ("status", "stopped", "figures", "outputs")}
        return cls(stage, entry.get("status", "?"), dict(entry.get("figures") or {}), outputs,
                   entry.get("stopped") or None, record)

    def to_json(self) -> dict:
        """The result as `--json` prints it."""
        return {"stage": self.stage, "status": self.status, "stopped": self.stopped,
                "figures": self.figures, "outputs": self.outputs}

    def manifest_entry(self) -> dict:
        return {**self.record, "status": self.status, **({"stopped": self.stopped} if self.stopped else {}),
                "figures": self.figures, "outputs": self.outputs}

    def figures_text(self) -> str:
        return ", ".join(f"{k} {_figure(v)}" for k, v in self.figures.items())

    def lines(self) -> list[str]:
        """The result as every command prints it: the stage and its figures, then one line an output."""
        head = f"{self.stage}: {self.status}"
        if self.figures:
            head += "; " + self.figures_text()
        if self.stopped:
            head += f" (stopped early: {self.stopped})"
        return [head, *(f"  {role}: {path}" for role, path in self.outputs.items())]


def _figure(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "/".join(f"{k} {_figure(v)}" for k, v in value.items())
    return str(value)


def record_stage(run: Path, result: StageResult) -> dict:
    """Record a finished (or stopped) stage in RUN/manifest.json: the one place a stage is recorded,
    whether it ran by hand (`paav sft ...`) or inside `paav run`."""
    run = Path(run)
    entry = result.manifest_entry()
    entry["outputs"] = {role: _relative_to(run, path) for role, path in result.outputs.items()}
    return update_manifest(run, stages={result.stage: entry})


def mark_running(run: Path, stage: str) -> None:
    """Record a stage as running before its work starts, so that one redone (`paav run --from`) and
    killed part way does not still read "done" and get skipped by the next run."""
    record_stage(run, StageResult(stage, status="running"))


def _relative_to(run: Path, path: str) -> str:
    """An output inside the run folder is kept relative to it, so that a run folder moved, copied or
    read from another working folder still names its files; one outside is kept absolute."""
    full, root = Path(path).resolve(), run.resolve()
    return str(full.relative_to(root)) if full.is_relative_to(root) else str(full)


# ---------------------------------------------------------------------------------------------
# Locks


class FileLock:
    """An exclusive advisory lock (flock) on a small file, taken without waiting.

    The kernel drops it when the process ends however it ends, kill -9 included, so a lock file
    left behind never blocks a later run: only a live process holds the lock. Taken twice in one
    process (a pipeline stage inside `paav run`), it is shared and released with the last holder.
    """

    _held: ClassVar[dict[str, tuple[int, int]]] = {}  # resolved path -> (fd, holders in this process)

    def __init__(self, path: Path, busy: str):
        self.path = Path(path)
        self.busy = busy  # the sentence for a second writer; "{pid}" is replaced by the holder's pid
        self.fd: int | None = None

    def acquire(self) -> FileLock:
        key = str(self.path.resolve())
        if key in self._held:
            fd, holders = self._held[key]
            self._held[key] = (fd, holders + 1)
            self.fd = fd
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, default_file_mode())
        except OSError as e:
            raise UserError(
                f"cannot write to {self.path.parent} ({e.strerror}); choose a folder you can write to."
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _pid_in(os.pread(fd, 4096, 0))
            os.close(fd)
            raise UserError(self.busy.replace("{pid}", holder)) from None
        self._held[key] = (fd, 1)
        self.fd = fd
        return self

    def read(self) -> dict:
        """What the holder wrote into the lock file (its pid and any notes), or {} if unreadable."""
        assert self.fd is not None
        try:
            data = json.loads(os.pread(self.fd, 1 << 20, 0) or b"{}")
        except (ValueError, OSError):
            return {}
        return data if isinstance(data, dict) else {}

    def write(self, data: dict) -> None:
        assert self.fd is not None
        payload = json.dumps({**data, "pid": os.getpid()}, ensure_ascii=False).encode() + b"\n"
        try:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, payload, 0)
        except OSError as e:
            raise UserError(f"cannot write {self.path} ({e.strerror}); free some space or choose another folder.") from None

    def release(self) -> None:
        if self.fd is None:
            return
        key = str(self.path.resolve())
        fd, holders = self._held.get(key, (self.fd, 1))
        if holders > 1:
            self._held[key] = (fd, holders - 1)
        else:
            self._held.pop(key, None)
            os.close(fd)  # closing the last descriptor releases the flock
        self.fd = None

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _pid_in(data: bytes) -> str:
    try:
        pid = json.loads(data).get("pid")
    except (ValueError, AttributeError):
        pid = None
    return str(pid) if isinstance(pid, int) else "unknown"


@contextmanager
def locked_run_folder(run: Path):
    """Hold RUN/.paav.lock while a stage writes the folder: a second paav on it stops at once."""
    run = Path(run)
    lock = FileLock(
        run / ".paav.lock",
        f"another paav process (pid {{pid}}) is working in the run folder {run}; wait for it to finish, "
        "or use another --run folder.",
    )
    with lock:
        if lock.read().get("pid") != os.getpid():
            lock.write({})
        yield lock
