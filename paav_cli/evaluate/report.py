"""The report files: table.md (best per column in bold), table.csv, winrate.png and dims.png."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from paav_cli.runs import atomic_write_text

# A column: (key in the row, header, higher is better: True / False / None for no best).
Column = tuple[str, str, "bool | None"]


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _best(rows: list[dict], key: str, higher: bool | None) -> set[int]:
    values = [(i, r.get(key)) for i, r in enumerate(rows) if r.get(key) is not None]
    if higher is None or len(values) < 2:
        return set()
    target = (max if higher else min)(v for _, v in values)
    return {i for i, v in values if abs(v - target) < 1e-9}


def write_tables(folder: Path, rows: list[dict], columns: list[Column], notes: list[str]) -> None:
    headers = ["Method", "n", *[h for _, h, _ in columns]]
    best = {key: _best(rows, key, higher) for key, _, higher in columns}
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for i, row in enumerate(rows):
        cells = [f"`{row['method']}`", str(row["n"])]
        for key, _, _ in columns:
            text = _fmt(row.get(key))
            cells.append(f"**{text}**" if i in best[key] else text)
        lines.append("| " + " | ".join(cells) + " |")
    atomic_write_text(folder / "table.md", "\n".join(lines + [""] + notes) + "\n")

    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["method", "n", *[key for key, _, _ in columns]])
    for row in rows:
        writer.writerow([row["method"], row["n"], *["" if row.get(k) is None else row[k] for k, _, _ in columns]])
    atomic_write_text(folder / "table.csv", out.getvalue())


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    tmp.replace(path)


def plot_winrate(path: Path, outcomes: dict[str, tuple[int, int, int]]) -> None:
    """Stacked bars of win / draw / loss against `original`, by combined reward score."""
    plt = _pyplot()
    names = list(outcomes)
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.6 * max(1, len(names))))
    left = [0.0] * len(names)
    for k, (label, colour) in enumerate((("win", "#4c9a5b"), ("draw", "#b9b9b9"), ("loss", "#c8553d"))):
        shares = []
        for name in names:
            total = sum(outcomes[name]) or 1
            shares.append(100 * outcomes[name][k] / total)
        ax.barh(range(len(names)), shares, left=left, color=colour, label=label)
        for y, (x0, share) in enumerate(zip(left, shares)):
            if share >= 6:
                ax.text(x0 + share / 2, y, f"{share:.0f}%", ha="center", va="center", fontsize=8)
        left = [a + b for a, b in zip(left, shares)]
    ax.set_yticks(range(len(names)), [_short(n) for n in names])
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of prompts (vs. original, by combined reward score)")
    ax.set_title("Win / draw / loss vs. original, judged by the reward models, not people\n"
                 "(paper Fig. 3 used people)", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.invert_yaxis()
    _save(fig, path)
    plt.close(fig)


def plot_similarity(path: Path, similarities: dict[str, list[float]]) -> None:
    """Text-only mode: the distribution of intent similarity per method (box plot)."""
    plt = _pyplot()
    names = list(similarities)
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.6 * max(1, len(names))))
    ax.boxplot([similarities[n] for n in names], orientation="horizontal")
    ax.set_yticks(range(1, len(names) + 1), [_short(n) for n in names])
    ax.set_xlabel("cosine similarity of original and rewrite (all-MiniLM-L6-v2)")
    ax.set_title("Intent preservation per prompt (text only: no videos, no reward models)", fontsize=10)
    ax.invert_yaxis()
    _save(fig, path)
    plt.close(fig)


def plot_bars(path: Path, rows: list[dict], columns: list[Column], title: str) -> None:
    """One small panel per column (their scales differ), one bar per method."""
    plt = _pyplot()
    shown = [c for c in columns if any(r.get(c[0]) is not None for r in rows)]
    ncols = min(4, max(1, len(shown)))
    nrows = (len(shown) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.8 * nrows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    names = [r["method"] for r in rows]
    for ax, (key, header, _) in zip(axes.flat, shown):
        values = [r.get(key) or 0.0 for r in rows]
        bars = ax.bar(range(len(rows)), values, color=[colours[i % len(colours)] for i in range(len(rows))])
        ax.bar_label(bars, fmt="%.3g", fontsize=7)
        ax.set_title(header, fontsize=9)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([_short(n) for n in names], rotation=30, ha="right", fontsize=7)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _short(name: str) -> str:
    name = Path(name).name if "/" in name else name
    return name if len(name) <= 18 else name[:17] + "…"
