"""Text backends behind one small interface (DESIGN.md): local GGUF models through llama.cpp now;
OpenAI-compatible APIs and transformers models join them for evolution and training.

Nothing here imports a backend's library at module level: `paav enhance` must start fast.
"""

from __future__ import annotations

from typing import Protocol


class TextGenerator(Protocol):
    def generate(
        self, messages: list[dict], *, n: int, temperature: float, max_tokens: int, seed: int | None
    ) -> list[str]: ...
