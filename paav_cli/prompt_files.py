"""Prompt files in and out: .txt (one prompt a line), .jsonl (a `prompt` field), .csv (a `prompt` column).

Inputs are read and checked whole before any work starts, so a bad line stops a batch before it
costs anything. Outputs are append-only and flushed record by record; `done_keys` reads an
existing output back so that a rerun skips what is there and never writes a record twice.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from paav_cli.errors import UserError
from paav_cli.runs import truncate_partial_line

FORMATS = (".txt", ".jsonl", ".csv")


@dataclass
class PromptRecord:
    id: int | str
    prompt: str
    extra: dict = field(default_factory=dict)  # the input's other fields, carried to the output


def _format_of(path: str, role: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise UserError(
            f"cannot {role} {path}: its extension {suffix or '(none)'} is not one of "
            f"{', '.join(FORMATS)}; rename it or pick another file."
        )
    return suffix


def _read_text(path: str) -> str:
    if path == "-":
        data = sys.stdin.buffer.read()
        where = "standard input"
    else:
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            raise UserError(f"input file {path} does not exist; check the path.") from None
        except IsADirectoryError:
            raise UserError(f"input {path} is a folder; give a .txt, .jsonl or .csv file.") from None
        except OSError as e:
            raise UserError(f"cannot read input file {path} ({e.strerror}); check its permissions.") from None
        where = path
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(
            f"{where} is not UTF-8 text (bad byte at offset {e.start}); re-save it as UTF-8."
        ) from None


def read_prompts(path: str, *, on_error: str = "stop", warn: Callable[[str], None] = print) -> list[PromptRecord]:
    """Every prompt of a file (or `-` for stdin) with a stable id: the input's own `id` field if it
    has one, else the line (txt, jsonl) or row (csv) number."""
    text = _read_text(path)
    if path == "-":
        first = next((ln for ln in text.splitlines() if ln.strip()), "")
        kind = ".jsonl" if first.lstrip().startswith("{") else ".txt"
    else:
        kind = _format_of(path, "read")
    reader = {".txt": _read_txt, ".jsonl": _read_jsonl, ".csv": _read_csv}[kind]
    name = "standard input" if path == "-" else path
    records: list[PromptRecord] = []
    for record_or_error in reader(text, name):
        if isinstance(record_or_error, str):
            if on_error == "stop":
                raise UserError(f"{record_or_error}; fix it, or pass --on-error skip to leave it out.")
            warn(f"skipped: {record_or_error}")
            continue
        records.append(record_or_error)
    if not records:
        raise UserError(f"{name} contains no prompts; add one prompt per line.")
    seen: set = set()
    for r in records:
        if r.id in seen:
            raise UserError(f"{name} uses the id {r.id!r} twice; ids must be unique so a batch can resume.")
        seen.add(r.id)
    return records


def _read_txt(text: str, name: str):
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield PromptRecord(id=number, prompt=line.strip())


def _read_jsonl(text: str, name: str):
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            yield f"{name} line {number} is not valid JSON"
            continue
        if not isinstance(data, dict):
            yield f"{name} line {number} is not a JSON object"
            continue
        prompt = data.pop("prompt", None)
        if not isinstance(prompt, str) or not prompt.strip():
            yield f"{name} line {number} has no non-empty \"prompt\" field"
            continue
        rid = data.pop("id", number)
        yield PromptRecord(id=rid if isinstance(rid, (int, str)) else str(rid), prompt=prompt.strip(), extra=data)


def _read_csv(text: str, name: str):
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "prompt" not in reader.fieldnames:
        columns = ", ".join(reader.fieldnames or []) or "none"
        raise UserError(f"{name} has no \"prompt\" column (its columns: {columns}); add a header row with one.")
    for number, row in enumerate(reader, start=1):
        prompt = (row.pop("prompt") or "").strip()
        if not prompt:
            yield f"{name} row {number} has an empty prompt"
            continue
        rid = row.pop("id", None) or number
        yield PromptRecord(id=rid, prompt=prompt, extra={k: v for k, v in row.items() if k is not None})


# ---------------------------------------------------------------------------------------------
# Output


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
                self._csv.writeheader()
                self._file.flush()

    def add(self, index: int, record: dict) -> None:
        self._waiting[index] = record
        while self._next in self._waiting:
            self._write(self._waiting.pop(self._next))
            self._next += 1

    def _write(self, record: dict) -> None:
        assert self._file is not None
        if self.kind == ".csv":
            self._csv.writerow({k: _csv_cell(v) for k, v in record.items()})
        elif self.kind == ".jsonl":
            self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:  # .txt and plain stdout: the enhanced prompt alone, one per line
            self._file.write(record["enhanced"].replace("\n", " ") + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None and self._file is not sys.stdout:
            self._file.close()
        self._file = None


def _csv_cell(value):
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else value


def existing_output(path: str) -> list[dict] | int:
    """What an output file already holds: its records (jsonl, csv) or its line count (txt)."""
    p = Path(path)
    kind = _format_of(path, "write")
    if p.is_dir():
        raise UserError(f"the output {path} is a folder; choose another output file.")
    if not p.exists():
        return 0 if kind == ".txt" else []
    truncate_partial_line(p)
    text = p.read_text(encoding="utf-8", errors="replace")
    if kind == ".txt":
        return sum(1 for _ in text.splitlines())
    if kind == ".csv":
        return list(csv.DictReader(io.StringIO(text)))
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise UserError(
                    f"output {path} line {number} is not valid JSON; fix or delete that line to resume."
                ) from None
    return records
