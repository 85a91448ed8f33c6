"""`paav enhance` end to end on the tiny booster (a real GGUF run by llama.cpp; see paav_cli/testing)."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import assert_user_error, paav, paav_process, user_models

from paav_cli.errors import UserError
from paav_cli.testing.tiny_gguf import EXPECTED_CONTINUATIONS
from paav_cli.text.budget import ApproxCounter
from paav_cli.text.templates import NEGATIVE_PROMPT

EXPECTED = {f"A cat playing piano. {c}" for c in EXPECTED_CONTINUATIONS}


def without_timing(lines):
    """Records minus `seconds`, the one field that differs between identical runs."""
    return [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in lines]


def test_single_prompt_prints_one_enhanced_prompt():
    proc = paav("enhance", "--model", "tiny", "a cat playing piano", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() in EXPECTED
    assert proc.stdout.count("\n") == 1


def test_enhance_is_the_default_command():
    a = paav("--model", "tiny", "--seed", "5", "a cat playing piano")
    b = paav("enhance", "--model", "tiny", "--seed", "5", "a cat playing piano")
    assert a.returncode == b.returncode == 0
    assert a.stdout == b.stdout and a.stdout.strip() in EXPECTED


def test_seed_reproduces_and_variants_differ():
    runs = [paav("-m", "tiny", "a cat playing piano", "-n", "6", "--seed", "11", "--json") for _ in range(2)]
    assert without_timing(runs[0].stdout.splitlines()) == without_timing(runs[1].stdout.splitlines())
    records = [json.loads(line) for line in runs[0].stdout.splitlines()]
    assert [r["variant"] for r in records] == list(range(6))
    assert [r["seed"] for r in records] == list(range(11, 17))
    # The tiny model splits evenly between two openings, so six seeds show both.
    assert {r["enhanced"] for r in records} == EXPECTED


def test_json_record_fields():
    proc = paav("-m", "tiny", "a cat playing piano", "--json", "--negative", "--target", "cogvideox-5b", "--seed", "1")
    record = json.loads(proc.stdout)
    for key in ("id", "prompt", "enhanced", "model", "seed", "negative_prompt", "fallback", "tokens", "seconds"):
        assert key in record
    assert record["negative_prompt"] == NEGATIVE_PROMPT
    assert record["fallback"] is False and record["tokens"] == 10 and record["model"] == "tiny"
    assert record["target_limit"] == 226 and record["target_tokens"] <= 226


def test_batch_to_jsonl_carries_fields_and_shows_a_summary(tmp_path):
    (tmp_path / "in.jsonl").write_text(
        '{"id": "a", "prompt": "a cat playing piano", "tag": 1}\n{"id": "b", "prompt": "a dog", "tag": 2}\n')
    proc = paav("-m", "tiny", "-i", "in.jsonl", "-o", "out.jsonl", "--seed", "0")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [(r["id"], r["tag"]) for r in records] == [("a", 1), ("b", 2)]
    assert records[0]["enhanced"] in EXPECTED
    assert records[1]["enhanced"].startswith("A dog. ") and records[1]["enhanced"].endswith("pans slowly.")
    assert "wrote 2 records to out.jsonl" in proc.stderr


def test_txt_and_csv_outputs_and_stdin(tmp_path):
    (tmp_path / "in.csv").write_text("prompt,shot\na cat playing piano,1\na bird,2\n")
    proc = paav("-m", "tiny", "-i", "in.csv", "-o", "out.csv", "--seed", "0")
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / "out.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["shot"] for r in rows] == ["1", "2"] and rows[0]["enhanced"] in EXPECTED
    proc = paav("-m", "tiny", "-i", "-", "-o", "out.txt", "--seed", "0", input="a cat playing piano\n\na bird\n")
    lines = (tmp_path / "out.txt").read_text().splitlines()
    assert len(lines) == 2 and lines[0] in EXPECTED and lines[1].startswith("A bird. ")
    piped = paav("-m", "tiny", "-i", "-", "--seed", "0", input="a cat playing piano\n")
    assert piped.stdout.strip() in EXPECTED


def test_rerun_skips_done_records_and_repairs_a_cut_line(tmp_path):
    prompts = [f"a cat number {i}" for i in range(12)]
    (tmp_path / "in.txt").write_text("\n".join(prompts) + "\n")
    first = paav("-m", "tiny", "-i", "in.txt", "-o", "out.jsonl", "--seed", "4")
    assert first.returncode == 0
    full = (tmp_path / "out.jsonl").read_text().splitlines()
    # Simulate a crash: keep 5 records and half of the 6th.
    (tmp_path / "out.jsonl").write_text("\n".join(full[:5]) + "\n" + full[5][:20])
    again = paav("-m", "tiny", "-i", "in.txt", "-o", "out.jsonl", "--seed", "4")
    assert again.returncode == 0 and "(5 already there)" in again.stderr
    resumed = (tmp_path / "out.jsonl").read_text().splitlines()
    assert [json.loads(x)["id"] for x in resumed] == [str(i) for i in range(1, 13)]  # ids are strings
    assert without_timing(resumed) == without_timing(full)  # same seed, same records, none twice
    done = paav("-m", "tiny", "-i", "in.txt", "-o", "out.jsonl", "--seed", "4")
    assert done.returncode == 0 and (tmp_path / "out.jsonl").read_text().splitlines() == resumed


def test_ctrl_c_keeps_finished_records_and_the_rerun_completes(tmp_path, monkeypatch, capsys):
    from paav_cli import cli
    from paav_cli.llm import llamacpp

    (tmp_path / "in.txt").write_text("\n".join(f"a bird number {i}" for i in range(10)) + "\n")
    real_complete = llamacpp.LlamaCppModel.complete
    calls = {"n": 0}

    def interrupted(self, prompts, *, on_done=None, **kw):
        def counting(i, c):
            calls["n"] += 1
            if calls["n"] > 4:
                raise KeyboardInterrupt
            on_done(i, c)
        return real_complete(self, prompts, on_done=counting, **kw)

    monkeypatch.setattr(llamacpp.LlamaCppModel, "complete", interrupted)
    argv = ["-m", "tiny", "-i", "in.txt", "-o", "out.jsonl", "--seed", "1"]
    assert cli.main(argv) == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    kept = (tmp_path / "out.jsonl").read_text().splitlines()
    assert len(kept) == 4
    monkeypatch.setattr(llamacpp.LlamaCppModel, "complete", real_complete)
    assert cli.main(argv) == 0
    ids = [json.loads(x)["id"] for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert ids == [str(i) for i in range(1, 11)]


def test_kill_9_mid_batch_then_resume_loses_and_duplicates_nothing(tmp_path):
    n = 400
    (tmp_path / "in.txt").write_text("\n".join(f"a fox number {i}" for i in range(n)) + "\n")
    args = [sys.executable, "-m", "paav_cli", "-m", "tiny", "-i", "in.txt", "-o", "out.jsonl", "--seed", "2",
            "--parallel", "2"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    out = tmp_path / "out.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or out.read_text().count("\n") < 20):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = out.read_text().count("\n")
    assert 0 < partial < n, "the batch finished before it could be killed; raise n"
    again = paav("-m", "tiny", "-i", "in.txt", "-o", "out.jsonl", "--seed", "2")
    assert again.returncode == 0, again.stderr
    ids = [json.loads(x)["id"] for x in out.read_text().splitlines()]
    assert ids == [str(i) for i in range(1, n + 1)]


def test_unusable_output_falls_back_to_the_prompt_with_a_warning():
    # The tiny model only knows Latin script: a Chinese prompt gets text in the wrong script twice.
    proc = paav("-m", "tiny", "一只猫在弹钢琴", "--json", "--seed", "0")
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["fallback"] is True and record["enhanced"] == "一只猫在弹钢琴"
    assert "kept as written" in proc.stderr and "script" in record["fallback_reason"]


def test_chat_booster_uses_its_template():
    proc = paav("-m", "tiny-chat", "a cat", "--seed", "0")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() in set(EXPECTED_CONTINUATIONS)


def test_target_budget_trims_at_a_sentence_boundary():
    # Make the prompt long enough that only it plus one added sentence fits 77 CLIP tokens.
    counter = ApproxCounter(special_tokens=2)
    words = ["cat"]
    while counter.count(" ".join(words) + ". Soft light fills the scene. The camera pans slowly.") <= 77:
        words.append("cat")
    assert counter.count(" ".join(words) + ". Soft light fills the scene.") <= 77
    prompt = " ".join(words)
    proc = paav("-m", "tiny", prompt, "--target", "sd-1.4", "--json", "--seed", "0")
    record = json.loads(proc.stdout)
    assert record["trimmed"] is True and record["target_tokens"] <= 77
    assert record["enhanced"].endswith("light fills the scene.")


ERRORS = [
    (["-m", "tiny", ""], "prompt is empty"),
    (["-m", "tiny", "-i", "missing.txt"], "does not exist"),
    (["-m", "nope", "a cat"], "unknown booster 'nope'"),
    (["-m", "tiny", "a cat", "--target", "nope"], "unknown generator 'nope'"),
    (["-m", "tiny", "-i", "bad.csv"], "no \"prompt\" column"),
    (["-m", "tiny", "-i", "bad.jsonl"], "line 2 is not valid JSON"),
    (["-m", "tiny", "-i", "latin1.txt"], "not UTF-8"),
    (["-m", "tiny", "word " * 1200], "too long"),
    (["-m", "broken", "a cat"], "not a GGUF model"),
    (["-m", "tiny", "a cat", "-i", "p.txt"], "either a prompt or -i FILE"),
    (["-m", "gone", "a cat"], "does not exist"),
    (["-m", "tiny", "-i", "p.txt", "-o", "p.txt"], "is the input file"),
    (["-m", "tiny", "-i", "p.txt", "-o", "a_folder.jsonl"], "is a folder"),
    (["-m", "tiny", "-i", "p.txt", "-o", "out.md"], "extension .md"),
]


@pytest.mark.parametrize("args, fragment", ERRORS, ids=[e[1] for e in ERRORS])
def test_bad_input_gets_one_sentence_and_exit_2(tmp_path, args, fragment):
    (tmp_path / "bad.csv").write_text("text\na cat\n")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a cat"}\n{"prompt": \n')
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (tmp_path / "p.txt").write_text("a cat\n")
    (tmp_path / "broken.gguf").write_bytes(b"GGUF" + b"\x00" * 100)
    (tmp_path / "a_folder.jsonl").mkdir()
    user_models(tmp_path, f'[boosters.broken]\npath = "{tmp_path / "broken.gguf"}"\nprompt_format = "fewshot"\n'
                          f'[boosters.gone]\npath = "{tmp_path / "gone.gguf"}"\nprompt_format = "fewshot"\n')
    assert_user_error(paav(*args), fragment)


def test_bad_input_leaves_an_existing_output_untouched(tmp_path):
    (tmp_path / "in.txt").write_text("a cat\n")
    assert paav("-m", "tiny", "-i", "in.txt", "-o", "out.jsonl").returncode == 0
    before = (tmp_path / "out.jsonl").read_bytes()
    (tmp_path / "other.txt").write_text("a dog\n")
    assert_user_error(paav("-m", "tiny", "-i", "other.txt", "-o", "out.jsonl"), "made from another input")
    (tmp_path / "bad.jsonl").write_text("{nope\n")
    assert_user_error(paav("-m", "tiny", "-i", "bad.jsonl", "-o", "out.jsonl"), "not valid JSON")
    assert (tmp_path / "out.jsonl").read_bytes() == before


def test_skip_bad_lines_on_request(tmp_path):
    (tmp_path / "in.jsonl").write_text('{"prompt": "a cat"}\nnot json\n{"prompt": "a dog"}\n')
    proc = paav("-m", "tiny", "-i", "in.jsonl", "-o", "out.jsonl", "--on-error", "skip")
    assert proc.returncode == 0 and "line 2" in proc.stderr
    assert [json.loads(x)["id"] for x in (tmp_path / "out.jsonl").read_text().splitlines()] == ["1", "3"]


def test_few_shot_prefix_state_is_saved_once_and_reused(tmp_path, monkeypatch):
    from paav_cli.registry import Registry
    from paav_cli.testing import build_tiny_model

    monkeypatch.setenv("PAAV_CACHE", str(tmp_path / "cache"))  # a cache of its own: no state there yet
    build_tiny_model(Registry.load().get("tiny"))
    args = ("-m", "tiny", "a cat playing piano", "--seed", "9", "--json")
    first = paav(*args)
    states = list((tmp_path / "cache" / "prefix-states").glob("*.kv"))
    assert first.returncode == 0 and len(states) == 1
    states[0].write_bytes(b"garbage")  # a damaged state file is ignored and rewritten, never trusted
    second = paav(*args)
    assert states[0].read_bytes() != b"garbage"
    third = paav(*args)  # loads the state
    outputs = [json.loads(p.stdout)["enhanced"] for p in (first, second, third)]
    assert outputs[0] == outputs[1] == outputs[2]


def test_max_tokens_caps_generation():
    # The tiny model needs 10 tokens for its two sentences: 3 cut it mid-sentence, so both tries
    # fail validation and the prompt comes back unchanged; `tokens` counts both tries.
    proc = paav("-m", "tiny", "a cat playing piano", "--max-tokens", "3", "--json", "--seed", "0")
    record = json.loads(proc.stdout)
    assert record["tokens"] == 6 and record["fallback"] is True


def test_threads_reach_llama_cpp():
    from paav_cli.enhance import Booster

    booster = Booster("tiny", threads=1, parallel=4)
    try:
        assert booster.model.n_threads == 1 and booster.model.max_parallel == 4
        ctx = booster.model._context(2, 256)
        assert ctx.params.n_threads == 1 and ctx.params.n_threads_batch == 1 and ctx.params.n_seq_max == 2
    finally:
        booster.model.close()


def test_default_temperature_is_greedy_for_one_variant_and_sampled_for_several():
    one = json.loads(paav("-m", "tiny", "a cat playing piano", "--json").stdout)
    several = [json.loads(x) for x in paav("-m", "tiny", "a cat playing piano", "--json", "-n", "2").stdout.splitlines()]
    chosen = json.loads(paav("-m", "tiny", "a cat playing piano", "--json", "--temperature", "0.5").stdout)
    assert one["temperature"] == 0.0
    assert [r["temperature"] for r in several] == [0.8, 0.8]
    assert chosen["temperature"] == 0.5


def test_piped_prompts_need_no_flags():
    # A real pipe on stdin, as `cat prompts.txt | paav` gives, seen by a real interpreter.
    proc = paav_process("-m", "tiny", "--seed", "0", input="a cat playing piano\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() in EXPECTED


def test_batches_show_a_progress_bar_on_a_terminal_only(tmp_path):
    (tmp_path / "in.txt").write_text("a cat\na dog\na bird\n")
    on_terminal = paav("-m", "tiny", "-i", "in.txt", "-o", "a.jsonl", env={"FORCE_COLOR": "1", "TTY_COMPATIBLE": "1"})
    assert on_terminal.returncode == 0 and "3/3" in on_terminal.stderr and "prompts/s" in on_terminal.stderr
    piped = paav("-m", "tiny", "-i", "in.txt", "-o", "b.jsonl")
    assert "prompts/s" not in piped.stderr


# -- best of K -----------------------------------------------------------------------------------


def test_best_of_keeps_the_draw_the_faithfulness_scorer_reads_best(tiny_models, shared_cache, monkeypatch):
    """Each variant is K draws (seeds DRAW_SEED_STRIDE apart, in one batch); the kept one is the
    highest-scored draw, it is reproducible, and it carries its score."""
    from paav_cli import load_booster
    from paav_cli.enhance import DRAW_SEED_STRIDE
    from paav_cli.text import faithfulness

    monkeypatch.setenv("PAAV_CACHE", str(shared_cache))
    prompt = "a dog running on the beach"
    with load_booster("tiny", threads=1) as booster:
        draws = [booster.enhance(prompt, seed=5 + d * DRAW_SEED_STRIDE, temperature=0.8)[0] for d in range(4)]
        scores = [faithfulness.read_faithfulness(prompt, e.text).score for e in draws]
        best = booster.enhance(prompt, seed=5, temperature=0.8, best_of=4)
        again = booster.enhance(prompt, seed=5, temperature=0.8, best_of=4)
        two = booster.enhance(prompt, n=2, seed=5, best_of=3)
    assert len(best) == 1 and best[0].text == again[0].text
    assert best[0].faithfulness == max(scores)
    first_best = next(e for e, s in zip(draws, scores) if s == max(scores))
    assert (best[0].text, best[0].seed) == (first_best.text, first_best.seed)
    assert [e.variant for e in two] == [0, 1] and all(e.faithfulness is not None for e in two)
    assert two[0].temperature == 0.8  # best_of samples: it is not greedy by default


def test_best_of_keeps_the_highest_score_then_the_most_anchored_and_never_a_fallback():
    """_best_of on draws whose texts the real scorer reads differently (no model: the choice alone)."""
    from paav_cli.enhance import DRAW_SEED_STRIDE, Enhancement, Job, _best_of
    from paav_cli.prompt_files import PromptRecord

    prompt = "a dog running on the beach at night"
    texts = [
        f"{prompt}. Sunlight floods the sand as its owner throws a stick.",  # two problems
        f"{prompt}. The dog runs along the dark shore under the moon.",  # faithful
        f"{prompt}. Waves roll in. Stars glitter over the sea.",  # faithful, less anchored
        f"{prompt}.",  # a fallback: never chosen while another draw exists
    ]
    job = Job(index=0, record=PromptRecord(id=1, prompt=prompt), variant=0, seed=7)
    kept = []
    draws, collect = _best_of([job], 4, lambda j, r: kept.append((j, r)))
    subs = list(draws)
    assert [d.seed for d in subs] == [7 + d * DRAW_SEED_STRIDE for d in range(4)]
    for d, sub in reversed(list(enumerate(subs))):  # results come back in any order
        collect(sub, Enhancement(prompt=prompt, text=texts[d], model="m", seed=sub.seed, temperature=0.8,
                                 fallback=d == 3))
    assert len(kept) == 1 and kept[0][0] is job
    assert kept[0][1].text == texts[1] and kept[0][1].seed == 7 + DRAW_SEED_STRIDE and kept[0][1].faithfulness == 1.0


def test_best_of_bad_values_get_one_sentence():
    from paav_cli.enhance import Settings

    with pytest.raises(UserError, match="between 1 and 16"):
        Settings.resolve(best_of=17)
    with pytest.raises(UserError, match="needs sampling"):
        Settings.resolve(best_of=3, temperature=0.0)


def test_paav_enhance_best_of_writes_the_score_and_resumes_only_with_it(tiny_models, shared_cache, tmp_path):
    env = {"PAAV_CACHE": str(shared_cache)}
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat playing piano\na red car in the rain\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    done = paav("-i", str(prompts), "-o", str(out), "-m", "tiny", "--best-of", "3", "--seed", "4", env=env)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2 and all(0 <= r["faithfulness"] <= 1 for r in records)
    other = paav("-i", str(prompts), "-o", str(out), "-m", "tiny", "--best-of", "2", "--seed", "4", env=env)
    assert other.returncode == 2 and "--best-of 3 (now 2)" in other.stderr
    bad = paav("a cat", "-m", "tiny", "--best-of", "3", "--temperature", "0", env=env)
    assert bad.returncode == 2 and "needs sampling" in bad.stderr and "Traceback" not in bad.stderr
