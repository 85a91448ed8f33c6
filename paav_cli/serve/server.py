"""`paav serve`: load the boosters once, put a batcher in front of each, serve them until stopped."""

from __future__ import annotations

import os
import signal

from paav_cli.errors import UserError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
API_KEY_ENV = "PAAV_API_KEY"


def serve_boosters(models: list[str], *, host: str = "127.0.0.1", port: int = 8765, parallel: int = 32,
                   threads: int | None = None, max_queue: int = 64) -> None:
    """Serve each booster in `models` (registered names or GGUF paths) over HTTP until SIGINT/SIGTERM:
    OpenAI's and Ollama's endpoints and paav's `/v1/enhance`, concurrent requests decoded together.

    The API key comes only from $PAAV_API_KEY (a key on a command line is visible to every user of
    the machine through `ps`); serving on an address other than this machine's needs one.
    """
    api_key = os.environ.get(API_KEY_ENV) or None
    if host not in LOCAL_HOSTS and api_key is None:
        raise UserError(f"serving on {host} lets other machines in; set {API_KEY_ENV} to a secret first, "
                        "or serve on 127.0.0.1.")
    if len(set(models)) != len(models):
        raise UserError(f"-m names a booster twice ({', '.join(models)}); give each once.")
    from paav_cli.enhance import load_booster
    from paav_cli.serve.batcher import Batcher

    batchers = {}
    # uvicorn shuts down gracefully on SIGTERM and then raises the signal again, which would kill the
    # process before the boosters are closed and exit with -15; this handler turns it into a return.
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        for name in models:
            batchers[name] = Batcher(load_booster(name, threads=threads, parallel=parallel), max_queue=max_queue)
        from paav_cli.serve.app import serve

        serve(batchers, host=host, port=port, api_key=api_key)
    except (_Stopped, KeyboardInterrupt):
        pass  # asked to stop: requests in flight were answered
    finally:
        signal.signal(signal.SIGTERM, previous)
        for batcher in batchers.values():
            batcher.close()
            batcher.booster.close()


class _Stopped(Exception):
    pass


def _stop(signum, frame) -> None:
    raise _Stopped
