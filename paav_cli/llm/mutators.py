"""Mutators by registry name: the LLM that rewrites prompts during evolution, behind TextGenerator.

A local GGUF is sent the paper's Table 6 instruction: through its chat template, or, for a base
model, as a plain transcript that ends inside the first tag. One that cannot follow that instruction
at all proposes rewrites instead; that mutator is built on the booster, above this layer
(`paav_cli.evolve.rewriter`).
"""

from __future__ import annotations

from pathlib import Path

from paav_cli import registry
from paav_cli.errors import UserError
from paav_cli.registry import BoosterEntry, MutatorEntry

# A base model (no chat template) is prompted with the plain transcript and this cue, so that
# what it writes next is already inside the first tag.
BASE_MODEL_CUE = "\n\nNew prompts:\n<PROMPT>"


class LlamaCppMutator:
    """A local GGUF: its chat template when it has one, else a plain transcript for base models.

    `lora_path` and `max_context` load it with an adapter and a context of its own (`load_mutator`
    gives those of the completion or few-shot booster registered on the same GGUF).
    """

    parallel_safe = False  # one model in this process: requests run one after another
    proposes_rewrites = False  # it is sent the Table 6 instruction

    def __init__(self, path: Path, *, lora_path: Path | None = None, max_context: int = 8192):
        from paav_cli.llm.llamacpp import LlamaCppModel

        self.model = LlamaCppModel(path, max_context=max_context, lora_path=lora_path)

    def generate(self, messages: list[dict], *, n: int = 1, temperature: float = 1.0, max_tokens: int = 1024,
                 seed: int | None = None) -> list[str]:
        return generate_on(self.model, messages, n=n, temperature=temperature, max_tokens=max_tokens, seed=seed)

    def close(self) -> None:
        self.model.close()


def generate_on(model, messages: list[dict], *, n: int, temperature: float, max_tokens: int,
                seed: int | None) -> list[str]:
    """`n` answers of a loaded LlamaCppModel to `messages`: through its chat template, else as a transcript."""
    if model.chat_template:
        return model.generate(messages, n=n, temperature=temperature, max_tokens=max_tokens, seed=seed)
    from paav_cli.llm.llamacpp import Sampling

    text = "\n\n".join(m["content"] for m in messages) + BASE_MODEL_CUE
    tokens = model.encode_prompt(text)
    base = 0 if seed is None else seed
    out = model.complete([tokens] * n, seeds=[base + i for i in range(n)],
                         sampling=Sampling(temperature=temperature, max_tokens=max_tokens))
    return ["<PROMPT>" + c.text for c in out]


def registered_booster(entry: MutatorEntry, path: Path) -> BoosterEntry | None:
    """The first registered booster that loads the same GGUF as this mutator (the same sha256 pin, or
    the same file on disk), whatever its prompt format; None when no registered booster does."""
    pin = entry.sha256.get(entry.file or "")
    here = Path(path).resolve()
    for booster in registry.Registry.load().by_role("boosters"):
        if not isinstance(booster, BoosterEntry) or registry.is_hf_booster(booster):
            continue
        theirs = booster.sha256.get(booster.file or "")
        local = registry.local_path(booster)
        if (pin and theirs and pin == theirs) or (local is not None and Path(local).resolve() == here):
            return booster
    return None


def load_mutator(name: str, *, adapter: Path | None = None):
    entry = registry.Registry.load().get(name, "mutators")
    assert isinstance(entry, MutatorEntry)
    if entry.backend == "openai":
        from paav_cli.llm.openai_api import OpenAIChat

        return OpenAIChat(entry.model or entry.name, base_url=entry.base_url, api_key_env=entry.api_key_env,
                          timeout=entry.timeout, retries=entry.retries)
    path = registry.require_path(entry)
    if entry.backend == "llamacpp":
        booster = registered_booster(entry, path)
        if booster is None or booster.prompt_format == "chat":
            return LlamaCppMutator(path)
        # The GGUF of a completion or few-shot booster is loaded as that booster loads it: with its
        # adapter and its context (what `paav eval` has measured such a mutator with).
        lora = registry.expand_path(booster.lora) if booster.lora else None
        return LlamaCppMutator(path, lora_path=lora, max_context=booster.context)
    if entry.backend == "hf":
        from paav_cli.llm.hf import HFChat

        return HFChat(path, adapter=adapter)
    raise UserError(f"mutator {name!r} has an unknown backend {entry.backend!r}.")
