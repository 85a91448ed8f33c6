"""`paav score` output: a rich table or JSON records, and which prompt each video is scored against."""

from __future__ import annotations

import json
from pathlib import Path

from paav_cli.errors import UserError
from paav_cli.video.cache import RenderCache


def prompts_for(videos: list[str], given: list[str]) -> list[str]:
    """One prompt for all videos, one per video, or (for paav's own renders) the prompt rendered."""
    if len(given) == 1:
        return given * len(videos)
    if given and len(given) != len(videos):
        raise UserError(f"{len(videos)} videos but {len(given)} --prompt values; give one for all or one per video.")
    if given:
        return list(given)
    cache = RenderCache()
    found = []
    for video in videos:
        sidecar = cache.sidecar(Path(video).stem) if Path(video).is_file() else None
        if sidecar is None:
            raise UserError(f"no prompt for {video}; pass --prompt \"the original prompt\".")
        found.append(sidecar["settings"]["prompt"])
    return found


def records_as_json(records: list[dict]) -> None:
    for r in records:
        print(json.dumps(r, ensure_ascii=False))


def print_table(records: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    dims = list(dict.fromkeys(d for r in records for d in r["scores"]))
    table = Table(title=f"scores (combined: {records[0]['preset']} preset)" if records else "scores")
    table.add_column("video", overflow="fold")
    for d in dims:
        table.add_column(d, justify="right")
    table.add_column("combined", justify="right", style="bold")
    for r in records:
        cells = [f"{r['scores'][d]:.3f}" if d in r["scores"] else "-" for d in dims]
        table.add_row(Path(r["video"]).name, *cells, f"{r['combined']:.3f}")
    Console().print(table)
