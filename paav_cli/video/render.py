"""One generator class over diffusers text-to-video (and text-to-image) pipelines.

The pipeline is loaded with `from_pretrained` on the model's local folder (a pulled hub snapshot or
a tiny test model), once per `render` call and only if some job is not already in the cache.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from paav_cli import registry
from paav_cli.errors import UserError
from paav_cli.registry import GeneratorEntry
from paav_cli.video.cache import RenderCache
from paav_cli.video.files import to_uint8
from paav_cli.video.jobs import RenderJob, RenderSettings, resolve_job

PIPELINES = {
    "cogvideox": "CogVideoXPipeline",
    "wan": "WanPipeline",
    "ltx": "LTXPipeline",
    "hunyuanvideo": "HunyuanVideoPipeline",
    "stable-diffusion": "StableDiffusionPipeline",
}
# Families whose pipeline would drop a negative prompt without a word: HunyuanVideo's guidance is
# distilled into the model (`guidance_scale` is an embedding) and diffusers reads `negative_prompt` only
# with `true_cfg_scale` > 1, which paav does not set. A negative is refused for them rather than kept in
# the cache key of a render it never touched.
IGNORES_NEGATIVE = {"hunyuanvideo"}
MEMORY_MODES = ("none", "model", "sequential")
TORCH_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


@dataclass(frozen=True)
class RenderOptions:
    """How to run a pipeline; none of this changes the pixels, so none of it is in the cache key."""

    memory: str = "none"  # none | model (model CPU offload) | sequential (sequential CPU offload)
    vae_tiling: bool = False
    vae_slicing: bool = False
    dtype: str | None = None  # None: bf16 on an accelerator, fp32 on the CPU
    dynamic_cfg: bool = True  # CogVideoX only, as the paper and the CogVideoX demo ran it


def accelerator() -> str | None:
    """The accelerator's device type (cuda, mps, xpu...) or None on a CPU-only machine."""
    import torch

    if hasattr(torch, "accelerator") and torch.accelerator.is_available():
        return torch.accelerator.current_accelerator().type
    return "cuda" if torch.cuda.is_available() else None


def check_options(options: RenderOptions) -> None:
    if options.memory not in MEMORY_MODES:
        raise UserError(f"memory mode {options.memory!r} is not one of {', '.join(MEMORY_MODES)}.")


def check_memory(memory: str) -> None:
    """Refuse an offload mode on a machine without an accelerator. Commands that make a run folder
    call this before it records anything, so a refused start leaves nothing behind."""
    check_options(RenderOptions(memory=memory))
    if memory != "none" and accelerator() is None:
        raise UserError(
            f"memory mode {memory!r} offloads to an accelerator and this machine has none; use --memory none "
            '(or memory = "none" under [render] in a recipe) to render on the CPU.'
        )


def default_dtype(options: RenderOptions, device: str | None) -> str:
    return options.dtype or ("bf16" if device else "fp32")


class RenderProgressHook:
    """What a progress display implements; the default shows nothing."""

    def start_video(self, label: str, steps: int) -> None: ...
    def step(self) -> None: ...
    def video_done(self) -> None: ...


class VideoGenerator:
    """Renders jobs with one registered generator; cached renders never load the pipeline."""

    def __init__(self, entry: GeneratorEntry, options: RenderOptions | None = None, cache: RenderCache | None = None):
        self.entry = entry
        self.options = options or RenderOptions()
        self.cache = cache or RenderCache()
        self.pipe = None
        self.loads = 0  # how many times a pipeline was loaded (tests assert cache hits load nothing)
        check_options(self.options)

    # -- settings

    def resolve(self, jobs: Sequence[RenderJob]) -> list[RenderSettings]:
        if self.entry.family in IGNORES_NEGATIVE and any(job.negative for job in jobs):
            raise UserError(
                f"{self.entry.name} ({self.entry.family}) does not use negative prompts (its guidance is distilled); "
                "render without --negative / --paper-negative (or negative and paper_negative under [render])."
            )
        dtype = self.options.dtype or "auto"
        if dtype == "auto":
            dtype = default_dtype(self.options, accelerator())
        return [resolve_job(self.entry, job, dtype) for job in jobs]

    # -- the pipeline

    def _device(self) -> str | None:
        check_memory(self.options.memory)
        return accelerator()

    def load(self):
        if self.pipe is not None:
            return self.pipe
        import torch

        device = self._device()
        if self.entry.family not in PIPELINES:
            raise UserError(
                f"{self.entry.name} is a {self.entry.family} model, which paav cannot render through diffusers; "
                f"pick one of the families {', '.join(PIPELINES)}."
            )
        folder = registry.require_path(self.entry)
        import diffusers

        from paav_cli.libs import quiet

        quiet()

        cls = getattr(diffusers, PIPELINES[self.entry.family])
        dtype = getattr(torch, TORCH_DTYPES[default_dtype(self.options, device)])
        self.attach(cls.from_pretrained(folder, torch_dtype=dtype))
        self.loads += 1
        return self.pipe

    def attach(self, pipe) -> None:
        """Use an already built pipeline (benchmarks build full-size ones with random weights)."""
        device = self._device()
        pipe.set_progress_bar_config(disable=True)
        if self.entry.family == "cogvideox" and self.options.dynamic_cfg:
            # Dynamic CFG as the CogVideoX demo runs it: the DPM scheduler with trailing timesteps.
            from diffusers import CogVideoXDPMScheduler

            pipe.scheduler = CogVideoXDPMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
        self._place(pipe, device)
        self.pipe = pipe

    def _place(self, pipe, device: str | None) -> None:
        mode = self.options.memory
        if mode == "model":
            pipe.enable_model_cpu_offload(device=device)
        elif mode == "sequential":
            pipe.enable_sequential_cpu_offload(device=device)
        else:
            pipe.to(device or "cpu")
        vae = getattr(pipe, "vae", None)
        # diffusers 0.42 moved tiling and slicing from the pipeline to the VAE.
        if self.options.vae_tiling and vae is not None and hasattr(vae, "enable_tiling"):
            vae.enable_tiling()
        if self.options.vae_slicing and vae is not None and hasattr(vae, "enable_slicing"):
            vae.enable_slicing()

    def free(self) -> None:
        """Drop the pipeline and return its memory before the next model loads."""
        if self.pipe is None:
            return
        self.pipe = None
        from paav_cli.libs import free_memory

        free_memory()

    # -- rendering

    def _call_kwargs(self, s: RenderSettings, pipe, on_step: Callable[[], None]) -> dict:
        import torch

        params = inspect.signature(pipe.__call__).parameters
        kwargs = dict(
            prompt=s.prompt, height=s.height, width=s.width, num_inference_steps=s.steps,
            guidance_scale=s.guidance, output_type="np",
            generator=torch.Generator("cpu").manual_seed(s.seed),
        )
        if s.negative and "negative_prompt" in params:
            kwargs["negative_prompt"] = s.negative
        if self.entry.output == "video":
            kwargs["num_frames"] = s.frames
        if "max_sequence_length" in params:
            kwargs["max_sequence_length"] = self.entry.text_encoder.max_tokens
        if self.entry.family == "cogvideox":
            kwargs["use_dynamic_cfg"] = self.options.dynamic_cfg
        if self.entry.family == "ltx":
            kwargs["frame_rate"] = self.entry.fps

        def callback(_pipe, _step, _timestep, tensors):
            on_step()
            return tensors

        if "callback_on_step_end" in params:
            kwargs["callback_on_step_end"] = callback
        return kwargs

    def _render_one(self, s: RenderSettings, progress: RenderProgressHook) -> Path:
        pipe = self.load()
        started = time.perf_counter()
        out = pipe(**self._call_kwargs(s, pipe, progress.step))
        images = out.frames[0] if hasattr(out, "frames") else out.images[0]
        frames = to_uint8(images)
        return self.cache.store(s, frames, fps=self.entry.fps, output=self.entry.output, info={
            "seconds": round(time.perf_counter() - started, 3),
            "memory": self.options.memory, "vae_tiling": self.options.vae_tiling,
            "device": accelerator() or "cpu", "versions": library_versions(),
        })

    def render(self, jobs: Sequence[RenderJob], progress: RenderProgressHook | None = None) -> list[Path]:
        """Paths of the rendered files, in job order; only jobs missing from the cache are rendered."""
        progress = progress or RenderProgressHook()
        settings = self.resolve(jobs)
        paths: list[Path | None] = [self.cache.lookup(s, self.entry.output) for s in settings]
        for i, s in enumerate(settings):
            if paths[i] is not None:
                progress.video_done()
                continue
            done = next((p for j, p in enumerate(paths[:i]) if p is not None and settings[j] == s), None)
            if done is None:
                progress.start_video(s.prompt, s.steps)
                done = self._render_one(s, progress)
            paths[i] = done
            progress.video_done()
        return paths


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for dist in ("torch", "diffusers", "transformers"):
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return found


def render_prompts(
    generator: str, jobs: Sequence[RenderJob], options: RenderOptions | None = None,
    progress: RenderProgressHook | None = None,
) -> list[Path]:
    """Render jobs with a registered generator (cached), then free it: the stages' entry point."""
    entry = registry.Registry.load().get(generator, "generators")
    gen = VideoGenerator(entry, options)
    try:
        return gen.render(jobs, progress)
    finally:
        gen.free()
