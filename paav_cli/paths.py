"""Where paav keeps its state: the cache (assembled models, tiny test models) and the user config."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$PAAV_CACHE`, else `$XDG_CACHE_HOME/paav`, else `~/.cache/paav`."""
    if env := os.environ.get("PAAV_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "paav"


def config_dir() -> Path:
    """`$XDG_CONFIG_HOME/paav`, else `~/.config/paav`."""
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base).expanduser() / "paav"


def user_models_file() -> Path:
    """The user's registry additions: `$PAAV_MODELS`, else `<config>/models.toml`."""
    if env := os.environ.get("PAAV_MODELS"):
        return Path(env).expanduser()
    return config_dir() / "models.toml"


def renders_dir() -> Path:
    """The shared, content-addressed render cache: `<cache>/renders/<key>.mp4` + `<key>.json`."""
    return cache_dir() / "renders"


def scores_dir() -> Path:
    """Cached reward scores, one JSON file per (render, reward model)."""
    return cache_dir() / "scores"
