"""What every reward model shares: the interface, device and dtype choice, frame loading, freeing."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from paav_cli.libs import free_memory
from paav_cli.registry import RewardEntry
from paav_cli.video.files import read_frames, sample_indices


class RewardModel(Protocol):
    name: str
    dims: tuple[str, ...]

    def score(self, videos: Sequence[Path], prompts: Sequence[str]) -> list[dict[str, float]]: ...

    def close(self) -> None: ...


def device_and_dtype(prefer_half: bool = True):
    """(device, torch dtype): bf16 on an accelerator, fp32 on the CPU (bf16 matmuls crawl there)."""
    import torch

    from paav_cli.video.render import accelerator

    device = accelerator()
    if device is None:
        return "cpu", torch.float32
    return device, torch.bfloat16 if prefer_half else torch.float32


def sampled_frames(video: Path, count: int):
    """`count` evenly sampled frames (arange(0, T, T/count), as the published scorers do) as PIL images."""
    from PIL import Image

    frames = read_frames(Path(video))
    return [Image.fromarray(frames[i]) for i in sample_indices(len(frames), count)]


class TorchReward:
    """Base class: holds the module(s), frees them on close."""

    name: str
    dims: tuple[str, ...]

    def __init__(self, entry: RewardEntry):
        self.entry = entry
        self.name = entry.name
        self.dims = tuple(entry.dims)
        self.device, self.dtype = device_and_dtype()

    def score(self, videos: Sequence[Path], prompts: Sequence[str]) -> list[dict[str, float]]:
        """One record per video, each scored against its prompt (the original user prompt)."""
        import torch

        if len(videos) != len(prompts):
            raise ValueError(f"{len(videos)} videos but {len(prompts)} prompts")
        with torch.inference_mode():
            return [self.score_one(Path(video), prompt) for video, prompt in zip(videos, prompts)]

    def score_one(self, video: Path, prompt: str) -> dict[str, float]:
        raise NotImplementedError

    def close(self) -> None:
        for attr in list(vars(self)):
            if attr not in ("entry", "name", "dims", "device", "dtype"):
                setattr(self, attr, None)
        free_memory()
