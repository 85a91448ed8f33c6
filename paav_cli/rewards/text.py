"""Text-side rewards: scores of a rewrite read from the text alone, for ranking DPO data on a CPU.

A video reward needs the rewrite rendered by a generator and scored by a video model, which takes a
GPU; these need the original prompt, the rewrite and the target generator's text-encoder budget,
and take about a millisecond each. `paav rank` with `[rank] rewards = [...]` naming them renders
nothing, loads no torch and needs no GPU, so anyone can align a booster on a laptop.

Each reward is a number in [0, 1]:

- `faithfulness`: the strict reading of what the rewrite adds to the prompt
  (`text.faithfulness.read_faithfulness(...).score`): 1 when it finds nothing against the rewrite,
  less by each problem's weight (an invented person 0.35, a contradicted setting or a dropped
  action 0.5). About 79 % agreement with strict human readings (65 % on held-out ones, 86 %
  precision for "unfaithful"): useful, not perfect, hence combined with the others.
- `detail`: how much the rewrite adds, saturating: added words / `detail_words` (60 by default),
  at most 1; 0 for a rewrite that adds nothing.
- `budget`: 1 when the rewrite fits the target generator's text-encoder budget (CogVideoX: 226 T5
  tokens), else 0: the generator would cut it off mid-sentence. Counted as `paav enhance --target`
  counts (the generator's own tokenizer once pulled, else an estimate that errs long).

A draw the booster cannot use (`text.clean.problem`: a loop, a language switch, one sentence; `paav
enhance` would return the prompt unchanged) scores 0 on every reward: it is the worst a draw can do,
so it is the one rejected when there is one.

`TextScorer.preset()` weighs them into one number (the `text` preset of `rewards/presets.py`, or a
recipe's `[rank] weights`): faithfulness counts twice, so that one invented person (0.7) outweighs
the whole detail reward's spread short of its last ~40 %, and a faithful rewrite beats a longer
unfaithful one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from paav_cli.errors import UserError

TEXT_REWARDS = ("faithfulness", "detail", "budget")
DEFAULT_DETAIL_WORDS = 60
_WORD = re.compile(r"[\w']+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def added_words(prompt: str, rewrite: str) -> int:
    """Words the rewrite has beyond the prompt. A rewrite that starts with the prompt's words (the
    default booster's always do) adds what follows them; any other adds its surplus of words."""
    p, r = _words(prompt), _words(rewrite)
    if r[: len(p)] == p:
        return len(r) - len(p)
    return max(0, len(r) - len(p))


def detail(prompt: str, rewrite: str, *, detail_words: int = DEFAULT_DETAIL_WORDS, fallback: bool = False) -> float:
    """added_words / detail_words, at most 1; 0 for a fallback draw."""
    if fallback:
        return 0.0
    return round(min(1.0, added_words(prompt, rewrite) / detail_words), 4)


def faithfulness(prompt: str, rewrite: str) -> float:
    """The faithfulness scorer's score of the rewrite (1.0 when it adds nothing)."""
    from paav_cli.text.faithfulness import read_faithfulness

    return float(read_faithfulness(prompt, rewrite).score)


@dataclass(frozen=True)
class TokenBudget:
    """A generator's text-encoder limit and a counter of its tokens."""

    target: str
    limit: int
    counter: object  # text.budget.TokenCounter

    def fits(self, text: str) -> bool:
        return self.counter.count(text) <= self.limit


def token_budget(target: str) -> TokenBudget:
    """The budget of a registered generator, counted as `paav enhance --target` counts it."""
    from paav_cli import registry
    from paav_cli.text.budget import counter_for

    entry = registry.Registry.load().get(target, "generators")
    local = registry.local_path(entry)
    tokenizer_dir = None
    if local is not None and entry.text_encoder.tokenizer_subfolder:
        tokenizer_dir = Path(local) / entry.text_encoder.tokenizer_subfolder
    return TokenBudget(target, entry.text_encoder.max_tokens, counter_for(tokenizer_dir, entry.text_encoder.kind))


@dataclass(frozen=True)
class TextScorer:
    """Scores rewrites with the named text rewards and weighs them into one number.

        scorer = text_scorer(["faithfulness", "detail", "budget"], target="cogvideox-5b")
        scores = scorer.score("a cat playing piano", "A cat playing piano. ...")
        scorer.combined(scores)
    """

    names: tuple[str, ...]
    weights: dict[str, float]
    budget: TokenBudget | None = None
    detail_words: int = DEFAULT_DETAIL_WORDS

    def score(self, prompt: str, rewrite: str, *, fallback: bool = False) -> dict[str, float]:
        """{reward: value in [0, 1]} for one rewrite of `prompt`. `fallback`: the booster could not use
        this draw (a user would get the prompt unchanged): every reward is 0, the worst a draw can do."""
        if fallback:
            return dict.fromkeys(self.names, 0.0)
        out: dict[str, float] = {}
        for name in self.names:
            if name == "faithfulness":
                out[name] = faithfulness(prompt, rewrite)
            elif name == "detail":
                out[name] = detail(prompt, rewrite, detail_words=self.detail_words, fallback=fallback)
            elif name == "budget":
                out[name] = 1.0 if self.budget is not None and self.budget.fits(rewrite) else 0.0
        return out

    def preset(self):
        """The weighting as a `rewards.presets.Preset` (what pairing ranks samples by)."""
        from paav_cli.rewards.presets import Preset, get_preset

        base = get_preset("text")
        same = self.weights == {d: w for d, w in base.weights.items() if d in self.weights}
        description = base.description if same and len(self.weights) == len(base.weights) else (
            "Text rewards: " + " + ".join(f"{w:g} x {d}" for d, w in self.weights.items()))
        return Preset(name="text", description=description, weights=dict(self.weights))

    def combined(self, scores: dict[str, float]) -> float:
        """The weighted sum of `scores` (as `preset().combined`)."""
        return self.preset().combined(scores)

    def record(self) -> dict:
        """How the numbers were made, for a run's manifest."""
        return {"rewards": list(self.names), "weights": self.weights, "detail_words": self.detail_words,
                "budget": {"target": self.budget.target, "limit": self.budget.limit,
                           "counter": getattr(self.budget.counter, "name", "?")} if self.budget else None}


def check_names(names: list[str]) -> list[str]:
    """The names, each a text reward, once each (a UserError names the first that is not)."""
    for name in names:
        if name not in TEXT_REWARDS:
            raise UserError(f"{name!r} is not a text reward; choose from {', '.join(TEXT_REWARDS)}.")
    if len(set(names)) != len(names):
        raise UserError(f"text rewards {', '.join(names)} name one twice; list each once.")
    return names


def resolve_weights(names: list[str], weights: dict[str, float] | None = None) -> dict[str, float]:
    """The weights of the named rewards: the `text` preset's, overridden by `weights`."""
    from paav_cli.rewards.presets import get_preset

    given = dict(weights or {})
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise UserError(f"a weight is given for {', '.join(unknown)}, which the rewards list does not name; "
                        "weigh only the rewards you list.")
    preset = get_preset("text").weights
    return {name: float(given.get(name, preset.get(name, 1.0))) for name in names}


def text_scorer(names: list[str], *, target: str | None = None, weights: dict[str, float] | None = None,
                detail_words: int = DEFAULT_DETAIL_WORDS) -> TextScorer:
    """A scorer of the named text rewards; `target` (a registered generator) is needed by `budget`."""
    check_names(names)
    if "budget" in names and not target:
        raise UserError("the budget reward needs a target generator; set [rank] target (or [models] generator).")
    return TextScorer(tuple(names), resolve_weights(names, weights),
                      token_budget(target) if "budget" in names else None, detail_words)
