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


@pytest.mark.parametrize("section, stages, fragment", [
    ('[models]\ngenerator = "sora-9"\nrewards = ["tiny-aesthetic"]\n', ["evolve"], "unknown generator 'sora-9'"),
    ('[models]\ngenerator = "tiny-wan"\nrewards = ["tiny-aesthetic-clip"]\n', ["eval"], "not a reward"),
    ('[models]\ngenerator = "tiny-wan"\nrewards = ["tiny-aesthetic"]\nmutator = "gpt-9"\n', ["evolve"],
     "unknown mutator 'gpt-9'"),
    (MINIMAL + '[sft]\nbase = "llama-9"\n', ["evolve", "sft", "dpo-1"], "llama-9"),
    (MINIMAL + '[scores]\npreset = "best"\n', ["rank"], "best"),
])
def test_check_models_refuses_what_the_stages_would_load(tmp_path, section, stages, fragment):
    from paav_cli.recipe import check_models

    path = tmp_path / "r.toml"
    path.write_text(section)
    recipe = load_recipe(str(path))
    with pytest.raises(UserError, match=re.escape(fragment)):
        check_models(recipe, stages=stages)
    check_models(recipe, stages=["export"])  # export loads none of the recipe's models


def test_a_run_folder_resumes_only_with_its_recipe_settings(tmp_path):
    from paav_cli.recipe import check_same_recipe, recipe_hash
    from paav_cli.runs import update_manifest

    path = tmp_path / "r.toml"
    path.write_text(MINIMAL)
    recipe = load_recipe(str(path))
    check_same_recipe(tmp_path / "new-run", recipe)  # nothing recorded yet: nothing to compare
    update_manifest(tmp_path / "run", recipe_hash=recipe_hash(recipe))
    other_mutator = recipe.model_copy(update={"models": recipe.models.model_copy(update={"mutator": "tiny-mutator"})})
    check_same_recipe(tmp_path / "run", other_mutator)  # a run may change its mutator
    more = recipe.model_copy(update={"evolve": recipe.evolve.model_copy(update={"iterations": 9})})
    with pytest.raises(UserError, match="different recipe settings"):
        check_same_recipe(tmp_path / "run", more)
