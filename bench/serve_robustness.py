"""`paav serve` under abuse: 10,000 requests in a bounded loop, and its memory before and after.

    python bench/serve_robustness.py [--model tiny] [--requests 10000]

Starts `paav serve`, warms it up, then sends, in turn: malformed JSON, an oversized body, an unknown
model, a client that disconnects in the middle of a stream, and (every 20th) a real enhancement.
Prints how each kind was answered, the server's resident memory (VmRSS) after the warm-up and at the
end, that it still answers, and its exit code on SIGTERM (0 is a clean stop).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status", encoding="ascii"):  # noqa: SIM115 - read once
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def post(port: int, path: str, data: bytes) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as e:
        e.read()
        return e.code


def disconnect_mid_stream(port: int, model: str) -> int:
    body = json.dumps({"model": model, "stream": True, "messages": [{"role": "user", "content": "a cat"}]})
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
        raw.recv(64)  # the stream has begun; now go away
    return 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--requests", type=int, default=10_000)
    args = ap.parse_args()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "paav_cli", "serve", "-m", args.model, "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    try:
        good = json.dumps({"prompt": "a cat playing piano", "model": args.model, "seed": 0,
                           "max_tokens": 32}).encode()
        deadline = time.monotonic() + 120
        while True:
            try:
                post(port, "/v1/enhance", good)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    sys.exit("paav serve did not start")
                time.sleep(0.2)
        for _ in range(50):  # warm-up: every kind once, so first-use allocations are behind us
            post(port, "/v1/enhance", good)
        before = rss_mb(server.pid)
        kinds = [("malformed JSON", lambda: post(port, "/v1/enhance", b"{not json")),
                 ("oversized body", lambda: post(port, "/v1/enhance", b" " * 100_000)),
                 ("unknown model", lambda: post(port, "/v1/enhance", json.dumps({"prompt": "a", "model": "nope"}).encode())),
                 ("disconnect mid-stream", lambda: disconnect_mid_stream(port, args.model))]
        answers: dict[str, Counter] = {name: Counter() for name, _ in kinds}
        answers["enhancement"] = Counter()
        started = time.monotonic()
        for i in range(args.requests):
            if i % 20 == 0:
                answers["enhancement"][post(port, "/v1/enhance", good)] += 1
                continue
            name, send = kinds[i % len(kinds)]
            answers[name][send()] += 1
        seconds = time.monotonic() - started
        after = rss_mb(server.pid)
        still = post(port, "/v1/enhance", good)
        print(f"{args.requests} requests in {seconds:.1f} s against paav serve -m {args.model}")
        for name, counts in answers.items():
            print(f"  {name:<22} {dict(counts)}" + ("  (0: the client left)" if name.startswith("disconnect") else ""))
        print(f"server RSS: {before:.1f} MB after warm-up, {after:.1f} MB after ({after - before:+.1f} MB)")
        print(f"still answers: {still}")
        server.send_signal(signal.SIGTERM)
        print(f"exit code on SIGTERM: {server.wait(60)}")
    finally:
        if server.poll() is None:
            server.kill()


if __name__ == "__main__":
    main()
