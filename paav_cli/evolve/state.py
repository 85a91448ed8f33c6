"""The evolution's state, kept only in its run folder's append-only journals.

`candidates.jsonl` has one line per prompt the engine decided to try (the originals, then each
mutator answer's prompts, and an `empty` marker saying how many are missing and why when an answer
held fewer than asked for); `journal.jsonl` has one line per candidate once rendered and scored. Reading both back gives the whole state, so a killed
run resumes exactly where it stopped: nothing proposed is asked for again, nothing scored is
journaled twice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from paav_cli.runs import Journal, read_journal


@dataclass(frozen=True)
class Candidate:
    id: str  # "<source id>:<iteration>:<k>"
    source: str  # source prompt id
    iteration: int  # 0 is the original prompt
    prompt: str
    parents: tuple[str, ...] = ()


@dataclass
class Scored:
    candidate: Candidate
    scores: dict[str, float]
    combined: float
    render_key: str

    def record(self) -> dict:
        c = self.candidate
        return {
            "id": c.id, "source": c.source, "iteration": c.iteration, "parents": list(c.parents),
            "prompt": c.prompt, "scores": self.scores, "combined": self.combined, "render_key": self.render_key,
        }


@dataclass
class EvolveState:
    folder: Path
    candidates: dict[str, Candidate] = field(default_factory=dict)
    scored: dict[str, Scored] = field(default_factory=dict)
    asked: set[tuple[str, int]] = field(default_factory=set)  # (source, iteration) the mutator answered

    @property
    def candidates_path(self) -> Path:
        return self.folder / "candidates.jsonl"

    @property
    def journal_path(self) -> Path:
        return self.folder / "journal.jsonl"

    @classmethod
    def load(cls, folder: Path) -> EvolveState:
        state = cls(Path(folder))
        for rec in read_journal(state.candidates_path):
            state.asked.add((rec["source"], rec["iteration"]))
            if not rec.get("empty"):
                c = Candidate(rec["id"], rec["source"], rec["iteration"], rec["prompt"], tuple(rec["parents"]))
                state.candidates[c.id] = c
        for rec in read_journal(state.journal_path):
            c = state.candidates.get(rec["id"]) or Candidate(
                rec["id"], rec["source"], rec["iteration"], rec["prompt"], tuple(rec["parents"])
            )
            state.scored[c.id] = Scored(c, rec["scores"], rec["combined"], rec["render_key"])
        return state

    def propose(self, journal: Journal, candidates: list[Candidate], source: str, iteration: int, *,
                wanted: int | None = None, reason: str | None = None) -> None:
        """Record what one mutator answer (or the originals) gave: its candidates, then an `empty` marker
        (a line that is no candidate) when it gave none or fewer than `wanted`, with how many are
        missing and why."""
        for c in candidates:
            journal.append({**asdict(c), "parents": list(c.parents)})
            self.candidates[c.id] = c
        short = wanted is not None and len(candidates) < wanted
        if not candidates or short:
            marker: dict = {"source": source, "iteration": iteration, "empty": True}
            if short:
                marker["missing"] = wanted - len(candidates)
            if reason:
                marker["reason"] = reason
            journal.append(marker)
        self.asked.add((source, iteration))

    def pending(self, iteration: int, sources: set[str]) -> list[Candidate]:
        return [
            c for c in self.candidates.values()
            if c.iteration == iteration and c.source in sources and c.id not in self.scored
        ]

    def pool(self, source: str) -> list[Scored]:
        return [s for s in self.scored.values() if s.candidate.source == source]
