"""`paav eval` (paav_cli.evaluate): text-only and full evaluations with the tiny models, resume, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from paav_cli import registry
from paav_cli.errors import UserError
from paav_cli.evaluate import run_eval
from paav_cli.evaluate.methods import tidy_mutator_output
from paav_cli.recipe import Models, Recipe, load_recipe

PROMPTS = ["A person is shining shoes", "a red car drives along a coastal road at sunset", "A cat playing piano"]
REPORT_FILES = ("table.md", "table.csv", "winrate.png", "dims.png", "prompts.jsonl")


@pytest.fixture
def prompts(tmp_path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


def fast_recipe() -> Recipe:
    return Recipe(name="tiny-fast", models=Models(generator="tiny-wan", rewards=["tiny-aesthetic", "tiny-clip-score"]))


def tiny_chat_gguf() -> str:
    return str(registry.require_path(registry.Registry.load().get("tiny-chat")))


def journal(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "prompts.jsonl").read_text().splitlines()]


def count_rewrites(monkeypatch) -> list[int]:
    """Counts booster jobs (Booster.run) and mutator calls made from now on."""
    from paav_cli import enhance
    from paav_cli.evaluate import methods

    calls = [0]
    real_run, real_tidy = enhance.Booster.run, methods.tidy_mutator_output

    def run(booster, jobs, *args, **kwargs):
        jobs = list(jobs)
        calls[0] += len(jobs)
        return real_run(booster, jobs, *args, **kwargs)

    def tidy(original, raw):
        calls[0] += 1
        return real_tidy(original, raw)

    monkeypatch.setattr(enhance.Booster, "run", run)
    monkeypatch.setattr(methods, "tidy_mutator_output", tidy)
    return calls


def test_text_only_eval(prompts, tmp_path, monkeypatch):
    out = tmp_path / "report"
    result = run_eval(str(prompts), ["original", "tiny", "tiny-mutator"], out, recipe=None, text_only=True,
                      target=None)
    assert result.stage == "eval" and result.done
    assert result.figures["mode"] == "text-only" and result.record["target"] == "cogvideox-5b"
    assert result.outputs == {"table": str(out / "table.md"), "csv": str(out / "table.csv"),
                              "winrate": str(out / "winrate.png"), "dims": str(out / "dims.png"),
                              "journal": str(out / "prompts.jsonl")}
    for name in REPORT_FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    rows = {r["method"]: r for r in result.record["rows"]}
    assert result.figures["intent"] == {name: row["intent"] for name, row in rows.items()}
    assert list(rows) == ["original", "tiny", "tiny-mutator"]
    assert rows["original"]["intent"] == pytest.approx(1.0, abs=1e-4)
    assert rows["original"]["fallback"] == 0 and rows["original"]["budget_ok"] == 1.0
    assert rows["original"]["sentences"] == 1.0
    assert 0 < rows["tiny"]["intent"] < 1 and rows["tiny"]["words"] > rows["original"]["words"]
    assert rows["tiny"]["sentences"] >= 2 and rows["tiny"]["seconds"] > 0
    for row in rows.values():
        assert 0 <= row["fallback"] <= 1 and 0 <= row["budget_ok"] <= 1 and -1 <= row["intent"] <= 1
    # the prompt as written adds nothing, so nothing can contradict it
    assert rows["original"]["faithful"] == 1.0
    assert 0 <= rows["tiny"]["faithful"] <= 1

    lines = journal(out)
    assert len(lines) == 3 * len(PROMPTS)
    assert {k for k in ("method", "id", "original", "rewritten", "fallback", "seconds", "intent", "faithful",
                        "faithfulness", "unfaithful")} <= set(lines[0])
    from paav_cli.text.faithfulness import read_faithfulness

    for line in lines:  # each record's verdict is the scorer's reading of that rewrite
        reading = read_faithfulness(line["original"], line["rewritten"])
        assert (line["faithful"], line["unfaithful"]) == (reading.faithful, list(reading.problems))
    assert [ln["original"] for ln in lines[:3]] == PROMPTS
    table = (out / "table.md").read_text()
    assert "**" in table and "Intent sim." in table and "Faithful" in table and "`tiny`" in table
    with open(out / "table.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert [r["method"] for r in csv_rows] == ["original", "tiny", "tiny-mutator"]

    # A rerun rewrites nothing, and a recipe makes its generator the budget target.
    calls = count_rewrites(monkeypatch)
    again = run_eval(str(prompts), ["original", "tiny", "tiny-mutator"], out, recipe=load_recipe("tiny-cpu"),
                     text_only=True, target=None)
    assert calls[0] == 0 and again.figures["rewritten"] == 0 and again.figures["reused"] == 9
    assert again.record["target"] == "tiny-cogvideox"
    tiny_row = next(r for r in again.record["rows"] if r["method"] == "tiny")
    assert tiny_row["budget_ok"] < 1  # 16 tokens: the tiny booster's rewrites do not fit
    assert len(journal(out)) == 3 * len(PROMPTS)


def test_full_eval_renders_scores_and_resumes(prompts, tmp_path, monkeypatch):
    out = tmp_path / "full"
    gguf = tiny_chat_gguf()
    methods = ["original", "tiny", gguf]
    result = run_eval(str(prompts), methods, out, recipe=fast_recipe(), text_only=False, target=None)
    assert result.figures["mode"] == "full" and result.figures["rewritten"] == 9
    for name in REPORT_FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    rows = {r["method"]: r for r in result.record["rows"]}
    assert result.figures["combined"] == {name: row["combined"] for name, row in rows.items()}
    assert list(rows) == methods
    for row in rows.values():
        assert {"AES", "CLIP", "Avg", "combined", "fallback", "seconds"} <= set(row)
        assert row["Avg"] == pytest.approx((row["AES"] + row["CLIP"]) / 2, abs=1e-3)
    assert "win" not in rows["original"]
    assert sum((rows["tiny"]["win"], rows["tiny"]["draw"], rows["tiny"]["loss"])) == len(PROMPTS)

    lines = journal(out)
    assert len(lines) == 9
    for line in lines:
        assert set(line["scores"]) == {"AES", "CLIP"} and isinstance(line["combined"], float)
    assert {ln["original"] for ln in lines} == set(PROMPTS)
    table = (out / "table.md").read_text()
    assert "**" in table and "| AES | CLIP | Avg | Combined |" in table and "not people" in table
    with open(out / "table.csv") as f:
        header = next(csv.reader(f))
    assert header[:6] == ["method", "n", "AES", "CLIP", "Avg", "combined"]

    calls = count_rewrites(monkeypatch)
    again = run_eval(str(prompts), methods, out, recipe=fast_recipe(), text_only=False, target=None)
    assert calls[0] == 0 and again.figures["rewritten"] == 0
    assert again.record["rendered"] == 0 and again.record["scored"] == 0  # renders and scores come from the cache
    assert len(journal(out)) == 9
    assert again.record["rows"] == result.record["rows"]


def test_partial_journal_resumes_only_missing(prompts, tmp_path, monkeypatch):
    out = tmp_path / "partial"
    run_eval(str(prompts), ["original", "tiny"], out, recipe=None, text_only=True, target=None)
    kept = (out / "prompts.jsonl").read_text().splitlines()[:4]  # original x 3 and tiny's first
    (out / "prompts.jsonl").write_text("\n".join(kept) + "\n" + '{"method": "tiny", "id"')  # a cut-off line
    calls = count_rewrites(monkeypatch)
    result = run_eval(str(prompts), ["original", "tiny"], out, recipe=None, text_only=True, target=None)
    assert calls[0] == 2 and result.figures["rewritten"] == 2 and result.figures["reused"] == 4
    assert len(journal(out)) == 6


def test_bad_input(prompts, tmp_path):
    out = tmp_path / "bad"
    with pytest.raises(UserError, match="unknown method 'nope'.*original.*tiny.*gguf"):
        run_eval(str(prompts), ["original", "tiny", "nope"], out, recipe=None, text_only=True, target=None)
    assert not (out / "prompts.jsonl").exists()  # checked before anything was rewritten
    with pytest.raises(UserError, match="no such GGUF"):
        run_eval(str(prompts), ["original", str(tmp_path / "missing.gguf")], out, recipe=None, text_only=True,
                 target=None)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(UserError, match="no prompts"):
        run_eval(str(empty), ["original"], out, recipe=None, text_only=True, target=None)
    with pytest.raises(UserError, match="give --recipe or --text-only"):
        run_eval(str(prompts), ["original", "tiny"], out, recipe=None, text_only=False, target=None)
    with pytest.raises(UserError, match="unknown generator"):
        run_eval(str(prompts), ["original"], out, recipe=None, text_only=True, target="no-such-model")
    bad_recipe = Recipe(name="x", models=Models(generator="tiny-wan", rewards=["tiny-aesthetic-clip"]))
    with pytest.raises(UserError, match="not a reward"):
        run_eval(str(prompts), ["original"], out, recipe=bad_recipe, text_only=False, target=None)
    with pytest.raises(UserError, match="twice"):
        run_eval(str(prompts), ["tiny", "tiny"], out, recipe=None, text_only=True, target=None)


def test_mutator_output_is_tidied():
    text, issue = tidy_mutator_output("a cat", "New prompt: A cat sits on a mat. It purrs softly. And then")
    assert text == "A cat sits on a mat. It purrs softly." and issue is None
    text, issue = tidy_mutator_output("a cat", "<PROMPT>A cat naps in the sun.</PROMPT> more")
    assert text == "A cat naps in the sun." and issue is None
    assert tidy_mutator_output("a cat", "   ")[1] == "empty output"


def test_an_eval_recorded_into_a_folder_that_is_no_run_is_refused_before_any_work(prompts, tmp_path):
    with pytest.raises(UserError, match="not a paav run folder"):
        run_eval(str(prompts), ["original"], tmp_path / "out", text_only=True, run=tmp_path / "no-run")
    assert not (tmp_path / "out").exists() and not (tmp_path / "no-run").exists()
