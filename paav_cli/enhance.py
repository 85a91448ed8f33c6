"""Prompt enhancement with a booster, the main job's Python API: `load_booster(...).enhance(...)`.

A small booster fails now and then (a language switch, a loop, a copied example). Every output is
checked (`text.clean.problem`); a failure is retried once with another seed, and a second failure
returns the user's prompt unchanged with `fallback: true`, so a batch never stops on one bad draw.
Files in and out, resuming and writers are a layer over this one: `enhance_files.py`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path
from typing import Self

from paav_cli import paths, registry
from paav_cli.errors import UserError
from paav_cli.prompt_files import (
    PromptRecord,
    show,
)
from paav_cli.text.budget import TokenCounter, counter_for, trim_to_budget
from paav_cli.text.clean import clean, drop_copied_sentences, problem
from paav_cli.text.formats import BoosterRequest, build_request
from paav_cli.text.templates import NEGATIVE_PROMPT

RETRY_SEED_OFFSET = 1_000_003  # the retry's seed: far from the seeds of neighbouring variants
DRAW_SEED_STRIDE = 10_007  # --best-of's draw d of a variant decodes with its seed + d x this
MAX_BEST_OF = 16
# Variants need sampling; a single rewrite is greedy by default because, read strictly, greedy
# rewrites of the few-shot booster kept the user's scene twice as often (10 of the first 20 VBench
# test prompts, against 5 of 20 sampled at 0.8).
DEFAULT_TEMPERATURE = 0.8


@dataclass(frozen=True)
class Enhancement:
    """One enhanced prompt.

    `text` is the enhanced prompt, or the user's own prompt when the booster's output was unusable
    twice (`fallback` is then True and `fallback_reason` says why). `first_try_problem` is why the
    first draw was retried, if it was. `tokens` counts the booster's tokens over both tries;
    `seconds` is the time its batch had taken when it was final. With a `target` generator,
    `target_tokens` is the text's length in that generator's text-encoder tokens, never above
    `target_limit` (`trimmed` says whether it had to be cut to fit).
    """

    prompt: str
    text: str
    model: str
    seed: int
    temperature: float
    variant: int = 0
    fallback: bool = False
    fallback_reason: str | None = None
    first_try_problem: str | None = None
    tokens: int = 0
    seconds: float = 0.0
    negative_prompt: str | None = None
    target: str | None = None
    target_tokens: int | None = None
    target_limit: int | None = None
    trimmed: bool = False
    faithfulness: float | None = None  # with best_of: the faithfulness scorer's score of the chosen draw

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Settings:
    """What decides the text of an enhancement, resolved (a seed and a temperature always set)."""

    n: int
    seed: int
    temperature: float
    max_tokens: int
    target: str | None
    negative: bool
    best_of: int = 1

    @classmethod
    def resolve(cls, *, n: int = 1, seed: int | None = None, temperature: float | None = None,
                max_tokens: int = 200, target: str | None = None, negative: bool = False,
                best_of: int = 1) -> Settings:
        if n < 1:
            raise UserError(f"n must be 1 or more (got {n}).")
        if not 1 <= best_of <= MAX_BEST_OF:
            raise UserError(f"best_of must be between 1 and {MAX_BEST_OF} (got {best_of}).")
        if temperature is None:
            temperature = 0.0 if n == 1 and best_of == 1 else DEFAULT_TEMPERATURE
        if best_of > 1 and temperature == 0:
            raise UserError("best_of needs sampling: greedy draws are all the same; give a temperature above 0.")
        return cls(n=n, seed=random.randrange(2**31) if seed is None else seed, temperature=temperature,
                   max_tokens=max_tokens, target=target or None, negative=negative, best_of=best_of)


@dataclass
class Job:
    index: int
    record: PromptRecord
    variant: int
    seed: int


@dataclass
class Budget:
    target: str
    limit: int
    counter: TokenCounter


class Booster:
    """A booster loaded for enhancement; make one with `load_booster`.

    `enhance(prompt)` and `enhance_many(prompts)` return `Enhancement` records. The model stays
    loaded until `close()` (or the end of a `with` block). One Booster must not be used from two
    threads at once: it decodes on one llama.cpp context at a time (`thread_safe` is False).
    """

    thread_safe = False

    def __init__(self, name: str | registry.BoosterEntry, *, threads: int | None = None, parallel: int = 32,
                 lora: str | None = None, label: str | None = None):
        if isinstance(name, registry.BoosterEntry):
            self.entry, name = name, name.name
        else:
            self.entry = registry.Registry.load().get(name, "boosters")
        if registry.is_hf_booster(self.entry):
            from paav_cli.export.hf_booster import booster_gguf  # converted from its checkpoint on first use

            path = booster_gguf(self.entry)
        else:
            path = registry.require_path(self.entry)
        lora_path = _lora_path(lora or self.entry.lora)
        from paav_cli.llm.llamacpp import LlamaCppModel  # heavy: loads the llama.cpp library

        self.model = LlamaCppModel(
            path, n_threads=threads, max_parallel=parallel, max_context=self.entry.context,
            state_dir=paths.cache_dir() / "prefix-states", lora_path=lora_path,
        )
        self.name = label or name  # what records name the model by: as the caller gave it
        self.stable_prefix = self._stable_prefix()
        self._budgets: dict[str, Budget] = {}

    # -- the API ---------------------------------------------------------------------------

    def enhance(self, prompt: str, *, n: int = 1, seed: int | None = None, temperature: float | None = None,
                target: str | None = None, negative: bool = False, max_tokens: int = 200,
                best_of: int = 1) -> list[Enhancement]:
        """`n` enhanced variants of one prompt (variant i decodes with seed + i).

        seed: None draws one; temperature: None is greedy for one variant and 0.8 for several;
        target: a registered generator whose text-encoder budget the text must fit;
        negative: also give the generic negative prompt the paper's generators use;
        best_of: sample this many draws of each variant, decoded together, and keep the one the
        faithfulness scorer (text/faithfulness.py) reads best.
        """
        return list(self.enhance_many([prompt], n=n, seed=seed, temperature=temperature, target=target,
                                      negative=negative, max_tokens=max_tokens, best_of=best_of))

    def enhance_many(self, prompts: Iterable[str | PromptRecord], *, n: int = 1, seed: int | None = None,
                     temperature: float | None = None, target: str | None = None, negative: bool = False,
                     max_tokens: int = 200, best_of: int = 1) -> Iterator[Enhancement]:
        """Enhancements of every prompt, in input order (each prompt's `n` variants together).

        Prompts are decoded together in batches of up to `parallel` sequences (a lazy iterable is
        read one batch at a time), so a batch's records come out when that batch is done. Every
        prompt gets the same seed, as `paav enhance -i` gives every line of a file.
        """
        settings = Settings.resolve(n=n, seed=seed, temperature=temperature, max_tokens=max_tokens,
                                    target=target, negative=negative, best_of=best_of)
        records = (prompt_record(i, p) for i, p in enumerate(prompts, 1))
        jobs = iter_jobs(records, settings.n, settings.seed)
        # a batch of jobs fills the batch of sequences: with best_of, each job is that many of them
        while part := list(islice(jobs, max(1, self.model.max_parallel // settings.best_of))):
            done: dict[int, Enhancement] = {}
            self.run(part, settings, lambda job, result, done=done: done.__setitem__(job.index, result))
            yield from (done[job.index] for job in part)

    def run(self, jobs: Iterable[Job], settings: Settings, on_result: Callable[[Job, Enhancement], None]) -> None:
        """The callback form `enhance_many` is built on: `on_result` fires as each job is final
        (retries included, so not in order), for writers that journal every record as it comes.

        Jobs are taken and tokenised one batch at a time, so memory does not grow with their number.
        """
        budget = self.budget(settings.target)
        if settings.best_of > 1:
            jobs, on_result = _best_of(jobs, settings.best_of, on_result)
        jobs = iter(jobs)
        while part := list(islice(jobs, self.model.max_parallel)):
            prepared = [self.request(job.record.prompt) for job in part]
            for job, (_, tokens) in zip(part, prepared):
                if len(tokens) + settings.max_tokens + 1 > self.model.max_context:
                    raise UserError(too_long_message(job.record, len(tokens), self, settings.max_tokens))
            _run_chunk(self, part, prepared, settings, budget, on_result)

    def close(self) -> None:
        """Free the model (its llama.cpp context and weights)."""
        self.model.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- parts -----------------------------------------------------------------------------

    def budget(self, target: str | None) -> Budget | None:
        if not target:
            return None
        if target not in self._budgets:
            self._budgets[target] = resolve_budget(target)
        return self._budgets[target]

    def _stable_prefix(self) -> list[int]:
        """Tokens every request starts with (the few-shot examples, a chat template's preamble)."""
        _, tokens_a = self.request("a")
        _, tokens_b = self.request("b c")
        n = 0
        while n < min(len(tokens_a), len(tokens_b)) and tokens_a[n] == tokens_b[n]:
            n += 1
        return tokens_a[:n]

    def request(self, prompt: str) -> tuple[BoosterRequest, list[int]]:
        req = build_request(self.entry.prompt_format, prompt)
        text = req.text if req.text is not None else self.model.chat_prompt(req.messages)
        return req, self.model.encode_prompt(text)

    def too_long(self, prompt: str, max_tokens: int) -> int | None:
        """The prompt's token count with the template when it leaves no room for `max_tokens`, else None."""
        room = self.model.max_context - max_tokens - 1
        req = build_request(self.entry.prompt_format, prompt)
        text = req.text if req.text is not None else self.model.chat_prompt(req.messages)
        # Every token spans at least one byte of text, so a text with fewer bytes than the room
        # (less a few for BOS and a tokenizer's leading space) fits without being tokenised:
        # checking a whole batch up front then costs almost nothing.
        if len(text.encode("utf-8")) + 8 <= room:
            return None
        n = len(self.model.encode_prompt(text))
        return n if n > room else None


def _best_of(jobs: Iterable[Job], k: int, on_result: Callable[[Job, Enhancement], None]):
    """Each job as `k` draws (seeds DRAW_SEED_STRIDE apart, decoded in the same batches), and a
    callback that gives `on_result` the draw the faithfulness scorer reads best once all `k` are in:
    the highest score, then the most sentences that come back to the prompt, then the first drawn;
    a draw that fell back only when all did."""
    from paav_cli.text.faithfulness import read_faithfulness

    parents: dict[int, tuple[Job, list[tuple[int, Enhancement]]]] = {}

    def draws() -> Iterator[Job]:
        for job in jobs:
            parents[job.index] = (job, [])
            for d in range(k):
                yield Job(index=job.index * k + d, record=job.record, variant=job.variant,
                          seed=job.seed + d * DRAW_SEED_STRIDE)

    def collect(draw: Job, result: Enhancement) -> None:
        job, done = parents[draw.index // k]
        done.append((draw.index % k, result))
        if len(done) < k:
            return
        del parents[job.index]
        readings = {d: read_faithfulness(job.record.prompt, r.text) for d, r in done}
        d, best = max(done, key=lambda dr: (not dr[1].fallback, readings[dr[0]].score, readings[dr[0]].anchored,
                                            -dr[0]))
        on_result(job, replace(best, faithfulness=readings[d].score))

    return draws(), collect


def load_booster(model: str = "default", *, threads: int | None = None, lora: str | None = None,
                 parallel: int = 32) -> Booster:
    """Load a booster to enhance prompts with: a registered name (`paav models list`) or a GGUF file.

        from paav_cli import load_booster
        with load_booster("default") as booster:
            print(booster.enhance("a cat playing piano")[0].text)

    threads: llama.cpp threads (None: the free cores); lora: a GGUF LoRA adapter applied at load;
    parallel: how many sequences decode together in one batch.
    """
    return Booster(resolve_model(model), threads=threads, parallel=parallel, lora=lora, label=model)


def prompt_record(index: int, prompt: str | PromptRecord) -> PromptRecord:
    """A prompt as the record a job carries (stripped); an empty one is a UserError naming its place."""
    if isinstance(prompt, PromptRecord):
        return prompt
    if not isinstance(prompt, str) or not prompt.strip():
        raise UserError(f"prompt {index} is {'empty' if isinstance(prompt, str) else type(prompt).__name__}; "
                        "give every prompt as non-empty text.")
    return PromptRecord(id=index, prompt=prompt.strip())


def booster_entry_for_file(path: str) -> registry.BoosterEntry:
    """A booster given by file: chat format when the GGUF carries a chat template, else few-shot."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"{path}: no such GGUF file; check the path.")
    fmt = "chat" if _has_chat_template(file) else "fewshot"
    return registry.BoosterEntry(
        name=file.name, role="boosters", path=str(file.resolve()), prompt_format=fmt, defined_in="--model",
    )


def _has_chat_template(file: Path) -> bool:
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(file))
    except Exception:  # noqa: BLE001 - a truncated or foreign file fails in several ways
        raise UserError(f"{file} is not a GGUF file llama.cpp can read; pull or export it again.") from None
    return "tokenizer.chat_template" in reader.fields


def resolve_model(model: str) -> str | registry.BoosterEntry:
    """`--model` is a registered booster's name, or a path to a GGUF file (used as is)."""
    if model.endswith(".gguf") or "/" in model:
        return booster_entry_for_file(model)
    return model


def _lora_path(lora: str | None) -> Path | None:
    if lora is None:
        return None
    path = registry.expand_path(lora)
    if not path.is_file():
        if "{paav}" in lora:  # an adapter shipped inside the package
            raise UserError(f"the booster's adapter {path} is missing from this install; reinstall paav.")
        raise UserError(f"LoRA adapter {path} does not exist; export one with `paav export ADAPTER --lora`.")
    return path


def resolve_budget(target: str | None) -> Budget | None:
    if not target:
        return None
    reg = registry.Registry.load()
    entry = reg.get(target, "generators")
    tokenizer_dir = None
    local = registry.local_path(entry)
    if local is not None and entry.text_encoder.tokenizer_subfolder:
        tokenizer_dir = Path(local) / entry.text_encoder.tokenizer_subfolder
    counter = counter_for(tokenizer_dir, entry.text_encoder.kind)
    return Budget(target=target, limit=entry.text_encoder.max_tokens, counter=counter)


def _finish(prompt: str, req: BoosterRequest, raw: str, budget: Budget | None) -> tuple[str, str | None, bool]:
    """(enhanced text, problem or None, trimmed) for one raw completion."""
    text = drop_copied_sentences(clean(req.prefix, raw))
    trimmed = False
    if budget is not None:
        text, trimmed = trim_to_budget(text, budget.counter, budget.limit)
    return text, problem(prompt, text), trimmed


def too_long_message(record: PromptRecord, tokens: int, booster: Booster, max_tokens: int) -> str:
    return (
        f"prompt {show(record.id)} is {tokens} tokens with the booster's template, too long for its "
        f"{booster.model.max_context}-token context with --max-tokens {max_tokens}; shorten it."
    )


def _run_chunk(booster: Booster, jobs, prepared, settings: Settings, budget, on_result) -> None:
    from paav_cli.llm.llamacpp import Sampling

    sampling = Sampling(temperature=settings.temperature, max_tokens=settings.max_tokens)
    started = time.perf_counter()
    retry: list[int] = []
    first_problem: dict[int, str] = {}
    spent = [0] * len(jobs)

    def result(i: int, text: str, tokens: int, trimmed: bool, reason: str | None = None) -> Enhancement:
        job = jobs[i]
        return Enhancement(
            prompt=job.record.prompt, text=text, model=booster.name, seed=job.seed,
            temperature=settings.temperature, variant=job.variant, fallback=reason is not None,
            fallback_reason=reason, first_try_problem=first_problem.get(i), tokens=tokens,
            seconds=time.perf_counter() - started,
            negative_prompt=NEGATIVE_PROMPT if settings.negative else None,
            target=budget.target if budget else None,
            target_tokens=budget.counter.count(text) if budget else None,
            target_limit=budget.limit if budget else None, trimmed=trimmed,
        )

    def first_try(i: int, completion) -> None:
        job, (req, _) = jobs[i], prepared[i]
        spent[i] = completion.tokens
        text, issue, trimmed = _finish(job.record.prompt, req, completion.text, budget)
        if issue is None:
            on_result(job, result(i, text, completion.tokens, trimmed))
        else:
            first_problem[i] = issue
            retry.append(i)

    booster.model.complete(
        [p[1] for p in prepared], seeds=[j.seed for j in jobs], sampling=sampling,
        stop=prepared[0][0].stop, on_done=first_try, stable_prefix=booster.stable_prefix,
    )
    if not retry:
        return
    retry.sort()

    def second_try(k: int, completion) -> None:
        i = retry[k]
        job, (req, _) = jobs[i], prepared[i]
        tokens = spent[i] + completion.tokens
        text, issue, trimmed = _finish(job.record.prompt, req, completion.text, budget)
        if issue is None:
            on_result(job, result(i, text, tokens, trimmed))
        else:
            on_result(job, result(i, job.record.prompt, tokens, False, reason=issue))

    # Greedy decoding would repeat the failed text whatever the seed, so the retry samples.
    retry_sampling = sampling if sampling.temperature > 0 else replace(sampling, temperature=DEFAULT_TEMPERATURE)
    booster.model.complete(
        [prepared[i][1] for i in retry], seeds=[jobs[i].seed + RETRY_SEED_OFFSET for i in retry],
        sampling=retry_sampling, stop=prepared[0][0].stop, on_done=second_try, stable_prefix=booster.stable_prefix,
    )


def iter_jobs(records: Iterable[PromptRecord], n: int, seed: int, leave_out: frozenset[str] = frozenset()) -> Iterator[Job]:
    """Jobs in output order: every variant of every record, less the records in `leave_out`."""
    index = 0
    for record in records:
        if record.id in leave_out:
            continue
        for variant in range(n):
            yield Job(index=index, record=record, variant=variant, seed=seed + variant)
            index += 1
