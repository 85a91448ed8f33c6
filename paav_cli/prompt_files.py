"""Prompt files in and out: .txt (one prompt a line), .jsonl (a `prompt` field), .csv (a `prompt` column).

Inputs are read and checked whole before any work starts, so a bad line stops a batch before it
costs anything; `PromptSource` then reads the file again as the batch goes, so that memory does
not grow with its length. Outputs are append-only and flushed record by record;
`existing_records` reads an output back, one record at a time, so that a rerun skips what is
there and never writes a record twice.

Lines end at "\\n" only (a "\\r" before it is dropped): `str.splitlines` also splits at U+2028,
U+0085 and lone "\\r", which JSON strings and CSV fields may hold, so a file read back that way is
not the file that was written.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TextIO

from paav_cli.errors import UserError
from paav_cli.runs import FileLock, truncate_partial_line

FORMATS = (".txt", ".jsonl", ".csv")


@dataclass
class PromptRecord:
    id: str
    prompt: str
    extra: dict = field(default_factory=dict)  # the input's other fields, carried to the output

    def __post_init__(self):
        # One spelling per id: 1 and "1" name the same prompt everywhere (duplicate checks, resume,
        # evolve's source keys), so integers are kept as their decimal string.
        if isinstance(self.id, int) and not isinstance(self.id, bool):
            self.id = str(self.id)


def normalise_id(value) -> str | None:
    """An input's id as a string, or None when it is not a string or an integer."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return None
    return str(value)


# ---------------------------------------------------------------------------------------------
# Text safety


_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI: colours, cursor moves, screen clears
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC: window titles, hyperlinks, clipboard writes
    r"|\x1b[PX^_][^\x1b]*(?:\x1b\\)?"  # DCS, SOS, PM, APC strings
    r"|\x1b[@-Z\\-_]?"  # any other escape
)
_LINE_BREAKS = re.compile(r"\r\n|[\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
_CONTROLS = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")


def plain_line(text: str) -> str:
    """`text` made safe to print on a terminal or write as one line of a .txt file.

    Prompts come from files paav did not write; escape sequences in them could recolour, retitle
    or clear the user's terminal, or write its clipboard. They are removed, line breaks of every
    kind become spaces, and other control characters are dropped (tabs stay).
    """
    text = _ESCAPES.sub("", text)
    text = _LINE_BREAKS.sub(" ", text)
    return _CONTROLS.sub("", text)


def show(value) -> str:
    """A value from an input file quoted for a message: control characters escaped, never raw."""
    return json.dumps(value, ensure_ascii=False)[:200].translate(_C1_ESCAPES)


# json.dumps escapes C0 controls but leaves DEL, the C1 controls (U+009B is CSI on some terminals)
# and U+2028/U+2029 (line breaks to many readers) raw; escaping them changes no JSON value.
_C1_ESCAPES = {c: f"\\u{c:04x}" for c in [*range(0x7F, 0xA0), 0x2028, 0x2029]}


def json_line(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False).translate(_C1_ESCAPES) + "\n"


# ---------------------------------------------------------------------------------------------
# Input


def _format_of(path: str, role: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise UserError(
            f"cannot {role} {path}: its extension {suffix or '(none)'} is not one of "
            f"{', '.join(FORMATS)}; rename it or pick another file."
        )
    return suffix


def _open_input(path: str) -> BinaryIO:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise UserError(f"input file {path} does not exist; check the path.") from None
    except IsADirectoryError:
        raise UserError(f"input {path} is a folder; give a .txt, .jsonl or .csv file.") from None
    except OSError as e:
        raise UserError(f"cannot read input file {path} ({e.strerror}); check its permissions.") from None


def _lines(stream: BinaryIO, where: str, keep_ends: bool = False) -> Iterator[tuple[int, str]]:
    """(line number, text) for every line, split at "\\n" only and decoded as UTF-8 one line at a time;
    without `keep_ends`, the line's "\\n" or "\\r\\n" is cut off."""
    offset = 0
    for number, raw in enumerate(stream, start=1):
        start = 3 if number == 1 and raw.startswith(b"\xef\xbb\xbf") else 0  # a UTF-8 BOM
        try:
            text = raw[start:].decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(
                f"{where} is not UTF-8 text (bad byte at offset {offset + start + e.start}); re-save it as UTF-8."
            ) from None
        offset += len(raw)
        if keep_ends:
            yield number, text
            continue
        text = text.removesuffix("\n")
        text = text.removesuffix("\r")
        yield number, text


class PromptSource:
    """The prompts of a file (or `-` for stdin), checked whole once, then read again on each iteration.

    Every prompt gets a stable id: the input's own `id` field if it has one, else the line (txt,
    jsonl) or row (csv) number. The check pass keeps only what later needs: the number of prompts,
    the other fields' names, and the ids seen (to refuse duplicates). Standard input cannot be read
    twice, so its bytes are kept.
    """

    def __init__(self, path: str, *, on_error: str = "stop", warn: Callable[[str], None] = print):
        self.path = path
        self.name = "standard input" if path == "-" else path
        self._stdin: bytes | None = None
        if path == "-":
            self._stdin = sys.stdin.buffer.read()
            first = next((ln for _, ln in _lines(io.BytesIO(self._stdin), self.name) if ln.strip()), "")
            self.kind = ".jsonl" if first.lstrip().startswith("{") else ".txt"
        else:
            self.kind = _format_of(path, "read")
        self._stamp = self._file_stamp()
        self.count = 0
        self.extra_keys: list[str] = []
        seen: dict[str, int] = {}
        for number, record_or_error in self._read():
            if isinstance(record_or_error, str):
                if on_error == "stop":
                    raise UserError(f"{record_or_error}; fix it, or pass --on-error skip to leave it out.")
                warn(f"skipped: {record_or_error}")
                continue
            record = record_or_error
            if record.id in seen:
                unit = "row" if self.kind == ".csv" else "line"
                raise UserError(
                    f"{self.name} uses the id {show(record.id)} twice ({unit}s {seen[record.id]} and {number}); "
                    "ids must be unique so a batch can resume."
                )
            seen[record.id] = number
            self.extra_keys += [k for k in record.extra if k not in self.extra_keys]
            self.count += 1
        if not self.count:
            raise UserError(f"{self.name} contains no prompts; add one prompt per line.")

    def _file_stamp(self):
        if self._stdin is not None:
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None  # _open_input says what is wrong
        return (st.st_size, st.st_mtime_ns, st.st_ino)

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[PromptRecord]:
        if self._file_stamp() != self._stamp:
            raise UserError(f"{self.name} changed while paav was reading it; run the command again.")
        for _, record_or_error in self._read():
            if not isinstance(record_or_error, str):  # bad lines were reported by the check pass
                yield record_or_error

    def _read(self) -> Iterator[tuple[int, PromptRecord | str]]:
        reader = {".txt": _read_txt, ".jsonl": _read_jsonl, ".csv": _read_csv}[self.kind]
        with io.BytesIO(self._stdin) if self._stdin is not None else _open_input(self.path) as stream:
            yield from reader(_lines(stream, self.name, keep_ends=self.kind == ".csv"), self.name)


def read_prompts(path: str, *, on_error: str = "stop", warn: Callable[[str], None] = print) -> list[PromptRecord]:
    """Every prompt of a file (or `-` for stdin), checked; see `PromptSource`."""
    return list(PromptSource(path, on_error=on_error, warn=warn))


def _read_txt(lines, name: str):
    for number, line in lines:
        if line.strip():
            yield number, PromptRecord(id=number, prompt=line.strip())


def _read_jsonl(lines, name: str):
    for number, line in lines:
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            yield number, f"{name} line {number} is not valid JSON"
            continue
        if not isinstance(data, dict):
            yield number, f"{name} line {number} is not a JSON object"
            continue
        prompt = data.pop("prompt", None)
        if not isinstance(prompt, str) or not prompt.strip():
            yield number, f"{name} line {number} has no non-empty \"prompt\" field"
            continue
        rid = normalise_id(data.pop("id", number))
        if rid is None:
            yield number, f"{name} line {number} has an \"id\" that is neither a string nor an integer"
            continue
        yield number, PromptRecord(id=rid, prompt=prompt.strip(), extra=data)


def _read_csv(lines, name: str):
    # Lines keep their ends: the csv module joins a quoted field's lines back as they were.
    reader = csv.DictReader(text for _, text in lines)
    try:
        fieldnames = reader.fieldnames
        if not fieldnames or "prompt" not in fieldnames:
            columns = ", ".join(show(c) for c in fieldnames or []) or "none"
            raise UserError(f"{name} has no \"prompt\" column (its columns: {columns}); add a header row with one.")
        for number, row in enumerate(reader, start=1):
            prompt = (row.pop("prompt") or "").strip()
            if not prompt:
                yield number, f"{name} row {number} has an empty prompt"
                continue
            rid = row.pop("id", None) or number
            yield number, PromptRecord(id=rid, prompt=prompt, extra={k: v for k, v in row.items() if k is not None})
    except csv.Error as e:
        raise UserError(f"{name} is not valid CSV near line {reader.line_num} ({e}); fix that line.") from None


# ---------------------------------------------------------------------------------------------
# Output


def prepare_output(path: str) -> None:
    """Check an output path before anything is locked or loaded, and create its folder."""
    _format_of(path, "write")
    p = Path(path)
    if p.is_dir():
        raise UserError(f"the output {path} is a folder; choose another output file.")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot write {path} ({e.strerror}); choose another output file.") from None


def output_lock(path: str) -> FileLock:
    """The lock a writer of output `path` holds (a hidden file beside it, which also keeps the
    settings the output was made with)."""
    p = Path(path)
    return FileLock(
        p.with_name(f".{p.name}.paav"),
        f"another paav process (pid {{pid}}) is writing {path}; wait for it to finish, or choose another -o.",
    )


class RecordWriter:
    """Writes enhanced records to a file in the format its extension names, or to stdout.

    Records are written in job order: a record that finishes early waits for the ones before it
    (only txt and csv need this, but one rule for all keeps outputs predictable).
    """

    def __init__(self, path: str | None, *, as_json: bool, columns: list[str]):
        self.path = path
        self.kind = _format_of(path, "write") if path else (".jsonl" if as_json else ".stdout")
        self.columns = columns
        self._file: TextIO | None = None
        self._csv: csv.DictWriter | None = None
        self._waiting: dict[int, dict] = {}
        self._next = 0
        self._failed = False

    def open(self, start: int) -> None:
        """Start appending after `start` jobs already done."""
        self._next = start
        if self.path is None:
            self._file = sys.stdout
            return
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            truncate_partial_line(Path(self.path))
            is_new = not Path(self.path).exists() or Path(self.path).stat().st_size == 0
            self._file = open(self.path, "a", encoding="utf-8", newline="")
        except OSError as e:
            raise UserError(f"cannot write {self.path} ({e.strerror}); choose another output file.") from None
        if self.kind == ".csv":
            self._csv = csv.DictWriter(self._file, fieldnames=self.columns, extrasaction="ignore")
            if is_new:
                self._guarded(self._csv.writeheader)

    def add(self, index: int, record: dict) -> None:
        self._waiting[index] = record
        while self._next in self._waiting:
            self._write(self._waiting.pop(self._next))
            self._next += 1

    def _write(self, record: dict) -> None:
        assert self._file is not None
        if self.kind == ".csv":
            self._guarded(self._csv.writerow, {k: _csv_cell(v) for k, v in record.items()})
        elif self.kind == ".jsonl":
            self._guarded(self._file.write, json_line(record))
        else:  # .txt and plain stdout: the enhanced prompt alone, one per line
            self._guarded(self._file.write, plain_line(record["enhanced"]) + "\n")

    def _guarded(self, write, *args) -> None:
        """Write and flush; a full disk or a closed device is one sentence, not a traceback."""
        try:
            write(*args)
            self._file.flush()
        except OSError as e:
            self._failed = True
            where = self.path or "standard output"
            if self._file is sys.stdout:
                _discard_stdout()
            # What was flushed before stays; a rerun trims the cut last line and goes on from there.
            raise UserError(f"cannot write {where} ({e.strerror}); free some space or write elsewhere, "
                            "then run the same command again.") from None

    def close(self) -> None:
        if self._file is not None and self._file is not sys.stdout:
            try:
                self._file.close()
            except OSError as e:
                if not self._failed:  # already reported
                    self._file = None
                    raise UserError(f"cannot write {self.path} ({e.strerror}); free some space or write "
                                    "elsewhere, then run the same command again.") from None
        self._file = None


def _discard_stdout() -> None:
    """Point stdout at /dev/null: what it still buffers would fail again at exit, with a traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _csv_cell(value):
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else value


def existing_records(path: str) -> Iterator[dict | None]:
    """What an output file already holds, one record at a time, after trimming a cut last line:
    its records (jsonl, csv), or None per line (txt, which keeps no fields)."""
    p = Path(path)
    kind = _format_of(path, "write")
    if p.is_dir():
        raise UserError(f"the output {path} is a folder; choose another output file.")
    if not p.exists():
        return
    truncate_partial_line(p)
    if kind == ".csv":
        # newline="": a "\r" inside a quoted field is part of the prompt, not a line end.
        with open(p, encoding="utf-8", errors="replace", newline="") as f:
            yield from csv.DictReader(f)
        return
    with open(p, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if kind == ".txt":
                yield None
                continue
            line = raw.decode("utf-8", errors="replace")
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                raise UserError(
                    f"output {path} line {number} is not valid JSON; fix or delete that line to resume."
                ) from None
