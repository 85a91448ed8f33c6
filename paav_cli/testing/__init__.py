"""Builders of tiny models of every kind paav loads, for tests and CPU demos.

Registry entries with `builder = "tiny"` are built here on first use, into paav's cache, and then
loaded by exactly the code that loads the real models.
"""

from __future__ import annotations

from pathlib import Path

from paav_cli.errors import UserError

# The file an entry names decides what is built.
_GGUF_BUILDERS = {
    "tiny-booster.gguf": "paav_cli.testing.tiny_gguf:build_tiny_gguf",
    "tiny-chat-booster.gguf": "paav_cli.testing.tiny_gguf:build_tiny_gguf",
}


def tiny_model_path(entry, folder: Path) -> Path:
    return Path(folder) / (entry.file or entry.name)


def build_tiny_model(entry, folder: Path) -> Path:
    import importlib

    target = tiny_model_path(entry, folder)
    spec = _GGUF_BUILDERS.get(target.name)
    if spec is None:
        raise UserError(f"no tiny builder makes {target.name!r} (entry {entry.name!r}); fix its `file`.")
    module, func = spec.split(":")
    return getattr(importlib.import_module(module), func)(target)
