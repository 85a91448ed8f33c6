"""Text rewards (rewards/text.py): faithfulness, detail, budget, their weighting, and how a recipe names them."""

from __future__ import annotations

import pytest

from paav_cli.errors import UserError
from paav_cli.rewards.text import added_words, detail, text_scorer

PROMPT = "a dog running in a park"
FAITHFUL = "A dog running in a park. Its golden fur shines in the warm afternoon sun as it bounds across the green grass."
INVENTED = "A dog running in a park. A man walks beside it, smiling."


def test_detail_counts_what_the_rewrite_adds_and_saturates():
    assert added_words(PROMPT, FAITHFUL) == 16
    assert detail(PROMPT, FAITHFUL) == pytest.approx(16 / 60, abs=1e-4)
    assert detail(PROMPT, FAITHFUL, detail_words=10) == 1.0  # capped
    assert detail(PROMPT, "A dog running in a park.") == 0.0  # the prompt unchanged adds nothing
    assert detail(PROMPT, PROMPT) == 0.0
    assert detail(PROMPT, FAITHFUL, fallback=True) == 0.0
    # A rewrite that does not start with the prompt's words adds its surplus of words.
    assert added_words(PROMPT, "In a park, a happy dog is running fast today") == 4
    assert added_words(PROMPT, "dog") == 0


def test_scores_read_faithfulness_detail_and_the_target_budget():
    scorer = text_scorer(["faithfulness", "detail", "budget"], target="cogvideox-5b")
    good, bad = scorer.score(PROMPT, FAITHFUL), scorer.score(PROMPT, INVENTED)
    assert good == {"faithfulness": 1.0, "detail": pytest.approx(16 / 60, abs=1e-4), "budget": 1.0}
    assert bad["faithfulness"] == pytest.approx(0.15)  # a man added (0.35) and running made walking (0.5)
    assert bad["detail"] == pytest.approx(6 / 60, abs=1e-4) and bad["budget"] == 1.0
    too_long = FAITHFUL + " The camera follows the dog closely." * 40
    assert scorer.score(PROMPT, too_long)["budget"] == 0.0  # over CogVideoX's 226 T5 tokens
    assert scorer.budget.limit == 226
    tiny = text_scorer(["budget"], target="tiny-cogvideox")  # 16 tokens
    assert tiny.score(PROMPT, "A dog running in a park.") == {"budget": 1.0}
    assert tiny.score(PROMPT, FAITHFUL) == {"budget": 0.0}
    # An unusable draw (enhance would return the prompt unchanged) is the worst a draw can be.
    assert scorer.score(PROMPT, PROMPT, fallback=True) == {"faithfulness": 0.0, "detail": 0.0, "budget": 0.0}


def test_weights_the_text_preset_and_a_recipes_own():
    scorer = text_scorer(["faithfulness", "detail", "budget"], target="cogvideox-5b")
    assert scorer.weights == {"faithfulness": 2.0, "detail": 1.0, "budget": 1.0}
    good, bad = scorer.score(PROMPT, FAITHFUL), scorer.score(PROMPT, INVENTED)
    assert scorer.combined(good) == pytest.approx(2 + 16 / 60 + 1, abs=1e-3)
    assert scorer.combined(bad) == pytest.approx(0.3 + 6 / 60 + 1, abs=1e-3)
    preset = scorer.preset()
    assert preset.name == "text" and preset.combined(good) == scorer.combined(good)
    own = text_scorer(["faithfulness", "detail"], weights={"detail": 3.0})
    assert own.weights == {"faithfulness": 2.0, "detail": 3.0}  # the rest as in the preset
    assert own.combined(own.score(PROMPT, FAITHFUL)) == pytest.approx(2 + 3 * 16 / 60, abs=1e-3)
    assert "3 x detail" in own.preset().description and own.record()["budget"] is None


def test_text_reward_errors_are_one_sentence():
    with pytest.raises(UserError, match="'aesthetic' is not a text reward; choose from faithfulness, detail, budget"):
        text_scorer(["aesthetic"])
    with pytest.raises(UserError, match="budget reward needs a target generator"):
        text_scorer(["budget"])
    with pytest.raises(UserError, match="weight is given for budget"):
        text_scorer(["detail"], weights={"budget": 1.0})
    with pytest.raises(UserError, match="unknown generator 'nope'"):
        text_scorer(["budget"], target="nope")


def _recipe(tmp_path, text: str):
    from paav_cli.recipe import load_recipe

    path = tmp_path / "r.toml"
    path.write_text(text)
    return load_recipe(str(path))


def test_a_recipe_names_text_rewards_and_needs_no_generator(tmp_path):
    recipe = _recipe(tmp_path, '[rank]\nrewards = ["faithfulness", "detail"]\nweights = { detail = 0.5 }\n')
    assert recipe.models.generator is None and recipe.rank.text and recipe.rank.min_margin() == 0.0
    for toml, fragment in [
        ('[rank]\nrewards = ["videoscore"]\n', "[rank] rewards: Value error, 'videoscore' is not a text reward"),
        ('[rank]\nrewards = ["detail"]\nweights = { budget = 1.0 }\n', "weights for budget, which rewards does not list"),
        ('[rank]\nrewards = ["detail"]\npairing = "released"\n', "released pairing gates video scores"),
        ('[dpo]\nstart = "default"\n', 'needs adapter = "continue"'),
    ]:
        with pytest.raises(UserError) as err:
            _recipe(tmp_path, toml)
        assert fragment in str(err.value) and "\n" not in str(err.value), str(err.value)
