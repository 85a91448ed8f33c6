"""Enhancing files: records in, records out, batched and resumable; a layer over `Booster.run`.

`paav enhance -i FILE -o OUT` is `enhance_file`. Each record is written as soon as it is final; a
rerun skips what the output already holds (after checking it was made from the same input and
settings), so an interrupted batch never redoes or duplicates a record.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path

from paav_cli import registry
from paav_cli.enhance import (
    DEFAULT_TEMPERATURE,
    Booster,
    Enhancement,
    Job,
    Settings,
    iter_jobs,
    load_booster,
    too_long_message,
)
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
from paav_cli.text.templates import NEGATIVE_PROMPT  # noqa: F401 - the CLI prints it with --negative


@dataclass
class EnhanceOptions:
    """The settings of a file (or single-prompt) run, as `paav enhance` takes them."""

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
    best_of: int = 1  # draws per variant, the faithfulness scorer keeps the best (Booster.enhance)





def to_record(job: Job, result: Enhancement) -> dict:
    """The output record of one job: the input's own fields, then paav's."""
    record: dict = {k: v for k, v in job.record.extra.items()}
    record.update(id=job.record.id, prompt=job.record.prompt, enhanced=result.text, variant=result.variant,
                  model=result.model, seed=result.seed, temperature=result.temperature)
    if result.negative_prompt is not None:
        record["negative_prompt"] = result.negative_prompt
    record["fallback"] = result.fallback
    if result.fallback_reason:
        record["fallback_reason"] = result.fallback_reason
    record["tokens"] = result.tokens
    record["seconds"] = round(result.seconds, 3)
    if result.target is not None:
        record.update(target=result.target, target_tokens=result.target_tokens, target_limit=result.target_limit,
                      trimmed=result.trimmed)
    if result.faithfulness is not None:
        record["faithfulness"] = result.faithfulness
    return record


def output_columns(extras: list[str], opts: EnhanceOptions) -> list[str]:
    ours = ["id", "prompt", "enhanced", "variant", "model", "seed", "temperature"]
    ours += ["negative_prompt"] if opts.negative else []
    ours += ["fallback", "fallback_reason", "tokens", "seconds"]
    ours += ["target", "target_tokens", "target_limit", "trimmed"] if opts.target else []
    ours += ["faithfulness"] if opts.best_of > 1 else []
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
            "max_tokens": "--max-tokens", "target": "--target", "negative": "--negative", "lora": "--lora",
            "best_of": "--best-of"}


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
    """Enhance `records` (a list, or a `PromptSource` read again on each pass) into `output`
    (stdout when None), resuming an output that holds a leading part of them; returns a summary.
    `opts` is left as the caller gave it."""
    opts = replace(opts)
    if opts.temperature is None:
        opts.temperature = 0.0 if opts.n == 1 and opts.best_of == 1 else DEFAULT_TEMPERATURE
    if opts.target:
        registry.Registry.load().get(opts.target, "generators")  # an unknown target stops before the model loads
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
                leave_out = _leave_out_too_long(booster, records, opts, warn)
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
            _run(booster, records, output, opts, start, leave_out, summary,
                 as_json=as_json, warn=warn, progress_factory=progress_factory)
        finally:
            if booster is not None:
                booster.close()
    return summary


def _load_booster(opts: EnhanceOptions) -> Booster:
    return load_booster(opts.model, threads=opts.threads, parallel=opts.parallel, lora=opts.lora)


def _leave_out_too_long(booster: Booster, records, opts: EnhanceOptions, warn) -> frozenset[str]:
    too_long = _too_long(booster, records, opts)
    if len(too_long) == len(records):
        raise UserError(
            f"no prompt fits the booster's {booster.model.max_context}-token context with "
            f"--max-tokens {opts.max_tokens}; shorten the prompts or lower --max-tokens."
        )
    for message in too_long.values():
        warn(f"skipped: {message.removesuffix('; shorten it.')}.")
    return frozenset(too_long)


def _too_long(booster: Booster, records: Iterable[PromptRecord], opts: EnhanceOptions, *, stop=False) -> dict[str, str]:
    """Prompts too long for the booster's context, as {id: sentence}; with `stop`, the first one raises."""
    found = {}
    for record in records:
        tokens = booster.too_long(record.prompt, opts.max_tokens)
        if tokens is None:
            continue
        found[record.id] = too_long_message(record, tokens, booster, opts.max_tokens)
        if stop:
            raise UserError(found[record.id])
    return found


def _run(booster, records, output, opts, start, leave_out, summary, *, as_json, warn, progress_factory):
    extras = getattr(records, "extra_keys", None)
    if extras is None:
        extras = []
        for r in records:
            extras += [k for k in r.extra if k not in extras]
    writer = RecordWriter(output, as_json=as_json, columns=output_columns(extras, opts))
    writer.open(start)
    pending = summary["jobs"] - start
    progress = progress_factory(pending) if progress_factory else None  # None: no bar
    settings = Settings.resolve(n=opts.n, seed=opts.seed, temperature=opts.temperature,
                                max_tokens=opts.max_tokens, target=opts.target, negative=opts.negative,
                                best_of=opts.best_of)
    foreign = _language_warning(booster, warn, single=isinstance(records, list) and len(records) == 1)
    if isinstance(records, list):  # said before the decode when the prompts are at hand
        for record in records:
            foreign(record)
    try:
        def on_result(job: Job, result: Enhancement) -> None:
            foreign(job.record)
            if result.fallback:
                summary["fallbacks"] += 1
                warn(f"prompt {show(job.record.id)} kept as written: the booster's output was unusable "
                     f"({result.fallback_reason}).")
            writer.add(job.index, to_record(job, result))
            summary["done"] += 1
            if progress:
                progress.advance()

        jobs = islice(iter_jobs(records, opts.n, opts.seed, leave_out), start, None)
        booster.run(jobs, settings, on_result)
    finally:
        if progress:
            progress.close()
        writer.close()


def _language_warning(booster: Booster, warn, *, single: bool = False):
    """A check for each record that warns, once per command, about the first prompt plainly in a
    language the booster was not trained to read."""
    reads = booster.entry.languages
    warned = False

    def check(record: PromptRecord) -> None:
        nonlocal warned
        if warned or not reads:
            return
        from paav_cli.text.language import guess_language

        language = guess_language(record.prompt)
        if language and language not in reads:
            warned = True
            which = "this prompt" if single else f"prompt {show(record.id)}"
            warn(f"{which} looks {language}, but the {booster.entry.name} booster reads {' and '.join(reads)} "
                 f"and may change or drop its meaning; write it in {reads[0]}, or use a booster that reads "
                 f"{language} (README, \"Prompts in other languages\")" + ("." if single else "; said once."))

    return check


def single_prompt(prompt: str) -> list[PromptRecord]:
    if not prompt.strip():
        raise UserError("the prompt is empty; give a prompt, e.g. paav enhance \"a cat playing piano\".")
    return [PromptRecord(id=1, prompt=prompt.strip())]


def stderr_warn(message: str) -> None:
    print(f"warning: {plain_line(message)}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# Through a running `paav serve`


SERVER_ENV = "PAAV_SERVER"


def enhance_through_server(url: str, prompt: str, opts: EnhanceOptions, *, as_json: bool, warn) -> dict | None:
    """Enhance one prompt on a running `paav serve` at `url` and print it as `paav enhance` would,
    so that a single prompt costs only the decode; None when no server answers there (or it does not
    serve this booster, or it is busy): the caller then loads the booster itself."""
    import json
    import urllib.error
    import urllib.request

    record = single_prompt(prompt)[0]
    body = {"prompt": record.prompt, "model": opts.model, "n": opts.n, "seed": opts.seed,
            "temperature": opts.temperature, "target": opts.target, "negative": opts.negative,
            "max_tokens": opts.max_tokens}
    if opts.lora or not _answers(url):
        return None
    request = urllib.request.Request(f"{url.rstrip('/')}/v1/enhance", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            results = [Enhancement(**r) for r in json.loads(response.read())["results"]]
    except (OSError, ValueError, KeyError, TypeError):  # refused, an HTTP error, not paav's answer
        return None
    writer = RecordWriter(None, as_json=as_json, columns=output_columns(list(record.extra), opts))
    writer.open(0)
    for index, result in enumerate(results):
        job = Job(index=index, record=record, variant=result.variant, seed=result.seed)
        if result.fallback:
            warn(f"prompt {show(record.id)} kept as written: the booster's output was unusable "
                 f"({result.fallback_reason}).")
        writer.add(index, to_record(job, result))
    writer.close()
    return {"jobs": len(results), "skipped": 0, "done": len(results),
            "fallbacks": sum(r.fallback for r in results), "seed": results[0].seed - results[0].variant}


def _answers(url: str, timeout: float = 0.5) -> bool:
    """Whether anything listens at the server's address: a refused or silent port costs half a
    second at most, not a request timeout."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False
