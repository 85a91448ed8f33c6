"""The HTTP layer of `paav serve`, for real: uvicorn on a free port, the tiny booster behind a real Batcher.

The OpenAI endpoints are called with the real `openai` client; the Ollama endpoints and the error
cases with plain HTTP (httpx2). Every enhanced text is checked against `Booster.enhance` with the
same seed on a booster of its own (one booster is not safe to share between threads).
"""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Self

import httpx2
import openai
import pytest
import uvicorn

from paav_cli import load_booster
from paav_cli.errors import UserError
from paav_cli.serve.app import create_app, serve
from paav_cli.serve.batcher import Batcher, Busy

PROMPT = "a cat playing piano"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Running:
    """An app under uvicorn in a background thread, on a free port, for a `with` block."""

    def __init__(self, app):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    def openai(self, api_key: str = "x") -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def server(batcher):
    with Running(create_app({"tiny": batcher})) as running:
        yield running


@pytest.fixture
def own_booster(tiny_models, shared_cache, monkeypatch):
    monkeypatch.setenv("PAAV_CACHE", str(shared_cache))
    with load_booster("tiny", threads=1, parallel=8) as b:
        yield b


class SlowBooster:
    """A real booster whose first `run` waits for `release`; records the prompts of each batch."""

    def __init__(self, booster):
        self._booster = booster
        self.entered, self.release = threading.Event(), threading.Event()
        self.batches: list[list[str]] = []

    def run(self, jobs, settings, on_result):
        jobs = list(jobs)
        self.batches.append([job.record.prompt for job in jobs])
        if len(self.batches) == 1:
            self.entered.set()
            assert self.release.wait(30)
        return self._booster.run(jobs, settings, on_result)

    def __getattr__(self, name):
        return getattr(self._booster, name)


class Recording:
    """A real Batcher that keeps the Futures it handed out."""

    def __init__(self, batcher: Batcher):
        self.batcher, self.futures = batcher, []

    def submit(self, *args, **kwargs) -> Future:
        future = self.batcher.submit(*args, **kwargs)
        self.futures.append(future)
        return future


def texts(records) -> list[str]:
    return [r.text for r in records]


# -- OpenAI, through the openai client ---------------------------------------------------------

def test_chat_completion_is_the_boosters_enhancement_of_the_last_user_message(server, reference):
    client = server.openai()
    answer = client.chat.completions.create(model="tiny", seed=5, messages=[
        {"role": "system", "content": "You rewrite prompts."},
        {"role": "user", "content": "an earlier prompt"},
        {"role": "assistant", "content": "an earlier answer"},
        {"role": "user", "content": PROMPT}])
    [expected] = reference.enhance(PROMPT, seed=5)
    assert [c.message.content for c in answer.choices] == [expected.text]
    assert answer.choices[0].message.role == "assistant" and answer.choices[0].finish_reason == "stop"
    assert answer.model == "tiny" and answer.object == "chat.completion" and answer.id
    assert answer.usage.completion_tokens == expected.tokens
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens


def test_chat_completion_variants_and_completions_match_the_booster(server, reference):
    client = server.openai()
    answer = client.chat.completions.create(model="tiny", n=2, temperature=0.8, seed=11,
                                            messages=[{"role": "user", "content": "a fox in the snow"}])
    assert [c.index for c in answer.choices] == [0, 1]
    assert [c.message.content for c in answer.choices] == texts(
        reference.enhance("a fox in the snow", n=2, temperature=0.8, seed=11))
    completion = client.completions.create(model="tiny", prompt="a red car in the rain", seed=3, max_tokens=60)
    assert [c.text for c in completion.choices] == texts(
        reference.enhance("a red car in the rain", seed=3, max_tokens=60))
    assert completion.object == "text_completion" and completion.choices[0].finish_reason == "stop"
    assert [m.id for m in client.models.list()] == ["tiny"]


def test_streaming_gives_the_same_text_in_openai_chunks(server, reference):
    client = server.openai()
    [expected] = reference.enhance(PROMPT, seed=7)
    chunks = list(client.chat.completions.create(model="tiny", seed=7, stream=True,
                                                 stream_options={"include_usage": True},
                                                 messages=[{"role": "user", "content": PROMPT}]))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == expected.tokens
    streamed = list(client.completions.create(model="tiny", prompt=PROMPT, seed=7, stream=True))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == expected.text


def test_concurrent_clients_each_get_their_own_enhancement(server, reference):
    prompts = [f"a {animal} in the garden" for animal in ("cat", "dog", "fox", "owl", "hare", "deer")]

    def ask(i: int) -> str:
        answer = server.openai().chat.completions.create(model="tiny", seed=i,
                                                         messages=[{"role": "user", "content": prompts[i]}])
        return answer.choices[0].message.content

    with ThreadPoolExecutor(len(prompts)) as pool:
        answers = list(pool.map(ask, range(len(prompts))))
    assert answers == [reference.enhance(p, seed=i)[0].text for i, p in enumerate(prompts)]


# -- Ollama and paav's own, over plain HTTP ----------------------------------------------------

def test_ollama_generate_chat_and_tags(server, reference):
    [expected] = reference.enhance(PROMPT, seed=4)
    options = {"seed": 4}
    one = httpx2.post(f"{server.url}/api/generate", timeout=60,
                      json={"model": "tiny:latest", "prompt": PROMPT, "stream": False, "options": options}).json()
    assert one["response"] == expected.text and one["done"] is True and one["model"] == "tiny"
    assert one["eval_count"] == expected.tokens and one["created_at"].endswith("Z")

    with httpx2.stream("POST", f"{server.url}/api/generate", timeout=60,
                       json={"model": "tiny", "prompt": PROMPT, "options": options}) as response:
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert "".join(line["response"] for line in lines) == expected.text
    assert [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]

    chat = {"model": "tiny", "messages": [{"role": "user", "content": PROMPT}], "options": options}
    answer = httpx2.post(f"{server.url}/api/chat", json={**chat, "stream": False}, timeout=60).json()
    assert answer["message"] == {"role": "assistant", "content": expected.text} and answer["done"] is True
    lines = [json.loads(line) for line in httpx2.post(f"{server.url}/api/chat", json=chat, timeout=60)
             .text.splitlines()]
    assert "".join(line["message"]["content"] for line in lines) == expected.text and lines[-1]["done"] is True

    tags = httpx2.get(f"{server.url}/api/tags").json()
    assert [m["name"] for m in tags["models"]] == ["tiny"]


def test_enhance_returns_paavs_own_records(server, reference):
    request = {"prompt": "a dog on a beach", "n": 2, "seed": 9, "temperature": 0.8, "target": "cogvideox-5b",
               "negative": True, "max_tokens": 80, "model": "tiny"}
    answer = httpx2.post(f"{server.url}/v1/enhance", json=request, timeout=60).json()
    expected = [dataclasses.asdict(e) for e in reference.enhance(
        "a dog on a beach", n=2, seed=9, temperature=0.8, target="cogvideox-5b", negative=True, max_tokens=80)]
    assert answer["model"] == "tiny"
    assert [{**r, "seconds": 0} for r in answer["results"]] == [{**r, "seconds": 0} for r in expected]
    assert answer["results"][0]["negative_prompt"] and answer["results"][0]["target_limit"]
    default = httpx2.post(f"{server.url}/v1/enhance", json={"prompt": PROMPT, "seed": 1}, timeout=60).json()
    assert default["model"] == "tiny" and default["results"][0]["text"] == reference.enhance(PROMPT, seed=1)[0].text


# -- errors: one sentence in JSON, never a traceback -------------------------------------------

def chunked(data: bytes):
    for i in range(0, len(data), 8192):
        yield data[i:i + 8192]


def chat_body(content: str, **extra) -> bytes:
    return json.dumps({"model": "tiny", "messages": [{"role": "user", "content": content}], **extra}).encode()


ERRORS = [
    ("/v1/chat/completions", b'{"model": "tiny", "messages": [', 400, "not valid JSON"),
    ("/v1/chat/completions", b"[1, 2]", 400, "must be a JSON object"),
    ("/v1/chat/completions", b"", 400, "not valid JSON"),
    ("/v1/chat/completions", chat_body("   "), 400, "the prompt is empty"),
    ("/v1/chat/completions", chat_body(PROMPT, n="2"), 400, "`n` is not valid"),
    ("/v1/chat/completions", chat_body(PROMPT, n=0), 400, "`n` is not valid"),
    ("/v1/chat/completions", chat_body(PROMPT, temperature=7), 400, "`temperature` is not valid"),
    ("/v1/chat/completions", chat_body(PROMPT, model="no-such-model"), 404, "no model `no-such-model`"),
    ("/v1/chat/completions", chat_body("x" * 4001), 400, "over this server's limit of 4000"),
    ("/v1/chat/completions", json.dumps({"messages": [{"role": "system", "content": "hi"}]}).encode(), 400,
     "no user message"),
    ("/v1/chat/completions", json.dumps({"model": "tiny"}).encode(), 400, "`messages` is missing"),
    ("/v1/chat/completions", chat_body("x" * 70_000), 413, "over this server's limit of 64000"),
    ("/v1/completions", json.dumps({"model": "tiny", "prompt": ["a", "b"]}).encode(), 400, "must be one text"),
    ("/v1/completions", json.dumps({"model": "tiny", "prompt": 3}).encode(), 400, "`prompt"),
    ("/v1/enhance", json.dumps({"prompt": PROMPT, "target": "no-such-generator"}).encode(), 400,
     "unknown generator 'no-such-generator'"),
    ("/v1/enhance", json.dumps({"prompt": PROMPT, "negative": "yes"}).encode(), 400, "`negative` is not valid"),
    ("/v1/enhance", json.dumps({"seed": 1}).encode(), 400, "`prompt` is missing"),
    ("/api/generate", b"{nope", 400, "not valid JSON"),
    ("/api/generate", json.dumps({"model": "llama3", "prompt": PROMPT}).encode(), 404, "no model `llama3`"),
    ("/api/chat", json.dumps({"messages": [{"role": "user", "content": ""}]}).encode(), 400, "the prompt is empty"),
]


@pytest.mark.parametrize("path, body, status, fragment", ERRORS, ids=[f"{e[0]}-{e[2]}-{e[3]}" for e in ERRORS])
def test_bad_requests_get_one_sentence_in_json(server, path, body, status, fragment):
    response = httpx2.post(f"{server.url}{path}", content=body, timeout=60,
                           headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    message = error if path.startswith("/api/") else error["message"]  # Ollama's shape on /api/*
    if not path.startswith("/api/"):
        assert error["type"] == "invalid_request_error"
    assert fragment in message and message.endswith(".") and message.count(". ") == 0, message
    assert "Traceback" not in response.text


def test_a_body_over_the_limit_is_413_without_a_content_length_too(server):
    response = httpx2.post(f"{server.url}/v1/enhance", content=chunked(b" " * 100_000), timeout=60)
    assert "content-length" not in response.request.headers
    assert response.status_code == 413 and "over this server's limit" in response.json()["error"]["message"]
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:  # refused on the header
        raw.sendall(b"POST /v1/enhance HTTP/1.1\r\nHost: x\r\nContent-Length: 9999999\r\n\r\n{}")
        answer = b""
        while b"9999999 bytes" not in answer:  # the head and the body may come in separate packets
            part = raw.recv(65536)
            if not part:
                break
            answer += part
    assert answer.startswith(b"HTTP/1.1 413") and b"9999999 bytes" in answer, answer
    big = httpx2.post(f"{server.url}/v1/enhance", content=b" " * 64_001, timeout=60)
    assert big.status_code == 413 and "64001 bytes" in big.json()["error"]["message"]


def test_unknown_paths_methods_and_the_openai_clients_errors(server):
    assert httpx2.get(f"{server.url}/v2/nothing").json()["error"]["message"] == \
        "no such path `/v2/nothing` on this server."
    assert httpx2.get(f"{server.url}/v1/enhance").status_code == 405
    client = server.openai()
    with pytest.raises(openai.NotFoundError, match="no model `gpt-4o`"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": PROMPT}])
    with pytest.raises(openai.BadRequestError, match="the prompt is empty"):
        client.completions.create(model="tiny", prompt="")


def test_an_api_key_is_required_when_set(batcher, reference):
    with Running(create_app({"tiny": batcher}, api_key="s3cret")) as running:
        with pytest.raises(openai.AuthenticationError, match="needs an API key"):
            running.openai("wrong").models.list()
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            response = httpx2.post(f"{running.url}/v1/enhance", json={"prompt": PROMPT}, headers=headers)
            assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
        assert httpx2.get(f"{running.url}/api/tags").json() == {
            "error": "this server needs an API key; send it as `Authorization: Bearer KEY`."}
        answer = running.openai("s3cret").chat.completions.create(
            model="tiny", seed=2, messages=[{"role": "user", "content": PROMPT}])
        assert answer.choices[0].message.content == reference.enhance(PROMPT, seed=2)[0].text


def test_a_full_queue_is_429_at_once(own_booster):
    slow = SlowBooster(own_booster)
    batcher = Batcher(slow, max_queue=1)
    try:
        decoding = batcher.submit("a fox in the snow", seed=1)
        assert slow.entered.wait(30)
        queued = batcher.submit("an owl at night", seed=2)
        with pytest.raises(Busy):
            batcher.submit("one too many")
        with Running(create_app({"tiny": batcher})) as running:
            began = time.monotonic()
            response = httpx2.post(f"{running.url}/v1/enhance", json={"prompt": PROMPT}, timeout=30)
            assert response.status_code == 429 and response.headers["retry-after"] == "1"
            assert response.json()["error"]["type"] == "rate_limit_error"
            assert "the server is busy" in response.json()["error"]["message"]
            with pytest.raises(openai.RateLimitError):
                running.openai().chat.completions.create(model="tiny", messages=[{"role": "user", "content": PROMPT}])
            ollama = httpx2.post(f"{running.url}/api/generate", json={"prompt": PROMPT})
            assert ollama.status_code == 429 and ollama.json()["error"].startswith("the server is busy")
            assert time.monotonic() - began < 5  # refused at once, not after the batch
            slow.release.set()
            assert decoding.result(30) and queued.result(30)
    finally:
        slow.release.set()
        batcher.close()


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_goes_away_cancels_its_request(own_booster, stream):
    slow = SlowBooster(own_booster)
    batcher = Batcher(slow)
    recording = Recording(batcher)
    try:
        decoding = batcher.submit("a fox in the snow", seed=1)
        assert slow.entered.wait(30)
        with Running(create_app({"tiny": recording})) as running:
            with pytest.raises(httpx2.ReadTimeout), httpx2.stream(
                    "POST", f"{running.url}/v1/chat/completions", timeout=1,
                    content=chat_body("a client that leaves", stream=stream)) as response:
                for _ in response.iter_bytes():
                    pass
            [future] = recording.futures
            deadline = time.monotonic() + 10
            while not future.cancelled():
                assert time.monotonic() < deadline, "the request was not cancelled"
                time.sleep(0.02)
            slow.release.set()
            assert decoding.result(30)
            answer = running.openai().chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "one that stays"}])
            assert answer.choices[0].message.content
        assert all("a client that leaves" not in batch for batch in slow.batches)
    finally:
        slow.release.set()
        batcher.close()


class Failing:
    """A stand-in batcher whose decode fails with an error of the code (a bug, not bad input)."""

    def submit(self, *args, **kwargs) -> Future:
        future = Future()
        future.set_exception(RuntimeError("internal detail /secret/path"))
        return future


def test_a_failure_inside_is_500_with_one_sentence(caplog):
    with Running(create_app({"tiny": Failing()})) as running:
        for stream in (False, True):
            response = httpx2.post(f"{running.url}/v1/chat/completions", content=chat_body(PROMPT, stream=stream))
            assert "secret" not in response.text and "Traceback" not in response.text
            if stream:
                assert "the booster failed (RuntimeError)" in response.text
            else:
                assert response.status_code == 500
                assert response.json()["error"]["message"] == "the booster failed (RuntimeError); see the server's log."
        with pytest.raises(openai.APIError, match="the booster failed"):
            list(running.openai().chat.completions.create(model="tiny", stream=True,
                                                          messages=[{"role": "user", "content": PROMPT}]))
    assert "internal detail /secret/path" in caplog.text  # the server's log has it, the client not


def test_serving_beyond_loopback_needs_an_api_key():
    for host in ("0.0.0.0", "192.168.1.5", "::"):
        with pytest.raises(UserError, match="set PAAV_API_KEY"):
            serve({"tiny": Failing()}, host=host)


def test_importing_the_app_imports_no_torch():
    code = "import sys, paav_cli.serve.app; print(sorted({'torch', 'transformers', 'uvicorn'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
