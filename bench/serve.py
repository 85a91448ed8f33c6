"""`paav serve` under load: aggregate tokens/s with 1, 8 and 32 concurrent clients, against one client
and against the same booster batched in process, measured in one run.

    python bench/serve.py [--model default] [--clients 1,8,32] [--requests 2] [--max-tokens 96]

Each client sends `--requests` greedy `/v1/enhance` requests one after another (distinct prompts,
so nothing is cached). Prints per client count: aggregate generated tokens/s, its ratio to one
client and to `enhance_many` over the same prompts in process (goals at 32 clients: >= 1.8x one
client, within 15 % of in process), and p50 / p95 latency. Then the overhead of one warm request
through the server over the model's own decode time (goal: <= 0.15 s).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from paav_cli import load_booster
from paav_cli.serve.batcher import Batcher


def prompts(n: int) -> list[str]:
    lines = [x.strip() for x in (REPO / "benchmarks" / "vbench_test.txt").read_text().splitlines() if x.strip()]
    return [lines[i % len(lines)] + ("" if i < len(lines) else f", take {i}") for i in range(n)]


def start_server(batchers: dict) -> tuple[int, object]:
    import uvicorn

    from paav_cli.serve.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(batchers), host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return port, server


def request(port: int, model: str, prompt: str, max_tokens: int) -> tuple[float, dict]:
    body = json.dumps({"prompt": prompt, "model": model, "seed": 0, "max_tokens": max_tokens}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/enhance", data=body,
                                 headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as response:
        answer = json.loads(response.read())
    return time.perf_counter() - started, answer["results"][0]


def load(port: int, model: str, texts: list[str], clients: int, per_client: int, max_tokens: int) -> dict:
    latencies, tokens, lock = [], [0], threading.Lock()

    def client(k: int) -> None:
        for j in range(per_client):
            seconds, result = request(port, model, texts[k * per_client + j], max_tokens)
            with lock:
                latencies.append(seconds)
                tokens[0] += result["tokens"]

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    latencies.sort()
    return {"tps": tokens[0] / wall, "p50": statistics.median(latencies),
            "p95": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--requests", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=96)
    args = ap.parse_args()
    counts = [int(x) for x in args.clients.split(",")]
    booster = load_booster(args.model, parallel=max(counts))
    texts = prompts(max(counts) * args.requests)

    started = time.perf_counter()
    batched = list(booster.enhance_many(texts[: max(counts)], seed=0, max_tokens=args.max_tokens))
    inproc = sum(e.tokens for e in batched) / (time.perf_counter() - started)

    batcher = Batcher(booster, max_queue=4 * max(counts))
    port, server = start_server({args.model: batcher})
    try:
        request(port, args.model, "a warm-up prompt", args.max_tokens)
        print(f"model {args.model}, {args.requests} requests per client, max {args.max_tokens} tokens")
        print(f"in process, {max(counts)} prompts batched: {inproc:7.1f} tok/s")
        print(f"{'clients':>7} {'tok/s':>8} {'x 1 client':>10} {'x in process':>12} {'p50 s':>7} {'p95 s':>7}")
        one = None
        for n in counts:
            r = load(port, args.model, texts, n, args.requests, args.max_tokens)
            one = one or r["tps"]
            print(f"{n:>7} {r['tps']:>8.1f} {r['tps'] / one:>10.2f} {r['tps'] / inproc:>12.2f} "
                  f"{r['p50']:>7.2f} {r['p95']:>7.2f}", flush=True)
        overheads = []
        for k in range(5):
            seconds, result = request(port, args.model, texts[k], args.max_tokens)
            overheads.append(seconds - result["seconds"])
        print(f"one warm request: {statistics.median(overheads):.3f} s over the model's own decode time "
              "(median of 5; goal <= 0.15 s)")
    finally:
        server.should_exit = True
        batcher.close()
        booster.close()


if __name__ == "__main__":
    main()
