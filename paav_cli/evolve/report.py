"""`evolve/curves.png`: the mean of each reward dimension per iteration (the paper's Figure 5)."""

from __future__ import annotations

from pathlib import Path

from paav_cli.evolve.state import Scored


def per_iteration_means(scored: list[Scored]) -> dict[str, list[tuple[int, float]]]:
    by_iter: dict[int, list[Scored]] = {}
    for s in scored:
        by_iter.setdefault(s.candidate.iteration, []).append(s)
    dims = list(dict.fromkeys(d for s in scored for d in s.scores))
    curves: dict[str, list[tuple[int, float]]] = {d: [] for d in [*dims, "combined"]}
    for it in sorted(by_iter):
        group = by_iter[it]
        for d in dims:
            values = [s.scores[d] for s in group if d in s.scores]
            if values:
                curves[d].append((it, sum(values) / len(values)))
        curves["combined"].append((it, sum(s.combined for s in group) / len(group)))
    return curves


def draw_curves(scored: list[Scored], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from paav_cli.runs import default_file_mode

    curves = per_iteration_means(scored)
    n = len(curves)
    cols = min(4, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, (name, points) in zip(axes.flat, curves.items()):
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o")
        ax.set_title(name)
        ax.set_xlabel("iteration")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(title or "mean score per iteration")
    fig.tight_layout()
    tmp = Path(path).with_name(f".{Path(path).name}.partial.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.chmod(default_file_mode())
    tmp.replace(path)
