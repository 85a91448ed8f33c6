"""Rewards on an open_clip image tower: the LAION aesthetic predictors and the CLIP score.

The backbone is a folder in open_clip's hub layout (open_clip_config.json + weights), loaded with
open_clip's `local-dir:` schema; the aesthetic heads are plain state dicts read with
`weights_only=True`, so no pickled code runs.
"""

from __future__ import annotations

from pathlib import Path

from paav_cli import registry
from paav_cli.errors import UserError
from paav_cli.registry import RewardEntry
from paav_cli.rewards.base import TorchReward, sampled_frames

FRAMES = 4  # the paper's aesthetic and MPS scorers read 4 frames: arange(0, T, T/4)


def load_open_clip(folder: Path, device: str, dtype):
    import open_clip

    from paav_cli.libs import quiet

    quiet()
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    except (RuntimeError, FileNotFoundError, KeyError, ValueError) as e:
        raise UserError(f"cannot load the open_clip model in {folder} ({type(e).__name__}); pull it again.") from None
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    return model.to(device=device, dtype=dtype).eval(), preprocess, tokenizer


def laion_mlp(dim: int):
    """The LAION v2 ("improved") aesthetic predictor's MLP, as its .pth holds it under `layers.`."""
    from torch import nn

    return nn.Sequential(
        nn.Linear(dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
        nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
    )


def aesthetic_head(kind: str, state: dict, dim: int):
    """LAION v1: one Linear(dim, 1). v2 ("improved"): an MLP whose Linear layers sit at 0, 2, 4, 6, 7."""
    import torch
    from torch import nn

    if kind == "aesthetic-linear":
        head = nn.Linear(dim, 1)
    else:
        head = laion_mlp(dim)
        state = {k.removeprefix("layers."): v for k, v in state.items()}
    try:
        head.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f"the aesthetic head does not fit a {dim}-dim CLIP embedding ({str(e).splitlines()[0]}).") from None
    return head.to(torch.float32).eval()


class OpenClipReward(TorchReward):
    def __init__(self, entry: RewardEntry, backbone_name: str | None):
        super().__init__(entry)
        reg = registry.Registry.load()
        backbone = reg.get(backbone_name, "rewards") if backbone_name else entry
        self.clip, self.preprocess, self.tokenizer = load_open_clip(
            registry.require_path(backbone), self.device, self.dtype
        )

    def image_embeddings(self, video: Path):
        import torch

        frames = sampled_frames(video, FRAMES)
        pixels = torch.stack([self.preprocess(f) for f in frames]).to(self.device, self.dtype)
        emb = self.clip.encode_image(pixels).float()
        return emb / emb.norm(dim=-1, keepdim=True)


class AestheticReward(OpenClipReward):
    """LAION aesthetic score (raw 1-10 scale): head on each L2-normalised frame embedding, mean of 4 frames."""

    def __init__(self, entry: RewardEntry):
        import torch

        if not entry.backbone:
            raise UserError(f"reward {entry.name!r} needs `backbone` (its CLIP model) in models.toml.")
        super().__init__(entry, entry.backbone)
        state = torch.load(registry.require_path(entry), map_location="cpu", weights_only=True)
        dim = self.clip.visual.output_dim
        self.head = aesthetic_head(entry.kind, state, dim).to(self.device)

    def score_one(self, video: Path, prompt: str) -> dict[str, float]:
        return {self.dims[0]: round(self.head(self.image_embeddings(video)).mean().item(), 4)}


class ClipScoreReward(OpenClipReward):
    """CLIP score: 100 x cosine(frame, prompt), mean over 4 frames (a cheap alignment signal)."""

    def __init__(self, entry: RewardEntry):
        super().__init__(entry, entry.backbone)

    def score_one(self, video: Path, prompt: str) -> dict[str, float]:
        text = self.clip.encode_text(self.tokenizer([prompt]).to(self.device)).float()
        text = text / text.norm(dim=-1, keepdim=True)
        cosine = (self.image_embeddings(video) @ text.T).mean().item()
        return {self.dims[0]: round(100 * max(cosine, 0.0), 4)}
