"""The HTTP layer of `paav serve`: OpenAI, Ollama and paav's own API over one `Batcher` per booster,
and at `/` a page for trying a prompt in a browser (page.html: no data in it, so served without a key).

Every endpoint turns its request into one `Batcher.submit` (which never blocks: a full queue is a
429 at once) and awaits the Future without holding a thread; a client that goes away while waiting
cancels its Future, so a request still queued is dropped before it costs a sequence. The booster
returns whole texts, so a streamed answer is the role, one content chunk per variant, and the end.

Errors are one sentence in JSON, never a traceback: `{"error": {"message", "type"}}` on the OpenAI
and paav endpoints, and Ollama's own `{"error": "..."}` on `/api/*`, which Ollama clients read.
Status codes: 400 bad JSON or fields, 401 a missing or wrong API key, 404 an unknown model or
path, 413 a body over `max_body`, 429 a full queue, 503 shutting down, 500 anything else.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from paav_cli import __version__, registry
from paav_cli.enhance import Enhancement
from paav_cli.errors import UserError
from paav_cli.serve.batcher import Batcher, Busy

log = logging.getLogger("paav.serve")

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
DEFAULT_MAX_TOKENS = 200
MAX_N = 16
MAX_TOKENS_LIMIT = 4096


class ApiError(Exception):
    """An error answered as JSON: an HTTP status, one sentence, and OpenAI's error type."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.headers = status, message, kind, code, headers


# -- request bodies ----------------------------------------------------------------------------
# Strict types ("2" is not an int), unknown fields ignored (clients send top_p, user, keep_alive...).

class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class _TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: str | None = None


class ChatMessage(_Body):
    role: str
    content: str | list[_TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "\n".join(p.text for p in self.content if p.type == "text" and p.text)
        return self.content or ""


class _OpenAISampling(_Body):
    model: str | None = None
    n: int = Field(1, ge=1, le=MAX_N)
    temperature: float | None = Field(None, ge=0, le=2)
    seed: int | None = None
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None

    def tokens(self) -> int:
        return self.max_completion_tokens or self.max_tokens or DEFAULT_MAX_TOKENS

    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class ChatCompletionRequest(_OpenAISampling):
    messages: list[ChatMessage]


class CompletionRequest(_OpenAISampling):
    prompt: str | list[str]


class OllamaOptions(_Body):
    temperature: float | None = Field(None, ge=0, le=2)
    seed: int | None = None
    num_predict: int | None = Field(None, le=MAX_TOKENS_LIMIT)

    def tokens(self) -> int:
        return self.num_predict if self.num_predict and self.num_predict > 0 else DEFAULT_MAX_TOKENS


class _OllamaBody(_Body):
    model: str | None = None
    stream: bool | None = True
    options: OllamaOptions = Field(default_factory=OllamaOptions)


class OllamaGenerateRequest(_OllamaBody):
    prompt: str


class OllamaChatRequest(_OllamaBody):
    messages: list[ChatMessage]


class EnhanceRequest(_Body):
    prompt: str
    model: str | None = None
    n: int = Field(1, ge=1, le=MAX_N)
    seed: int | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    target: str | None = None
    negative: bool = False
    max_tokens: int = Field(DEFAULT_MAX_TOKENS, ge=1, le=MAX_TOKENS_LIMIT)


def _validation_message(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "the body"
    if first["type"] == "missing":
        return f"`{where}` is missing; give it in the request body."
    msg = first['msg'].rstrip('.')
    return f"`{where}` is not valid: {msg[:1].lower()}{msg[1:]}."


# -- the app -----------------------------------------------------------------------------------

def create_app(boosters: dict[str, Batcher], *, api_key: str | None = None, max_body: int = 64_000,
               max_prompt_chars: int = 4000) -> Starlette:
    """The ASGI app serving `boosters` (a name, as clients give it in `model`, to its Batcher).

    The first name is the default when a request names none. With `api_key`, every request needs
    `Authorization: Bearer API_KEY`. Bodies over `max_body` bytes and prompts over
    `max_prompt_chars` characters are refused.
    """
    if not boosters:
        raise UserError("no booster to serve; give at least one.")
    names = list(boosters)
    started = int(time.time())

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(401, "this server needs an API key; send it as `Authorization: Bearer KEY`.",
                           kind="authentication_error", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})

    async def read_json(request: Request, schema: type[_Body]) -> Any:
        check_key(request)
        length = request.headers.get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                raise ApiError(400, "the Content-Length header is not a number.")
            if int(length) > max_body:
                raise ApiError(413, f"the request body is {int(length)} bytes, over this server's limit "
                                    f"of {max_body}.")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body:
                raise ApiError(413, f"the request body is over this server's limit of {max_body} bytes.")
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "the request body is not valid JSON.") from None
        if not isinstance(data, dict):
            raise ApiError(400, "the request body must be a JSON object.")
        try:
            return schema.model_validate(data)
        except ValidationError as e:
            raise ApiError(400, _validation_message(e)) from None

    def pick(model: str | None) -> tuple[str, Batcher]:
        if not model:
            return names[0], boosters[names[0]]
        for name in (model, model.removesuffix(":latest")):  # Ollama clients add a tag
            if name in boosters:
                return name, boosters[name]
        raise ApiError(404, f"no model `{model}` on this server; it serves {', '.join(names)}.",
                       code="model_not_found")

    def check_prompt(prompt: str) -> str:
        prompt = prompt.strip()
        if not prompt:
            raise ApiError(400, "the prompt is empty; give the text to enhance.")
        if len(prompt) > max_prompt_chars:
            raise ApiError(400, f"the prompt is {len(prompt)} characters, over this server's limit of "
                                f"{max_prompt_chars}.")
        return prompt

    def last_user_text(messages: list[ChatMessage]) -> str:
        for message in reversed(messages):
            if message.role == "user":
                return message.text()
        raise ApiError(400, "`messages` has no user message; the last user message is the prompt to enhance.")

    def submit(batcher: Batcher, prompt: str, **settings: Any) -> Future:
        try:
            return batcher.submit(check_prompt(prompt), **settings)
        except Busy as e:
            raise ApiError(429, f"the server is busy: {str(e) or 'its queue is full'}.".replace("..", "."),
                           kind="rate_limit_error", headers={"Retry-After": "1"}) from None
        except UserError as e:
            raise ApiError(400, str(e)) from None

    # -- OpenAI ----------------------------------------------------------------------------

    async def chat_completions(request: Request) -> Response:
        body: ChatCompletionRequest = await read_json(request, ChatCompletionRequest)
        name, batcher = pick(body.model)
        prompt = last_user_text(body.messages)
        future = submit(batcher, prompt, n=body.n, seed=body.seed, temperature=body.temperature,
                        max_tokens=body.tokens())
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            def choice(e, text: str | None, finish: str | None) -> dict:
                return {"index": e.variant, "delta": {} if text is None else {"content": text}, "finish_reason": finish}

            opening = [{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                       for i in range(body.n)]
            return _openai_stream(request, future, body, ident=ident, created=created, name=name,
                                  kind="chat.completion.chunk", opening=opening, choice=choice)
        results = await _result(request, future)
        return JSONResponse({
            "id": ident, "object": "chat.completion", "created": created, "model": name,
            "choices": [{"index": e.variant, "message": {"role": "assistant", "content": e.text},
                         "logprobs": None, "finish_reason": "stop"} for e in results],
            "usage": _usage(results),
        })

    async def completions(request: Request) -> Response:
        body: CompletionRequest = await read_json(request, CompletionRequest)
        name, batcher = pick(body.model)
        prompt = body.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise ApiError(400, "`prompt` must be one text; send one request per prompt.")
            prompt = prompt[0]
        future = submit(batcher, prompt, n=body.n, seed=body.seed, temperature=body.temperature,
                        max_tokens=body.tokens())
        ident, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            def choice(e, text: str | None, finish: str | None) -> dict:
                return {"index": e.variant, "text": text or "", "logprobs": None, "finish_reason": finish}

            return _openai_stream(request, future, body, ident=ident, created=created, name=name,
                                  kind="text_completion", opening=None, choice=choice)
        results = await _result(request, future)
        return JSONResponse({
            "id": ident, "object": "text_completion", "created": created, "model": name,
            "choices": [{"index": e.variant, "text": e.text, "logprobs": None, "finish_reason": "stop"}
                        for e in results],
            "usage": _usage(results),
        })

    async def models(request: Request) -> Response:
        check_key(request)
        return JSONResponse({"object": "list", "data": [
            {"id": name, "object": "model", "created": started, "owned_by": "paav"} for name in names]})

    # -- paav's own ------------------------------------------------------------------------

    async def page(request: Request) -> Response:
        return HTMLResponse(_page(), headers=PAGE_HEADERS)

    async def targets(request: Request) -> Response:
        check_key(request)
        generators = registry.Registry.load(keep_going=True).by_role("generators")
        return JSONResponse({"object": "list", "data": [
            {"id": e.name, "text_encoder": e.text_encoder.kind, "max_tokens": e.text_encoder.max_tokens,
             "description": e.description} for e in generators]})

    async def enhance(request: Request) -> Response:
        body: EnhanceRequest = await read_json(request, EnhanceRequest)
        name, batcher = pick(body.model)
        future = submit(batcher, body.prompt, n=body.n, seed=body.seed, temperature=body.temperature,
                        target=body.target, negative=body.negative, max_tokens=body.max_tokens)
        results = await _result(request, future)
        return JSONResponse({"model": name, "results": [dataclasses.asdict(e) for e in results]})

    # -- Ollama ----------------------------------------------------------------------------

    async def ollama_answer(request: Request, body: _OllamaBody, prompt: str,
                            piece: Callable[[str], dict], closing: dict | None = None) -> Response:
        name, batcher = pick(body.model)
        future = submit(batcher, prompt, seed=body.options.seed, temperature=body.options.temperature,
                        max_tokens=body.options.tokens())
        began = time.perf_counter_ns()

        def final(results: list[Enhancement], text: str) -> dict:
            tokens = sum(e.tokens for e in results)
            decode = int(max(e.seconds for e in results) * 1e9)
            return {"model": name, "created_at": _now(), **piece(text), "done": True, "done_reason": "stop",
                    "total_duration": time.perf_counter_ns() - began, "load_duration": 0,
                    "prompt_eval_count": 0, "prompt_eval_duration": 0, "eval_count": tokens,
                    "eval_duration": decode, **(closing or {})}

        if body.stream is False:
            results = await _result(request, future)
            return JSONResponse(final(results, results[0].text))

        async def lines() -> AsyncIterator[str]:
            results = await _outcome(request, future)
            if isinstance(results, ApiError):
                yield json.dumps({"error": results.message}) + "\n"
                return
            yield json.dumps({"model": name, "created_at": _now(), **piece(results[0].text), "done": False}) + "\n"
            yield json.dumps(final(results, "")) + "\n"
        return _event_stream(lines(), future, media_type="application/x-ndjson")

    async def ollama_generate(request: Request) -> Response:
        body: OllamaGenerateRequest = await read_json(request, OllamaGenerateRequest)
        # Ollama's last generate answer has `context` (the tokens to send back for a follow-up); paav
        # keeps no conversation, so it is empty, but there: ComfyUI-Ollama's Generate node reads it.
        return await ollama_answer(request, body, body.prompt, lambda text: {"response": text},
                                   closing={"context": []})

    async def ollama_chat(request: Request) -> Response:
        body: OllamaChatRequest = await read_json(request, OllamaChatRequest)
        return await ollama_answer(request, body, last_user_text(body.messages),
                                   lambda text: {"message": {"role": "assistant", "content": text}})

    async def ollama_tags(request: Request) -> Response:
        check_key(request)
        modified = datetime.fromtimestamp(started, UTC).isoformat().replace("+00:00", "Z")
        return JSONResponse({"models": [
            {"name": name, "model": name, "modified_at": modified, "size": 0, "digest": "",
             "details": {"format": "gguf", "family": "paav", "families": ["paav"], "parameter_size": "",
                         "quantization_level": ""}} for name in names]})

    async def ollama_version(request: Request) -> Response:
        check_key(request)  # Open WebUI checks an Ollama connection with it
        return JSONResponse({"version": __version__})

    # -- errors ----------------------------------------------------------------------------

    def error_response(request: Request, error: ApiError) -> Response:
        if request.url.path.startswith("/api/"):
            content: dict = {"error": error.message}
        else:
            content = _openai_error(error)
        return JSONResponse(content, status_code=error.status, headers=error.headers)

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(request, exc)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = {404: f"no such path `{request.url.path}` on this server.",
                   405: f"`{request.method} {request.url.path}` is not allowed here."}.get(
            exc.status_code, f"the request failed ({exc.status_code}).")
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(request, ApiError(exc.status_code, message, kind=kind, headers=exc.headers))

    async def on_client_gone(request: Request, exc: Exception) -> Response:
        return Response(status_code=499)  # nobody reads it: the client has gone

    async def on_crash(request: Request, exc: Exception) -> Response:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(request, ApiError(500, f"the server failed ({type(exc).__name__}); see its log.",
                                                kind="server_error"))

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/enhance", enhance, methods=["POST"]),
        Route("/v1/targets", targets, methods=["GET"]),
        Route("/", page, methods=["GET"]),
        Route("/api/generate", ollama_generate, methods=["POST"]),
        Route("/api/chat", ollama_chat, methods=["POST"]),
        Route("/api/tags", ollama_tags, methods=["GET"]),
        Route("/api/version", ollama_version, methods=["GET"]),
    ]
    return Starlette(routes=routes, exception_handlers={
        ApiError: on_api_error, HTTPException: on_http_error, _ClientGone: on_client_gone, Exception: on_crash})


# The page only talks to this server, runs only its own inline script, and is never framed.
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                               "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@functools.cache
def _page() -> bytes:
    return resources.files("paav_cli.serve").joinpath("page.html").read_bytes()


# -- waiting for the batcher -------------------------------------------------------------------

async def _result(request: Request, future: Future) -> list[Enhancement]:
    """The Future's Enhancements; an ApiError for a failure; cancelled when the client goes away."""
    outcome = await _outcome(request, future)
    if isinstance(outcome, ApiError):
        raise outcome
    return outcome


async def _outcome(request: Request, future: Future) -> list[Enhancement] | ApiError:
    waiting = asyncio.wrap_future(future)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({waiting, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:  # also when this task is cancelled (Starlette cancels a stream whose client left)
        gone.cancel()
        if not waiting.done():
            future.cancel()
            waiting.cancel()
    if not waiting.done():
        raise _ClientGone()
    if waiting.cancelled():
        return ApiError(503, "the request was cancelled; the server is shutting down.", kind="server_error")
    error = waiting.exception()  # read from the asyncio side too, so asyncio does not log it as lost
    if error is None:
        return waiting.result()
    if isinstance(error, UserError):
        return ApiError(400, str(error))
    if isinstance(error, Busy):
        return ApiError(503, f"the server could not take the request: {error}.", kind="server_error")
    log.error("the booster failed", exc_info=error)
    return ApiError(500, f"the booster failed ({type(error).__name__}); see the server's log.", kind="server_error")


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone away (the body is read by then, so the next message tells)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class _ClientGone(Exception):
    """The client went away while its request waited; nothing is sent."""


def _event_stream(events: AsyncIterator[str], future: Future, media_type: str = "text/event-stream") -> Response:
    async def guarded() -> AsyncIterator[str]:
        try:
            async for event in events:
                yield event
        except _ClientGone:
            return
        finally:
            future.cancel()  # a no-op once it is done
    return StreamingResponse(guarded(), media_type=media_type,
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data)}\n\n"


def _openai_error(error: ApiError) -> dict:
    return {"error": {"message": error.message, "type": error.kind, "param": None, "code": error.code}}


def _usage(results: list[Enhancement]) -> dict:
    # The booster's own prompt (instructions and examples) is not counted; completion tokens are.
    tokens = sum(e.tokens for e in results)
    return {"prompt_tokens": 0, "completion_tokens": tokens, "total_tokens": tokens}


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


# -- running it --------------------------------------------------------------------------------


def _openai_stream(request, future, body, *, ident: str, created: int, name: str, kind: str,
                   opening: list[dict] | None, choice) -> Response:
    """An OpenAI stream of server-sent events: the opening chunk (chat's role), one chunk a variant
    (the booster gives whole texts), the finish chunk, usage when asked, then [DONE]."""
    def chunk(choices: list[dict], usage: dict | None = None) -> str:
        data = {"id": ident, "object": kind, "created": created, "model": name, "choices": choices}
        if body.include_usage():
            data["usage"] = usage
        return _sse(data)

    async def events() -> AsyncIterator[str]:
        if opening is not None:
            yield chunk(opening)
        results = await _outcome(request, future)
        if isinstance(results, ApiError):
            yield _sse(_openai_error(results))
            return
        for e in results:
            yield chunk([choice(e, e.text, None)])
        yield chunk([choice(e, None, "stop") for e in results])
        if body.include_usage():
            yield chunk([], _usage(results))
        yield "data: [DONE]\n\n"

    return _event_stream(events(), future)

def serve(boosters: dict[str, Batcher], host: str = "127.0.0.1", port: int = 8765, api_key: str | None = None,
          *, max_body: int = 64_000, max_prompt_chars: int = 4000, log_level: str = "info") -> None:
    """Serve `boosters` with uvicorn until stopped (Ctrl-C or SIGTERM); the caller closes the batchers.

    Any host other than the loopback (127.0.0.1, localhost, ::1) needs an `api_key`.
    """
    if host not in LOCAL_HOSTS and not api_key:
        raise UserError(f"serving on {host} opens the booster to the network; set PAAV_API_KEY to a secret, "
                        "or serve on 127.0.0.1.")
    import uvicorn

    app = create_app(boosters, api_key=api_key, max_body=max_body, max_prompt_chars=max_prompt_chars)
    uvicorn.run(app, host=host, port=port, log_level=log_level, server_header=False, timeout_graceful_shutdown=30)
