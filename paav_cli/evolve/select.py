"""Choosing: which candidates the mutator sees, which one becomes a source's target, which sources a shard owns."""

from __future__ import annotations

import hashlib

from paav_cli.errors import UserError
from paav_cli.evolve.state import Scored


def top_candidates(pool: list[Scored], keep: int) -> list[Scored]:
    """The best `keep` rewrites by combined score (the original is shown separately, as index 0)."""
    rewrites = [s for s in pool if s.candidate.iteration > 0]
    return sorted(rewrites, key=lambda s: (-s.combined, s.candidate.id))[:keep]


def passes(scores: dict[str, float], thresholds: dict[str, float]) -> bool:
    return all(scores.get(dim, float("-inf")) > bound for dim, bound in thresholds.items())


def choose_target(pool: list[Scored], thresholds: dict[str, float], min_gain: float) -> tuple[Scored, Scored] | None:
    """(original, target): the highest-scoring rewrite that passes every threshold and beats the
    original by more than `min_gain`; None when no rewrite does."""
    original = next((s for s in pool if s.candidate.iteration == 0), None)
    if original is None:
        return None
    eligible = [
        s for s in pool
        if s.candidate.iteration > 0 and passes(s.scores, thresholds) and s.combined - original.combined > min_gain
    ]
    if not eligible:
        return None
    return original, max(eligible, key=lambda s: (s.combined, s.candidate.id))


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """`"2/4"` -> (2, 4): the second of four disjoint parts (counting from 1)."""
    if not text:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UserError(f"--shard {text!r} is not of the form i/n, e.g. 1/4.") from None
    if not 1 <= i <= n:
        raise UserError(f"--shard {text}: i must be between 1 and n.")
    return i, n


def in_shard(source_id: str, shard: tuple[int, int] | None) -> bool:
    """Deterministic on the source id alone, so every machine splits a file the same way."""
    if shard is None:
        return True
    i, n = shard
    digest = int(hashlib.sha256(str(source_id).encode("utf-8")).hexdigest(), 16)
    return digest % n == i - 1


def digit_count(text: str) -> int:
    return sum(ch.isdigit() for ch in text)
