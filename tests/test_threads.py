"""The default number of llama.cpp threads leaves out the cores other processes keep busy."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from paav_cli.llm import llamacpp


def test_default_threads_are_the_free_cores_and_at_least_one(monkeypatch):
    monkeypatch.setattr(llamacpp.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    for busy, expected in [(0, 4), (1, 3), (3, 1), (9, 1)]:
        monkeypatch.setattr(llamacpp, "_busy_cores", lambda busy=busy: busy)
        assert llamacpp._default_threads() == expected


def test_this_process_own_running_threads_are_not_busy_cores(monkeypatch):
    # After import, llama.cpp's OpenMP pool keeps a thread running: an idle machine's queue holds 2.
    monkeypatch.setattr(llamacpp, "_run_queue", lambda: 2)
    monkeypatch.setattr(llamacpp, "_own_running_threads", lambda: 2)
    assert llamacpp._busy_cores() == 0
    monkeypatch.setattr(llamacpp, "_run_queue", lambda: 3)
    assert llamacpp._busy_cores() == 1
    monkeypatch.setattr(llamacpp, "_run_queue", lambda: None)  # not Linux
    assert llamacpp._busy_cores() == 0


@pytest.mark.skipif(not Path("/proc/loadavg").is_file(), reason="reads Linux's run queue")
def test_a_busy_process_is_seen_in_the_run_queue():
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        time.sleep(0.5)
        assert llamacpp._busy_cores() >= 1  # two burners on two cores: at least one runs at any instant
    finally:
        for b in burners:
            b.kill()
            b.wait()
