"""The Python API of the main job: load_booster, Booster.enhance / enhance_many, Enhancement records."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import asdict

import pytest
from conftest import REPO

from paav_cli import registry
from paav_cli.errors import UserError

PROMPTS = ["a cat playing piano", "a fox in the snow", "a red car in the rain", "a dog on a beach", "an owl at night"]


def readme_api_example() -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(r"<!-- api-example:[^>]*-->\n```python\n(.*?)```", text, re.DOTALL)
    assert match, "the README's Python API example is missing its api-example marker"
    return match.group(1)


def test_the_readme_python_example_runs_and_prints_an_enhanced_prompt(capsys):
    exec(compile(readme_api_example(), "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    enhanced = lines[0]
    assert enhanced.lower().startswith("a cat playing piano") and len(enhanced.split()) > 10, enhanced
    assert lines[1].split()[0] in ("False", "True")
    assert [ln.split(" ->")[0] for ln in lines[2:]] == ["a fox in the snow", "a red car in the rain"]
    for line in lines[2:]:
        used, limit = map(int, re.findall(r"-> (\d+) of (\d+)", line)[0])
        assert limit == 226 and 0 < used <= 226, line


def tiny_gguf() -> str:
    return str(registry.require_path(registry.Registry.load().get("tiny", "boosters")))


def test_import_paav_cli_and_load_booster_import_no_torch_diffusers_or_transformers():
    path = tiny_gguf()
    code = (
        "import sys, json, paav_cli\n"
        f"with paav_cli.load_booster({path!r}) as b:\n"
        "    b.enhance('a cat', seed=0, max_tokens=8)\n"
        "print(json.dumps(sorted(m for m in ('torch', 'transformers', 'diffusers') if m in sys.modules)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_enhance_returns_one_record_a_variant_with_its_settings():
    with pytest.raises(AttributeError):
        import paav_cli

        paav_cli.no_such_thing  # noqa: B018 - the lazy module refuses unknown names
    from paav_cli import Enhancement, load_booster

    with load_booster("tiny", threads=1) as booster:
        results = booster.enhance("  a cat playing piano ", n=3, seed=5, negative=True, target="cogvideox-5b")
    assert [type(r) for r in results] == [Enhancement] * 3
    assert [(r.variant, r.seed) for r in results] == [(0, 5), (1, 6), (2, 7)]
    for r in results:
        assert r.prompt == "a cat playing piano" and r.model == "tiny" and r.temperature == 0.8
        assert r.negative_prompt and r.target == "cogvideox-5b" and r.target_limit == 226
        assert r.tokens > 0 and r.seconds > 0 and str(r) == r.text
        assert r.fallback == (r.fallback_reason is not None)
        if not r.fallback:
            assert r.target_tokens <= 226


def test_one_variant_is_greedy_and_sampled_variants_follow_their_seed():
    from paav_cli import load_booster

    with load_booster("tiny") as booster:
        greedy = [booster.enhance("a cat playing piano", seed=s)[0] for s in (3, 4)]
        sampled = [booster.enhance("a cat playing piano", n=2, seed=s) for s in (3, 3, 9)]
    assert greedy[0].temperature == 0.0 and greedy[0].text == greedy[1].text  # greedy: the seed does not matter
    texts = [[r.text for r in run] for run in sampled]
    assert texts[0] == texts[1] and texts[0] != texts[2]


def test_enhance_many_keeps_input_order_across_batches_and_matches_the_file_layer(tmp_path):
    from paav_cli import enhance_files, load_booster

    taken = []

    def lazily():
        for p in PROMPTS:
            taken.append(p)
            yield p

    with load_booster("tiny", parallel=2) as booster:
        stream = booster.enhance_many(lazily(), seed=11, max_tokens=40)
        first = next(stream)
        assert len(taken) == 2  # one batch read, not the whole input
        results = [first, *stream]
    assert [r.prompt for r in results] == PROMPTS
    (tmp_path / "in.txt").write_text("\n".join(PROMPTS) + "\n")
    opts = enhance_files.EnhanceOptions(model="tiny", seed=11, max_tokens=40, parallel=2)
    enhance_files.enhance_file(str(tmp_path / "in.txt"), str(tmp_path / "out.jsonl"), opts, warn=lambda m: None)
    records = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["enhanced"] for r in records] == [r.text for r in results]
    assert opts.temperature is None and opts.seed == 11  # the caller's options are left as given


def test_a_booster_output_that_fails_twice_falls_back_to_the_prompt_with_both_reasons():
    from paav_cli import load_booster

    with load_booster("tiny") as booster:
        [r] = booster.enhance("a cat playing piano", seed=0, max_tokens=3)
    assert r.fallback and r.text == "a cat playing piano"
    assert r.fallback_reason and r.first_try_problem and r.tokens == 6
    assert asdict(r)["fallback_reason"] == r.fallback_reason


def test_bad_prompts_and_models_are_one_sentence_errors():
    from paav_cli import load_booster

    with pytest.raises(UserError, match="unknown booster 'nope'"):
        load_booster("nope")
    with load_booster("tiny") as booster:
        with pytest.raises(UserError, match="prompt 2 is empty"):
            list(booster.enhance_many(["a cat", "  "]))
        with pytest.raises(UserError, match="n must be 1 or more"):
            booster.enhance("a cat", n=0)
        with pytest.raises(UserError, match="unknown generator"):
            booster.enhance("a cat", target="no-such-generator")


def test_closing_the_booster_frees_its_llama_cpp_context():
    from paav_cli import load_booster

    with load_booster("tiny") as booster:
        booster.enhance("a cat", seed=0, max_tokens=8)
        assert booster.model._ctx is not None
    assert booster.model._ctx is None


def test_the_command_line_prints_what_the_api_returns():
    from conftest import paav

    from paav_cli import load_booster

    with load_booster("tiny") as booster:
        [r] = booster.enhance("a cat playing piano", seed=4)
    proc = paav("-m", "tiny", "a cat playing piano", "--seed", "4", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["enhanced"] == r.text
    assert sys.modules.get("paav_cli") is not None


def test_every_api_name_resolves_and_none_shadows_a_subpackage():
    import pkgutil

    import paav_cli

    submodules = {m.name for m in pkgutil.iter_modules(paav_cli.__path__)}
    for name in paav_cli.__all__:
        assert name not in submodules, f"paav_cli.{name} would be replaced by the subpackage once it is imported"
        value = getattr(paav_cli, name)
        assert callable(value) or isinstance(value, str), name
        assert name == "__version__" or (value.__doc__ or "").strip(), f"paav_cli.{name} has no docstring"
