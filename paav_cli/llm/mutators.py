"""Mutators by registry name: the LLM that rewrites prompts during evolution, behind TextGenerator.

A local GGUF that cannot follow a chat instruction (a base model, or one registered as a completion
or few-shot booster) is not sent the paper's Table 6 instruction: read as a transcript it mostly
echoes the listing, its placeholders and its scores (evolving 3 prompts with `tiny-cpu` kept 15 of
the 36 rewrites it asked for). Such a mutator `proposes_rewrites` instead: the engine asks it for
sampled rewrites, decoded the way the booster on that GGUF decodes them (`rewrite`).
"""

from __future__ import annotations

from pathlib import Path

from paav_cli import registry
from paav_cli.errors import UserError
from paav_cli.registry import BoosterEntry, MutatorEntry

# A base model (no chat template) is prompted with the plain transcript and this cue, so that
# what it writes next is already inside the first tag.
BASE_MODEL_CUE = "\n\nNew prompts:\n<PROMPT>"
# Rewrites need sampling to differ; a recipe that asks for greedy answers gets the booster's default.
REWRITE_TEMPERATURE = 0.8


class LlamaCppMutator:
    """A local GGUF: its chat template when it has one, else a plain transcript for base models.

    Given `booster` (the entry of the booster that uses this GGUF), it is loaded as that booster
    (its format, LoRA adapter and context) and proposes candidates with `rewrite`.
    """

    parallel_safe = False  # one model in this process: requests run one after another

    def __init__(self, path: Path, *, booster: BoosterEntry | None = None):
        self.booster = None
        if booster is None:
            from paav_cli.llm.llamacpp import LlamaCppModel

            self.model = LlamaCppModel(path, max_context=8192)
        else:
            from paav_cli.enhance import Booster

            self.booster = Booster(booster)
            self.model = self.booster.model

    @property
    def proposes_rewrites(self) -> bool:
        """Whether the engine should ask for `rewrite`s instead of sending the Table 6 instruction."""
        return self.booster is not None

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

    def rewrite(self, prompts: list[str], original: str, *, seeds: list[int], temperature: float,
                max_tokens: int) -> list[tuple[str, str | None]]:
        """(text, problem or None) of one sampled rewrite of each of `prompts`, all decoded in one batch.

        Each is the booster's own input for that prompt, except that the forced opening of the answer
        is always `original` (the source prompt) as a sentence: a rewrite of an earlier rewrite then
        borrows its details yet keeps the source's words first and the booster's usual length, where
        forcing the earlier rewrite itself as the opening would only append to it, growing past the
        sentence limit within two iterations. The text is cleaned and checked as `enhance` does.
        """
        from paav_cli.llm.llamacpp import Sampling
        from paav_cli.text.clean import clean, drop_copied_sentences, problem
        from paav_cli.text.formats import as_sentence, build_request

        opening = as_sentence(original)
        inputs, stop = [], []
        for prompt in prompts:
            req = build_request(self.booster.entry.prompt_format, prompt)
            # completion and few-shot inputs end with the forced opening (formats.py)
            assert req.text is not None and req.text.endswith(req.prefix)
            inputs.append(self.model.encode_prompt(req.text[: len(req.text) - len(req.prefix)] + opening))
            stop = req.stop
        room = self.model.max_context - max(len(t) for t in inputs) - 1
        sampling = Sampling(temperature=temperature if temperature > 0 else REWRITE_TEMPERATURE,
                            max_tokens=max(1, min(max_tokens, room)))
        out = self.model.complete(inputs, seeds=seeds, sampling=sampling, stop=stop,
                                  stable_prefix=self.booster.stable_prefix)
        results = []
        for c in out:
            text = drop_copied_sentences(clean(opening, c.text))
            results.append((text, problem(original, text)))
        return results

    def close(self) -> None:
        if self.booster is not None:
            self.booster.close()
        else:
            self.model.close()


def booster_of(entry: MutatorEntry, path: Path) -> BoosterEntry | None:
    """How a local GGUF mutator is prompted when it cannot follow chat instructions, else None.

    The registry decides first: the first registered booster that loads the same GGUF (the same
    sha256 pin, or the same file on disk) says how that model is prompted, so `default-gguf` is the
    `default` booster (completion format, with its adapter) and a GGUF registered only as a chat
    booster stays a chat mutator. A GGUF no booster uses is read from its metadata: without a chat
    template it is a base model, prompted as a few-shot booster.
    """
    pin = entry.sha256.get(entry.file or "")
    here = Path(path).resolve()
    for booster in registry.Registry.load().by_role("boosters"):
        if not isinstance(booster, BoosterEntry) or registry.is_hf_booster(booster):
            continue
        theirs = booster.sha256.get(booster.file or "")
        local = registry.local_path(booster)
        if (pin and theirs and pin == theirs) or (local is not None and Path(local).resolve() == here):
            return None if booster.prompt_format == "chat" else booster
    from paav_cli.enhance import booster_entry_for_file

    own = booster_entry_for_file(str(path))
    return None if own.prompt_format == "chat" else own


def load_mutator(name: str, *, adapter: Path | None = None):
    entry = registry.Registry.load().get(name, "mutators")
    assert isinstance(entry, MutatorEntry)
    if entry.backend == "openai":
        from paav_cli.llm.openai_api import OpenAIChat

        return OpenAIChat(entry.model or entry.name, base_url=entry.base_url, api_key_env=entry.api_key_env,
                          timeout=entry.timeout, retries=entry.retries)
    path = registry.require_path(entry)
    if entry.backend == "llamacpp":
        return LlamaCppMutator(path, booster=booster_of(entry, path))
    if entry.backend == "hf":
        from paav_cli.llm.hf import HFChat

        return HFChat(path, adapter=adapter)
    raise UserError(f"mutator {name!r} has an unknown backend {entry.backend!r}.")
