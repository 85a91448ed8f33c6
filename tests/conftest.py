"""Every test runs with its own config folder and no network; built models share one cache."""

from __future__ import annotations

import io
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


# Tests that still run `python -m paav_cli` as a process of its own (9 tests, 14 cases), and why; every
# other CLI test runs in process with paav(): a light call there takes under 0.1 s, against 0.5-2 s for
# a new interpreter that imports paav, typer and llama.cpp.
# With paav_process:
# - test_lazy_imports::test_help_and_enhance_import_nothing_heavy: what `paav --help` and `paav enhance`
#   import needs a fresh interpreter (this one already holds torch) and stand-in packages on PYTHONPATH.
# - test_lora_input::test_a_file_that_is_no_adapter_for_the_booster_is_one_sentence (4 cases): a wrong
#   adapter once crashed llama.cpp with a segfault, which in process would end the whole session.
# - test_enhance::test_piped_prompts_need_no_flags: a real pipe on stdin (`cat prompts.txt | paav`), and
#   an exit code through the real interpreter and `paav_cli/__main__.py`.
# With Popen or subprocess.run of their own:
# - test_enhance::test_kill_9_mid_batch_then_resume..., test_evolve::test_kill_9_mid_run_then_resume:
#   kill -9 mid run (the resume after it runs in process).
# - test_enhance_integrity: the first of two writers, killed with -9 so that its lock dies with it (2
#   tests; the refused second runs in process); stdout on /dev/full (3 cases) and a file size limit
#   (RLIMIT_FSIZE) on the child (1 test): both need the real file descriptors of a process.
# (Ctrl-C is tested in process: test_enhance raises KeyboardInterrupt inside cli.main.)


def paav_process(*args: str, input: str | bytes | None = None, env: dict | None = None, timeout: int = 300):
    """Run the real `paav` command line in a subprocess; returns CompletedProcess (text mode)."""
    full_env = {**os.environ, **(env or {})}
    data = input.encode() if isinstance(input, str) else input
    proc = subprocess.run(
        [sys.executable, "-m", "paav_cli", *args],
        input=data, capture_output=True, env=full_env, timeout=timeout, check=False,
    )
    proc.stdout = proc.stdout.decode("utf-8", errors="replace")
    proc.stderr = proc.stderr.decode("utf-8", errors="replace")
    return proc


class _Output:
    """sys.stdout or sys.stderr while paav() runs the command line in process.

    One object per stream for the whole session, so what binds the stream once and keeps it (a
    logging.StreamHandler made on a library's first import, a rich Console) writes into the output of
    the call running at the time, and between calls into the test's own output, as in a process of
    its own, rather than into a closed buffer of an earlier call. Like a pipe, it is no terminal and
    has no file descriptor: llama.cpp's own C-level writes go to fd 2, which pytest captures.
    """

    def __init__(self, name: str, errors: str):
        self._name, self._errors = name, errors
        self._target: io.TextIOWrapper | None = None

    def open_call(self) -> io.TextIOWrapper:
        self._target = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors=self._errors, write_through=True)
        return self._target

    def close_call(self) -> str:
        target, self._target = self._target, None
        if target.closed:  # paav closes stderr after a broken pipe; its text is then lost, as in a process
            return ""
        target.flush()
        return target.buffer.getvalue().decode("utf-8", errors="replace")

    def _current(self):
        if self._target is not None:
            return self._target
        outer = getattr(sys, self._name)
        return outer if outer is not self else getattr(sys, f"__{self._name}__")

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        raise io.UnsupportedOperation("fileno")

    def write(self, text: str) -> int:
        return self._current().write(text)

    def __getattr__(self, name: str):  # flush, buffer, encoding, close, closed, writelines...
        return getattr(self._current(), name)


_STDOUT, _STDERR = _Output("stdout", "strict"), _Output("stderr", "backslashreplace")


class _CallTimedOut(BaseException):
    """Raised in the command by paav()'s alarm; a BaseException, so that no `except Exception` in it
    swallows the timeout."""


def paav(*args: str, input: str | bytes | None = None, env: dict | None = None, timeout: int = 300):
    """Run the `paav` command line in this process, as `python -m paav_cli ARGS` would in its own, and
    return a CompletedProcess of text (returncode, stdout, stderr), like paav_process().

    typer's CliRunner.invoke does not fit: it calls the Click command itself, not paav_cli.cli.main, so
    paav's one-sentence errors and exit codes would not be what the user gets. This is the same
    isolation over main(): stdin from `input` (text or bytes; empty when None, never a terminal),
    stdout and stderr captured apart, `env` applied for this call only (PYTHONPATH too: its folders
    come first on sys.path meanwhile). The environment, working folder, sys.argv, sys.path and signal
    handlers are put back afterwards, whatever the command changed; an exception that escapes main()
    is a traceback on stderr and exit code 1, as the interpreter gives.
    A command that leaves a lock held or a thread running fails the test: in a process of its own the
    kernel would clean up after it, but a library caller would inherit it. Two things differ from a
    process: Python warnings go to pytest's warnings summary, not to stderr, and what C code writes to
    file descriptors 1 and 2 (llama.cpp's own prints) goes to pytest's capture.

    PAAV_TEST_CLI=process runs every call in a process of its own instead (as paav_process does).
    """
    if os.environ.get("PAAV_TEST_CLI") == "process":  # the old way, for comparing: a process per call
        return paav_process(*args, input=input, env=env, timeout=timeout)
    import signal
    import threading
    import traceback

    from paav_cli import cli

    saved_env, saved_cwd, saved_argv = dict(os.environ), os.getcwd(), sys.argv
    saved_streams = sys.stdin, sys.stdout, sys.stderr
    saved_signals = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)}
    threads_before = set(threading.enumerate())
    data = input.encode() if isinstance(input, str) else (input or b"")
    for key, value in (env or {}).items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    # PYTHONPATH in `env` reaches this interpreter as it would a new one: first on sys.path, for this call.
    saved_path, modules_before = list(sys.path), set(sys.modules)
    extra_path = [p for p in (env or {}).get("PYTHONPATH", "").split(os.pathsep) if p]
    if extra_path:
        import importlib

        sys.path[:0] = extra_path
        importlib.invalidate_caches()
    sys.argv = ["paav", *args]
    sys.stdin = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")
    sys.stdout, sys.stderr = _STDOUT, _STDERR
    _STDOUT.open_call()
    _STDERR.open_call()
    alarm = threading.current_thread() is threading.main_thread()

    def timed_out(signum, frame):
        raise _CallTimedOut

    if alarm:
        signal.signal(signal.SIGALRM, timed_out)
        signal.setitimer(signal.ITIMER_REAL, timeout)
    expired = False
    try:
        try:
            code = cli.main(list(args))
        except _CallTimedOut:
            expired = True
            code = -signal.SIGKILL
        except SystemExit as e:  # as the interpreter turns sys.exit(X) into an exit code
            if e.code is None or isinstance(e.code, int):
                code = e.code or 0
            else:
                print(e.code, file=sys.stderr)
                code = 1
        except Exception:  # noqa: BLE001 - what escapes main() is the interpreter's traceback and exit 1
            traceback.print_exc(file=sys.stderr)
            code = 1
    finally:
        if alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
        for signum, handler in saved_signals.items():
            if signal.getsignal(signum) is not handler:
                signal.signal(signum, handler)
        stdout, stderr = _STDOUT.close_call(), _STDERR.close_call()
        sys.stdin, sys.stdout, sys.stderr = saved_streams
        sys.argv = saved_argv
        if extra_path:  # and what was imported from there is forgotten, as a process would
            sys.path[:] = saved_path
            for name in set(sys.modules) - modules_before:
                file = getattr(sys.modules[name], "__file__", None) or ""
                if any(Path(file).is_relative_to(folder) for folder in extra_path):
                    del sys.modules[name]
        os.chdir(saved_cwd)
        if os.environ != saved_env:
            os.environ.clear()
            os.environ.update(saved_env)
    proc = subprocess.CompletedProcess(["paav", *args], code, stdout, stderr)
    if expired:
        raise subprocess.TimeoutExpired(proc.args, timeout, output=stdout, stderr=stderr)
    _no_leftovers(proc, threads_before)
    return proc


def _no_leftovers(proc, threads_before: set) -> None:
    import threading

    lock = getattr(sys.modules.get("paav_cli.runs"), "FileLock", None)
    held = dict(lock._held) if lock is not None else {}
    for fd, _ in held.values():  # released here, so that one leak fails one test, not every later one
        os.close(fd)
        lock._held.clear()
    assert not held, f"`paav {' '.join(proc.args[1:])}` returned {proc.returncode} still holding the locks {sorted(held)}"
    left = [t for t in set(threading.enumerate()) - threads_before if not t.daemon]
    for t in left:
        t.join(timeout=5)
    left = [t.name for t in left if t.is_alive()]
    assert not left, f"`paav {' '.join(proc.args[1:])}` returned {proc.returncode} leaving threads running: {left}"


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


# -- paav serve: the booster behind the server, shared by test_serve*.py ----------------------


@pytest.fixture(scope="module")
def boosters(tiny_models, shared_cache):
    """(served, reference): the batcher's booster and one of the test's own (one booster is not
    safe to share between threads)."""
    from paav_cli import load_booster

    with pytest.MonkeyPatch.context() as m:
        m.setenv("PAAV_CACHE", str(shared_cache))
        with load_booster("tiny", threads=1, parallel=8) as served, load_booster("tiny", threads=1) as reference:
            yield served, reference


@pytest.fixture(scope="module")
def reference(boosters):
    return boosters[1]


@pytest.fixture(scope="module")
def batcher(boosters):
    from paav_cli.serve.batcher import Batcher

    b = Batcher(boosters[0])
    yield b
    b.close()
