"""Recipe files: what a hand-edited TOML can get wrong is one sentence naming the file."""

import re

import pytest
from conftest import assert_user_error, paav

from paav_cli.errors import UserError
from paav_cli.recipe import load_recipe

MINIMAL = '[models]\ngenerator = "tiny-cogvideox"\nrewards = ["tiny-aesthetic"]\n'


def test_a_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "r.toml"
    path.write_bytes(b"\xef\xbb\xbf" + MINIMAL.encode())
    assert load_recipe(str(path)).models.generator == "tiny-cogvideox"


@pytest.mark.parametrize("extra, fragment", [
    ("[sft]\nlearning_rate = inf\n", "[sft] learning_rate: Input should be a finite number"),
    ("[dpo]\nbeta = nan\n", "[dpo] beta: Input should be a finite number"),
    ("[evolve]\nthresholds = { AES = -inf }\n", "[evolve] thresholds.AES: Input should be a finite number"),
])
def test_non_finite_numbers_are_refused(tmp_path, extra, fragment):
    path = tmp_path / "r.toml"
    path.write_text(MINIMAL + extra)
    with pytest.raises(UserError, match=re.escape(fragment)) as err:
        load_recipe(str(path))
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_recipe_that_is_not_utf8_is_one_sentence(tmp_path):
    path = tmp_path / "r.toml"
    path.write_bytes(MINIMAL.encode() + b'description = "caf\xe9"\n')
    with pytest.raises(UserError, match="is not UTF-8 text"):
        load_recipe(str(path))
    (tmp_path / "p.txt").write_text("a cat\n")
    proc = paav("evolve", "run", "p.txt", "--recipe", str(path), "--run", str(tmp_path / "run"))
    assert_user_error(proc, f"recipe {path} is not UTF-8 text")
