"""A rich progress bar on stderr for long batches: count, rate and time left."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from paav_cli.prompt_files import plain_line


def _average_rate(task) -> float | None:
    # Batched prompts finish in bursts, which fools rich's windowed speed estimate (a burst of 32
    # within a second reads as 32 prompts/s); the average since the start is the honest rate.
    elapsed = task.elapsed
    return task.completed / elapsed if elapsed and task.completed else None


class RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        rate = _average_rate(task)
        return Text(f"{rate:.2f} prompts/s" if rate else "-- prompts/s", style="progress.data.speed")


class EtaColumn(ProgressColumn):
    def render(self, task) -> Text:
        if task.finished:
            return Text("eta 0:00:00", style="progress.remaining")
        rate = _average_rate(task)
        if not rate:
            return Text("eta -:--:--", style="progress.remaining")
        left = int((task.total - task.completed) / rate)
        return Text(f"eta {left // 3600}:{left % 3600 // 60:02d}:{left % 60:02d}", style="progress.remaining")


def stderr_is_terminal() -> bool:
    return Console(stderr=True).is_terminal


class BatchProgress:
    def __init__(self, total: int, description: str = "enhancing", console: Console | None = None):
        self.console = console or Console(stderr=True)
        self._progress = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            RateColumn(),
            TimeElapsedColumn(),
            EtaColumn(),
            console=self.console,
            transient=False,
        )
        self._task = self._progress.add_task(description, total=total)
        self._progress.start()

    def advance(self, n: int = 1) -> None:
        self._progress.advance(self._task, n)

    def close(self) -> None:
        self._progress.stop()


class TwoLevelProgress:
    """An outer bar over items (videos, or videos per reward model) and an inner bar over steps."""

    def __init__(self, total: int, description: str, unit: str = "videos", console: Console | None = None):
        self.console = console or Console(stderr=True)
        self._progress = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self._outer = self._progress.add_task(description, total=total)
        self._inner = None
        self._progress.start()

    # -- render hooks (video/render.py RenderProgressHook)

    def start_video(self, label: str, steps: int) -> None:
        # The label is a prompt from an input file: its escape sequences must not reach the
        # terminal, nor its brackets be read as rich markup.
        label = plain_line(label)
        short = escape(label if len(label) <= 40 else label[:39] + "…")
        if self._inner is None:
            self._inner = self._progress.add_task(f"  {short}", total=steps)
        else:
            self._progress.reset(self._inner, total=steps, description=f"  {short}")

    def step(self) -> None:
        if self._inner is not None:
            self._progress.advance(self._inner)

    def video_done(self) -> None:
        self._progress.advance(self._outer)

    # -- score hooks (rewards/scoring.py ScoreProgressHook)

    def start_model(self, name: str, total: int) -> None:
        self._progress.reset(self._outer, total=total, description=f"scoring with {name}")

    def advance(self, n: int) -> None:
        self._progress.advance(self._outer, n)

    def close(self) -> None:
        self._progress.stop()


class LiveStatus:
    """A one-line live view of a long stage (evolve): named fields, redrawn as they change."""

    LABELS = {
        "iteration": "iteration", "phase": "", "candidates": "candidates", "rendered": "videos rendered",
        "cached": "cached", "llm_calls": "LLM calls", "best_gain": "best gain",
    }

    def __init__(self, total_iterations: int, console: Console | None = None):
        from rich.live import Live

        self.fields: dict = {}
        self.total = total_iterations
        self._live = Live(Text(""), console=console or Console(stderr=True), refresh_per_second=4, transient=False)
        self._live.start()

    def update(self, **fields) -> None:
        self.fields.update(fields)
        parts = []
        for key, label in self.LABELS.items():
            if key not in self.fields or self.fields[key] is None:
                continue
            value = self.fields[key]
            if key == "iteration":
                parts.append(f"iteration {value}/{self.total}")
            elif key == "best_gain":
                parts.append(f"best gain {value:+.3f}")
            else:
                parts.append(f"{label} {value}".strip())
        self._live.update(Text(" · ".join(parts), style="progress.description"))

    def close(self) -> None:
        self._live.stop()
