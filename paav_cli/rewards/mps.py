"""MPS (Kwai-Kolors "Multi-dimensional Preference Score"): a CLIP ViT-H-14 whose image tokens attend to
the prompt tokens a condition text selects, scored against the prompt's pooled text feature.

Our own implementation of the published math. Module and parameter names follow the published
checkpoint (`trainer.models.clip_model.CLIPModel`: `.model` an HF CLIPModel, `.cross_model` a
`Cross_model(dim=1024, layer_num=4, heads=16)`), so its converted state dict loads strictly:

    model.{text_model,vision_model,text_projection,visual_projection,logit_scale}...   (HF CLIPModel)
    cross_model.layers.{i}.0.fn.{norm.weight,norm.bias,to_q,to_kv,to_out,ff.0,ff.2}.weight...
    cross_model.layers.{i}.1.fn.{norm.weight,norm.bias,rotary_emb.inv_freq,fused_attn_ff_proj,attn_out,ff_out.1}...

A model folder holds `config.json` (CLIPConfig), the CLIP tokenizer files, `preprocessor_config.json`
(CLIPImageProcessor), `mps.safetensors` (every tensor above) and optionally `mps_config.json`
(the cross model's size; the published 1024/4/16 when absent).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from paav_cli.errors import UserError
from paav_cli.registry import RewardEntry
from paav_cli.rewards.base import TorchReward, sampled_frames

WEIGHTS_FILE = "mps.safetensors"
CROSS_CONFIG_FILE = "mps_config.json"
CROSS_DEFAULTS = {"dim": 1024, "layer_num": 4, "heads": 16, "dim_head": 64, "ff_mult": 4}
# The "overall" condition of the published scorers (trailing period included).
DEFAULT_CONDITION = (
    "light, color, clarity, tone, style, ambiance, artistry, shape, face, hair, hands, limbs, structure, "
    "instance, texture, quantity, attributes, position, number, location, word, things."
)
MASK_THRESHOLD = 0.3  # the inference scripts' threshold (the training forward uses 0.01)
FRAMES = 4


# ---------------------------------------------------------------------------------------------------
# The condition model: bias-free LayerNorms, multi-query attention, SwiGLU, rotary self-attention.


class BiasFreeLayerNorm(nn.Module):
    """LayerNorm whose bias is a persistent all-zero buffer (saved in the state dict as `bias`)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.register_buffer("bias", torch.zeros(dim))

    def forward(self, x):
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias)


class Residual(nn.Module):
    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x, *args):
        return self.fn(x, *args) + x


class SwiGLU(nn.Module):
    def forward(self, x):
        x, gate = x.chunk(2, dim=-1)
        return F.silu(gate) * x


class Rotary(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim)))

    def forward(self, n: int, device) -> torch.Tensor:
        # Always float32: positions up to 257 are not exact in bf16.
        inv_freq = self.inv_freq.to(device=device, dtype=torch.float32)
        freqs = torch.outer(torch.arange(n, device=device, dtype=torch.float32), inv_freq)
        return torch.cat((freqs, freqs), dim=-1)


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _apply_rotary(pos, t):
    return (t * pos.cos() + _rotate_half(t) * pos.sin()).to(t.dtype)


def _split_heads(t, heads: int):
    b, n, _ = t.shape
    return t.reshape(b, n, heads, -1).transpose(1, 2)  # b h n d


def _merge_heads(t):
    b, h, n, d = t.shape
    return t.transpose(1, 2).reshape(b, n, h * d)


class ConditionCrossAttention(nn.Module):
    """Image tokens (queries, h heads) attend to text tokens (one shared key/value head), plus a parallel
    SwiGLU feed-forward on the normed queries. The context is not normed."""

    def __init__(self, dim: int, dim_head: int, heads: int, ff_mult: int):
        super().__init__()
        self.heads = heads
        self.scale = dim_head**-0.5
        inner = heads * dim_head
        self.norm = BiasFreeLayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, dim_head * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)
        self.ff = nn.Sequential(
            nn.Linear(dim, ff_mult * dim * 2, bias=False), SwiGLU(), nn.Linear(ff_mult * dim, dim, bias=False)
        )

    def forward(self, x, context, mask):
        x = self.norm(x)
        q = _split_heads(self.to_q(x), self.heads) * self.scale
        k, v = self.to_kv(context).chunk(2, dim=-1)
        sim = torch.einsum("bhid,bjd->bhij", q, k) + mask.unsqueeze(1).to(q.dtype)  # mask: b i j, 0 / -inf
        sim = sim - sim.amax(dim=-1, keepdim=True)
        out = torch.einsum("bhij,bjd->bhid", sim.softmax(dim=-1), v)
        return self.to_out(_merge_heads(out)) + self.ff(x)


class ParallelSelfAttentionBlock(nn.Module):
    """Self-attention (multi-query, rotary on q and k, no mask) and a SwiGLU feed-forward in parallel,
    from one fused input projection."""

    def __init__(self, dim: int, dim_head: int, heads: int, ff_mult: int):
        super().__init__()
        self.heads = heads
        self.scale = dim_head**-0.5
        inner = heads * dim_head
        self.fused_dims = (inner, dim_head, dim_head, dim * ff_mult * 2)
        self.norm = BiasFreeLayerNorm(dim)
        self.rotary_emb = Rotary(dim_head)
        self.fused_attn_ff_proj = nn.Linear(dim, sum(self.fused_dims), bias=False)
        self.attn_out = nn.Linear(inner, dim, bias=False)
        self.ff_out = nn.Sequential(SwiGLU(), nn.Linear(dim * ff_mult, dim, bias=False))

    def forward(self, x):
        n = x.shape[1]
        x = self.norm(x)
        q, k, v, ff = self.fused_attn_ff_proj(x).split(self.fused_dims, dim=-1)
        q = _split_heads(q, self.heads)
        pos = self.rotary_emb(n, x.device)
        q, k = _apply_rotary(pos, q), _apply_rotary(pos, k)
        q = q * self.scale
        sim = torch.einsum("bhid,bjd->bhij", q, k)
        sim = sim - sim.amax(dim=-1, keepdim=True)
        out = torch.einsum("bhij,bjd->bhid", sim.softmax(dim=-1), v)
        return self.attn_out(_merge_heads(out)) + self.ff_out(ff)


class CrossModel(nn.Module):
    """The published `Cross_model`: `layer_num` x [Residual(cross-attention), Residual(self-attention)]."""

    def __init__(self, dim=1024, layer_num=4, heads=16, dim_head=64, ff_mult=4):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([
                Residual(ConditionCrossAttention(dim, dim_head, heads, ff_mult)),
                Residual(ParallelSelfAttentionBlock(dim, dim_head, heads, ff_mult)),
            ])
            for _ in range(layer_num)
        )

    def forward(self, query_tokens, context_tokens, mask):
        for cross_attn, self_attn_ff in self.layers:
            query_tokens = self_attn_ff(cross_attn(query_tokens, context_tokens, mask))
        return query_tokens


# ---------------------------------------------------------------------------------------------------
# The whole model


class MPSModel(nn.Module):
    def __init__(self, clip_config, cross_config: dict | None = None):
        from transformers import CLIPModel

        super().__init__()
        self.model = CLIPModel(clip_config)
        self.cross_model = CrossModel(**{**CROSS_DEFAULTS, **(cross_config or {})})

    @property
    def logit_scale(self):
        return self.model.logit_scale

    def text_features(self, input_ids):
        """(per-token features B x L x D, pooled EOS feature B x D): text_projection over the final-layer-normed
        tokens and over the pooled (EOS) token."""
        out = self.model.text_model(input_ids=input_ids)
        return self.model.text_projection(out.last_hidden_state), self.model.text_projection(out.pooler_output)

    def image_features(self, pixel_values):
        """Per-token image features B x (1+patches) x D: visual_projection over the vision encoder's
        last_hidden_state, which (as in the published patched code) has pre_layrnorm but no post_layernorm."""
        out = self.model.vision_model(pixel_values=pixel_values)
        return self.model.visual_projection(out.last_hidden_state)

    mask_threshold = MASK_THRESHOLD

    def condition_mask(self, text_tokens, condition_tokens):
        """Additive mask B x 1 x L (0 keeps a prompt token, -inf drops it): a prompt token is kept when its
        best similarity to a condition token exceeds `mask_threshold` times the sample's best.

        The published code divides by the max over the whole batch, which equals this only for batch 1 (as
        the published scorers use it: one prompt repeated); per sample, a prompt in a batch never depends
        on its neighbours and never loses every token.
        """
        sim = torch.einsum("bid,bjd->bji", text_tokens.float(), condition_tokens.float())
        sim = sim.amax(dim=1, keepdim=True)  # B x 1 x L
        sim = sim / sim.amax(dim=-1, keepdim=True)
        zero = torch.zeros((), device=sim.device)
        return torch.where(sim > self.mask_threshold, zero, zero - float("inf"))

    def score_features(self, image_tokens, text_tokens, text_eos, mask):
        mask = mask.expand(-1, image_tokens.shape[1], -1)
        image = self.cross_model(image_tokens, text_tokens, mask)[:, 0, :].float()
        image = image / image.norm(dim=-1, keepdim=True)
        text = text_eos.float()
        text = text / text.norm(dim=-1, keepdim=True)
        return self.logit_scale.float().exp() * (text * image).sum(dim=-1)

    def score(self, pixel_values, input_ids, condition_ids):
        """Score of image i against prompt i (B); a batch-1 prompt or condition is shared by every image."""
        batch = pixel_values.shape[0]
        text_tokens, text_eos = self.text_features(input_ids)
        condition_tokens, _ = self.text_features(condition_ids)
        if condition_tokens.shape[0] == 1:
            condition_tokens = condition_tokens.expand(text_tokens.shape[0], -1, -1)
        mask = self.condition_mask(text_tokens, condition_tokens)
        if text_tokens.shape[0] == 1 and batch > 1:
            text_tokens, text_eos = text_tokens.expand(batch, -1, -1), text_eos.expand(batch, -1)
            mask = mask.expand(batch, -1, -1)
        return self.score_features(self.image_features(pixel_values), text_tokens, text_eos, mask)


def read_cross_config(folder: Path) -> dict:
    path = Path(folder) / CROSS_CONFIG_FILE
    if not path.exists():
        return dict(CROSS_DEFAULTS)
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not readable JSON ({e}); convert the MPS model again.") from e
    unknown = set(config) - set(CROSS_DEFAULTS)
    if unknown:
        raise UserError(f"{path} has unknown keys {sorted(unknown)}; convert the MPS model again.")
    return {**CROSS_DEFAULTS, **config}


def _empty_init():
    """A context that skips random initialisation (the weights are loaded right after)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:
            import contextlib

            return contextlib.nullcontext()
    return no_init_weights()


def build_model(folder: Path, empty: bool = True) -> MPSModel:
    from transformers import CLIPConfig

    folder = Path(folder)
    try:
        config = CLIPConfig.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise UserError(f"no readable CLIP config.json in {folder} ({e}); convert the MPS model again.") from e
    cross = read_cross_config(folder)
    if empty:
        with _empty_init():
            return MPSModel(config, cross)
    return MPSModel(config, cross)


def key_mismatch(model: nn.Module, state: dict) -> str | None:
    """One sentence naming missing/unexpected/mis-shaped keys, or None when `state` loads strictly."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrongly shaped", shapes)):
        if keys:
            more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
            parts.append(f"{len(keys)} {label} ({', '.join(keys[:3])}{more})")
    return "; ".join(parts) or None


def load_model(folder: Path) -> MPSModel:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.exists():
        raise UserError(f"{weights} is missing; convert the MPS checkpoint with `paav models convert mps`.")
    model = build_model(folder)
    try:
        state = load_file(str(weights))
    except (OSError, SafetensorError) as e:
        raise UserError(f"{weights} is not a readable safetensors file ({e}); convert the checkpoint again.") from e
    problem = key_mismatch(model, state)
    if problem:
        raise UserError(f"{weights} does not match the MPS model: {problem}; convert the checkpoint again.")
    model.load_state_dict(state, strict=True)
    return model


class MPSReward(TorchReward):
    """The "MPS" score of a video: 4 evenly sampled frames, each against the prompt with the overall condition,
    averaged (raw scale, about 100 x cosine), as Prompt-A-Video scores its DPO candidates."""

    condition = DEFAULT_CONDITION

    def __init__(self, entry: RewardEntry):
        super().__init__(entry)
        from paav_cli import libs
        from paav_cli.registry import require_path

        libs.quiet()
        from transformers import AutoTokenizer, CLIPImageProcessor

        folder = Path(require_path(entry))
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder)
            self.processor = CLIPImageProcessor.from_pretrained(folder)
        except (OSError, ValueError) as e:
            raise UserError(f"the MPS tokenizer or image processor in {folder} is unreadable ({e}).") from e
        model = load_model(folder)
        model.to(device=self.device, dtype=self.dtype).eval()
        for module in model.modules():  # rotary frequencies stay float32 (see Rotary)
            if isinstance(module, Rotary):
                module.inv_freq = module.inv_freq.float()
        self.model = model
        self._condition_ids = self._tokenize([self.condition])

    def _tokenize(self, texts: Sequence[str]):
        length = min(self.tokenizer.model_max_length, self.model.model.config.text_config.max_position_embeddings)
        ids = self.tokenizer(
            list(texts), padding="max_length", truncation=True, max_length=length, return_tensors="pt"
        ).input_ids
        return ids.to(self.device)

    def _pixels(self, images):
        pixels = self.processor(images=images, return_tensors="pt").pixel_values
        return pixels.to(device=self.device, dtype=self.dtype)

    def score_one(self, video: Path, prompt: str) -> dict[str, float]:
        frames = sampled_frames(video, self.entry.frames or FRAMES)
        scores = self.model.score(self._pixels(frames), self._tokenize([prompt]), self._condition_ids)
        return {"MPS": round(float(scores.float().mean()), 3)}
