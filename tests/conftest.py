"""Every test runs with its own config folder and no network; built models share one cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    # Assembling the real default GGUF (253 MB) once per session, not once per test.
    return tmp_path_factory.mktemp("paav-cache")


@pytest.fixture(scope="session", autouse=True)
def tiny_models(shared_cache) -> dict[str, Path]:
    # Tiny models are test fixtures: the registry only finds them, so the session builds them all
    # once (seconds), before any test or `paav` subprocess looks for one.
    from paav_cli.testing import build_tiny_models

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PAAV_CACHE", str(shared_cache))
        mp.setenv("HF_HUB_OFFLINE", "1")
        return build_tiny_models()


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path, shared_cache):
    monkeypatch.setenv("PAAV_CACHE", str(shared_cache))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("PAAV_MODELS", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    yield


def paav(*args: str, input: str | bytes | None = None, env: dict | None = None, timeout: int = 300):
    """Run the real `paav` command line in a subprocess; returns CompletedProcess (text mode)."""
    full_env = {**os.environ, **(env or {})}
    data = input.encode() if isinstance(input, str) else input
    proc = subprocess.run(
        [sys.executable, "-m", "paav_cli", *args],
        input=data, capture_output=True, env=full_env, timeout=timeout,
    )
    proc.stdout = proc.stdout.decode("utf-8", errors="replace")
    proc.stderr = proc.stderr.decode("utf-8", errors="replace")
    return proc


def user_models(tmp_path: Path, text: str) -> Path:
    """Write the user's registry additions where paav looks for them."""
    path = tmp_path / "config" / "paav" / "models.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def assert_user_error(proc, *fragments: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
