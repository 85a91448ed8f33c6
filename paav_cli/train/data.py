"""Training data files: SFT pairs and DPO triples, checked line by line before any model loads."""

from __future__ import annotations

from pathlib import Path

from paav_cli.errors import UserError
from paav_cli.runs import iter_jsonl

PAIR_FIELDS = ("source", "target")
TRIPLE_FIELDS = ("prompt", "chosen", "rejected")


def _read_records(path: Path, fields: tuple[str, ...], kind: str) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{kind} file {path} does not exist; check the path.")
    records = []
    for number, record in iter_jsonl(path):
        if not isinstance(record, dict):
            raise UserError(f"{path} line {number} is not a JSON object; each line needs {', '.join(fields)}.")
        missing = [k for k in fields if not isinstance(record.get(k), str) or not record[k].strip()]
        if missing:
            raise UserError(
                f"{path} line {number} has no text in {', '.join(repr(m) for m in missing)}; "
                f"each line needs {', '.join(fields)}."
            )
        records.append(record)
    if not records:
        raise UserError(f"{path} has no {kind}; give a file with one JSON object per line.")
    return records


def read_pairs(path: Path) -> list[dict]:
    """`{"source", "target"}` per line (evolve's pairs.jsonl, or any such file)."""
    return _read_records(path, PAIR_FIELDS, "pairs")


def read_triples(path: Path) -> list[dict]:
    """`{"prompt", "chosen", "rejected"}` per line (rank's triples.jsonl)."""
    return _read_records(path, TRIPLE_FIELDS, "triples")


def split_held_out(records: list, fraction: float, seed: int) -> tuple[list, list]:
    """A deterministic held-out split; at least one record is held out whenever fraction > 0 and n > 1."""
    import random

    if fraction <= 0 or len(records) < 2:
        return list(records), []
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(records) * fraction))
    held = set(order[:n_eval])
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]
