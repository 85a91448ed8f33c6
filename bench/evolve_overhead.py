"""paav's own time in an evolution, outside model calls, as a share of the whole run.

    python bench/evolve_overhead.py [--sources 8] [--iterations 2]

Runs `paav evolve`'s engine with the shipped tiny-cpu recipe's models (tiny CogVideoX, tiny
VideoScore + aesthetic + MPS) and the tiny chat GGUF as an in-process llama.cpp mutator, in a
fresh cache, and times every model call from the inside: pipeline and reward loading, denoising,
reward forward passes, mutator generation. What is left is paav's own work: orchestration, journals,
render and score caches, video encoding and decoding. Prints each part per candidate and its share
of the total measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SOURCES = [
    "a cat playing piano", "a red car in the rain", "a fox in the snow", "a boat on the lake at night",
    "a horse running in a field", "a child flying a kite on the beach", "a city street at dusk",
    "a bird sitting on a tree", "a man walking a dog", "waves on a rocky shore", "a flower opening",
    "a train crossing a bridge",
]


class Clock:
    def __init__(self):
        self.spent = defaultdict(float)
        self._stack: list[str] = []

    @contextmanager
    def part(self, name: str):
        """Exclusive time: a part nested in another is subtracted from its parent."""
        start = time.perf_counter()
        self._stack.append(name)
        try:
            yield
        finally:
            self._stack.pop()
            took = time.perf_counter() - start
            self.spent[name] += took
            if self._stack:
                self.spent[self._stack[-1]] -= took

    def wrap(self, owner, attr: str, name: str) -> None:
        real = getattr(owner, attr)
        clock = self

        def timed(*args, **kwargs):
            with clock.part(name):
                return real(*args, **kwargs)

        setattr(owner, attr, timed)


def instrument(clock: Clock) -> None:
    from paav_cli.evolve import rewriter
    from paav_cli.llm import mutators
    from paav_cli.rewards import base, scoring
    from paav_cli.video import cache, render

    clock.wrap(render.VideoGenerator, "load", "model: generator load")
    clock.wrap(render.VideoGenerator, "_render_one", "model: denoising")
    clock.wrap(cache.RenderCache, "store", "paav: video encode + cache write")
    clock.wrap(base, "read_frames", "paav: video decode")

    real_load = scoring.load_reward

    def load_reward(entry):
        with clock.part("model: reward load"):
            model = real_load(entry)
        real_score = model.score

        def score(videos, prompts):
            with clock.part("model: reward forward"):
                return real_score(videos, prompts)

        model.score = score
        return model

    scoring.load_reward = load_reward
    clock.wrap(mutators.LlamaCppMutator, "__init__", "model: mutator load")
    clock.wrap(mutators.LlamaCppMutator, "generate", "model: mutator generate")
    # completion and few-shot boosters' GGUFs sample rewrites
    clock.wrap(rewriter.BoosterRewriter, "__init__", "model: mutator load")
    clock.wrap(rewriter.BoosterRewriter, "generate", "model: mutator generate")
    clock.wrap(rewriter.BoosterRewriter, "rewrite", "model: mutator rewrite")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=2)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="paav-evolve-overhead-"))
    os.environ["PAAV_CACHE"] = str(root / "cache")
    from paav_cli.evolve import evolve_run
    from paav_cli.libs import quiet
    from paav_cli.provision import provide
    from paav_cli.recipe import load_recipe
    from paav_cli.registry import Registry

    quiet()
    # Heavy imports happen once per process, not per candidate: done before the clock starts.
    import diffusers  # noqa: F401
    import open_clip  # noqa: F401
    import transformers  # noqa: F401

    from paav_cli.rewards import clip, mps, videoscore  # noqa: F401

    reg = Registry.load()  # tiny models are built before the clock starts: building is not evolving
    for name in ["tiny-cogvideox", "tiny-videoscore", "tiny-aesthetic", "tiny-aesthetic-clip", "tiny-mps",
                 "tiny-mutator"]:
        provide(reg.get(name), reg)
    recipe = load_recipe("tiny-cpu")
    recipe = recipe.model_copy(update={
        "models": recipe.models.model_copy(update={"mutator": "tiny-mutator"}),
        "evolve": recipe.evolve.model_copy(update={"iterations": args.iterations}),
    })
    prompts = root / "sources.txt"
    prompts.write_text("\n".join((SOURCES * 4)[: args.sources]) + "\n")

    clock = Clock()
    instrument(clock)
    start = time.perf_counter()
    with clock.part("paav: orchestration, journals, caches"):
        summary = evolve_run(str(prompts), recipe, str(root / "run"))
    total = time.perf_counter() - start
    n = summary.figures["candidates_scored"]
    model = sum(v for k, v in clock.spent.items() if k.startswith("model"))
    print(f"{args.sources} sources, {args.iterations} iterations, {n} candidates, {total:.1f} s in all "
          f"({total / n * 1000:.0f} ms per candidate)")
    for name, seconds in sorted(clock.spent.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<40} {seconds / n * 1000:8.1f} ms/candidate  {seconds / total:6.1%}")
    print(f"paav's own time / total: {(total - model) / total:.1%} "
          f"({(total - model) / n * 1000:.0f} ms per candidate outside model calls)")


if __name__ == "__main__":
    main()
