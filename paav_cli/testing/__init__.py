"""Builders of tiny models of every kind paav loads, for tests and CPU demos.

Registry entries with `builder = "tiny"` (paav_cli/testing/tiny-models.toml) are built here into
paav's cache, and then loaded by exactly the code that loads the real models. The registry only finds
them: they are built by the test session (tests/conftest.py), by `paav models pull NAME` and by
`paav run` for the ones its recipe names, all through `build_tiny_model`.
"""

from __future__ import annotations

from pathlib import Path

from paav_cli.errors import UserError

# The file (or folder) an entry names decides what is built.
_BUILDERS = {
    "tiny-booster.gguf": "paav_cli.testing.tiny_gguf:build_tiny_gguf",
    "tiny-chat-booster.gguf": "paav_cli.testing.tiny_gguf:build_tiny_gguf",
    "tiny-cogvideox": "paav_cli.testing.tiny_video:build_tiny_cogvideox",
    "tiny-wan": "paav_cli.testing.tiny_video:build_tiny_wan",
    "tiny-ltx": "paav_cli.testing.tiny_video:build_tiny_ltx",
    "tiny-sd": "paav_cli.testing.tiny_video:build_tiny_sd",
    "tiny-videoscore": "paav_cli.testing.tiny_videoscore:build_tiny_videoscore",
    "tiny-aesthetic-clip": "paav_cli.testing.tiny_clip:build_tiny_open_clip",
    "tiny-aesthetic.pth": "paav_cli.testing.tiny_clip:build_tiny_aesthetic_head",
    "tiny-aesthetic-v2.pth": "paav_cli.testing.tiny_clip:build_tiny_aesthetic_mlp",
    "tiny-mps": "paav_cli.testing.tiny_mps:build_tiny_mps",
    "tiny-llama": "paav_cli.testing.tiny_llm:build_tiny_llama",
    "tiny-qwen2": "paav_cli.testing.tiny_llm:build_tiny_qwen2",
    "tiny-gemma3": "paav_cli.testing.tiny_llm:build_tiny_gemma3",
}


def tiny_model_path(entry, folder: Path | None = None) -> Path:
    """Where `entry` is built (inside `folder`, else its folder in paav's cache)."""
    from paav_cli.registry import built_path

    return built_path(entry, folder)


def build_tiny_models(reg=None) -> dict[str, Path]:
    """Every tiny model of the registry built into paav's cache, skipping those already there."""
    from paav_cli.registry import Registry, source_path

    reg = reg or Registry.load()
    tiny = [e for e in reg.entries.values() if e.builder == "tiny"]
    return {e.name: source_path(e) or build_tiny_model(e) for e in tiny}


def build_tiny_model(entry, folder: Path | None = None) -> Path:
    """Build `entry` (again, if it is there) into `folder`, else its folder in paav's cache."""
    import importlib
    import shutil
    import tempfile

    target = tiny_model_path(entry, folder)
    spec = _BUILDERS.get(target.name)
    if spec is None:
        raise UserError(f"no tiny builder makes {target.name!r} (entry {entry.name!r}); fix its `file`.")
    module, func = spec.split(":")
    if target.suffix != ".gguf":
        from paav_cli.libs import quiet

        quiet()
    build = getattr(importlib.import_module(module), func)
    if target.suffix in (".gguf", ".pth"):
        return build(target)
    # Folders are built beside their place and renamed into it, so a kill never leaves half a model.
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        build(tmp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
