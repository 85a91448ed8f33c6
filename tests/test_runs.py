import json
import os

import pytest

from paav_cli.errors import UserError
from paav_cli.runs import Journal, atomic_write_json, read_journal, truncate_partial_line


def test_journal_appends_flushed_lines_and_survives_a_cut_last_line(tmp_path):
    path = tmp_path / "j.jsonl"
    with Journal(path) as journal:
        journal.append({"a": 1})
        journal.append({"a": 2})
        assert read_journal(path) == [{"a": 1}, {"a": 2}]  # flushed: visible before close
    with open(path, "a") as f:
        f.write('{"a": 3')  # a crash mid-write
    assert read_journal(path) == [{"a": 1}, {"a": 2}]
    with Journal(path) as journal:
        journal.append({"a": 3})
    assert read_journal(path) == [{"a": 1}, {"a": 2}, {"a": 3}]


def test_a_bad_line_inside_a_journal_is_reported(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(UserError, match="line 2"):
        read_journal(path)


def test_atomic_write_replaces_whole_files_only(tmp_path):
    path = tmp_path / "m.json"
    atomic_write_json(path, {"stage": 1})
    atomic_write_json(path, {"stage": 2})
    assert json.loads(path.read_text()) == {"stage": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temp files left


def test_truncate_partial_line(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("one\ntwo\nthr")
    assert truncate_partial_line(path) == 3 and path.read_text() == "one\ntwo\n"
    assert truncate_partial_line(path) == 0


def test_truncate_partial_line_reads_back_across_chunks(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b"one\n" + b"x" * 200_000)  # a cut line longer than the tail read at once
    assert truncate_partial_line(path) == 200_000 and path.read_bytes() == b"one\n"
    path.write_bytes(b"y" * 70_000)  # no newline at all
    assert truncate_partial_line(path) == 70_000 and path.read_bytes() == b""


def test_a_file_lock_is_one_holder_at_a_time_shared_within_a_process(tmp_path):
    import subprocess
    import sys

    from paav_cli.runs import FileLock

    path = tmp_path / ".lock"
    with FileLock(path, "busy {pid}") as outer:
        outer.write({"note": 1})
        with FileLock(path, "busy {pid}") as inner:  # the same process again: shared, not refused
            assert inner.read()["note"] == 1
        probe = "from paav_cli.runs import FileLock; FileLock(__import__('sys').argv[1], 'busy {pid}').acquire()"
        other = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True, check=False)
        assert other.returncode != 0 and f"UserError: busy {os.getpid()}" in other.stderr
    free = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True, check=False)
    assert free.returncode == 0, free.stderr


def test_a_stage_result_is_recorded_with_outputs_relative_to_the_run_and_read_back(tmp_path):
    from paav_cli.runs import StageResult, read_manifest, record_stage

    run = tmp_path / "run"
    outside = tmp_path / "elsewhere.gguf"
    result = StageResult("export", figures={"bytes": 12, "quant": "F16"},
                         outputs={"gguf": str(run / "export" / "b.gguf"), "copy": str(outside)},
                         record={"verify": {"ok": True}})
    record_stage(run, result)
    entry = read_manifest(run)["stages"]["export"]
    assert entry == {"verify": {"ok": True}, "status": "done", "figures": {"bytes": 12, "quant": "F16"},
                     "outputs": {"gguf": "export/b.gguf", "copy": str(outside)}}
    moved = tmp_path / "moved"
    run.rename(moved)  # a run folder copied or moved still names its own files
    back = StageResult.from_entry("export", read_manifest(moved)["stages"]["export"], moved)
    assert back.outputs == {"gguf": str(moved / "export" / "b.gguf"), "copy": str(outside)}
    assert (back.figures, back.record, back.done) == (result.figures, result.record, True)


def test_a_stopped_stage_says_why_in_its_lines_and_its_json():
    from paav_cli.runs import StageResult

    result = StageResult("evolve", "stopped", {"pairs": 2, "best_gain": 0.123456, "intent": {"a": 0.5}},
                         {"pairs": "r/evolve/pairs.jsonl"}, "--max-videos 5 reached")
    assert not result.done
    head = "evolve: stopped; pairs 2, best_gain 0.1235, intent a 0.5 (stopped early: --max-videos 5 reached)"
    assert result.lines() == [head, "  pairs: r/evolve/pairs.jsonl"]
    assert json.loads(json.dumps(result.to_json())) == {
        "stage": "evolve", "status": "stopped", "stopped": "--max-videos 5 reached",
        "figures": {"pairs": 2, "best_gain": 0.123456, "intent": {"a": 0.5}}, "outputs": {"pairs": "r/evolve/pairs.jsonl"}}
