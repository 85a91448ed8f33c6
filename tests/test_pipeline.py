"""`paav run`: the whole method on tiny models, resuming after a crash in a stage, and `paav runs show`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import assert_user_error, paav

from paav_cli.errors import UserError
from paav_cli.pipeline import run_recipe, stage_names
from paav_cli.recipe import RECIPES_DIR, load_recipe
from paav_cli.runs import read_journal, read_manifest
from paav_cli.video.render import accelerator


def fast_recipe(tmp_path: Path) -> Path:
    """The shipped tiny-cpu recipe with the tiny chat GGUF as mutator, 2 iterations, a short eval."""
    text = (RECIPES_DIR / "tiny-cpu.toml").read_text()
    text = text.replace('mutator = "default-gguf"', 'mutator = "tiny-mutator"').replace("iterations = 4", "iterations = 2")
    text = text.replace('eval_methods = ["original", "default", "booster"]', 'eval_methods = ["original", "booster"]')
    path = tmp_path / "tiny-fast.toml"
    path.write_text(text)
    return path


def test_run_resumes_after_crashes_in_two_stages(tmp_path, monkeypatch):
    recipe = load_recipe(str(fast_recipe(tmp_path)))
    run = tmp_path / "run"
    lines = []
    with monkeypatch.context() as m:  # a crash while ranking
        def broken_rank(*args, **kwargs):
            raise RuntimeError("rank crashed")

        m.setattr("paav_cli.train.rank.run_rank", broken_rank)
        with pytest.raises(RuntimeError):
            run_recipe(recipe, str(run), echo=lines.append)
    stages = read_manifest(run)["stages"]
    assert stages["evolve"]["status"] == "done" and stages["sft"]["status"] == "done"
    journal_lines = len(read_journal(run / "evolve" / "journal.jsonl"))
    sft_mtime = (run / "sft" / "adapter_model.safetensors").stat().st_mtime_ns

    with monkeypatch.context() as m:  # then a crash while exporting
        def broken_export(*args, **kwargs):
            raise RuntimeError("export crashed")

        from paav_cli.export import booster as booster_module

        m.setattr(booster_module, "export", broken_export)
        with pytest.raises(RuntimeError):
            run_recipe(recipe, str(run), echo=lines.append)
    assert "evolve: done already" in lines and "sft: done already" in lines
    assert (run / "sft" / "adapter_model.safetensors").stat().st_mtime_ns == sft_mtime
    stages = read_manifest(run)["stages"]
    assert all(stages[s]["status"] == "done" for s in ("rank", "dpo-1", "dpo-2"))

    run_recipe(recipe, str(run), echo=lines.append)
    stages = read_manifest(run)["stages"]
    assert all(stages[name]["status"] == "done" for name in stage_names(recipe))
    assert len(read_journal(run / "evolve" / "journal.jsonl")) == journal_lines  # nothing redone
    booster = run / "export" / "booster-Q8_0.gguf"
    assert booster.is_file() and (run / "eval" / "table.md").is_file()
    proc = paav("enhance", "--model", str(booster), "a cat", "--max-tokens", "8")
    assert proc.returncode == 0, proc.stderr
    shown = paav("runs", "show", str(run), "--json")
    rows = [json.loads(line) for line in shown.stdout.splitlines()]
    assert {r["stage"] for r in rows} == {*stage_names(recipe), "rank-2"}  # DPO round 2 re-ranks first
    assert all(r["status"] == "done" for r in rows)
    shown = {r["stage"]: r for r in rows}
    assert shown["export"]["outputs"]["gguf"] == str(booster) and shown["export"]["figures"]["quant"] == "Q8_0"
    assert Path(shown["eval"]["outputs"]["table"]).is_file() and set(shown["eval"]["figures"]["combined"]) == {
        "original", str(booster)}
    assert Path(shown["evolve"]["outputs"]["pairs"]).is_file() and shown["evolve"]["figures"]["sources"] > 0


def test_from_and_until(tmp_path):
    recipe = load_recipe(str(fast_recipe(tmp_path)))
    run = tmp_path / "run"
    lines = []
    run_recipe(recipe, str(run), until="evolve", echo=lines.append)
    assert set(read_manifest(run)["stages"]) == {"evolve"}
    lines.clear()
    results = run_recipe(recipe, str(run), from_stage="evolve", until="evolve", echo=lines.append)
    assert [r.stage for r in results] == ["evolve"] and results[0].done
    assert lines == ["evolve: running", *results[0].lines()] and lines[1].startswith("evolve: done; pairs ")


def test_bad_input(tmp_path):
    bad_key = tmp_path / "bad.toml"
    bad_key.write_text('[models]\ngenerator = "tiny-wan"\nrewards = ["tiny-aesthetic"]\n[sft]\nepoch = 3\n')
    assert_user_error(paav("run", str(bad_key), "--run", str(tmp_path / "r")), "[sft] epoch", "epochs")
    no_gen = tmp_path / "nogen.toml"
    no_gen.write_text('[models]\ngenerator = "sora-9"\nrewards = ["tiny-aesthetic"]\n')
    assert_user_error(paav("run", str(no_gen), "--run", str(tmp_path / "r")), "unknown generator 'sora-9'")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    recipe = fast_recipe(tmp_path)
    assert_user_error(paav("run", str(recipe), "--run", str(tmp_path / "r"), "--prompts", str(empty)), "no prompts")
    assert_user_error(paav("run", str(recipe), "--run", str(tmp_path / "r"), "--from", "polish"), "stages are")
    other = tmp_path / "other.toml"
    other.write_text(recipe.read_text().replace("iterations = 2", "iterations = 3"))
    assert paav("run", str(recipe), "--run", str(tmp_path / "r2"), "--until", "evolve").returncode == 0
    assert_user_error(paav("run", str(other), "--run", str(tmp_path / "r2")), "different recipe settings")
    assert_user_error(paav("runs", "show", str(tmp_path / "nowhere")), "not a paav run folder")


def gpu_recipe(tmp_path: Path) -> Path:
    """The fast tiny recipe as a GPU recipe would run it: model CPU offload."""
    path = fast_recipe(tmp_path)
    path.write_text(path.read_text().replace("[render]\n", '[render]\nmemory = "model"\n', 1))
    return path


@pytest.mark.skipif(accelerator() is not None, reason="this machine has an accelerator")
def test_a_gpu_recipe_on_a_cpu_is_refused_before_the_run_folder_and_runs_with_memory_none(tmp_path):
    run = tmp_path / "run"
    assert_user_error(paav("run", "cogvideox-2b", "--run", str(run)), "memory mode 'model'", "--memory none")
    assert not run.exists()
    recipe = gpu_recipe(tmp_path)
    assert_user_error(paav("run", str(recipe), "--run", str(run)), "--memory none")
    assert not run.exists()
    one = tmp_path / "one.txt"
    one.write_text("a cat playing piano\n")
    proc = paav("run", str(recipe), "--run", str(run), "--prompts", str(one), "--until", "evolve",
                "--memory", "none")
    assert proc.returncode == 0, proc.stderr
    assert read_manifest(run)["stages"]["evolve"]["status"] == "done"
    assert read_manifest(run)["recipe"]["render"]["memory"] == "model"  # the recipe as written


@pytest.mark.skipif(accelerator() is not None, reason="this machine has an accelerator")
def test_stages_that_render_nothing_run_on_a_cpu_without_memory_none(tmp_path, monkeypatch):
    from paav_cli.recipe import recipe_hash
    from paav_cli.runs import StageResult, update_manifest

    recipe = load_recipe(str(gpu_recipe(tmp_path)))
    run = tmp_path / "run"
    run.mkdir()
    update_manifest(run, recipe=recipe.model_dump(), recipe_hash=recipe_hash(recipe),
                    stages={name: {"status": "done"} for name in ("evolve", "sft", "rank", "dpo-1", "dpo-2")})
    ran = []
    monkeypatch.setattr("paav_cli.pipeline._stage_runner",
                        lambda name, *a, **k: lambda: ran.append(name) or StageResult(name))
    run_recipe(recipe, str(run), until="export", echo=lambda _: None)
    assert ran == ["export"]
    with pytest.raises(UserError, match="--memory none"):
        run_recipe(recipe, str(run), echo=lambda _: None)  # eval renders
    assert ran == ["export"]


def test_stage_commands_print_one_json_shape_and_runs_show_reads_it_back(tmp_path):
    from test_export_booster import trained_run

    run = trained_run(tmp_path)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat playing piano\na red car in the rain\n")
    exported = paav("export", str(run), "-o", str(run / "export" / "b.gguf"), "--quant", "F16", "--no-verify", "--json")
    evaluated = paav("eval", str(prompts), "--methods", "original", "--text-only", "--run", str(run), "--json")
    printed = []
    for proc in (exported, evaluated):
        assert proc.returncode == 0, proc.stderr
        assert len(proc.stdout.splitlines()) == 1  # one JSON object, nothing else on stdout
        printed.append(json.loads(proc.stdout))
    assert [set(p) for p in printed] == [{"stage", "status", "stopped", "figures", "outputs"}] * 2
    assert [p["stage"] for p in printed] == ["export", "eval"] and all(p["status"] == "done" for p in printed)
    assert printed[1]["figures"]["intent"] == {"original": pytest.approx(1.0, abs=1e-4)}
    assert Path(printed[1]["outputs"]["table"]) == run / "eval" / "table.md"
    shown = [json.loads(line) for line in paav("runs", "show", str(run), "--json").stdout.splitlines()]
    assert shown == printed
    human = paav("runs", "show", str(run))
    assert human.returncode == 0 and "intent original 1" in human.stdout and "b.gguf" in human.stdout


def test_runs_show_reads_a_manifest_written_before_the_stage_contract(tmp_path):
    run = tmp_path / "old"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"recipe": {}, "stages": {
        "evolve": {"status": "done", "pairs": 7, "sources": 9, "stopped": "", "loads": {"0": 3}},
        "rank-2": {"status": "done", "triples": 4, "mean_margin": 0.5, "prompts": "/x/held_out.txt"},
        "export": {"status": "done", "gguf": "/x/b.gguf", "bytes": 123, "quant": "Q8_0"},
    }}))
    rows = {r["stage"]: r for r in map(json.loads, paav("runs", "show", str(run), "--json").stdout.splitlines())}
    assert rows["evolve"]["figures"] == {"pairs": 7, "sources": 9} and rows["evolve"]["stopped"] is None
    assert rows["evolve"]["outputs"] == {"pairs": str(run / "evolve" / "pairs.jsonl")}
    assert rows["rank-2"]["figures"] == {"triples": 4, "mean_margin": 0.5}
    assert rows["rank-2"]["outputs"] == {"triples": str(run / "rank-2" / "triples.jsonl")}
    assert rows["export"]["figures"] == {"bytes": 123, "quant": "Q8_0"}
