import pytest

from paav_cli.errors import UserError
from paav_cli.prompt_files import read_prompts


def test_txt_skips_blank_lines_and_numbers_by_line(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("a cat\n\n  a dog  \n")
    records = read_prompts(str(f))
    assert [(r.id, r.prompt) for r in records] == [("1", "a cat"), ("3", "a dog")]


def test_jsonl_carries_other_fields_and_uses_its_ids(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"id": "x1", "prompt": "a cat", "tag": 7}\n{"prompt": "a dog"}\n')
    records = read_prompts(str(f))
    assert [(r.id, r.prompt, r.extra) for r in records] == [("x1", "a cat", {"tag": 7}), ("2", "a dog", {})]


def test_jsonl_bad_line_stops_with_its_number_or_is_skipped(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "a cat"}\n{oops\n{"prompt": "a dog"}\n')
    with pytest.raises(UserError, match="line 2 is not valid JSON.*--on-error skip"):
        read_prompts(str(f))
    warnings = []
    records = read_prompts(str(f), on_error="skip", warn=warnings.append)
    assert [r.prompt for r in records] == ["a cat", "a dog"]
    assert "line 2" in warnings[0]


def test_csv_needs_a_prompt_column(tmp_path):
    f = tmp_path / "p.csv"
    f.write_text("id,prompt,note\n7,a cat,hi\n8,\"a dog, running\",\n")
    records = read_prompts(str(f))
    assert [(r.id, r.prompt, r.extra) for r in records] == [("7", "a cat", {"note": "hi"}), ("8", "a dog, running", {"note": ""})]
    bad = tmp_path / "q.csv"
    bad.write_text("text\na cat\n")
    with pytest.raises(UserError, match="no \"prompt\" column.*text"):
        read_prompts(str(bad))


@pytest.mark.parametrize("name, data, message", [
    ("p.txt", b"a cat\n\xff\xfe bad\n", "not UTF-8"),
    ("p.txt", b"\n\n", "contains no prompts"),
    ("p.md", b"a cat", "extension .md"),
    ("p.jsonl", b'{"id": 1, "prompt": "a"}\n{"id": 1, "prompt": "b"}\n', 'id "1" twice'),
])
def test_bad_files_get_one_clear_sentence(tmp_path, name, data, message):
    f = tmp_path / name
    f.write_bytes(data)
    with pytest.raises(UserError, match=message):
        read_prompts(str(f))


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_prompts(str(tmp_path / "nope.txt"))
