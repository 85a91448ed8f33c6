"""The `paav` command. Each command parses its options and calls one library function.

`enhance` is the default command: `paav "a cat playing piano"` is `paav enhance "a cat playing piano"`.
Nothing here imports torch, diffusers or transformers; llama.cpp loads only when a booster runs.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from enum import Enum
from pathlib import Path

import typer
from typer.core import TyperGroup

from paav_cli import __version__
from paav_cli.errors import UserError


class DefaultCommandGroup(TyperGroup):
    """A command group whose first word, when it is no command of the group, belongs to a default
    command (as simonw/llm's DefaultGroup): `paav "a cat"` is `paav enhance "a cat"`. A word one typo
    away from a command (`paav modles`) is refused rather than enhanced as a prompt."""

    default_command = "enhance"

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        if not args and not ctx.resilient_parsing and self.default_command == "enhance" and not sys.stdin.isatty():
            args = ["enhance"]  # prompts piped in with no arguments at all
        elif args and args[0] not in self.commands and args[0] not in self._own_options(ctx):
            self._refuse_typo(ctx, args[0])
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)

    def _own_options(self, ctx) -> set[str]:
        names = set(self.get_help_option_names(ctx))
        for param in self.get_params(ctx):
            names.update(getattr(param, "opts", ()))
        return names

    def _refuse_typo(self, ctx, word: str) -> None:
        import difflib

        if not (word.isascii() and word.replace("-", "").isalpha()):
            return  # prompts have spaces, capitals or punctuation; command names have none
        close = difflib.get_close_matches(word.lower(), sorted(self.commands), n=1, cutoff=0.8)
        if close:
            raise UserError(
                f"{word!r} is not a command of `{ctx.command_path}` (did you mean {close[0]!r}?); to enhance it "
                f"as a prompt, run: paav enhance {word}"
            )


class EvolveGroup(DefaultCommandGroup):
    """`paav evolve PROMPTS ...` is `paav evolve run PROMPTS ...`."""

    default_command = "run"


app = typer.Typer(
    cls=DefaultCommandGroup,
    name="paav",
    help="Turn short text-to-video prompts into the long, camera-aware prompts video models render best.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
models_app = typer.Typer(help="The model registry: list, locate and download models.", no_args_is_help=True)
app.add_typer(models_app, name="models")
evolve_app = typer.Typer(
    cls=EvolveGroup,
    help="Reward-guided prompt evolution: make training pairs (paav evolve PROMPTS --recipe R --run DIR).",
    no_args_is_help=True,
)
app.add_typer(evolve_app, name="evolve")
runs_app = typer.Typer(help="Run folders: what a pipeline run holds.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")


class OnError(str, Enum):
    stop = "stop"
    skip = "skip"


@contextmanager
def _resumable(what: str, *displays):
    """Around a long command's work: its live displays closed however it ends, so the terminal is
    left clean; on Ctrl-C, one line saying that nothing finished is lost, and exit code 130 (Click
    would say "Aborted!")."""
    interrupted = False
    try:
        yield
    except KeyboardInterrupt:
        interrupted = True
    finally:
        for display in displays:
            if display is not None:
                display.close()
    if interrupted:
        print(f"\ninterrupted: {what} saved; run the same command again to resume.", file=sys.stderr)
        raise typer.Exit(130)


JSON_RESULT = "Print the result as one JSON object: stage, status, stopped, figures, outputs."


def _print_result(result, as_json: bool, detail: str | None = None) -> None:
    """How every stage command prints what it did: with --json one JSON object on stdout, else the
    stage's lines on stdout (after `detail`, such as eval's table); a stage that stopped early also
    says on stderr how to go on."""
    if as_json:
        print(json.dumps(result.to_json(), ensure_ascii=False))
    else:
        if detail:
            print(detail.rstrip("\n") + "\n")
        print("\n".join(result.lines()))
    if not result.done:
        print(f"{result.stage} stopped early: {result.stopped or result.status}; run the same command again "
              "(with a larger budget, if a budget stopped it) to go on.", file=sys.stderr)


def _version(value: bool) -> None:
    if value:
        print(f"paav {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """paav: prompt boosting for text-to-video models (Prompt-A-Video, arXiv 2412.15156)."""


def _progress(total: int):
    """A progress bar for batches on a terminal; scripts' stderr stays clean."""
    from paav_cli.progress import BatchProgress, stderr_is_terminal

    return BatchProgress(total) if total > 1 and stderr_is_terminal() else None


def _temperature(value: float | None) -> float | None:
    # Not min/max: a range check lets nan through to say "should be less than or equal to 2".
    if value is not None and not 0.0 <= value <= 2.0:
        raise typer.BadParameter(f"{value} is not a number from 0 to 2 (0 is greedy)")
    return value


@app.command()
def enhance(
    prompt: str | None = typer.Argument(None, help="The prompt to enhance (or use -i for a file)."),
    input: str | None = typer.Option(None, "-i", "--input", help="Prompt file: .txt, .jsonl or .csv; '-' reads stdin."),
    output: str | None = typer.Option(None, "-o", "--output", help="Output file: .jsonl, .txt or .csv (stdout when absent)."),
    model: str = typer.Option("default", "-m", "--model", help="Booster name from `paav models list`."),
    n: int = typer.Option(1, "-n", min=1, max=64, help="Variants per prompt."),
    seed: int | None = typer.Option(None, "--seed", min=0, help="Seed for reproducible output (random when absent)."),
    temperature: float | None = typer.Option(
        None, "--temperature", callback=_temperature,
        help="Sampling temperature; 0 is greedy. Default: 0 for one variant (the most faithful), 0.8 with -n > 1.",
    ),
    max_tokens: int = typer.Option(200, "--max-tokens", min=1, max=2048, help="Most tokens generated per prompt."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="CPU threads (default: all cores, up to 8)."),
    target: str | None = typer.Option(None, "--target", help="Generator whose text-encoder budget to fit, e.g. cogvideox-5b."),
    negative: bool = typer.Option(False, "--negative", help="Add the paper's fixed negative prompt as negative_prompt."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON records instead of plain text."),
    on_error: OnError = typer.Option(OnError.stop, "--on-error", help="A bad input line: stop the batch, or skip it."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start the output file afresh instead of resuming it."),
    parallel: int = typer.Option(32, "--parallel", min=1, max=64, help="Prompts decoded together in one batch."),
    lora: str | None = typer.Option(None, "--lora", help="A GGUF LoRA adapter to apply on the booster (paav export --lora)."),
    best_of: int = typer.Option(
        1, "--best-of", min=1, max=16,
        help="Sample K draws of each variant together and keep the one read as most faithful to the prompt.",
    ),
) -> None:
    """Enhance one prompt, or every prompt of a file (resumable: rerun to continue)."""
    from paav_cli import enhance_files as lib

    if prompt is None and input is None and not sys.stdin.isatty():
        input = "-"  # `cat prompts.txt | paav` works like `paav -i -`
    if (prompt is None) == (input is None):
        raise UserError("give either a prompt or -i FILE (not both); e.g. paav enhance \"a cat playing piano\".")
    opts = lib.EnhanceOptions(
        model=model, n=n, seed=seed, temperature=temperature, max_tokens=max_tokens,
        threads=threads, target=target, negative=negative, parallel=parallel, lora=lora, best_of=best_of,
    )
    server = os.environ.get(lib.SERVER_ENV) if best_of == 1 else None  # the server decodes one draw per variant
    with _resumable("finished records are"):
        summary = None
        if server and prompt is not None and not output:  # only the decode, when a server answers
            summary = lib.enhance_through_server(server, prompt, opts, as_json=as_json, warn=lib.stderr_warn)
        if summary is None and prompt is not None:
            summary = lib.enhance_records(
                lib.single_prompt(prompt), output, opts, as_json=as_json, overwrite=overwrite, warn=lib.stderr_warn
            )
        elif summary is None:
            summary = lib.enhance_file(
                input, output, opts, as_json=as_json, on_error=on_error.value, overwrite=overwrite,
                warn=lib.stderr_warn, progress_factory=_progress,
            )
    if negative and not as_json and not output:
        print(f"negative prompt: {lib.NEGATIVE_PROMPT}", file=sys.stderr)
    if output:
        done, skipped = summary["done"], summary["skipped"]
        note = f" ({skipped} already there)" if skipped else ""
        falls = f", {summary['fallbacks']} kept as written" if summary["fallbacks"] else ""
        print(f"wrote {done} records to {output}{note}{falls}; seed {summary['seed']}.", file=sys.stderr)


@models_app.command("list")
def models_list(
    role: str | None = typer.Option(None, "--role", help="Only this role: boosters, mutators, generators, rewards, base_llms."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON records."),
    all_models: bool = typer.Option(False, "--all", help="Also the tiny random models of tests and the tiny-cpu recipe."),
) -> None:
    """Every registered model by role, with size, licence and whether it is on this machine."""
    from paav_cli.models_view import list_models

    list_models(role=role, as_json=as_json, include_tiny=all_models)


@models_app.command("path")
def models_path(name: str = typer.Argument(..., help="A registered model name.")) -> None:
    """Print a model's local path, making it first where that needs no network (a packaged model
    assembled, a tiny one built, a base dequantised, a downloaded HF booster converted)."""
    from paav_cli import registry
    from paav_cli.provision import provide

    reg = registry.Registry.load()
    print(provide(reg.get(name), reg))


@models_app.command("pull")
def models_pull(name: str = typer.Argument(..., help="A registered model name.")) -> None:
    """Download a model (pinned revision, sha256 checked where given), make it runnable (build,
    dequantise, convert) and print its path."""
    from paav_cli import registry
    from paav_cli.provision import provide

    reg = registry.Registry.load()
    print(provide(reg.get(name), reg, download=True))


class Memory(str, Enum):
    none = "none"
    model = "model"
    sequential = "sequential"


class Dtype(str, Enum):
    auto = "auto"
    bf16 = "bf16"
    fp16 = "fp16"
    fp32 = "fp32"


@app.command()
def render(
    prompts: list[str] = typer.Argument(None, help="Prompts to render (or use -i for a file)."),
    generator: str = typer.Option(..., "-g", "--generator", help="Generator name from `paav models list`."),
    input: str | None = typer.Option(None, "-i", "--input", help="Prompt file: .txt, .jsonl or .csv."),
    out_dir: str | None = typer.Option(None, "-o", "--output", help="Folder for the videos (default: print cache paths)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed; the same seed and settings give the same video."),
    frames: int | None = typer.Option(None, "--frames", min=1, help="Frames (must follow the model's rule, e.g. 8k+1)."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Denoising steps (default: the model's)."),
    height: int | None = typer.Option(None, "--height", min=8, help="Height in pixels (default: the model's)."),
    width: int | None = typer.Option(None, "--width", min=8, help="Width in pixels (default: the model's)."),
    guidance: float | None = typer.Option(None, "--guidance", min=0.0, help="Classifier-free guidance scale."),
    negative: str = typer.Option("", "--negative", help="Negative prompt text."),
    paper_negative: bool = typer.Option(False, "--paper-negative", help="Use the paper's fixed negative prompt."),
    memory: Memory = typer.Option(Memory.none, "--memory", help="none, model (model CPU offload) or sequential offload."),
    vae_tiling: bool = typer.Option(False, "--vae-tiling", help="Decode the video in tiles (less GPU memory)."),
    dtype: Dtype = typer.Option(Dtype.auto, "--dtype", help="auto: bf16 on a GPU, fp32 on the CPU."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON record per video."),
) -> None:
    """Render prompts to videos with a text-to-video model (cached: a finished render is never redone)."""

    from paav_cli.text.templates import NEGATIVE_PROMPT
    from paav_cli.video.batch import render_records
    from paav_cli.video.jobs import RenderJob
    from paav_cli.video.render import RenderOptions

    records = _prompt_records(prompts, input, example='paav render "a cat playing piano" -g cogvideox-2b')
    template = RenderJob(
        prompt="", negative=NEGATIVE_PROMPT if paper_negative else negative, seed=seed, frames=frames,
        height=height, width=width, steps=steps, guidance=guidance,
    )
    options = RenderOptions(memory=memory.value, vae_tiling=vae_tiling, dtype=None if dtype == Dtype.auto else dtype.value)
    bar = _two_level(len(records), "rendering")
    with _resumable("finished videos are", bar):
        results = render_records(records, generator, template, options, out_dir, progress=bar)
    for r in results:
        print(json.dumps(r, ensure_ascii=False) if as_json else r["path"])


def _prompt_records(prompts: list[str] | None, input: str | None, example: str):
    from paav_cli.prompt_files import PromptRecord, read_prompts

    if bool(prompts) == bool(input):
        raise UserError(f"give either prompts or -i FILE (not both); e.g. {example}.")
    if input:
        return read_prompts(input)
    return [PromptRecord(id=i, prompt=p) for i, p in enumerate(prompts, start=1)]


def _two_level(total: int, description: str):
    from paav_cli.progress import TwoLevelProgress, stderr_is_terminal

    return TwoLevelProgress(total, description) if stderr_is_terminal() else None


@app.command()
def score(
    videos: list[str] = typer.Argument(..., help="Video files (mp4) or images to score."),
    prompt: list[str] = typer.Option(None, "--prompt", help="The ORIGINAL prompt: once for all videos, or once per video."),
    rewards: str = typer.Option("videoscore,aesthetic,mps", "--rewards", help="Comma-separated reward model names."),
    preset: str = typer.Option("paper", "--preset", help="How dimensions combine: paper, released-evolution, released-dpo."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON record per video."),
) -> None:
    """Score videos with reward models: every dimension plus the combined score (models load one at a time)."""
    from paav_cli.rewards.report import print_table, prompts_for, records_as_json
    from paav_cli.rewards.scoring import score_videos

    names = [n.strip() for n in rewards.split(",") if n.strip()]
    if not names:
        raise UserError("--rewards is empty; name at least one reward model, e.g. --rewards aesthetic.")
    texts = prompts_for(videos, prompt or [])
    bar = _two_level(len(videos), "scoring")
    with _resumable("finished scores are", bar):
        records = score_videos(videos, texts, names, preset=preset, progress=bar)
    if as_json:
        records_as_json(records)
    else:
        print_table(records)


@models_app.command("convert")
def models_convert(
    name: str = typer.Argument(..., help="What to convert: mps."),
    checkpoint: str = typer.Argument(..., help="The downloaded checkpoint, e.g. MPS_overall_checkpoint.pth."),
    clip: str = typer.Option("mps-clip", "--clip", help="The registered CLIP model whose config and tokenizer MPS uses."),
) -> None:
    """Convert a pickled checkpoint to safetensors safely (allow-listed unpickling; no code runs)."""
    from pathlib import Path

    from paav_cli import registry

    if name != "mps":
        raise UserError(f"paav can convert only 'mps', not {name!r}.")
    if not Path(checkpoint).is_file():
        raise UserError(f"checkpoint {checkpoint} does not exist; check the path.")
    from paav_cli.rewards.convert_mps import convert_mps

    reg = registry.Registry.load()
    clip_folder = registry.require_path(reg.get(clip, "rewards"))
    out = registry.expand_path(reg.get("mps", "rewards").path)
    print(convert_mps(Path(checkpoint), clip_folder, out))


@evolve_app.command("run")
def evolve_cmd(
    prompts: str = typer.Argument(..., help="Source prompts: .txt, .jsonl or .csv."),
    recipe: str = typer.Option(..., "--recipe", "-r", help="A recipe file, or a shipped recipe's name (tiny-cpu, cogvideox-2b)."),
    run: str = typer.Option(..., "--run", help="The run folder (created; rerun the same command to resume)."),
    mutator: str | None = typer.Option(None, "--mutator", help="Mutator name, overriding the recipe's."),
    max_digits: int | None = typer.Option(None, "--max-digits", min=0, help="Drop sources with this many digits or more (released: 3)."),
    max_videos: int | None = typer.Option(None, "--max-videos", min=0, help="Stop cleanly after rendering this many new videos."),
    max_llm_calls: int | None = typer.Option(None, "--max-llm-calls", min=0, help="Stop cleanly after this many mutator calls."),
    shard: str | None = typer.Option(None, "--shard", help="Only part i of n of the sources, e.g. 1/4 (for several machines)."),
    concurrency: int | None = typer.Option(None, "--concurrency", min=1, help="Mutator requests in flight (API mutators)."),
    memory: Memory | None = typer.Option(None, "--memory", help="Instead of the recipe's: none (the CPU mode), model, sequential."),
    as_json: bool = typer.Option(False, "--json", help=JSON_RESULT),
) -> None:
    """Evolve prompts: render, score, mutate (x iterations); write RUN/evolve/pairs.jsonl."""
    from paav_cli.evolve import evolve_run
    from paav_cli.evolve.engine import EvolveOptions
    from paav_cli.evolve.select import parse_shard
    from paav_cli.video.render import check_memory

    loaded = _load_recipe(recipe)
    options = EvolveOptions(max_videos=max_videos, max_llm_calls=max_llm_calls, shard=parse_shard(shard),
                            concurrency=concurrency, memory=memory.value if memory else None)
    check_memory(options.memory or loaded.render.memory)  # before the run folder records anything
    view = _live(loaded.evolve.iterations)
    with _resumable("everything finished is", view):
        result = evolve_run(prompts, loaded, run, mutator=mutator, max_digits=max_digits, options=options, view=view)
    _print_result(result, as_json)


@evolve_app.command("merge")
def evolve_merge(
    runs: list[str] = typer.Argument(..., help="Run folders of the shards (--shard 1/n ... n/n)."),
    out: str = typer.Option(..., "-o", "--output", help="The merged run folder."),
    as_json: bool = typer.Option(False, "--json", help=JSON_RESULT),
) -> None:
    """Merge the run folders of sharded evolutions into one: journals joined, pairs recomputed."""
    from paav_cli.evolve import merge_runs

    _print_result(merge_runs(runs, out), as_json)


def _live(iterations: int):
    from paav_cli.progress import LiveStatus, stderr_is_terminal

    return LiveStatus(iterations) if stderr_is_terminal() else None


class Quant(str, Enum):
    recipe = "recipe"
    auto = "auto"
    bit4 = "4bit"
    none = "none"



def _load_recipe(name: str):
    """The recipe, with the tiny test models it names built first (no stage builds them, and
    `paav evolve ... --recipe tiny-cpu` must work on a fresh machine as the README says)."""
    from paav_cli.provision import provide_recipe_models
    from paav_cli.recipe import load_recipe

    recipe = load_recipe(name)
    if recipe.models.generator and recipe.models.rewards:
        provide_recipe_models(recipe)
    else:  # a text-side recipe (no generator): the models its training stages name
        _provide_training_models(recipe)
    return recipe


def _provide_training_models(recipe) -> None:
    """The tiny test models among the base, the sampling booster and the start booster; a stage that
    needs a generator the recipe lacks says so itself (`check_models`)."""
    from paav_cli.provision import provide
    from paav_cli.registry import Registry

    reg = Registry.load()
    named = [(recipe.sft.base, "base_llms"), (recipe.rank.booster, "boosters"), (recipe.dpo.start, "boosters")]
    for name, role in named:
        entry = reg.entries.get(name) if name else None
        if entry is not None and entry.role == role and entry.source_kind == "builder":
            provide(entry, reg)


def _with_quant(loaded, section: str, quant: Quant):
    if quant == Quant.recipe:
        return loaded
    part = getattr(loaded, section).model_copy(update={"quant": quant.value})
    return loaded.model_copy(update={section: part})


@app.command()
def sft(
    pairs: str = typer.Argument(..., help="Training pairs: JSONL with source and target (evolve's pairs.jsonl)."),
    recipe: str = typer.Option(..., "--recipe", "-r", help="A recipe file or a shipped recipe's name."),
    run: str = typer.Option(..., "--run", help="The run folder; the adapter goes to RUN/sft/."),
    quant: Quant = typer.Option(Quant.recipe, "--quant", help="4bit (QLoRA, needs a CUDA GPU), none (LoRA), auto."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint."),
    force: bool = typer.Option(False, "--force", help="Train again over a run folder made with other settings."),
    as_json: bool = typer.Option(False, "--json", help=JSON_RESULT),
) -> None:
    """Fine-tune the booster's base LLM on prompt pairs with LoRA (QLoRA on a GPU): RUN/sft/."""
    from paav_cli.train.sft import run_sft

    loaded = _with_quant(_load_recipe(recipe), "sft", quant)
    _print_result(run_sft(pairs, loaded, run, resume=resume, force=force), as_json)


@app.command()
def rank(
    prompts: str = typer.Argument(..., help="Held-out source prompts: .txt, .jsonl or .csv."),
    recipe: str = typer.Option(..., "--recipe", "-r", help="A recipe file or a shipped recipe's name."),
    run: str = typer.Option(..., "--run", help="The run folder (with RUN/sft from `paav sft`)."),
    round: int = typer.Option(1, "--round", min=1, help="1: sample from the SFT model; N: from DPO round N-1's."),
    as_json: bool = typer.Option(False, "--json", help=JSON_RESULT),
) -> None:
    """Sample k rewrites per prompt from the booster, score them (video rewards: rendered; text rewards: from
    the text, no GPU), pair them: RUN/rank/triples.jsonl."""
    from paav_cli.train.rank import run_rank

    _print_result(run_rank(prompts, _load_recipe(recipe), run, round=round), as_json)


@app.command()
def dpo(
    recipe: str = typer.Option(..., "--recipe", "-r", help="A recipe file or a shipped recipe's name."),
    run: str = typer.Option(..., "--run", help="The run folder (with RUN/rank from `paav rank`)."),
    round: int = typer.Option(1, "--round", min=1, help="2 re-ranks with round 1's model and trains again."),
    quant: Quant = typer.Option(Quant.recipe, "--quant", help="4bit (QLoRA, needs a CUDA GPU), none (LoRA), auto."),
    force: bool = typer.Option(False, "--force", help="Train again over a round made with other settings."),
    as_json: bool = typer.Option(False, "--json", help=JSON_RESULT),
) -> None:
    """Train DPO on ranked triples on top of the SFT model (the adapter-disabled model is the reference)."""
    from paav_cli.train.rounds import dpo_round

    loaded = _with_quant(_load_recipe(recipe), "dpo", quant)
    _print_result(dpo_round(loaded, run, round, force=force), as_json)


@app.command()
def merge(
    adapter: str = typer.Argument(..., help="A LoRA adapter folder (RUN/sft, RUN/dpo-1, ...)."),
    out: str = typer.Option(..., "-o", "--output", help="Folder for the standalone merged model."),
    base: str | None = typer.Option(None, "--base", help="Base model folder or registered base LLM (default: the adapter's)."),
    dtype: str = typer.Option("bf16", "--dtype", help="bf16, fp16 or fp32."),
) -> None:
    """Merge a LoRA adapter into its base and save a standalone model with its tokenizer."""
    from pathlib import Path

    from paav_cli.train.merge import merge_adapter
    from paav_cli.train.models import resolve_base

    print(merge_adapter(resolve_base(Path(adapter), base), Path(adapter), Path(out), dtype=dtype))


@app.command()
def export(
    source: str = typer.Argument(..., help="A run folder (its last trained model) or a model folder."),
    out: str = typer.Option(..., "-o", "--output", help="The GGUF file to write."),
    quant: str = typer.Option("Q4_K_M", "--quant", help="F32, F16, BF16, Q8_0, Q6_K, Q5_K_M or Q4_K_M."),
    adapter: str | None = typer.Option(None, "--adapter", help="A LoRA adapter to merge in (or, with --lora, to export)."),
    lora: bool = typer.Option(False, "--lora", help="Export only the adapter, as a GGUF LoRA (a few MB)."),
    base: str | None = typer.Option(None, "--base", help="With --lora: the base model folder or a registered base LLM (default: the adapter's)."),
    verify: bool | None = typer.Option(None, "--verify/--no-verify", help="Compare logits with transformers (default: on for F32/F16)."),
    name: str | None = typer.Option(None, "--name", help="Register the GGUF as a booster under this name."),
    ollama: bool = typer.Option(False, "--ollama", help="Also write an Ollama Modelfile beside the GGUF."),
    as_json: bool = typer.Option(False, "--json", help=JSON_RESULT),
) -> None:
    """Convert a trained booster to GGUF (pure Python), quantise it with llama.cpp, verify it."""
    from pathlib import Path

    from paav_cli.export.booster import ExportOptions
    from paav_cli.export.booster import export as run_export

    options = ExportOptions(
        quant=quant, adapter=Path(adapter) if adapter else None, base=Path(base) if base else None, lora=lora,
        verify=verify, name=name, ollama=ollama,
    )
    _print_result(run_export(source, out, options), as_json)


@app.command("eval")
def eval_cmd(
    prompts: str = typer.Argument(..., help="A prompt set, e.g. benchmarks/vbench_test.txt."),
    methods: str = typer.Option("original,default", "--methods", help="Comma-separated: original, booster or mutator names, .gguf files."),
    out: str | None = typer.Option(None, "-o", "--output", help="Report folder (rerun to resume); default RUN/eval with --run, else eval-report."),
    recipe: str | None = typer.Option(None, "--recipe", "-r", help="The recipe whose generator and rewards score (full mode)."),
    text_only: bool = typer.Option(False, "--text-only", help="No videos: intent similarity, budgets, lengths, speed."),
    target: str | None = typer.Option(None, "--target", help="Text-only: the generator whose token budget to check."),
    run: str | None = typer.Option(None, "--run", help="Record the eval as a stage of this run folder (`paav runs show`)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_RESULT),
) -> None:
    """Compare rewriting methods on a prompt set: rewrite, render, score; tables and plots."""
    from paav_cli.evaluate import run_eval

    names = [m.strip() for m in methods.split(",") if m.strip()]
    if not names:
        raise UserError("--methods is empty; name at least one, e.g. --methods original,default.")
    loaded = _load_recipe(recipe) if recipe else None
    out = out or (str(Path(run) / "eval") if run else "eval-report")
    with _resumable("finished rewrites are"):
        result = run_eval(prompts, names, out, recipe=loaded, text_only=text_only, target=target,
                          progress=_eval_progress, run=run)
    _print_result(result, as_json, detail=Path(result.outputs["table"]).read_text())


def _eval_progress(total: int, description: str):
    from paav_cli.progress import BatchProgress, stderr_is_terminal

    return BatchProgress(total, description) if total > 1 and stderr_is_terminal() else None


@app.command("serve")
def serve_cmd(
    model: list[str] = typer.Option(["default"], "-m", "--model", help="A booster to serve (repeat for several)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (others need $PAAV_API_KEY)."),
    port: int = typer.Option(8765, "--port", min=1, max=65535, help="Port to listen on."),
    parallel: int = typer.Option(32, "--parallel", min=1, max=64, help="Requests decoded together in one batch."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="CPU threads (default: the free cores)."),
    max_queue: int = typer.Option(64, "--max-queue", min=1, help="Requests that may wait; more get 429."),
) -> None:
    """Serve boosters over HTTP: OpenAI's and Ollama's APIs and /v1/enhance, concurrent requests batched."""
    from paav_cli.serve.server import serve_boosters

    serve_boosters(model, host=host, port=port, parallel=parallel, threads=threads, max_queue=max_queue)


@app.command("run")
def run_cmd(
    recipe: str = typer.Argument(..., help="A recipe file, or a shipped recipe's name (tiny-cpu, cogvideox-2b, ...)."),
    run: str = typer.Option(..., "--run", help="The run folder (rerun the same command to resume)."),
    prompts: str | None = typer.Option(None, "--prompts", help="Evolve's source prompts (default: the recipe's)."),
    from_stage: str | None = typer.Option(None, "--from", help="Redo from this stage (evolve, sft, rank, dpo-1, ...)."),
    until: str | None = typer.Option(None, "--until", help="Stop after this stage."),
    memory: Memory | None = typer.Option(None, "--memory", help="Instead of the recipe's: none (the CPU mode), model, sequential."),
    as_json: bool = typer.Option(False, "--json", help="Print each stage's result as one JSON line, as it finishes."),
) -> None:
    """The whole method: evolve -> sft -> rank -> dpo (rounds) -> export -> eval, resumable."""
    from paav_cli.pipeline import run_recipe
    from paav_cli.recipe import load_recipe

    loaded = load_recipe(recipe)  # run_recipe builds its tiny models once the run folder's recipe is checked
    with _resumable("finished stages and work are"):
        run_recipe(loaded, run, prompts=prompts, from_stage=from_stage, until=until,
                   memory=memory.value if memory else None, echo=lambda line: print(line, file=sys.stderr),
                   on_result=lambda result: _print_result(result, as_json))


@runs_app.command("show")
def runs_show_cmd(
    run: str = typer.Argument(..., help="A run folder."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON line per stage, as the stage commands' --json."),
) -> None:
    """The stages of a run, their figures, and where their outputs are."""
    from paav_cli.pipeline import runs_show

    results = runs_show(run)
    if as_json:
        for result in results:
            print(json.dumps(result.to_json(), ensure_ascii=False))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"run {run}")
    for column in ("stage", "status", "figures", "outputs"):
        table.add_column(column, overflow="fold")
    for result in results:
        status = f"{result.status} ({result.stopped})" if result.stopped else result.status
        outputs = "\n".join(f"{role}: {path}" for role, path in result.outputs.items())
        table.add_row(result.stage, status, result.figures_text(), outputs)
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    """Run the `paav` command line on `argv` (default: sys.argv[1:]) and return its exit code.

    Every user mistake, paav's own (UserError) or Click's (a bad option value, an unknown option),
    is one line on stderr and exit code 2.
    """
    import logging

    # bitsandbytes (imported by peft, trl, sentence-transformers) warns about an optional kernel
    # package on every CPU; paav reports what matters itself.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        code = app(args=args, prog_name="paav", standalone_mode=False)
        return code if isinstance(code, int) else 0
    except UserError as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return e.exit_code
    except typer.TyperException as e:  # Click's errors (typer vendors Click): bad options and values
        if type(e).__name__ == "NoArgsIsHelpError":
            return 0  # `paav models` alone: the help is already printed, and asking for it is no error
        print(f"error: {click_error(e)}", file=sys.stderr)
        return 2
    except typer.Abort:
        print("\ninterrupted.", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `paav -i big.txt | head` closes the pipe early: not an error.
        sys.stderr.close()
        return 0


def one_line(message: str) -> str:
    return " ".join(message.split())


def click_error(e) -> str:
    """Click's message as paav's one sentence: what is wrong, then where the options are listed."""
    message = one_line(e.format_message()).rstrip(".")
    ctx = getattr(e, "ctx", None)
    where = f"; see `{ctx.command_path} --help`" if ctx is not None else ""
    return f"{message}{where}."


if __name__ == "__main__":
    sys.exit(main())
