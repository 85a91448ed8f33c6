"""Prompt enhancement with a booster: one prompt or a whole file, batched, validated, resumable.

A small booster fails now and then (a language switch, a loop, a copied example). Every output is
checked (`text.clean.problem`); a failure is retried once with another seed, and a second failure
returns the user's prompt unchanged with `fallback: true`, so a batch never stops on one bad draw.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from paav_cli import paths, registry
from paav_cli.errors import UserError
from paav_cli.prompt_files import PromptRecord, RecordWriter, existing_output, read_prompts
from paav_cli.text.budget import TokenCounter, counter_for, trim_to_budget
from paav_cli.text.clean import clean, drop_copied_sentences, problem
from paav_cli.text.formats import BoosterRequest, build_request
from paav_cli.text.templates import NEGATIVE_PROMPT

RETRY_SEED_OFFSET = 1_000_003  # the retry's seed: far from the seeds of neighbouring variants
# Variants need sampling; a single rewrite is greedy by default because, read strictly, greedy
# rewrites of the few-shot booster kept the user's scene twice as often (10 of the first 20 VBench
# test prompts, against 5 of 20 sampled at 0.8).
DEFAULT_TEMPERATURE = 0.8


@dataclass
class EnhanceOptions:
    model: str = "default"
    n: int = 1
    seed: int | None = None
    temperature: float | None = None  # None: greedy for one variant, DEFAULT_TEMPERATURE for several
    max_tokens: int = 200
    threads: int | None = None
    target: str | None = None
    negative: bool = False
    parallel: int = 32
    lora: str | None = None  # a GGUF LoRA adapter applied on the booster at load time


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


@dataclass
class Outcome:
    enhanced: str
    fallback: bool
    tokens: int
    seconds: float
    reason: str | None = None
    trimmed: bool = False


class Booster:
    """A registered booster loaded for enhancement (or an unregistered one given as a `BoosterEntry`)."""

    def __init__(self, name: str | registry.BoosterEntry, *, threads: int | None = None, parallel: int = 32,
                 lora: str | None = None):
        if isinstance(name, registry.BoosterEntry):
            self.entry, name = name, name.name
        else:
            self.entry = registry.Registry.load().get(name, "boosters")
        path = registry.require_path(self.entry)
        lora_path = _lora_path(lora or self.entry.lora)
        from paav_cli.llm.llamacpp import LlamaCppModel  # heavy: loads the llama.cpp library

        self.model = LlamaCppModel(
            path, n_threads=threads, max_parallel=parallel, max_context=self.entry.context,
            state_dir=paths.cache_dir() / "prefix-states", lora_path=lora_path,
        )
        self.name = name
        self.stable_prefix = self._stable_prefix()

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


def run_jobs(
    booster: Booster,
    jobs: list[Job],
    opts: EnhanceOptions,
    budget: Budget | None,
    on_outcome: Callable[[Job, Outcome], None],
) -> None:
    """Enhance every job, calling `on_outcome` as each one is final (retries included)."""
    from paav_cli.llm.llamacpp import Sampling

    sampling = Sampling(temperature=opts.temperature, max_tokens=opts.max_tokens)
    prepared = [booster.request(job.record.prompt) for job in jobs]
    for job, (_, tokens) in zip(jobs, prepared):
        if len(tokens) + opts.max_tokens + 1 > booster.model.max_context:
            raise UserError(
                f"prompt {job.record.id!r} is {len(tokens)} tokens with the booster's template, too long for its "
                f"{booster.model.max_context}-token context with --max-tokens {opts.max_tokens}; shorten it."
            )
    chunk = booster.model.max_parallel
    for start in range(0, len(jobs), chunk):
        part = list(range(start, min(start + chunk, len(jobs))))
        _run_chunk(booster, [jobs[i] for i in part], [prepared[i] for i in part], sampling, budget, on_outcome)


def _run_chunk(booster, jobs, prepared, sampling, budget, on_outcome) -> None:
    started = time.perf_counter()
    retry: list[int] = []
    spent = [0] * len(jobs)

    def first_try(i: int, completion) -> None:
        job, (req, _) = jobs[i], prepared[i]
        spent[i] = completion.tokens
        text, issue, trimmed = _finish(job.record.prompt, req, completion.text, budget)
        if issue is None:
            on_outcome(job, Outcome(text, False, completion.tokens, time.perf_counter() - started, trimmed=trimmed))
        else:
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
        seconds = time.perf_counter() - started
        if issue is None:
            on_outcome(job, Outcome(text, False, tokens, seconds, trimmed=trimmed))
        else:
            on_outcome(job, Outcome(job.record.prompt, True, tokens, seconds, reason=issue))

    # Greedy decoding would repeat the failed text whatever the seed, so the retry samples.
    retry_sampling = sampling if sampling.temperature > 0 else replace(sampling, temperature=DEFAULT_TEMPERATURE)
    booster.model.complete(
        [prepared[i][1] for i in retry], seeds=[jobs[i].seed + RETRY_SEED_OFFSET for i in retry],
        sampling=retry_sampling, stop=prepared[0][0].stop, on_done=second_try, stable_prefix=booster.stable_prefix,
    )


def make_jobs(records: list[PromptRecord], n: int, seed: int) -> list[Job]:
    jobs = []
    for record in records:
        for variant in range(n):
            jobs.append(Job(index=len(jobs), record=record, variant=variant, seed=seed + variant))
    return jobs


def to_record(job: Job, outcome: Outcome, opts: EnhanceOptions, budget: Budget | None) -> dict:
    record: dict = {k: v for k, v in job.record.extra.items()}
    record.update(
        id=job.record.id,
        prompt=job.record.prompt,
        enhanced=outcome.enhanced,
        variant=job.variant,
        model=opts.model,
        seed=job.seed,
        temperature=opts.temperature,
    )
    if opts.negative:
        record["negative_prompt"] = NEGATIVE_PROMPT
    record["fallback"] = outcome.fallback
    if outcome.reason:
        record["fallback_reason"] = outcome.reason
    record["tokens"] = outcome.tokens
    record["seconds"] = round(outcome.seconds, 3)
    if budget is not None:
        record["target"] = budget.target
        record["target_tokens"] = budget.counter.count(outcome.enhanced)
        record["target_limit"] = budget.limit
        record["trimmed"] = outcome.trimmed
    return record


def output_columns(records: list[PromptRecord], opts: EnhanceOptions, budget: Budget | None) -> list[str]:
    extras: list[str] = []
    for r in records:
        extras += [k for k in r.extra if k not in extras]
    ours = ["id", "prompt", "enhanced", "variant", "model", "seed", "temperature"]
    ours += ["negative_prompt"] if opts.negative else []
    ours += ["fallback", "fallback_reason", "tokens", "seconds"]
    ours += ["target", "target_tokens", "target_limit", "trimmed"] if budget else []
    return extras + [c for c in ours if c not in extras]


def _resume_point(output: str | None, jobs: list[Job]) -> int:
    """How many leading jobs the output already holds, after checking they are these jobs."""
    if output is None:
        return 0
    existing = existing_output(output)
    done = existing if isinstance(existing, int) else len(existing)
    if done > len(jobs):
        raise UserError(
            f"{output} holds {done} records but this input makes {len(jobs)}; it was made from another "
            "input: choose another output file or pass --overwrite."
        )
    if isinstance(existing, list):
        for job, old in zip(jobs, existing):
            same = (
                str(old.get("id")) == str(job.record.id)
                and str(old.get("variant", 0)) == str(job.variant)
                and old.get("prompt") == job.record.prompt
            )
            if not same:
                raise UserError(
                    f"{output} was made from another input (its record for id {old.get('id')!r} does not match); "
                    "choose another output file or pass --overwrite."
                )
    return done


def enhance_file(
    input_path: str,
    output: str | None,
    opts: EnhanceOptions,
    *,
    as_json: bool = False,
    on_error: str = "stop",
    overwrite: bool = False,
    warn: Callable[[str], None],
    progress_factory=None,
) -> dict:
    """Enhance every prompt of `input_path` into `output` (stdout when None); returns a summary."""
    if output and input_path != "-" and Path(output).resolve() == Path(input_path).resolve():
        raise UserError(f"the output {output} is the input file; write the results to another file.")
    records = read_prompts(input_path, on_error=on_error, warn=warn)
    return enhance_records(
        records, output, opts, as_json=as_json, overwrite=overwrite, warn=warn, progress_factory=progress_factory
    )


def enhance_records(records, output, opts, *, as_json=False, overwrite=False, warn, progress_factory=None) -> dict:
    if opts.seed is None:
        opts.seed = random.randrange(2**31)
    if opts.temperature is None:
        opts.temperature = 0.0 if opts.n == 1 else DEFAULT_TEMPERATURE
    budget = resolve_budget(opts.target)
    jobs = make_jobs(records, opts.n, opts.seed)
    if output and overwrite:
        Path(output).unlink(missing_ok=True)
    start = _resume_point(output, jobs)
    summary = {"jobs": len(jobs), "skipped": start, "done": 0, "fallbacks": 0, "seed": opts.seed}
    pending = jobs[start:]
    if not pending:
        return summary
    booster = Booster(resolve_model(opts.model), threads=opts.threads, parallel=opts.parallel, lora=opts.lora)
    writer = RecordWriter(output, as_json=as_json, columns=output_columns(records, opts, budget))
    writer.open(start)
    progress = progress_factory(len(pending)) if progress_factory else None  # None: no bar
    try:
        def on_outcome(job: Job, outcome: Outcome) -> None:
            if outcome.fallback:
                summary["fallbacks"] += 1
                warn(f"prompt {job.record.id!r} kept as written: the booster's output was unusable ({outcome.reason}).")
            writer.add(job.index, to_record(job, outcome, opts, budget))
            summary["done"] += 1
            if progress:
                progress.advance()

        run_jobs(booster, pending, opts, budget, on_outcome)
    finally:
        if progress:
            progress.close()
        writer.close()
        booster.model.close()
    return summary


def single_prompt(prompt: str) -> list[PromptRecord]:
    if not prompt.strip():
        raise UserError("the prompt is empty; give a prompt, e.g. paav enhance \"a cat playing piano\".")
    return [PromptRecord(id=1, prompt=prompt.strip())]


def stderr_warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)
