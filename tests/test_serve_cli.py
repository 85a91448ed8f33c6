"""`paav serve` from the command line: safe defaults, one booster load, a clean stop on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from conftest import assert_user_error, paav


def test_without_a_server_answering_paav_enhance_loads_the_booster_itself(monkeypatch):
    monkeypatch.setenv("PAAV_SERVER", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    proc = paav("-m", "tiny", "a cat playing piano", "--seed", "1")
    assert proc.returncode == 0 and proc.stdout.strip() and not proc.stderr, proc.stderr


def test_serving_beyond_this_machine_needs_an_api_key_from_the_environment(monkeypatch):
    monkeypatch.delenv("PAAV_API_KEY", raising=False)
    assert_user_error(paav("serve", "--host", "0.0.0.0"), "set PAAV_API_KEY")
    assert_user_error(paav("serve", "-m", "tiny", "-m", "tiny"), "names a booster twice")
    assert_user_error(paav("serve", "-m", "no-such-booster"), "unknown booster 'no-such-booster'")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def enhance_on(port: int, proc, body: dict) -> dict:
    data = json.dumps(body).encode()
    deadline = time.monotonic() + 60
    while True:
        try:
            request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/enhance", data=data,
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
            time.sleep(0.2)


def test_paav_serve_answers_paav_enhance_through_paav_server_then_stops_cleanly_on_sigterm(monkeypatch):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "paav_cli", "serve", "-m", "tiny", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy())
    try:
        answer = enhance_on(port, proc, {"prompt": "a cat playing piano", "seed": 1, "model": "tiny"})
        assert answer["results"][0]["prompt"] == "a cat playing piano" and answer["results"][0]["text"]
        local = json.loads(paav("-m", "tiny", "a cat playing piano", "--seed", "1", "--json").stdout)

        from paav_cli.enhance import Booster

        def no_local_model(*args, **kwargs):
            raise AssertionError("paav enhance loaded the booster although a server answers")

        with monkeypatch.context() as m:
            m.setenv("PAAV_SERVER", f"http://127.0.0.1:{port}")
            m.setattr(Booster, "__init__", no_local_model)
            served = paav("-m", "tiny", "a cat playing piano", "--seed", "1", "--json")
        assert served.returncode == 0, served.stderr
        assert {k: v for k, v in json.loads(served.stdout).items() if k != "seconds"} == {
            k: v for k, v in local.items() if k != "seconds"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert b"Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
