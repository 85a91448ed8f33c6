"""`paav evolve` end to end on tiny models: loads per iteration, resume after a crash or kill -9 in
each phase, budgets, sharding, real mutators (llama.cpp in-process and a llama_cpp.server through
the openai client), and bad input."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import assert_user_error, paav, user_models

from paav_cli.evolve import evolve_run, merge_runs
from paav_cli.evolve.engine import EvolveOptions
from paav_cli.recipe import load_recipe
from paav_cli.runs import read_journal, read_manifest
from paav_cli.video.render import accelerator

SOURCES = ["a cat playing piano", "a red car in the rain", "a fox in the snow"]


class ScriptedMutator:
    """A deterministic stand-in for an LLM in engine tests: tagged rewrites derived from the seed."""

    parallel_safe = True
    WORDS = ["slowly", "at dusk", "in soft light", "close up", "wide shot", "from above", "in the morning"]

    def __init__(self, fail_at: int | None = None):
        self.calls = 0
        self.fail_at = fail_at

    def generate(self, messages, *, n=1, temperature=1.0, max_tokens=256, seed=None):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise RuntimeError("mutator crashed")
        original = messages[1]["content"].splitlines()[0].removeprefix("0. ").split(" (score")[0]
        picks = [self.WORDS[(seed + k) % len(self.WORDS)] for k in range(3)]
        return ["".join(f"<PROMPT>{original}, {w}, take {seed % 97}</PROMPT>" for w in picks)]

    def close(self):
        pass


def write_recipe(tmp_path: Path, rewards=("tiny-aesthetic", "tiny-clip-score"), iterations=2, extra="") -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(f"""
[models]
generator = "tiny-wan"
rewards = {json.dumps(list(rewards))}
mutator = "tiny-mutator"

[evolve]
iterations = {iterations}
new_per_iteration = 3
keep_top = 3
{extra}
""")
    return path


def write_sources(tmp_path: Path, prompts=SOURCES) -> str:
    path = tmp_path / "sources.txt"
    path.write_text("\n".join(prompts) + "\n")
    return str(path)


def run_with(monkeypatch, mutator, tmp_path, run="run", recipe=None, **kw):
    monkeypatch.setattr("paav_cli.llm.mutators.load_mutator", lambda name, **_: mutator)
    recipe = load_recipe(str(recipe or write_recipe(tmp_path)))
    return evolve_run(write_sources(tmp_path), recipe, str(tmp_path / run), **kw)


def own_caches(monkeypatch, folder: Path) -> None:
    """Renders and scores of this test alone (those other tests made would be free), beside the
    session's built models."""
    monkeypatch.setattr("paav_cli.paths.renders_dir", lambda: folder / "renders")
    monkeypatch.setattr("paav_cli.paths.scores_dir", lambda: folder / "scores")


def journal(tmp_path, run="run") -> list[dict]:
    return read_journal(tmp_path / run / "evolve" / "journal.jsonl")


def content(records: list[dict]) -> list[tuple]:
    return sorted((r["id"], r["prompt"], tuple(sorted(r["scores"].items()))) for r in records)


class Counters:
    """Counts renders and reward-model scoring calls (per video) across runs in one test."""

    def __init__(self, monkeypatch):
        from paav_cli.video.render import VideoGenerator

        self.renders = 0
        self.scored = 0
        real_render = VideoGenerator._render_one

        def render_one(gen, settings, progress):
            self.renders += 1
            return real_render(gen, settings, progress)

        monkeypatch.setattr(VideoGenerator, "_render_one", render_one)
        from paav_cli.rewards import scoring

        real_load = scoring.load_reward

        def load(entry):
            model = real_load(entry)
            real_score = model.score

            def score(videos, prompts):
                out = real_score(videos, prompts)
                self.scored += len(videos)  # counted once done: a crashed call scored nothing
                return out

            model.score = score
            return model

        monkeypatch.setattr(scoring, "load_reward", load)


def test_evolution_makes_pairs_and_loads_each_model_once_per_iteration(tmp_path, monkeypatch):
    mutator = ScriptedMutator()
    result = run_with(monkeypatch, mutator, tmp_path)
    records = journal(tmp_path)
    assert result.done and result.stopped is None
    assert len(records) == 3 * (1 + 3 + 3)  # originals + 3 new per iteration, 2 iterations
    assert len({r["id"] for r in records}) == len(records)
    assert result.record["loads"] == {0: 3, 1: 3, 2: 3}  # generator + 2 rewards, whatever the number of prompts
    assert mutator.calls == 3 * 2  # one call per source and iteration
    for r in records:
        assert set(r["scores"]) == {"AES", "CLIP"} and r["render_key"]
        if r["iteration"] > 0:
            assert r["parents"][0] == f"{r['source']}:0:0"
    pairs = read_journal(tmp_path / "run" / "evolve" / "pairs.jsonl")
    figures = result.figures
    assert figures["pairs"] == len(pairs) and figures["pairs"] + figures["sources_without_target"] == 3
    for p in pairs:
        assert p["source"] in SOURCES and p["gain"] > 0 and p["target"].startswith(p["source"])
    assert (tmp_path / "run" / "evolve" / "curves.png").stat().st_size > 1000
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    entry = manifest["stages"]["evolve"]
    assert entry["status"] == "done" and manifest["recipe"]["evolve"]["iterations"] == 2
    assert entry["figures"] == figures and entry["outputs"]["pairs"] == "evolve/pairs.jsonl"  # relative to RUN


def test_rerun_of_a_finished_run_does_nothing(tmp_path, monkeypatch):
    run_with(monkeypatch, ScriptedMutator(), tmp_path)
    before = journal(tmp_path)
    counters = Counters(monkeypatch)
    mutator = ScriptedMutator()
    run_with(monkeypatch, mutator, tmp_path)
    assert journal(tmp_path) == before
    assert counters.renders == 0 and counters.scored == 0 and mutator.calls == 0


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, shared_cache) -> list[tuple]:
    """What a run never interrupted journals: every resumed run below must end with the same, so
    it is computed once for the three of them."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    with pytest.MonkeyPatch.context() as m:
        m.setenv("PAAV_CACHE", str(shared_cache))
        m.setenv("XDG_CONFIG_HOME", str(folder / "config"))
        m.setenv("HF_HUB_OFFLINE", "1")
        m.delenv("PAAV_MODELS", raising=False)
        own_caches(m, folder / "cache")
        run_with(m, ScriptedMutator(), folder, run="reference")
    return content(journal(folder, "reference"))


@pytest.mark.parametrize("phase", ["render", "score", "mutate"])
def test_resume_after_a_crash_in_each_phase(tmp_path, monkeypatch, phase, uninterrupted):
    expected = uninterrupted

    own_caches(monkeypatch, tmp_path / "cache")
    counters = Counters(monkeypatch)
    with monkeypatch.context() as m:
        if phase == "render":  # the 5th new video of the run fails (iteration 1)
            from paav_cli.video.render import VideoGenerator

            inner = VideoGenerator._render_one

            def flaky(gen, settings, progress):
                if counters.renders == 5:
                    raise RuntimeError("GPU fell over")
                return inner(gen, settings, progress)

            m.setattr(VideoGenerator, "_render_one", flaky)
            mutator = ScriptedMutator()
        elif phase == "score":  # the second reward model crashes in iteration 1
            from paav_cli.rewards.clip import ClipScoreReward

            real = ClipScoreReward.score
            calls = []

            def crash(self, videos, prompts):
                calls.append(1)
                if len(calls) == 2:
                    raise RuntimeError("reward model crashed")
                return real(self, videos, prompts)

            m.setattr(ClipScoreReward, "score", crash)
            mutator = ScriptedMutator()
        else:
            mutator = ScriptedMutator(fail_at=5)  # second iteration, second source
        with pytest.raises(RuntimeError):
            run_with(m, mutator, tmp_path)
    calls_before = mutator.calls - (1 if phase == "mutate" else 0)
    resumed = ScriptedMutator()
    run_with(monkeypatch, resumed, tmp_path)
    records = journal(tmp_path)
    assert len({r["id"] for r in records}) == len(records)  # nothing journaled twice
    assert content(records) == expected  # the same science as a run never interrupted
    unique = len(records)
    assert counters.renders == unique  # every candidate rendered exactly once over both runs
    assert counters.scored == unique * 2  # and scored once by each of the 2 reward models
    assert calls_before + resumed.calls == 6  # no mutator answer asked for twice


def test_kill_9_mid_run_then_resume(tmp_path):
    """The real command line with the in-process llama.cpp mutator, killed while it works."""
    recipe = write_recipe(tmp_path, iterations=3)
    sources = write_sources(tmp_path)
    run = tmp_path / "run"
    args = [sys.executable, "-m", "paav_cli", "evolve", sources, "--recipe", str(recipe), "--run", str(run)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal_path = run / "evolve" / "journal.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if journal_path.exists() and len(journal_path.read_text().splitlines()) >= 4:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done = paav("evolve", sources, "--recipe", str(recipe), "--run", str(run))
    assert done.returncode == 0, done.stderr
    records = read_journal(journal_path)
    assert len({r["id"] for r in records}) == len(records)
    candidates = [r for r in read_journal(run / "evolve" / "candidates.jsonl") if not r.get("empty")]
    assert {r["id"] for r in records} == {c["id"] for c in candidates}
    assert done.stdout.startswith("evolve: done; pairs ") and "sources 3" in done.stdout


def test_budgets_stop_cleanly_and_resume(tmp_path, monkeypatch):
    own_caches(monkeypatch, tmp_path / "cache")
    result = run_with(monkeypatch, ScriptedMutator(), tmp_path, options=EvolveOptions(max_videos=5))
    assert result.status == "stopped" and "--max-videos 5" in result.stopped
    assert result.record["rendered"] == 5
    result = run_with(monkeypatch, ScriptedMutator(), tmp_path, options=EvolveOptions(max_llm_calls=2))
    assert result.status == "stopped" and "--max-llm-calls" in result.stopped
    assert result.record["llm_calls"] <= 2
    assert read_manifest(tmp_path / "run")["stages"]["evolve"]["stopped"] == result.stopped
    result = run_with(monkeypatch, ScriptedMutator(), tmp_path)
    assert result.done
    records = journal(tmp_path)
    assert len(records) == 21 and len({r["id"] for r in records}) == 21


def test_shards_merge_into_the_whole(tmp_path, monkeypatch):
    whole = run_with(monkeypatch, ScriptedMutator(), tmp_path, run="whole")
    for k in (1, 2):
        run_with(monkeypatch, ScriptedMutator(), tmp_path, run=f"shard{k}", options=EvolveOptions(shard=(k, 2)))
    merged = merge_runs([str(tmp_path / "shard1"), str(tmp_path / "shard2")], str(tmp_path / "merged"))
    assert merged.done and merged.figures["sources"] == 3 and merged.figures["pairs"] == whole.figures["pairs"]
    assert content(journal(tmp_path, "merged")) == content(journal(tmp_path, "whole"))


def test_digit_filter_drops_sources_as_released(tmp_path, monkeypatch):
    monkeypatch.setattr("paav_cli.llm.mutators.load_mutator", lambda name, **_: ScriptedMutator())
    path = tmp_path / "s.txt"
    path.write_text("a cat playing piano\nflight 1234 lands at gate 5\n")
    result = evolve_run(str(path), load_recipe(str(write_recipe(tmp_path, iterations=1))), str(tmp_path / "r"),
                        max_digits=3)
    assert result.figures["sources"] == 1


def test_in_process_llamacpp_mutator(tmp_path):
    """The recipe's own mutator, no stand-in: the tiny chat GGUF through llama-cpp-python."""
    recipe = load_recipe(str(write_recipe(tmp_path, iterations=2)))
    result = evolve_run(write_sources(tmp_path, SOURCES[:2]), recipe, str(tmp_path / "run"))
    records = journal(tmp_path)
    assert result.done and result.record["llm_calls"] >= 2
    assert any(r["iteration"] > 0 and "light fills the scene" in r["prompt"] for r in records)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def llama_server(tmp_path):
    """`python -m llama_cpp.server` on 127.0.0.1 serving the tiny chat GGUF; stopped after the test."""
    from paav_cli import registry

    model = registry.require_path(registry.Registry.load().get("tiny-chat"))
    port = _free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "8192", "--model_alias", "tiny"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("llama_cpp.server did not start: " + (tmp_path / "server.log").read_text()[-2000:])
    yield f"http://127.0.0.1:{port}/v1"
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def test_openai_mutator_against_a_real_llama_cpp_server(tmp_path, llama_server):
    user_models(tmp_path, f'[mutators.local-server]\nbackend = "openai"\nmodel = "tiny"\nbase_url = "{llama_server}"\n')
    sources = write_sources(tmp_path, SOURCES[:2])
    # The shipped CPU recipe: tiny CogVideoX, tiny VideoScore + aesthetic + MPS; only the mutator swapped.
    proc = paav("evolve", sources, "--recipe", "tiny-cpu", "--run", str(tmp_path / "run"),
                "--mutator", "local-server", env={"OPENAI_API_KEY": ""})
    assert proc.returncode == 0, proc.stderr
    records = journal(tmp_path)
    assert any(r["iteration"] > 0 and "light fills the scene" in r["prompt"] for r in records)
    assert all(set(r["scores"]) == {"VQ", "TC", "DD", "TVA", "FC", "AES", "MPS"} for r in records)
    manifest = (tmp_path / "run" / "manifest.json").read_text()
    assert "local-server" in manifest


def test_api_key_never_reaches_the_run_folder(tmp_path, llama_server):
    secret = "sk-test-SECRET-123456"
    user_models(tmp_path, f'[mutators.keyed]\nbackend = "openai"\nmodel = "tiny"\nbase_url = "{llama_server}"\n'
                          'api_key_env = "PAAV_TEST_KEY"\n')
    proc = paav("evolve", write_sources(tmp_path, SOURCES[:1]), "--recipe", str(write_recipe(tmp_path, iterations=1)),
                "--run", str(tmp_path / "run"), "--mutator", "keyed", env={"PAAV_TEST_KEY": secret})
    assert proc.returncode == 0, proc.stderr
    for path in (tmp_path / "run").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert secret not in proc.stdout + proc.stderr


def test_bad_input(tmp_path):
    recipe = str(write_recipe(tmp_path))
    sources = write_sources(tmp_path)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert_user_error(paav("evolve", str(empty), "--recipe", recipe, "--run", str(tmp_path / "r")), "no prompts")
    assert_user_error(paav("evolve", sources, "--recipe", recipe, "--run", str(tmp_path / "r"),
                           "--mutator", "gpt-5-turbo"), "unknown mutator")
    proc = paav("evolve", sources, "--recipe", recipe, "--run", str(tmp_path / "r"), "--mutator", "gpt-4o",
                env={"OPENAI_API_KEY": ""})
    assert_user_error(proc, "OPENAI_API_KEY")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert_user_error(paav("evolve", sources, "--recipe", recipe, "--run", str(blocker / "run")),
                      "cannot write to the run folder")
    assert_user_error(paav("evolve", sources, "--recipe", str(tmp_path / "nope.toml"), "--run", str(tmp_path / "r")),
                      "recipe")
    bad = tmp_path / "bad.toml"
    bad.write_text('[models]\ngenerator = "tiny-wan"\nrewards = ["tiny-aesthetic"]\n[evolve]\niteratons = 3\n')
    assert_user_error(paav("evolve", sources, "--recipe", str(bad), "--run", str(tmp_path / "r")),
                      "[evolve] iteratons", "unknown key")


def test_unreachable_endpoint_after_bounded_retries_loses_nothing(tmp_path, monkeypatch):
    recipe = load_recipe(str(write_recipe(tmp_path, iterations=1)))
    sources = write_sources(tmp_path)
    with monkeypatch.context() as m:  # undone before `paav` runs, which may run in this process
        m.setattr("paav_cli.llm.mutators.load_mutator", lambda name, **_: ScriptedMutator())
        evolve_run(sources, recipe, str(tmp_path / "run"), options=EvolveOptions(max_llm_calls=2))
    before = journal(tmp_path)
    port = _free_port()  # nothing listens there
    user_models(tmp_path, f'[mutators.down]\nbackend = "openai"\nmodel = "m"\nbase_url = "http://127.0.0.1:{port}/v1"\n'
                          "retries = 3\ntimeout = 2\n")
    start = time.time()
    proc = paav("evolve", sources, "--recipe", str(tmp_path / "recipe.toml"), "--run", str(tmp_path / "run"),
                "--mutator", "down")
    assert_user_error(proc, "after 3 tries", "run again to resume")
    assert time.time() - start < 60
    assert journal(tmp_path)[: len(before)] == before


def test_recipe_and_sources_of_a_run_cannot_change(tmp_path, monkeypatch):
    run_with(monkeypatch, ScriptedMutator(), tmp_path, options=EvolveOptions(max_llm_calls=0))
    other = tmp_path / "other.txt"
    other.write_text("a different prompt entirely\n")
    proc = paav("evolve", str(other), "--recipe", str(tmp_path / "recipe.toml"), "--run", str(tmp_path / "run"))
    assert_user_error(proc, "other source prompts")
    changed = write_recipe(tmp_path, iterations=5)
    proc = paav("evolve", str(tmp_path / "sources.txt"), "--recipe", str(changed), "--run", str(tmp_path / "run"))
    assert_user_error(proc, "different recipe settings")
    assert os.path.exists(tmp_path / "run" / "evolve" / "journal.jsonl")


def test_hf_mutator_generates_reproducibly():
    from paav_cli.llm.mutators import load_mutator

    mutator = load_mutator("tiny-hf-mutator")
    messages = [{"role": "system", "content": "rewrite"}, {"role": "user", "content": "0. a cat"}]
    first = mutator.generate(messages, n=2, temperature=1.0, max_tokens=12, seed=5)
    assert len(first) == 2 and all(isinstance(t, str) for t in first)
    assert mutator.generate(messages, n=2, temperature=1.0, max_tokens=12, seed=5) == first
    assert mutator.generate(messages, n=1, temperature=0.0, max_tokens=12, seed=1) == \
        mutator.generate(messages, n=1, temperature=0.0, max_tokens=12, seed=2)  # greedy ignores the seed
    mutator.close()


def test_hf_mutator_in_an_evolution(tmp_path):
    result = evolve_run(write_sources(tmp_path, SOURCES[:1]), load_recipe(str(write_recipe(tmp_path, iterations=1))),
                        str(tmp_path / "run"), mutator="tiny-hf-mutator")
    assert result.done and result.record["llm_calls"] >= 1


def test_a_call_budget_that_cannot_pay_for_a_mutation_is_refused_before_any_work(tmp_path):
    run = tmp_path / "run"
    proc = paav("evolve", write_sources(tmp_path), "--recipe", str(write_recipe(tmp_path)), "--run", str(run),
                "--max-llm-calls", "1")
    assert_user_error(proc, "--max-llm-calls 1", "at least 2")
    assert not run.exists()


def write_gpu_recipe(tmp_path: Path) -> Path:
    """The tiny recipe as a GPU recipe would run it: model CPU offload."""
    path = write_recipe(tmp_path, iterations=1)
    path.write_text(path.read_text() + '\n[render]\nmemory = "model"\n')
    return path


@pytest.mark.skipif(accelerator() is not None, reason="this machine has an accelerator")
def test_a_gpu_recipe_on_a_cpu_leaves_no_run_folder_and_runs_with_memory_none(tmp_path):
    run = tmp_path / "run"
    sources = write_sources(tmp_path, SOURCES[:1])
    shipped = paav("evolve", sources, "--recipe", "cogvideox-2b", "--run", str(run))
    assert_user_error(shipped, "memory mode 'model'", "--memory none")
    assert not run.exists()  # nothing recorded, so nothing locks the folder to that recipe
    recipe = str(write_gpu_recipe(tmp_path))
    assert_user_error(paav("evolve", sources, "--recipe", recipe, "--run", str(run)), "--memory none")
    assert not run.exists()
    args = ("evolve", sources, "--recipe", recipe, "--run", str(run), "--memory", "none",
            "--max-llm-calls", "0")
    first = paav(*args)
    assert first.returncode == 0, first.stderr
    assert len(journal(tmp_path)) == 1
    # The override is how to run, not what to compute: the run keeps the recipe as written and
    # resumes with or without it (here: without, on a GPU; with, on a CPU).
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["recipe"]["render"]["memory"] == "model"
    again = paav(*args)
    assert again.returncode == 0, again.stderr
    assert len(journal(tmp_path)) == 1
