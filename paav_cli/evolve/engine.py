"""Reward-guided prompt evolution, phase-batched over every source prompt.

Each iteration: render every pending candidate of every source with the generator loaded once,
free it; score them all with each reward model loaded once; journal them; then ask the mutator for
the next candidates of every source (concurrently for API mutators). Model loads per iteration =
number of models, never prompts x models. All state is in the run folder (state.py), and renders
and scores are content-addressed, so an interrupted run resumes with nothing redone.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from paav_cli.errors import UserError
from paav_cli.evolve.phases import BudgetReached, PhaseStats, render_phase, score_phase
from paav_cli.evolve.select import choose_target, digit_count, in_shard, top_candidates
from paav_cli.evolve.state import Candidate, EvolveState, Scored
from paav_cli.prompt_files import PromptRecord
from paav_cli.recipe import Recipe
from paav_cli.runs import Journal, atomic_write_text
from paav_cli.text.evolution import mutation_messages, normalise, parse_prompts, unusable

# Calls one source's mutation may take: a second when the first answer holds no usable prompt.
CALLS_PER_SOURCE = 2


@dataclass
class EvolveOptions:
    max_videos: int | None = None  # new renders this run may make (cache hits are free)
    max_llm_calls: int | None = None
    shard: tuple[int, int] | None = None
    concurrency: int | None = None  # overrides the recipe
    # Overrides the recipe's [render] memory without changing the recipe a run folder records: the
    # same run resumes on a GPU with offload and on a CPU without.
    memory: str | None = None

    def __post_init__(self):
        # A source's mutation is paid for whole (see _within_call_budget), so a budget of one call
        # would stop before every mutation, on every rerun: refused before any work starts.
        if self.max_llm_calls is not None and 0 < self.max_llm_calls < CALLS_PER_SOURCE:
            raise UserError(
                f"--max-llm-calls {self.max_llm_calls} cannot pay for one mutation, which may take "
                f"{CALLS_PER_SOURCE} calls (one more when an answer holds no prompt); give at least "
                f"{CALLS_PER_SOURCE}, or 0 to render and score only the original prompts."
            )


@dataclass
class EvolveStats:
    rendered: int = 0
    render_cached: int = 0
    scored: int = 0
    score_cached: int = 0
    llm_calls: int = 0
    loads: dict[int, int] = field(default_factory=dict)  # iteration -> model loads (generator + rewards)
    stopped: str = ""  # why the run stopped early, if it did

    def record(self) -> dict:
        return {k: v for k, v in vars(self).items()}

    def add(self, phase: PhaseStats, iteration: int) -> None:
        self.rendered += phase.rendered
        self.render_cached += phase.render_cached
        self.scored += phase.scored
        self.score_cached += phase.score_cached
        self.loads[iteration] = self.loads.get(iteration, 0) + phase.loads


class EvolveView:
    """What a live display implements (cli.py draws it with rich); the default shows nothing."""

    def update(self, **fields) -> None: ...


def select_sources(records: list[PromptRecord], max_digits: int, shard) -> list[PromptRecord]:
    kept = [r for r in records if not (max_digits and digit_count(r.prompt) >= max_digits)]
    return [r for r in kept if in_shard(str(r.id), shard)]


class Evolution:
    def __init__(self, recipe: Recipe, run: Path, sources: list[PromptRecord], mutator_factory: Callable,
                 options: EvolveOptions | None = None, view: EvolveView | None = None):
        self.recipe = recipe
        self.cfg = recipe.evolve
        self.folder = Path(run) / "evolve"
        self.sources = {str(r.id): r.prompt for r in sources}
        self.options = options or EvolveOptions()
        self.view = view or EvolveView()
        self.stats = EvolveStats()
        self._mutator_factory = mutator_factory
        self._mutator = None
        self.state = EvolveState.load(self.folder)

    # ------------------------------------------------------------------ the loop

    def run(self) -> EvolveStats:
        with Journal(self.state.candidates_path) as proposals, Journal(self.state.journal_path) as journal:
            self._propose_originals(proposals)
            try:
                for iteration in range(self.cfg.iterations + 1):
                    self.view.update(iteration=iteration)
                    self._evaluate(iteration, journal)
                    if iteration < self.cfg.iterations:
                        self._mutate(iteration + 1, proposals)
            except BudgetReached as stop:
                self.stats.stopped = str(stop)
            finally:
                self._close_mutator()
        return self.stats

    def _propose_originals(self, proposals: Journal) -> None:
        for sid, prompt in self.sources.items():
            if (sid, 0) not in self.state.asked:
                self.state.propose(proposals, [Candidate(f"{sid}:0:0", sid, 0, prompt)], sid, 0)

    # ------------------------------------------------------------------ render + score

    def _evaluate(self, iteration: int, journal: Journal) -> None:
        pending = sorted(self.state.pending(iteration, set(self.sources)), key=lambda c: c.id)
        if not pending:
            return
        phase = PhaseStats()
        self.view.update(phase="rendering", candidates=len(pending))
        budget = self.options.max_videos
        try:
            paths, keys = render_phase(self.recipe, [c.prompt for c in pending], phase,
                                       max_new=None if budget is None else budget - self.stats.rendered,
                                       memory=self.options.memory)
        except BudgetReached:
            self.stats.rendered += phase.rendered
            raise BudgetReached(f"--max-videos {budget} reached during iteration {iteration}") from None
        self.view.update(phase="scoring", rendered=self.stats.rendered + phase.rendered)
        records = score_phase(self.recipe, paths, [self.sources[c.source] for c in pending], phase)
        for c, rec, key in zip(pending, records, keys):
            scored = Scored(c, rec["scores"], rec["combined"], key)
            journal.append(scored.record())
            self.state.scored[c.id] = scored
        self.stats.add(phase, iteration)
        self.view.update(rendered=self.stats.rendered, cached=self.stats.render_cached, best_gain=self.best_gain())

    # ------------------------------------------------------------------ mutate

    def _mutate(self, iteration: int, proposals: Journal) -> None:
        todo = [sid for sid in self.sources if (sid, iteration) not in self.state.asked
                and any(s.candidate.iteration == 0 for s in self.state.pool(sid))]
        if not todo:
            return
        self.view.update(phase="mutating", candidates=len(todo))
        mutator = self._get_mutator()
        workers = self.options.concurrency or self.cfg.concurrency
        workers = workers if mutator.parallel_safe else 1
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {sid: pool.submit(self._ask, mutator, sid, iteration) for sid in self._within_call_budget(todo)}
            failure = None
            for sid, future in futures.items():  # journaled in source order as each answer arrives
                try:
                    candidates, shortfall = future.result()
                    self.state.propose(proposals, candidates, sid, iteration, wanted=self.cfg.new_per_iteration,
                                       reason=shortfall)
                except Exception as e:  # noqa: BLE001 - keep every other answer (each one was paid for)
                    failure = failure or e
                self.view.update(llm_calls=self.stats.llm_calls)
            if failure is not None:
                raise failure
        if len(futures) < len(todo):
            raise BudgetReached(f"--max-llm-calls {self.options.max_llm_calls} reached during iteration {iteration}")

    def _within_call_budget(self, todo: list[str]) -> list[str]:
        budget = self.options.max_llm_calls
        if budget is None:
            return todo
        # Reserved whole: a source stopped between its two calls would ask its first one again on resume.
        room = max((budget - self.stats.llm_calls) // CALLS_PER_SOURCE, 0)
        return todo[:room]

    def _ask(self, mutator, sid: str, iteration: int) -> tuple[list[Candidate], str | None]:
        """One source's new candidates, and why there are fewer than asked for (None when there are not)."""
        pool = self.state.pool(sid)
        original = next(s for s in pool if s.candidate.iteration == 0)
        top = top_candidates(pool, self.cfg.keep_top)
        seen = {c.prompt for c in self.state.candidates.values() if c.source == sid}
        seen_keys = {normalise(p) for p in seen}
        if getattr(mutator, "proposes_rewrites", False):  # a local model that cannot follow Table 6
            return self._ask_rewrites(mutator, sid, iteration, original, top, seen_keys)
        entries = [(original.candidate.prompt, original.scores)] + [(s.candidate.prompt, s.scores) for s in top]
        dims = [d for d in ("VQ", "TC", "DD", "TVA", "FC", "AES", "MPS", "CLIP") if d in original.scores]
        messages = mutation_messages(entries, dims, self.cfg.new_per_iteration, self.cfg.examples)
        for attempt in range(CALLS_PER_SOURCE):  # ask again once when an answer holds no usable prompt
            self.stats.llm_calls += 1
            [answer] = mutator.generate(
                messages, n=1, temperature=self.cfg.temperature, max_tokens=self.cfg.max_tokens,
                seed=self._seed(sid, iteration, attempt),
            )
            prompts = parse_prompts(answer, limit=self.cfg.new_per_iteration, seen=seen_keys)
            if prompts:
                break
        parents = tuple([original.candidate.id] + [s.candidate.id for s in top])
        shortfall = None
        if len(prompts) < self.cfg.new_per_iteration:
            shortfall = f"the mutator's answer held {len(prompts)} usable prompts of {self.cfg.new_per_iteration}"
        return [Candidate(f"{sid}:{iteration}:{k}", sid, iteration, p, parents) for k, p in enumerate(prompts)], shortfall

    def _ask_rewrites(self, mutator, sid: str, iteration: int, original: Scored, top: list[Scored],
                      seen_keys: set[str]) -> tuple[list[Candidate], str | None]:
        """`new_per_iteration` sampled rewrites, decoded in one batch (one call), for a mutator that
        `proposes_rewrites`. Candidate k rewrites the original when k is even and the best rewrite so
        far when k is odd (the original again in iteration 1, before there is one): the odd ones build
        on what scored best, as Table 6 asks a chat model to, and the even ones keep drawing fresh
        rewrites of the user's own prompt, so one lucky early rewrite cannot narrow the whole search.
        A sample that is unusable or the same as an earlier candidate is drawn again, with its next
        seed, in one more call (the bound of a Table 6 mutation), as a rewrite of the original: a
        rewrite of the best that failed was nearly always the best copied out again, and so would its
        second draw be (measured: 2 of 36 tiny-cpu candidates lost that way). What is still missing
        is journaled."""
        best = top[0] if top else original
        wanted = self.cfg.new_per_iteration
        bases = [original if k % 2 == 0 else best for k in range(wanted)]
        kept: dict[int, str] = {}
        why: dict[int, str] = {}
        todo = list(range(wanted))
        keys = set(seen_keys)
        for attempt in range(CALLS_PER_SOURCE):
            if not todo:
                break
            if attempt:
                bases = [original if k in todo else base for k, base in enumerate(bases)]
            self.stats.llm_calls += 1
            answers = mutator.rewrite(
                [bases[k].candidate.prompt for k in todo], original.candidate.prompt,
                seeds=[self._seed(sid, iteration, attempt, k) for k in todo],
                temperature=self.cfg.temperature, max_tokens=self.cfg.max_tokens,
            )
            missing = []
            for k, (text, issue) in zip(todo, answers):  # in candidate order: the journal is deterministic
                issue = issue or unusable(text, keys)
                if issue is None:
                    kept[k] = text
                    keys.add(normalise(text))
                else:
                    why[k] = issue
                    missing.append(k)
            todo = missing
        candidates = []
        for k in sorted(kept):
            parents = (original.candidate.id,) if bases[k] is original else (original.candidate.id, best.candidate.id)
            candidates.append(Candidate(f"{sid}:{iteration}:{len(candidates)}", sid, iteration, kept[k], parents))
        shortfall = "; ".join(f"rewrite {k}: {why[k]}" for k in todo) or None
        return candidates, shortfall

    def _seed(self, sid: str, iteration: int, attempt: int, candidate: int | None = None) -> int:
        """The run seed, source, iteration and try (and the candidate, for sampled rewrites), hashed."""
        blob = f"{self.cfg.seed}:{sid}:{iteration}:{attempt}" + ("" if candidate is None else f":{candidate}")
        return int(hashlib.sha256(blob.encode()).hexdigest()[:8], 16)

    def _get_mutator(self):
        if self._mutator is None:
            self._mutator = self._mutator_factory()
        return self._mutator

    def _close_mutator(self) -> None:
        if self._mutator is not None:
            self._mutator.close()
        self._mutator = None

    # ------------------------------------------------------------------ results

    def best_gain(self) -> float | None:
        gains = []
        for sid in self.sources:
            pool = self.state.pool(sid)
            original = next((s for s in pool if s.candidate.iteration == 0), None)
            if original and len(pool) > 1:
                gains.append(max(s.combined for s in pool) - original.combined)
        return max(gains) if gains else None

    def pairs(self) -> tuple[list[dict], int]:
        """SFT pairs (one per source with a qualifying target) and how many sources had none."""
        pairs, none = [], 0
        for sid in self.sources:
            chosen = choose_target(self.state.pool(sid), self.cfg.thresholds, self.cfg.min_gain)
            if chosen is None:
                none += 1
                continue
            original, target = chosen
            pairs.append({
                "source": original.candidate.prompt, "target": target.candidate.prompt, "scores": target.scores,
                "gain": round(target.combined - original.combined, 4), "source_id": sid,
                "source_scores": original.scores, "target_id": target.candidate.id,
            })
        return pairs, none


def write_pairs(path: Path, pairs: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))


def check_sources(records: list[PromptRecord], path: str) -> None:
    if not records:
        raise UserError(f"{path} has no prompts; give a file with at least one prompt.")
