"""Any OpenAI-compatible chat endpoint (OpenAI, Azure, vLLM, Ollama, a llama.cpp server) as a TextGenerator.

The `openai` client does the HTTP; paav does the retrying itself (the client's own retries are
off) so that every call has the same bounded budget: `retries` tries with exponential backoff and
full jitter, each try ending after `timeout` seconds in all, and one clear sentence after the last
failure. A reply that holds no answer (no choices, an HTML page) is a failed try like a timeout.
The API key comes from the environment only and is never printed, logged or written anywhere, and
neither are credentials written into a base_url.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

from paav_cli.errors import UserError

LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}


def api_key(env_var: str, base_url: str | None) -> str:
    key = os.environ.get(env_var, "").strip()
    if key:
        return key
    if base_url and _hostname(base_url) in LOCAL_HOSTS:
        return "not-needed"  # local servers (llama.cpp, vLLM, Ollama) accept any key
    raise UserError(f"the mutator needs an API key: set the environment variable {env_var} and run again.")


def _hostname(url: str) -> str | None:
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None


def shown_url(url: str) -> str:
    """`url` as messages may show it: without user:password@ and without a query (some gateways take
    their key as ?key=...)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "the mutator's base_url"
    if ":" in host:
        host = f"[{host}]"
    return urlunsplit((parts.scheme, host + port, parts.path, "", ""))


class BadReply(Exception):
    """A reply that arrived but holds no answer."""


class Deadline(Exception):
    """A try that did not finish within its time."""


def answer_of(reply) -> str:
    """The text of a chat completion, or BadReply: the client hands back whatever the server sent
    (a str for an HTML page, a ChatCompletion with no choices or no message)."""
    try:
        content = reply.choices[0].message.content
    except (AttributeError, IndexError, KeyError, TypeError):
        kind = "no choices" if getattr(reply, "choices", None) == [] else f"no chat completion ({type(reply).__name__})"
        raise BadReply(f"a reply with {kind}") from None
    if content is None:
        return ""  # a refusal or a tool call: no prompt in it, which the engine asks again for
    if not isinstance(content, str):
        raise BadReply(f"a reply whose content is a {type(content).__name__}")
    return content


def within(seconds: float, call: Callable[[], object]):
    """`call()`'s result, or Deadline once `seconds` have passed.

    The client's timeout bounds each socket read, not the request: a server that sends a byte now
    and then keeps one request alive indefinitely. So the request runs in a daemon thread that is
    left behind at the deadline (it ends at its next read timeout, or with the process), never
    joined.
    """
    box: dict = {}

    def run() -> None:
        try:
            box["result"] = call()
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread as it is
            box["error"] = e

    worker = threading.Thread(target=run, name="paav-mutator-request", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise Deadline(f"no complete reply within {seconds:g} s")
    if "error" in box:
        raise box["error"]
    return box["result"]


class OpenAIChat:
    parallel_safe = True  # concurrent requests are independent

    def __init__(
        self, model: str, *, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 120.0, retries: int = 5, backoff: float = 1.0, sleep: Callable[[float], None] = time.sleep,
    ):
        import openai

        self.model = model
        self.base_url = base_url
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.sleep = sleep
        self.calls = 0
        self._client = openai.OpenAI(
            api_key=api_key(api_key_env, base_url), base_url=base_url, timeout=timeout, max_retries=0
        )
        self._api_key_env = api_key_env

    def close(self) -> None:
        self._client.close()  # its connection pool

    @property
    def endpoint(self) -> str:
        return shown_url(self.base_url) if self.base_url else "the OpenAI API"

    def generate(
        self, messages: list[dict], *, n: int = 1, temperature: float = 1.0, max_tokens: int = 1024,
        seed: int | None = None,
    ) -> list[str]:
        """`n` answers, one request each (not every compatible server honours `n`)."""
        return [self._one(messages, temperature, max_tokens, None if seed is None else seed + i) for i in range(n)]

    def _one(self, messages, temperature, max_tokens, seed) -> str:
        import openai

        retryable = (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError,
                     openai.InternalServerError, openai.APIResponseValidationError, json.JSONDecodeError,
                     BadReply, Deadline)  # JSONDecodeError: a body that says it is JSON and is not

        def request():
            return self._client.chat.completions.create(
                model=self.model, messages=messages, temperature=temperature, max_tokens=max_tokens, seed=seed,
            )

        for attempt in range(1, self.retries + 1):
            try:
                self.calls += 1
                return answer_of(within(self.timeout, request))
            except openai.AuthenticationError:
                raise UserError(
                    f"{self.endpoint} refused the API key in {self._api_key_env}; set a valid key and run again."
                ) from None
            except openai.APIStatusError as e:
                if isinstance(e, retryable) or e.status_code in (408, 409):
                    failure = f"{type(e).__name__}, status {e.status_code}"
                else:
                    raise UserError(
                        f"{self.endpoint} rejected the request for model {self.model!r} ({type(e).__name__}, "
                        f"status {e.status_code}); check the mutator's model name and base_url."
                    ) from None
            except (BadReply, Deadline) as e:
                failure = str(e)
            except retryable as e:
                failure = type(e).__name__
            if attempt == self.retries:
                raise UserError(
                    f"could not get an answer from {self.endpoint} after {self.retries} tries (the last: "
                    f"{failure}); check that it is reachable and run again to resume."
                ) from None
            # Exponential backoff with full jitter: spreads concurrent workers' retries apart.
            self.sleep(random.uniform(0, self.backoff * 2 ** (attempt - 1)))
        raise AssertionError("unreachable")
