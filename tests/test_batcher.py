"""The serving core: requests that arrive together decode together, the queue is bounded, a request
whose client went away is dropped."""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError

import pytest

from paav_cli import load_booster
from paav_cli.enhance import Booster, Enhancement
from paav_cli.errors import UserError
from paav_cli.serve.batcher import Batcher, Busy


@pytest.fixture(scope="module")
def booster(tiny_models, shared_cache):
    with pytest.MonkeyPatch.context() as m:
        m.setenv("PAAV_CACHE", str(shared_cache))
        with load_booster("tiny", threads=1, parallel=8) as b:
            yield b


class Gate:
    """Holds the worker inside its first batch until released, and records what each batch decoded."""

    def __init__(self, monkeypatch, booster):
        self.entered, self.release = threading.Event(), threading.Event()
        self.batches: list[list[str]] = []
        real = Booster.run

        def run(b, jobs, settings, on_result):
            jobs = list(jobs)
            self.batches.append([job.record.prompt for job in jobs])
            if len(self.batches) == 1:
                self.entered.set()
                assert self.release.wait(30)
            return real(b, jobs, settings, on_result)

        monkeypatch.setattr(Booster, "run", run)


def test_requests_waiting_together_decode_in_one_batch_and_get_their_own_results(booster, monkeypatch):
    gate = Gate(monkeypatch, booster)
    batcher = Batcher(booster)
    try:
        first = batcher.submit("a cat playing piano", seed=1)
        assert gate.entered.wait(30)
        waiting = [batcher.submit(p, seed=s, n=n, temperature=0.8) for p, s, n in
                   (("a fox in the snow", 2, 1), ("a red car in the rain", 3, 2), ("an owl at night", 4, 1))]
        gate.release.set()
        results = [f.result(60) for f in (first, *waiting)]
    finally:
        batcher.close()
    assert gate.batches == [["a cat playing piano"],
                            ["a fox in the snow", "a red car in the rain", "a red car in the rain", "an owl at night"]]
    assert [[(r.prompt, r.seed, r.variant) for r in rs] for rs in results] == [
        [("a cat playing piano", 1, 0)], [("a fox in the snow", 2, 0)],
        [("a red car in the rain", 3, 0), ("a red car in the rain", 4, 1)], [("an owl at night", 4, 0)]]
    assert all(isinstance(r, Enhancement) for rs in results for r in rs)
    alone = booster.enhance("a cat playing piano", seed=1)  # a batch of one, as the first request was
    assert results[0][0].text == alone[0].text


def test_requests_sampled_differently_decode_in_separate_batches(booster, monkeypatch):
    gate = Gate(monkeypatch, booster)
    batcher = Batcher(booster)
    try:
        first = batcher.submit("a cat", seed=0)
        assert gate.entered.wait(30)
        greedy = batcher.submit("a dog", seed=0)
        sampled = batcher.submit("a bird", seed=0, temperature=0.7)
        gate.release.set()
        assert first.result(60)[0].prompt == "a cat"
        assert greedy.result(60)[0].temperature == 0.0 and sampled.result(60)[0].temperature == 0.7
    finally:
        batcher.close()
    assert gate.batches[1:] == [["a dog"], ["a bird"]]


def test_a_full_queue_refuses_at_once_and_a_cancelled_request_is_never_decoded(booster, monkeypatch):
    gate = Gate(monkeypatch, booster)
    batcher = Batcher(booster, max_queue=2)
    try:
        first = batcher.submit("a cat", seed=0)
        assert gate.entered.wait(30)
        gone = batcher.submit("a client that went away", seed=0)
        kept = batcher.submit("a dog", seed=0)
        with pytest.raises(Busy, match="2 requests are waiting"):
            batcher.submit("one too many", seed=0)
        assert gone.cancel()
        gate.release.set()
        assert kept.result(60)[0].prompt == "a dog" and first.result(60)
        with pytest.raises(CancelledError):
            gone.result()
    finally:
        batcher.close()
    assert all("a client that went away" not in batch for batch in gate.batches)


def test_bad_input_is_refused_when_submitted_and_a_too_long_prompt_fails_its_own_future(booster):
    batcher = Batcher(booster)
    try:
        with pytest.raises(UserError, match="empty"):
            batcher.submit("   ")
        with pytest.raises(UserError, match="n must be 1 or more"):
            batcher.submit("a cat", n=0)
        with pytest.raises(UserError, match="unknown generator"):
            batcher.submit("a cat", target="no-such-generator")
        long = batcher.submit("a cat " * 3000, seed=0)
        fine = batcher.submit("a cat", seed=0)
        with pytest.raises(UserError, match="too long for its"):
            long.result(60)
        assert fine.result(60)[0].prompt == "a cat"
    finally:
        batcher.close()


def test_closing_fails_what_still_waits_and_refuses_new_requests(booster, monkeypatch):
    gate = Gate(monkeypatch, booster)
    batcher = Batcher(booster)
    first = batcher.submit("a cat", seed=0)
    assert gate.entered.wait(30)
    waiting = batcher.submit("a dog", seed=0)
    closer = threading.Thread(target=batcher.close)
    closer.start()
    gate.release.set()
    closer.join(60)
    assert first.result(60)
    with pytest.raises(Busy):
        waiting.result(60)
    with pytest.raises(Busy, match="shutting down"):
        batcher.submit("a bird")


def test_a_request_that_comes_just_after_another_joins_its_batch(booster, monkeypatch):
    """Clients answered in one batch send their next requests milliseconds apart: the worker waits
    `linger` seconds for them instead of starting a batch of one."""
    gate = Gate(monkeypatch, booster)
    gate.release.set()  # record the batches, hold none
    batcher = Batcher(booster, linger=0.5)
    try:
        first = batcher.submit("a cat", seed=0)
        time.sleep(0.05)
        second = batcher.submit("a dog", seed=0)
        assert first.result(60) and second.result(60)
    finally:
        batcher.close()
    assert gate.batches == [["a cat", "a dog"]]
