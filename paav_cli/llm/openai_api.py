"""Any OpenAI-compatible chat endpoint (OpenAI, Azure, vLLM, Ollama, a llama.cpp server) as a TextGenerator.

The `openai` client does the HTTP; paav does the retrying itself (the client's own retries are
off) so that every call has the same bounded budget: `retries` tries with exponential backoff and
full jitter, a per-request timeout, and one clear sentence after the last failure. The API key
comes from the environment only and is never printed, logged or written anywhere.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from urllib.parse import urlparse

from paav_cli.errors import UserError

LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}


def api_key(env_var: str, base_url: str | None) -> str:
    key = os.environ.get(env_var, "").strip()
    if key:
        return key
    if base_url and urlparse(base_url).hostname in LOCAL_HOSTS:
        return "not-needed"  # local servers (llama.cpp, vLLM, Ollama) accept any key
    raise UserError(f"the mutator needs an API key: set the environment variable {env_var} and run again.")


class OpenAIChat:
    parallel_safe = True  # concurrent requests are independent

    def __init__(
        self, model: str, *, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 120.0, retries: int = 5, backoff: float = 1.0, sleep: Callable[[float], None] = time.sleep,
    ):
        import openai

        self.model = model
        self.base_url = base_url
        self.retries = retries
        self.backoff = backoff
        self.sleep = sleep
        self.calls = 0
        self._client = openai.OpenAI(
            api_key=api_key(api_key_env, base_url), base_url=base_url, timeout=timeout, max_retries=0
        )
        self._api_key_env = api_key_env

    @property
    def endpoint(self) -> str:
        return self.base_url or "the OpenAI API"

    def generate(
        self, messages: list[dict], *, n: int = 1, temperature: float = 1.0, max_tokens: int = 1024,
        seed: int | None = None,
    ) -> list[str]:
        """`n` answers, one request each (not every compatible server honours `n`)."""
        return [self._one(messages, temperature, max_tokens, None if seed is None else seed + i) for i in range(n)]

    def _one(self, messages, temperature, max_tokens, seed) -> str:
        import openai

        retryable = (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError,
                     openai.InternalServerError)
        for attempt in range(1, self.retries + 1):
            try:
                self.calls += 1
                reply = self._client.chat.completions.create(
                    model=self.model, messages=messages, temperature=temperature, max_tokens=max_tokens, seed=seed,
                )
                return reply.choices[0].message.content or ""
            except openai.AuthenticationError:
                raise UserError(
                    f"{self.endpoint} refused the API key in {self._api_key_env}; set a valid key and run again."
                ) from None
            except (openai.NotFoundError, openai.BadRequestError, openai.PermissionDeniedError) as e:
                raise UserError(
                    f"{self.endpoint} rejected the request for model {self.model!r} ({type(e).__name__}, "
                    f"status {getattr(e, 'status_code', '?')}); check the mutator's model name and base_url."
                ) from None
            except retryable as e:
                if attempt == self.retries:
                    raise UserError(
                        f"could not get an answer from {self.endpoint} after {self.retries} tries "
                        f"({type(e).__name__}); check that it is reachable and run again to resume."
                    ) from None
                # Exponential backoff with full jitter: spreads concurrent workers' retries apart.
                self.sleep(random.uniform(0, self.backoff * 2 ** (attempt - 1)))
        raise AssertionError("unreachable")
