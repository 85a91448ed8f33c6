"""Requests that arrive together decode together: a bounded queue in front of one loaded booster.

A server thread per client would decode one prompt at a time, and llama.cpp's multi-sequence
batching (what makes `paav enhance -i` about twice as fast per prompt) would go unused. So every
request goes into one queue; one worker thread takes everything waiting, up to the booster's
`parallel` sequences, and decodes it in one `Booster.run`. The queue is bounded: when it is full a
request is refused at once (`Busy`, a 429), never kept in an unbounded backlog.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

from paav_cli import registry
from paav_cli.enhance import Booster, Enhancement, Job, Settings, prompt_record, too_long_message
from paav_cli.errors import UserError
from paav_cli.prompt_files import PromptRecord


class Busy(Exception):
    """The queue is full; the caller should answer "try again later" (HTTP 429)."""


@dataclass
class _Request:
    record: PromptRecord
    settings: Settings
    future: Future

    def decode_key(self) -> tuple:
        """What must be the same for requests to decode in one batch (llama.cpp samples a batch alike)."""
        s = self.settings
        return (s.temperature, s.max_tokens, s.target, s.negative)


class Batcher:
    """One booster, one worker thread, one bounded queue. `submit` is safe from any thread."""

    def __init__(self, booster: Booster, *, max_queue: int = 64, linger: float = 0.02):
        self.booster = booster
        self.linger = linger
        self._queue: queue.Queue[_Request] = queue.Queue(maxsize=max_queue)
        self._stop = threading.Event()
        self._known_targets: set[str] = set()
        self._thread = threading.Thread(target=self._work, name=f"paav-batcher-{booster.name}", daemon=True)
        self._thread.start()

    def submit(self, prompt: str, *, n: int = 1, seed: int | None = None, temperature: float | None = None,
               target: str | None = None, negative: bool = False, max_tokens: int = 200) -> Future:
        """Queue one prompt; the Future's result is its `n` Enhancements (as `Booster.enhance` gives).

        Bad input raises UserError here; a full queue raises Busy. A prompt too long for the
        booster's context fails its Future with UserError. Cancelling the Future before its batch
        starts drops the request.
        """
        if self._stop.is_set():
            raise Busy("the server is shutting down")
        settings = Settings.resolve(n=n, seed=seed, temperature=temperature, max_tokens=max_tokens,
                                    target=target, negative=negative)
        if settings.target and settings.target not in self._known_targets:
            registry.Registry.load().get(settings.target, "generators")  # unknown: a UserError now
            self._known_targets.add(settings.target)
        request = _Request(prompt_record(1, prompt), settings, Future())
        try:
            self._queue.put_nowait(request)
        except queue.Full:
            raise Busy(f"{self._queue.maxsize} requests are waiting already; try again in a moment") from None
        return request.future

    def close(self) -> None:
        """Stop the worker; requests still waiting fail with Busy. The booster stays loaded."""
        self._stop.set()
        self._thread.join()
        while True:
            try:
                request = self._queue.get_nowait()
            except queue.Empty:
                return
            if request.future.set_running_or_notify_cancel():
                request.future.set_exception(Busy("the server is shutting down"))

    # -- the worker ------------------------------------------------------------------------

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=0.05)
            except queue.Empty:
                continue
            self._decode(self._gather(first))

    def _gather(self, first: _Request) -> list[_Request]:
        """The first request and every other that comes within `linger` seconds, up to the booster's
        parallel sequences. Clients that got their answers in one batch send their next requests a
        few milliseconds apart; without the wait they would split into batches that alternate."""
        batch, sequences = [first], first.settings.n
        deadline = time.monotonic() + self.linger
        while sequences < self.booster.model.max_parallel:
            try:
                request = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            batch.append(request)
            sequences += request.settings.n
        return batch

    def _decode(self, batch: list[_Request]) -> None:
        live = [r for r in batch if r.future.set_running_or_notify_cancel() and self._fits(r)]
        groups: dict[tuple, list[_Request]] = {}
        for request in live:
            groups.setdefault(request.decode_key(), []).append(request)
        for group in groups.values():
            self._decode_group(group)

    def _fits(self, request: _Request) -> bool:
        tokens = self.booster.too_long(request.record.prompt, request.settings.max_tokens)
        if tokens is None:
            return True
        request.future.set_exception(UserError(too_long_message(request.record, tokens, self.booster,
                                                                request.settings.max_tokens)))
        return False

    def _decode_group(self, group: list[_Request]) -> None:
        jobs, owner = [], []
        for request in group:
            for variant in range(request.settings.n):
                jobs.append(Job(index=len(jobs), record=request.record, variant=variant,
                                seed=request.settings.seed + variant))
                owner.append(request)
        results: dict[int, Enhancement] = {}
        try:
            self.booster.run(jobs, group[0].settings, lambda job, result: results.__setitem__(job.index, result))
        except BaseException as e:  # noqa: BLE001 - handed to every waiting caller; the worker goes on
            for request in group:
                request.future.set_exception(e)
            return
        for request in group:
            request.future.set_result([results[job.index] for job in jobs if owner[job.index] is request])
