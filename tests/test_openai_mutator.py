"""The OpenAI-compatible mutator against a tiny HTTP server on 127.0.0.1 that misbehaves on purpose:
a total deadline per try, bad replies as failed tries, and no credentials from a base_url in errors."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from paav_cli.errors import UserError
from paav_cli.llm.openai_api import OpenAIChat

MESSAGES = [{"role": "user", "content": "rewrite: a cat"}]
GOOD = {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "<PROMPT>a cat at dusk</PROMPT>"}}]}
DRIP_FOR = 20.0  # seconds a dripping reply goes on: far longer than any deadline below


class Misbehaving(BaseHTTPRequestHandler):
    """Serves the replies queued in `server.script` in turn (the last one forever)."""

    protocol_version = "HTTP/1.1"

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        server = self.server
        with server.lock:
            server.requests += 1
            kind = server.script[min(server.requests, len(server.script)) - 1]
        if kind == "drip-headers":
            self._drip(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n" + b"x-pad: " + b"a" * 500)
        elif kind == "drip-body":
            body = json.dumps(GOOD).encode()
            self._send_head("application/json", len(body) + 1000)
            self._drip(body + b" " * 1000)
        elif kind == "no-choices":
            self._send("application/json", json.dumps({**GOOD, "choices": []}))
        elif kind == "html":
            self._send("text/html", "<html><body><h1>Welcome to nginx!</h1></body></html>")
        elif kind == "not-json":
            self._send("application/json", "<html>502 Bad Gateway</html>")
        else:
            self._send("application/json", json.dumps(GOOD))

    def _send_head(self, content_type: str, length: int) -> None:
        self.send_response(200)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(length))
        self.end_headers()
        self.wfile.flush()

    def _send(self, content_type: str, text: str) -> None:
        body = text.encode()
        self._send_head(content_type, len(body))
        self.wfile.write(body)

    def _drip(self, data: bytes) -> None:
        """A byte every 0.2 s: each socket read gets something well within the client's timeout."""
        end = time.monotonic() + DRIP_FOR
        for byte in data:
            if time.monotonic() > end or self.server.stopping.is_set():
                break
            try:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
            except OSError:
                break  # the client gave up
            time.sleep(0.2)
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """Yields a function that starts serving a script of replies and returns the base_url; the
    server stops at the end of the test, and each dripping reply ends by itself after DRIP_FOR s."""
    started = []

    def start(*script: str, credentials: str = "") -> str:
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Misbehaving)
        httpd.daemon_threads = True
        httpd.script, httpd.requests, httpd.lock, httpd.stopping = script, 0, threading.Lock(), threading.Event()
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        started.append(httpd)
        return f"http://{credentials}127.0.0.1:{httpd.server_address[1]}/v1"

    yield start
    for httpd in started:
        httpd.stopping.set()
        httpd.shutdown()
        httpd.server_close()


def chat(base_url: str, **kw) -> OpenAIChat:
    return OpenAIChat("m", base_url=base_url, sleep=lambda _s: None, **{"timeout": 1.0, "retries": 2, **kw})


@pytest.mark.parametrize("kind", ["drip-headers", "drip-body"])
def test_a_dripping_server_ends_each_try_at_its_deadline(server, kind):
    url = server(kind)
    start = time.monotonic()
    with pytest.raises(UserError) as e:
        chat(url).generate(MESSAGES)
    elapsed = time.monotonic() - start
    assert elapsed < 6, f"two tries with timeout = 1 took {elapsed:.1f} s"
    assert "after 2 tries" in str(e.value) and "within 1 s" in str(e.value)


@pytest.mark.parametrize("kind", ["no-choices", "html", "not-json"])
def test_a_reply_without_an_answer_is_a_failed_try(server, kind):
    url = server(kind, "good")
    mutator = chat(url)
    assert mutator.generate(MESSAGES) == ["<PROMPT>a cat at dusk</PROMPT>"]  # the second try answered
    assert mutator.calls == 2
    with pytest.raises(UserError) as e:
        chat(server(kind)).generate(MESSAGES)
    message = str(e.value)
    assert "after 2 tries" in message and "run again to resume" in message
    assert "\n" not in message


@pytest.mark.parametrize("reachable", [True, False])
def test_credentials_in_the_base_url_are_never_shown(server, reachable):
    if reachable:
        url = server("html", credentials="paav-user:s3cret-pass@")
    else:
        with socket.socket() as s:  # a port that nothing listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        url = f"http://paav-user:s3cret-pass@127.0.0.1:{port}/v1"
    with pytest.raises(UserError) as e:
        chat(url).generate(MESSAGES)
    message = str(e.value)
    assert "s3cret-pass" not in message and "paav-user" not in message
    assert "127.0.0.1" in message
    from paav_cli.llm.openai_api import shown_url

    assert shown_url("https://u:p@gw.example:8443/v1?key=sk-123#x") == "https://gw.example:8443/v1"
