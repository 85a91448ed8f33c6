"""Text backends behind one small interface (DESIGN.md): local GGUF models through llama.cpp now;
OpenAI-compatible APIs and transformers models join them for evolution and training.

Nothing here imports a backend's library at module level: `paav enhance` must start fast.
"""

from __future__ import annotations

from typing import Protocol


class TextGenerator(Protocol):
    """What evolve's mutator, rank's sampler and eval's rewriters are: an LLM that answers chat messages."""

    # Whether `generate` may run in several threads at once (an API client: yes; one local model: no,
    # so callers run its requests one after another).
    parallel_safe: bool

    def generate(
        self, messages: list[dict], *, n: int, temperature: float, max_tokens: int, seed: int | None
    ) -> list[str]:
        """`n` answers to the conversation (answer i sampled with seed + i when a seed is given)."""
        ...

    def close(self) -> None:
        """Free the model or the connection; the generator is not used again."""
        ...
