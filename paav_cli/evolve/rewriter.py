"""The mutator evolution uses: a local GGUF that cannot follow the Table 6 instruction proposes rewrites.

A local GGUF that cannot follow a chat instruction (a base model, or one registered as a completion
or few-shot booster) is not sent the paper's Table 6 instruction: read as a transcript it mostly
echoes the listing, its placeholders and its scores (evolving 3 prompts with `tiny-cpu` kept 15 of
the 36 rewrites it asked for). Such a mutator `proposes_rewrites` instead: the engine asks it for
sampled rewrites, decoded the way the booster on that GGUF decodes them (`rewrite`). Every other
mutator is `paav_cli.llm.mutators.load_mutator`'s.
"""

from __future__ import annotations

from pathlib import Path

from paav_cli import registry
from paav_cli.enhance import Booster, booster_entry_for_file
from paav_cli.llm import mutators
from paav_cli.registry import BoosterEntry, MutatorEntry

# Rewrites need sampling to differ; a recipe that asks for greedy answers gets the booster's default.
REWRITE_TEMPERATURE = 0.8


class BoosterRewriter:
    """A local GGUF loaded as the booster that uses it (its format, LoRA adapter and context), which
    proposes candidates with `rewrite`; `generate` answers a plain transcript as `LlamaCppMutator` does."""

    parallel_safe = False  # one model in this process: requests run one after another
    proposes_rewrites = True  # the engine asks for `rewrite`s instead of sending the Table 6 instruction

    def __init__(self, booster: BoosterEntry):
        self.booster = Booster(booster)
        self.model = self.booster.model

    def generate(self, messages: list[dict], *, n: int = 1, temperature: float = 1.0, max_tokens: int = 1024,
                 seed: int | None = None) -> list[str]:
        return mutators.generate_on(self.model, messages, n=n, temperature=temperature, max_tokens=max_tokens,
                                    seed=seed)

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
        self.booster.close()


def booster_of(entry: MutatorEntry, path: Path) -> BoosterEntry | None:
    """How a local GGUF mutator is prompted when it cannot follow chat instructions, else None.

    The registry decides first: the first registered booster that loads the same GGUF (the same
    sha256 pin, or the same file on disk) says how that model is prompted, so `default-gguf` is the
    `default` booster (completion format, with its adapter) and a GGUF registered only as a chat
    booster stays a chat mutator. A GGUF no booster uses is read from its metadata: without a chat
    template it is a base model, prompted as a few-shot booster.
    """
    booster = mutators.registered_booster(entry, path)
    if booster is None:
        booster = booster_entry_for_file(str(path))
    return None if booster.prompt_format == "chat" else booster


def load_evolution_mutator(name: str, *, adapter: Path | None = None):
    """The mutator `paav evolve` asks: a `BoosterRewriter` for a local GGUF that `booster_of` says is a
    completion or few-shot booster, else `load_mutator`'s (chat, transcript, API or transformers)."""
    entry = registry.Registry.load().get(name, "mutators")
    if isinstance(entry, MutatorEntry) and entry.backend == "llamacpp":
        booster = booster_of(entry, registry.require_path(entry))
        if booster is not None:
            return BoosterRewriter(booster)
    return mutators.load_mutator(name, adapter=adapter)
