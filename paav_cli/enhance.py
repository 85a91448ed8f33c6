"""Prompt enhancement with a booster: one prompt or a whole file, batched, validated, resumable.

A small booster fails now and then (a language switch, a loop, a copied example). Every output is
checked (`text.clean.problem`); a failure is retried once with another seed, and a second failure
returns the user's prompt unchanged with `fallback: true`, so a batch never stops on one bad draw.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path

from paav_cli import paths, registry
from paav_cli.errors import UserError
from paav_cli.prompt_files import (
    PromptRecord,
    PromptSource,
    RecordWriter,
    existing_records,
    output_lock,
    plain_line,
    prepare_output,
    show,
)
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
    jobs: Iterable[Job],
    opts: EnhanceOptions,
    budget: Budget | None,
    on_outcome: Callable[[Job, Outcome], None],
) -> None:
    """Enhance every job, calling `on_outcome` as each one is final (retries included).

    Jobs are taken and tokenised one batch at a time, so memory does not grow with their number.
    """
    from paav_cli.llm.llamacpp import Sampling

    sampling = Sampling(temperature=opts.temperature, max_tokens=opts.max_tokens)
    jobs = iter(jobs)
    while part := list(islice(jobs, booster.model.max_parallel)):
        prepared = [booster.request(job.record.prompt) for job in part]
        for job, (_, tokens) in zip(part, prepared):
            if len(tokens) + opts.max_tokens + 1 > booster.model.max_context:
                raise UserError(too_long_message(job.record, len(tokens), booster, opts))
        _run_chunk(booster, part, prepared, sampling, budget, on_outcome)


def too_long_message(record: PromptRecord, tokens: int, booster: Booster, opts: EnhanceOptions) -> str:
    return (
        f"prompt {show(record.id)} is {tokens} tokens with the booster's template, too long for its "
        f"{booster.model.max_context}-token context with --max-tokens {opts.max_tokens}; shorten it."
    )


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


def make_jobs(records: Iterable[PromptRecord], n: int, seed: int) -> list[Job]:
    return list(iter_jobs(records, n, seed))


def iter_jobs(records: Iterable[PromptRecord], n: int, seed: int, leave_out: frozenset[str] = frozenset()) -> Iterator[Job]:
    """Jobs in output order: every variant of every record, less the records in `leave_out`."""
    index = 0
    for record in records:
        if record.id in leave_out:
            continue
        for variant in range(n):
            yield Job(index=index, record=record, variant=variant, seed=seed + variant)
            index += 1


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


def output_columns(extras: list[str], opts: EnhanceOptions, budget: Budget | None) -> list[str]:
    ours = ["id", "prompt", "enhanced", "variant", "model", "seed", "temperature"]
    ours += ["negative_prompt"] if opts.negative else []
    ours += ["fallback", "fallback_reason", "tokens", "seconds"]
    ours += ["target", "target_tokens", "target_limit", "trimmed"] if budget else []
    return extras + [c for c in ours if c not in extras]


def _resume_point(output: str | None, jobs: Iterable[Job], total: int) -> int:
    """How many leading jobs the output already holds, after checking they are these jobs."""
    if output is None:
        return 0
    done = 0
    jobs = iter(jobs)
    for old in existing_records(output):
        job = next(jobs, None)
        if job is None:
            raise UserError(
                f"{output} holds more records than the {total} this input makes; it was made from another "
                "input: choose another output file or pass --overwrite."
            )
        if old is not None:
            same = (
                str(old.get("id")) == job.record.id
                and str(old.get("variant", 0)) == str(job.variant)
                and old.get("prompt") == job.record.prompt
            )
            if not same:
                raise UserError(
                    f"{output} was made from another input (its record for id {show(old.get('id'))} does not "
                    "match); choose another output file or pass --overwrite."
                )
        done += 1
    return done


# What changes the text of a record, with the option that sets it.
SETTINGS = {"model": "-m", "seed": "--seed", "n": "-n", "temperature": "--temperature",
            "max_tokens": "--max-tokens", "target": "--target", "negative": "--negative", "lora": "--lora"}


def _settings(opts: EnhanceOptions) -> dict:
    return {key: getattr(opts, key) for key in SETTINGS}


_NOTHING = object()


def _recorded_settings(saved: dict, first: dict | None) -> dict | None:
    """The settings an output was made with: as saved beside it, or (an output written before paav
    saved them) what its first record shows."""
    if isinstance(saved.get("settings"), dict):
        return saved["settings"]
    if first is None:
        return None
    known = {"model": first.get("model"), "temperature": first.get("temperature")}
    try:
        known["seed"] = int(first["seed"]) - int(first.get("variant") or 0)
    except (KeyError, TypeError, ValueError):
        pass
    if isinstance(known["temperature"], str):  # csv cells are text
        try:
            known["temperature"] = float(known["temperature"])
        except ValueError:
            del known["temperature"]
    return {k: v for k, v in known.items() if v is not None}


def _check_settings(output: str, opts: EnhanceOptions, recorded: dict) -> None:
    """Refuse to extend an output with records made otherwise (their text would differ)."""
    if opts.seed is None and isinstance(recorded.get("seed"), int):
        opts.seed = recorded["seed"]  # a rerun without --seed continues with the output's seed
    now = _settings(opts)
    changed = [key for key in SETTINGS if key in recorded and recorded[key] != now[key]]
    if changed:
        was = ", ".join(f"{SETTINGS[k]} {_shown(recorded[k])} (now {_shown(now[k])})" for k in changed)
        raise UserError(
            f"{output} was made with other settings ({was}); rerun with those, pass --overwrite to start "
            "it afresh, or choose another -o."
        )


def _shown(value) -> str:
    return "none" if value is None else show(value) if isinstance(value, str) else str(value)


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
    records = PromptSource(input_path, on_error=on_error, warn=warn)
    return enhance_records(
        records, output, opts, as_json=as_json, overwrite=overwrite, warn=warn, progress_factory=progress_factory,
        on_error=on_error,
    )


def enhance_records(records, output, opts, *, as_json=False, overwrite=False, warn, progress_factory=None,
                    on_error="stop") -> dict:
    """Enhance `records` (a list, or a `PromptSource` read again on each pass) into `output`."""
    if opts.temperature is None:
        opts.temperature = 0.0 if opts.n == 1 else DEFAULT_TEMPERATURE
    budget = resolve_budget(opts.target)
    if output:
        prepare_output(output)
    lock = output_lock(output) if output else nullcontext()
    with lock:
        if output and overwrite:
            Path(output).unlink(missing_ok=True)
        if output:
            first = next(existing_records(output), _NOTHING)
            if first is not _NOTHING:
                recorded = _recorded_settings(lock.read(), first)
                if recorded:
                    _check_settings(output, opts, recorded)
        booster = None
        try:
            leave_out: frozenset[str] = frozenset()
            if on_error == "skip":
                # Which prompts are left out must be known before resuming: outputs are matched to
                # jobs by position, so the same ones must be left out on every run.
                booster = _load_booster(opts)
                too_long = _too_long(booster, records, opts)
                if len(too_long) == len(records):
                    raise UserError(
                        f"no prompt fits the booster's {booster.model.max_context}-token context with "
                        f"--max-tokens {opts.max_tokens}; shorten the prompts or lower --max-tokens."
                    )
                for message in too_long.values():
                    warn(f"skipped: {message.removesuffix('; shorten it.')}.")
                leave_out = frozenset(too_long)
            total = (len(records) - len(leave_out)) * opts.n
            start = _resume_point(output, iter_jobs(records, opts.n, 0, leave_out), total)
            if opts.seed is None:
                opts.seed = random.randrange(2**31)
            summary = {"jobs": total, "skipped": start, "done": 0, "fallbacks": 0, "seed": opts.seed,
                       "left_out": len(leave_out)}
            if start >= total:
                return summary
            if booster is None:
                booster = _load_booster(opts)
                _too_long(booster, islice(records, start // opts.n, None), opts, stop=True)
            if output:
                lock.write({"settings": _settings(opts)})
            _run(booster, records, output, opts, budget, start, leave_out, summary,
                 as_json=as_json, warn=warn, progress_factory=progress_factory)
        finally:
            if booster is not None:
                booster.model.close()
    return summary


def _load_booster(opts: EnhanceOptions) -> Booster:
    return Booster(resolve_model(opts.model), threads=opts.threads, parallel=opts.parallel, lora=opts.lora)


def _too_long(booster: Booster, records: Iterable[PromptRecord], opts: EnhanceOptions, *, stop=False) -> dict[str, str]:
    """Prompts too long for the booster's context, as {id: sentence}; with `stop`, the first one raises."""
    found = {}
    for record in records:
        tokens = booster.too_long(record.prompt, opts.max_tokens)
        if tokens is None:
            continue
        found[record.id] = too_long_message(record, tokens, booster, opts)
        if stop:
            raise UserError(found[record.id])
    return found


def _run(booster, records, output, opts, budget, start, leave_out, summary, *, as_json, warn, progress_factory):
    extras = getattr(records, "extra_keys", None)
    if extras is None:
        extras = []
        for r in records:
            extras += [k for k in r.extra if k not in extras]
    writer = RecordWriter(output, as_json=as_json, columns=output_columns(extras, opts, budget))
    writer.open(start)
    pending = summary["jobs"] - start
    progress = progress_factory(pending) if progress_factory else None  # None: no bar
    try:
        def on_outcome(job: Job, outcome: Outcome) -> None:
            if outcome.fallback:
                summary["fallbacks"] += 1
                warn(f"prompt {show(job.record.id)} kept as written: the booster's output was unusable ({outcome.reason}).")
            writer.add(job.index, to_record(job, outcome, opts, budget))
            summary["done"] += 1
            if progress:
                progress.advance()

        jobs = islice(iter_jobs(records, opts.n, opts.seed, leave_out), start, None)
        run_jobs(booster, jobs, opts, budget, on_outcome)
    finally:
        if progress:
            progress.close()
        writer.close()


def single_prompt(prompt: str) -> list[PromptRecord]:
    if not prompt.strip():
        raise UserError("the prompt is empty; give a prompt, e.g. paav enhance \"a cat playing piano\".")
    return [PromptRecord(id=1, prompt=prompt.strip())]


def stderr_warn(message: str) -> None:
    print(f"warning: {plain_line(message)}", file=sys.stderr)
