"""The rewriting methods `paav eval` compares: the prompt as written, a booster (registered or a GGUF
file), or a mutator LLM prompted with the released boosters' instruction.

Every method is checked before any model loads; rewriting then reports each prompt as it finishes so
the caller can journal it (a rerun skips what the journal holds).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from paav_cli import registry
from paav_cli.errors import UserError
from paav_cli.prompt_files import PromptRecord

MUTATOR_MAX_TOKENS = 512  # the released instruction asks for one detailed paragraph
SEED = 0

# (record, rewritten text, fallback, seconds, reason or None)
OnRewrite = Callable[[PromptRecord, str, bool, float, "str | None"], None]


@dataclass
class Method:
    name: str  # as the user wrote it: the row label and the journal key
    kind: str  # original | booster | gguf | mutator
    entry: registry.ModelEntry | None = None


def resolve_methods(names: list[str]) -> list[Method]:
    """Every method checked (and its model present or buildable) before anything is rewritten."""
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise UserError("no methods given; pass e.g. --methods original,default.")
    if len(set(names)) != len(names):
        raise UserError(f"--methods names a method twice ({', '.join(names)}); give each once.")
    reg = registry.Registry.load()
    return [_resolve(name, reg) for name in names]


def _resolve(name: str, reg: registry.Registry) -> Method:
    if name == "original":
        return Method(name, "original")
    entry = reg.entries.get(name)
    if isinstance(entry, registry.BoosterEntry):
        if registry.is_hf_booster(entry):
            from paav_cli.export.hf_booster import booster_gguf

            booster_gguf(entry)  # converted now from a checkpoint on disk, else an error naming the pull
        else:
            registry.require_path(entry)  # assembles a packaged one; an error naming the pull for one not here
        return Method(name, "booster", entry)
    if isinstance(entry, registry.MutatorEntry):
        _check_mutator(entry)
        return Method(name, "mutator", entry)
    if name.endswith(".gguf") or Path(name).expanduser().is_file():
        return Method(name, "gguf", gguf_booster_entry(name))
    boosters = ", ".join(e.name for e in reg.by_role("boosters"))
    mutators = ", ".join(e.name for e in reg.by_role("mutators"))
    raise UserError(
        f"unknown method {name!r}; use original, a booster ({boosters}), a mutator ({mutators}) "
        "or the path of a .gguf file."
    )


def _check_mutator(entry: registry.MutatorEntry) -> None:
    if entry.backend == "openai":
        from paav_cli.llm.openai_api import api_key

        api_key(entry.api_key_env, entry.base_url)  # UserError now rather than after other methods ran
    else:
        registry.require_path(entry)


def gguf_booster_entry(path: str) -> registry.BoosterEntry:
    from paav_cli.enhance import booster_entry_for_file

    return booster_entry_for_file(path)


# ---------------------------------------------------------------------------------------------
# Rewriting


def rewrite(method: Method, records: list[PromptRecord], on_rewrite: OnRewrite, *, threads: int | None = None,
            progress=None) -> None:
    if not records:
        return
    run = {"original": _identity, "booster": _boost, "gguf": _boost, "mutator": _mutate}[method.kind]
    run(method, records, on_rewrite, threads=threads, progress=progress)


def _identity(method, records, on_rewrite, **_) -> None:
    for record in records:
        on_rewrite(record, record.prompt, False, 0.0, None)


def _boost(method: Method, records, on_rewrite, *, threads=None, progress=None) -> None:
    """Greedy, one variant, no budget trimming (the eval measures the booster's own output)."""
    from paav_cli.enhance import Booster, Settings, iter_jobs

    settings = Settings.resolve(n=1, seed=SEED, temperature=0.0)
    last = [time.perf_counter()]

    def on_result(job, result) -> None:
        now = time.perf_counter()
        # Jobs run in parallel batches: the time since the previous one finished, so that the mean
        # over a method is its wall time per prompt.
        on_rewrite(job.record, result.text, result.fallback, now - last[0], result.fallback_reason)
        last[0] = now
        if progress:
            progress.advance()

    with Booster(method.entry if method.kind == "gguf" else method.name, threads=threads, label=method.name) as booster:
        booster.run(iter_jobs(records, 1, SEED), settings, on_result)


def _mutate(method: Method, records, on_rewrite, *, progress=None, **_) -> None:
    from paav_cli.llm.mutators import load_mutator
    from paav_cli.train.chat import prompt_messages

    mutator = load_mutator(method.name)
    try:
        for record in records:
            started = time.perf_counter()
            raw = mutator.generate(prompt_messages(record.prompt), n=1, temperature=0.0,
                                   max_tokens=MUTATOR_MAX_TOKENS, seed=SEED)[0]
            text, reason = tidy_mutator_output(record.prompt, raw)
            fallback = reason is not None
            on_rewrite(record, record.prompt if fallback else text, fallback, time.perf_counter() - started, reason)
            if progress:
                progress.advance()
    finally:
        mutator.close()


def tidy_mutator_output(original: str, raw: str) -> tuple[str, str | None]:
    """(cleaned rewrite, problem or None): tags and a "New prompt:" label removed, cut-off sentence dropped.

    A chat LLM writes as many sentences as it likes, so only the sentence-count check of the
    booster validation is relaxed.
    """
    from paav_cli.text.clean import clean, problem

    text = raw.strip()
    if "<PROMPT>" in text:  # a base model prompted through the mutator transcript
        text = text.split("<PROMPT>", 1)[1].split("</PROMPT>", 1)[0]
    for label in ("New prompt:", "Refined prompt:", "Prompt:"):
        if text.lstrip().lower().startswith(label.lower()):
            text = text.lstrip()[len(label):]
    text = clean("", text.strip().strip('"'))
    return text, problem(original, text, min_sentences=1, max_sentences=10**6)
