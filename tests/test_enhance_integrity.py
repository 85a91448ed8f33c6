"""Data integrity and hostile input for `paav enhance` (and the run-folder lock evolve shares):
concurrent writers, ids, resume of outputs holding unusual line breaks, a full disk, terminal
escapes, too-long prompts under --on-error skip, changed settings on resume, streaming batches."""

from __future__ import annotations

import csv
import json
import resource
import signal
import subprocess
import sys
import time

import pytest
from conftest import assert_user_error, paav

CLI = [sys.executable, "-m", "paav_cli"]


def ids_of(path) -> list[str]:
    return [json.loads(x)["id"] for x in path.read_text().splitlines()]


def wait_for(condition, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline and not condition():
        time.sleep(0.05)
    return condition()


# ---------------------------------------------------------------------------------------------
# 2. one writer per output and per run folder


def second_is_refused_then_first_killed(args, started, *fragments, timeout=120):
    """Start `paav ARGS`; once `started()`, the same command again must be refused with `fragments`
    while the first still runs; then kill -9 the first (its lock must die with it)."""
    first = subprocess.Popen([*CLI, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(started, timeout)
        assert_user_error(paav(*args), *fragments)
        assert first.poll() is None, "the first finished before the second started; give it more work"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()


def test_a_second_writer_of_one_output_is_refused_and_the_lock_dies_with_kill_9(tmp_path):
    n = 400
    (tmp_path / "in.txt").write_text("\n".join(f"a fox number {i}" for i in range(n)) + "\n")
    args = ["-m", "tiny", "-i", "in.txt", "-o", "out.jsonl", "--seed", "2", "--parallel", "2"]
    out = tmp_path / "out.jsonl"
    second_is_refused_then_first_killed(
        args, lambda: out.exists() and out.read_text().count("\n") >= 2, "another paav process", "is writing out.jsonl"
    )
    # kill -9 left the lock file behind, but not the lock: the rerun goes on.
    again = paav(*args)
    assert again.returncode == 0, again.stderr
    assert ids_of(out) == [str(i) for i in range(1, n + 1)]


def test_a_second_evolve_on_one_run_folder_is_refused(tmp_path):
    from test_evolve import write_recipe, write_sources

    from paav_cli.runs import read_journal

    # Sources of its own: renders of test_evolve's sources left in the shared cache would change what
    # test_evolve counts as loaded.
    own = ["a heron wading at dawn", "a tram in the snow", "a kite over a beach"]
    recipe, sources, run = write_recipe(tmp_path, iterations=3), write_sources(tmp_path, own), tmp_path / "run"
    args = ["evolve", sources, "--recipe", str(recipe), "--run", str(run)]
    second_is_refused_then_first_killed(
        args, lambda: (run / "evolve" / "candidates.jsonl").exists(), "another paav process", "run folder", timeout=240
    )
    done = paav(*args)
    assert done.returncode == 0, done.stderr
    for name in ("candidates.jsonl", "journal.jsonl"):
        lines = read_journal(run / "evolve" / name)
        keys = [json.dumps(x, sort_keys=True) for x in lines]
        assert len(set(keys)) == len(keys), name  # nothing written twice


# ---------------------------------------------------------------------------------------------
# 4. ids


def test_ids_one_and_quoted_one_are_the_same_id_for_evolve(tmp_path):
    from test_evolve import write_recipe

    (tmp_path / "src.jsonl").write_text('{"id": 1, "prompt": "a cat"}\n{"id": "1", "prompt": "a dog"}\n')
    proc = paav("evolve", "src.jsonl", "--recipe", str(write_recipe(tmp_path, iterations=1)),
                "--run", str(tmp_path / "run"), "--max-videos", "0")
    assert_user_error(proc, 'uses the id "1" twice', "lines 1 and 2")


@pytest.mark.parametrize("bad", ["null", "1.5", "[1]", '{"a": 1}', "true"])
def test_ids_that_are_not_strings_or_integers_are_refused_naming_the_line(tmp_path, bad):
    (tmp_path / "in.jsonl").write_text(f'{{"prompt": "a cat"}}\n{{"id": {bad}, "prompt": "a dog"}}\n')
    assert_user_error(paav("-m", "tiny", "-i", "in.jsonl", "-o", "out.jsonl"), "in.jsonl line 2", '"id"')
    skipped = paav("-m", "tiny", "-i", "in.jsonl", "-o", "out.jsonl", "--on-error", "skip", "--seed", "0")
    assert skipped.returncode == 0 and "line 2" in skipped.stderr
    assert ids_of(tmp_path / "out.jsonl") == ["1"]


# ---------------------------------------------------------------------------------------------
# 5. resume of outputs holding unusual line breaks


def test_rerun_of_a_complete_jsonl_whose_prompts_hold_u2028_and_nel(tmp_path):
    prompts = ["a cat\u2028playing piano", "a dog\x85running", "a bird\u2029singing"]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    args = ("-m", "tiny", "-i", "in.jsonl", "-o", "out.jsonl", "--seed", "1")
    assert paav(*args).returncode == 0
    out = tmp_path / "out.jsonl"
    assert [json.loads(x)["prompt"] for x in out.read_text().split("\n")[:-1]] == prompts
    again = paav(*args)
    assert again.returncode == 0, again.stderr
    assert "(3 already there)" in again.stderr
    # Outputs written before these characters were escaped hold them raw: they resume too.
    raw = out.read_text().replace("\\u2028", "\u2028").replace("\\u0085", "\x85").replace("\\u2029", "\u2029")
    assert "\u2028" in raw
    out.write_text(raw)
    again = paav(*args)
    assert again.returncode == 0, again.stderr
    assert "(3 already there)" in again.stderr and out.read_text() == raw


def test_jsonl_input_with_a_raw_u2028_inside_a_string_is_one_line(tmp_path):
    from paav_cli.prompt_files import read_prompts

    (tmp_path / "in.jsonl").write_text('{"prompt": "a cat\u2028playing"}\n{"prompt": "a dog\x85running"}\n', encoding="utf-8")
    assert [(r.id, r.prompt) for r in read_prompts(str(tmp_path / "in.jsonl"))] == [
        ("1", "a cat\u2028playing"), ("2", "a dog\x85running")]


def test_rerun_of_a_csv_whose_prompt_holds_a_carriage_return(tmp_path):
    with open(tmp_path / "in.csv", "w", newline="") as f:
        csv.writer(f).writerows([["prompt"], ["a cat\rplaying piano"], ["a dog"]])
    args = ("-m", "tiny", "-i", "in.csv", "-o", "out.csv", "--seed", "1")
    assert paav(*args).returncode == 0
    before = (tmp_path / "out.csv").read_bytes()
    again = paav(*args)
    assert again.returncode == 0, again.stderr
    assert "(2 already there)" in again.stderr and (tmp_path / "out.csv").read_bytes() == before


# ---------------------------------------------------------------------------------------------
# 6. a full disk


@pytest.mark.parametrize("args", [
    ["a cat playing piano"],
    ["a cat playing piano", "--json", "-n", "2"],
    ["-i", "in.txt"],
], ids=["single", "json", "batch"])
def test_stdout_on_a_full_disk_is_one_sentence(tmp_path, args):
    (tmp_path / "in.txt").write_text("a cat\na dog\n")
    with open("/dev/full", "w") as full:
        proc = subprocess.run([*CLI, "-m", "tiny", "--seed", "0", *args], stdout=full, stderr=subprocess.PIPE, check=False)
    stderr = proc.stderr.decode()
    assert proc.returncode == 2, stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr
    lines = [x for x in stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot write standard output"), stderr


def test_an_output_file_that_cannot_grow_is_one_sentence_and_the_rerun_completes(tmp_path):
    n = 40
    (tmp_path / "in.txt").write_text("\n".join(f"a cat number {i}" for i in range(n)) + "\n")
    args = [*CLI, "-m", "tiny", "-i", "in.txt", "-o", "out.jsonl", "--seed", "3"]

    def small_disk():  # the file may not grow past 2 KB: a write beyond is refused (EFBIG), as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))

    proc = subprocess.run(args, capture_output=True, preexec_fn=small_disk, check=False)
    stderr = proc.stderr.decode()
    assert proc.returncode == 2 and "Traceback" not in stderr, stderr
    assert [x for x in stderr.splitlines() if x.strip()] == [x for x in stderr.splitlines() if x.startswith("error: cannot write out.jsonl")]
    kept = (tmp_path / "out.jsonl").read_bytes()
    assert 0 < len(kept) <= 2048
    # The rerun on the same small disk fails the same way, keeping what is there.
    proc = subprocess.run(args, capture_output=True, preexec_fn=small_disk, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr.decode()
    done = paav(*args[3:])
    assert done.returncode == 0, done.stderr
    assert ids_of(tmp_path / "out.jsonl") == [str(i) for i in range(1, n + 1)]


# ---------------------------------------------------------------------------------------------
# 11. batches stream


def test_a_batch_is_tokenised_as_it_goes_not_all_before_the_first_record(monkeypatch, tmp_path):
    from paav_cli import enhance, enhance_files

    (tmp_path / "in.txt").write_text("\n".join(f"a cat number {i}" for i in range(300)) + "\n")
    calls = {"requests": 0, "at_first_record": None}
    real_request = enhance.Booster.request

    def counting(self, prompt):
        calls["requests"] += 1
        return real_request(self, prompt)

    monkeypatch.setattr(enhance.Booster, "request", counting)
    real_add = enhance_files.RecordWriter.add

    def add(self, index, record):
        if calls["at_first_record"] is None:
            calls["at_first_record"] = calls["requests"]
        return real_add(self, index, record)

    monkeypatch.setattr(enhance_files.RecordWriter, "add", add)
    opts = enhance_files.EnhanceOptions(model="tiny", seed=0, parallel=4)
    summary = enhance_files.enhance_file("in.txt", "out.jsonl", opts, warn=lambda m: None)
    assert summary["done"] == 300
    # The two probes of the template's stable prefix, then one batch of 4.
    assert calls["at_first_record"] <= 2 + 4


# ---------------------------------------------------------------------------------------------
# 13. terminal escapes


HOSTILE = "a cat \x1b]0;pwned\x07playing \x1b[31mpiano\x1b[0m\x9b2J\x1b[2J"


def test_escape_sequences_in_prompts_never_reach_the_terminal_or_a_txt_output(tmp_path):
    (tmp_path / "in.jsonl").write_text(json.dumps({"id": "\x1b[2Jx", "prompt": HOSTILE}) + "\n"
                                       + json.dumps({"prompt": "一只猫在弹钢琴\x1b]52;c;aGk=\x07"}) + "\n")
    shown = paav("-m", "tiny", "-i", "in.jsonl", "--seed", "0")
    assert shown.returncode == 0, shown.stderr
    for text in (shown.stdout, shown.stderr):
        assert not any(ord(c) < 32 and c != "\n" or 0x7F <= ord(c) < 0xA0 for c in text), repr(text)
    lines = shown.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("A cat playing piano2J.") and "pwned" not in lines[0]
    assert "kept as written" in shown.stderr  # the Chinese prompt falls back to itself, cleaned
    assert paav("-m", "tiny", "-i", "in.jsonl", "-o", "out.txt", "--seed", "0").returncode == 0
    text = (tmp_path / "out.txt").read_text()
    assert not any(ord(c) < 32 and c != "\n" or 0x7F <= ord(c) < 0xA0 for c in text), repr(text)
    assert text.count("\n") == 2
    as_json = paav("-m", "tiny", "-i", "in.jsonl", "--json", "--seed", "0")
    assert not any(ord(c) < 32 and c != "\n" or 0x7F <= ord(c) < 0xA0 for c in as_json.stdout)
    assert json.loads(as_json.stdout.splitlines()[0])["prompt"] == HOSTILE  # JSON keeps the data, escaped


def test_plain_line_removes_whole_sequences():
    from paav_cli.prompt_files import plain_line

    assert plain_line(HOSTILE) == "a cat playing piano2J"
    assert plain_line("one\ntwo\r\nthree\u2028four\x85five\tsix\x00") == "one two three four five\tsix"


# ---------------------------------------------------------------------------------------------
# 14. --on-error skip and prompts too long for the context


def test_on_error_skip_leaves_out_a_prompt_too_long_for_the_context(tmp_path):
    (tmp_path / "in.txt").write_text("a cat\n" + "word " * 1200 + "\na dog\n")
    stopped = paav("-m", "tiny", "-i", "in.txt", "-o", "out.jsonl")
    assert_user_error(stopped, "prompt \"2\"", "too long")
    assert not (tmp_path / "out.jsonl").exists() or not (tmp_path / "out.jsonl").read_text()
    args = ("-m", "tiny", "-i", "in.txt", "-o", "out.jsonl", "--on-error", "skip", "--seed", "0")
    skipped = paav(*args)
    assert skipped.returncode == 0, skipped.stderr
    assert "skipped: prompt \"2\"" in skipped.stderr and "too long" in skipped.stderr
    assert ids_of(tmp_path / "out.jsonl") == ["1", "3"]
    again = paav(*args)
    assert again.returncode == 0 and "(2 already there)" in again.stderr
    assert ids_of(tmp_path / "out.jsonl") == ["1", "3"]
    (tmp_path / "long.txt").write_text("word " * 1200 + "\n")
    assert_user_error(paav("-m", "tiny", "-i", "long.txt", "-o", "long.jsonl", "--on-error", "skip"), "no prompt fits")


# ---------------------------------------------------------------------------------------------
# friction: resuming with other settings


@pytest.mark.parametrize("out", ["out.jsonl", "out.txt"])
def test_resuming_with_other_settings_is_refused(tmp_path, out):
    (tmp_path / "in.txt").write_text("\n".join(f"a cat number {i}" for i in range(6)) + "\n")
    assert paav("-m", "tiny", "-i", "in.txt", "-o", out, "--seed", "4").returncode == 0
    path = tmp_path / out
    full = path.read_text()
    path.write_text("".join(full.splitlines(keepends=True)[:3]))  # an interrupted batch
    assert_user_error(paav("-m", "tiny", "-i", "in.txt", "-o", out, "--seed", "5"), "other settings", "--seed 4")
    assert_user_error(paav("-m", "tiny-chat", "-i", "in.txt", "-o", out, "--seed", "4"), "other settings", "-m")
    assert_user_error(paav("-m", "tiny", "-i", "in.txt", "-o", out, "--seed", "4", "--max-tokens", "50"),
                      "--max-tokens 200")
    # Without --seed the rerun continues with the output's own seed, and reports it.
    resumed = paav("-m", "tiny", "-i", "in.txt", "-o", out)
    assert resumed.returncode == 0 and "(3 already there)" in resumed.stderr and "seed 4." in resumed.stderr
    if out.endswith(".jsonl"):
        strip = lambda t: [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in t.splitlines()]
        assert strip(path.read_text()) == strip(full)
    else:
        assert path.read_text() == full
    fresh = paav("-m", "tiny", "-i", "in.txt", "-o", out, "--seed", "5", "--overwrite")
    assert fresh.returncode == 0 and "seed 5." in fresh.stderr


def test_an_output_from_before_settings_were_saved_is_checked_by_its_records(tmp_path):
    (tmp_path / "in.txt").write_text("a cat\na dog\na bird\n")
    assert paav("-m", "tiny", "-i", "in.txt", "-o", "out.jsonl", "--seed", "4").returncode == 0
    (tmp_path / ".out.jsonl.paav").unlink(missing_ok=True)  # as an older paav left it
    path = tmp_path / "out.jsonl"
    path.write_text(path.read_text().splitlines(keepends=True)[0])
    assert_user_error(paav("-m", "tiny", "-i", "in.txt", "-o", "out.jsonl", "--seed", "5"), "--seed 4")
    assert paav("-m", "tiny", "-i", "in.txt", "-o", "out.jsonl").returncode == 0
    assert [json.loads(x)["seed"] for x in path.read_text().splitlines()] == [4, 4, 4]
