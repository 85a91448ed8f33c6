"""Render requests, their fully resolved settings, validation, and the content-addressed key."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass

from paav_cli.errors import UserError
from paav_cli.registry import GeneratorEntry, revision_of

DTYPES = ("bf16", "fp16", "fp32")

# Height and width must be multiples of these (VAE downsampling x transformer patch size).
SIZE_MULTIPLE = {"cogvideox": 16, "wan": 16, "ltx": 32, "hunyuanvideo": 16, "stable-diffusion": 8}

# The most a request may ask of a generator, as a multiple of its registered default (each of height,
# width and frames). Memory grows with their product, and no model renders well far from the size it
# was trained at: `--height 100000 --width 100000` once grew to 22 GB before the kernel killed it.
MAX_SCALE = 2


@dataclass(frozen=True)
class RenderJob:
    """What a caller asks for; unset fields take the generator's defaults from models.toml."""

    prompt: str
    negative: str = ""
    seed: int = 0
    frames: int | None = None
    height: int | None = None
    width: int | None = None
    steps: int | None = None
    guidance: float | None = None


@dataclass(frozen=True)
class RenderSettings:
    """Everything that decides a render's pixels; its hash is the render's cache key."""

    generator: str
    revision: str
    prompt: str
    negative: str
    seed: int
    frames: int
    height: int
    width: int
    steps: int
    guidance: float
    dtype: str

    def key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def frame_rule_allows(rule: str, frames: int) -> bool:
    """`8k+1` allows 1, 9, 17, ...; `any` allows every positive count."""
    if rule == "any":
        return frames >= 1
    m = re.fullmatch(r"(\d+)k\+(\d+)", rule)
    if not m:
        raise UserError(f"frame rule {rule!r} in models.toml is not of the form '8k+1' or 'any'; fix that entry.")
    step, offset = int(m.group(1)), int(m.group(2))
    return frames >= offset and (frames - offset) % step == 0


def nearest_allowed(rule: str, frames: int) -> list[int]:
    below = next((f for f in range(frames, 0, -1) if frame_rule_allows(rule, f)), None)
    above = next(f for f in range(frames, frames + 1000) if frame_rule_allows(rule, f))
    return [f for f in (below, above) if f is not None]


def resolve_job(entry: GeneratorEntry, job: RenderJob, dtype: str) -> RenderSettings:
    """Fill a job's unset fields from the generator entry and check them."""
    if not job.prompt.strip():
        raise UserError("an empty prompt cannot be rendered; give some text.")
    if dtype not in DTYPES:
        raise UserError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}.")
    frames = job.frames if job.frames is not None else entry.frames
    if entry.output == "image" and frames != 1:
        raise UserError(f"{entry.name} makes images, so --frames must be 1 (got {frames}).")
    most_frames = max((f for f in range(1, MAX_SCALE * entry.frames + 1) if frame_rule_allows(entry.frame_rule, f)),
                      default=entry.frames)
    if frames > most_frames:
        raise UserError(
            f"{entry.name} renders at most {most_frames} frames (up to {MAX_SCALE}x its default of {entry.frames}); "
            f"got {frames}."
        )
    if not frame_rule_allows(entry.frame_rule, frames):
        options = " or ".join(str(f) for f in nearest_allowed(entry.frame_rule, frames))
        raise UserError(
            f"{entry.name} renders {entry.frame_rule} frames, so {frames} is impossible; use {options}."
        )
    height = job.height or entry.height
    width = job.width or entry.width
    most_h, most_w = MAX_SCALE * entry.height, MAX_SCALE * entry.width
    if height > most_h or width > most_w:
        raise UserError(
            f"{entry.name} renders at most {most_h}x{most_w} pixels (height x width, {MAX_SCALE}x its default of "
            f"{entry.height}x{entry.width}); got {height}x{width}."
        )
    multiple = SIZE_MULTIPLE.get(entry.family, 8)
    if height % multiple or width % multiple or min(height, width) < multiple:
        raise UserError(
            f"{entry.name} needs height and width that are multiples of {multiple} (got {height}x{width})."
        )
    steps = job.steps if job.steps is not None else entry.steps
    if steps < 1:
        raise UserError(f"--steps must be at least 1 (got {steps}).")
    return RenderSettings(
        generator=entry.name,
        revision=revision_of(entry),
        prompt=job.prompt,
        negative=job.negative,
        seed=job.seed,
        frames=frames,
        height=height,
        width=width,
        steps=steps,
        guidance=float(job.guidance if job.guidance is not None else entry.guidance),
        dtype=dtype,
    )
