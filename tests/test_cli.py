"""The command line's dispatch, in process: the default command, typos of commands, Click's option errors
as paav's one sentence."""

from __future__ import annotations

import pytest

from paav_cli import cli


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "suggested"),
    [(["modles"], "'models'"), (["evlove", "p.txt"], "'evolve'"), (["enhace", "a cat"], "'enhance'"),
     (["evolve", "merg", "a", "-o", "b"], "'merge'")],
)
def test_a_mistyped_command_is_refused_with_the_command_it_resembles(argv, suggested, capsys):
    assert cli.main(argv) == 2
    line = one_error_line(capsys)
    assert f"did you mean {suggested}" in line and "paav enhance" in line


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["-n", "0", "a cat"], "'-n'"),
        (["--threads", "0", "a cat"], "'--threads'"),
        (["--bogus", "a cat"], "--bogus"),
        (["--temperature", "nan", "a cat"], "nan is not a number from 0 to 2"),
        (["--temperature", "3", "a cat"], "3.0 is not a number from 0 to 2"),
        (["render", "a cat"], "--generator"),
        (["models", "pull"], "Missing argument"),
    ],
)
def test_option_errors_are_one_sentence_and_exit_code_2(argv, fragment, capsys):
    assert cli.main(argv) == 2
    line = one_error_line(capsys)
    assert fragment in line and line.endswith("--help`.")


def test_a_one_word_prompt_is_still_enhanced(capsys):
    assert cli.main(["-m", "tiny", "--max-tokens", "8", "lighthouse"]) == 0
    out = capsys.readouterr().out
    assert out.strip()


def test_a_group_without_its_command_prints_its_help(capsys):
    assert cli.main(["models"]) == 0
    assert "pull" in capsys.readouterr().out


class Display:
    closed = 0

    def close(self):
        self.closed += 1


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_a_long_command_closes_its_displays_however_it_ends_and_ctrl_c_exits_130(error, capsys):
    import typer

    bar = Display()
    with pytest.raises(typer.Exit if error is KeyboardInterrupt else error) as ended, \
            cli._resumable("finished things are", bar, None):
        raise error()
    assert bar.closed == 1
    err = capsys.readouterr().err
    if error is KeyboardInterrupt:
        assert ended.value.exit_code == 130
        assert err.strip() == "interrupted: finished things are saved; run the same command again to resume."
    else:
        assert err == ""


def test_a_recipe_command_on_a_fresh_cache_builds_the_tiny_models_it_names(tmp_path, monkeypatch, shared_cache):
    """No stage builds tiny models (the registry only finds them), so the command that loads a
    recipe does: the README's `paav evolve ... --recipe tiny-cpu` works on a fresh machine."""
    from conftest import paav
    from paav_cli import registry

    fresh = tmp_path / "fresh-cache" / "models"
    fresh.mkdir(parents=True)
    for folder in (shared_cache / "models").iterdir():  # the session's models, less the recipe's base
        if folder.name != "tiny-llama":
            (fresh / folder.name).symlink_to(folder, target_is_directory=True)
    monkeypatch.setenv("PAAV_CACHE", str(fresh.parent))
    reg = registry.Registry.load()
    assert registry.local_path(reg.get("tiny-llama")) is None
    proc = paav("sft", str(tmp_path / "no-pairs.jsonl"), "--recipe", "tiny-cpu", "--run", str(tmp_path / "run"))
    assert proc.returncode == 2 and "no-pairs.jsonl" in proc.stderr, proc.stderr  # the pairs are checked after
    assert registry.local_path(reg.get("tiny-llama")) is not None
