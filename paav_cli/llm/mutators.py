"""Mutators by registry name: the LLM that rewrites prompts during evolution, behind TextGenerator."""

from __future__ import annotations

from pathlib import Path

from paav_cli import registry
from paav_cli.errors import UserError
from paav_cli.registry import MutatorEntry

# A base model (no chat template) is prompted with the plain transcript and this cue, so that
# what it writes next is already inside the first tag.
BASE_MODEL_CUE = "\n\nNew prompts:\n<PROMPT>"


class LlamaCppMutator:
    """A local GGUF: its chat template when it has one, else a plain transcript for base models."""

    parallel_safe = False  # one model in this process: requests run one after another

    def __init__(self, path: Path):
        from paav_cli.llm.llamacpp import LlamaCppModel

        self.model = LlamaCppModel(path, max_context=8192)

    def generate(self, messages: list[dict], *, n: int = 1, temperature: float = 1.0, max_tokens: int = 1024,
                 seed: int | None = None) -> list[str]:
        if self.model.chat_template:
            return self.model.generate(messages, n=n, temperature=temperature, max_tokens=max_tokens, seed=seed)
        from paav_cli.llm.llamacpp import Sampling

        text = "\n\n".join(m["content"] for m in messages) + BASE_MODEL_CUE
        tokens = self.model.encode_prompt(text)
        base = 0 if seed is None else seed
        out = self.model.complete([tokens] * n, seeds=[base + i for i in range(n)],
                                  sampling=Sampling(temperature=temperature, max_tokens=max_tokens))
        return ["<PROMPT>" + c.text for c in out]

    def close(self) -> None:
        self.model.close()


def load_mutator(name: str, *, adapter: Path | None = None):
    entry = registry.Registry.load().get(name, "mutators")
    assert isinstance(entry, MutatorEntry)
    if entry.backend == "openai":
        from paav_cli.llm.openai_api import OpenAIChat

        return OpenAIChat(entry.model or entry.name, base_url=entry.base_url, api_key_env=entry.api_key_env,
                          timeout=entry.timeout, retries=entry.retries)
    path = registry.require_path(entry)
    if entry.backend == "llamacpp":
        return LlamaCppMutator(path)
    if entry.backend == "hf":
        from paav_cli.llm.hf import HFChat

        return HFChat(path, adapter=adapter)
    raise UserError(f"mutator {name!r} has an unknown backend {entry.backend!r}.")
