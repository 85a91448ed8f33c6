"""VideoScore (TIGER-Lab/VideoScore, VideoScore-v1.1): a Mantis-Idefics2-8B with a 5-output regression head.

The authors load it with `mantis.models.idefics2.Idefics2ForSequenceClassification`, which does not
import on transformers 5, and transformers 5 has no Idefics2 sequence-classification class. So this
module rebuilds the head on transformers' own `Idefics2Model`, with the same module names as the
Mantis class, so the published checkpoint loads 1:1 with `from_pretrained`.

Parameter names the checkpoint must hold (saved from Mantis' `self.model` / `self.score`):

    model.vision_model.embeddings.{patch_embedding.{weight,bias},position_embedding.weight}
    model.vision_model.encoder.layers.{i}.*        model.vision_model.post_layernorm.{weight,bias}
    model.connector.modality_projection.{gate_proj,up_proj,down_proj}.weight
    model.connector.perceiver_resampler.{latents,layers.{i}.*,norm.weight}
    model.text_model.{embed_tokens.weight,layers.{i}.*,norm.weight}
    score.weight  [num_labels, text hidden]        score.bias  [num_labels]

Verified offline: these are exactly the state-dict names of `Idefics2ForVideoScore` on transformers
5.24 (transformers has no key renaming for idefics2), a tiny checkpoint saved and reloaded through the
same `from_pretrained` path loads every key, and one without `score.weight` is refused. Not verified
(no network): the real `model.safetensors.index.json` (in particular that `score.bias` is there, as
`nn.Linear`'s default bias=True implies) and score parity with the published reference numbers.

Inference follows the published scripts (examples/run_videoscore.py, Prompt-A-Video's reward): the
REGRESSION_QUERY_PROMPT below, one "<image> " per frame, the stock Idefics2Processor, batch size 1,
the head applied to every position and read at the last token, the 5 raw outputs rounded to 3 digits.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import Idefics2Config, Idefics2Model
from transformers.models.idefics2.modeling_idefics2 import Idefics2PreTrainedModel

from paav_cli.errors import UserError
from paav_cli.registry import RewardEntry
from paav_cli.rewards.base import TorchReward, sampled_frames

# Verbatim from TIGER-AI-Lab/VideoScore examples/run_videoscore.py (and benchmark/utils_tools.py
# REGRESSION_QUERY_TEMPLATE): the leading newline, the trailing space after "sub-score," and the
# final newline are part of it.
REGRESSION_QUERY_PROMPT = """
Suppose you are an expert in judging and evaluating the quality of AI-generated videos,
please watch the following frames of a given video and see the text prompt for generating the video,
then give scores from 5 different dimensions:
(1) visual quality: the quality of the video in terms of clearness, resolution, brightness, and color
(2) temporal consistency, both the consistency of objects or humans and the smoothness of motion or movements
(3) dynamic degree, the degree of dynamic changes
(4) text-to-video alignment, the alignment between the text prompt and the video content
(5) factual consistency, the consistency of the video content with the common-sense and factual knowledge

for each dimension, output a float number from 1.0 to 4.0,
the higher the number is, the better the video performs in that sub-score, 
the lowest 1.0 means Bad, the highest 4.0 means Perfect/Real (the video is like a real video)
Here is an output example:
visual quality: 3.2
temporal consistency: 2.7
dynamic degree: 4.0
text-to-video alignment: 2.3
factual consistency: 1.8

For this video, the text prompt is "{text_prompt}",
all the frames of video are as follows:
"""  # keep the trailing space after "sub-score," (tests check it)

IMAGE_PLACEHOLDER = "<image>"
ROUND_DIGITS = 3
DEFAULT_FRAMES = 16  # VideoScore's MAX_NUM_FRAMES; the authors feed VideoScore-v1.1 up to 48


def build_query(prompt: str, n_frames: int) -> str:
    """The published query: the template around the prompt, then "<image> " once per frame."""
    query = REGRESSION_QUERY_PROMPT.format(text_prompt=prompt)
    missing = n_frames - query.count(IMAGE_PLACEHOLDER)
    if missing > 0:
        query += (IMAGE_PLACEHOLDER + " ") * missing
    return query


class Idefics2ForVideoScore(Idefics2PreTrainedModel):
    """Mantis' `Idefics2ForSequenceClassification` on transformers 5: Idefics2Model + Linear(hidden, labels)."""

    def __init__(self, config: Idefics2Config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = Idefics2Model(config)
        self.score = nn.Linear(config.text_config.hidden_size, self.num_labels)  # bias=True, as in Mantis
        self.post_init()

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [batch, num_labels] read at each row's last attended token (the last token unpadded)."""
        hidden = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=pixel_values,
            pixel_attention_mask=pixel_attention_mask,
            use_cache=False,
        ).last_hidden_state
        logits = self.score(hidden)  # every position, then pooled, as Mantis does
        return logits[torch.arange(logits.shape[0], device=logits.device), last_token_index(attention_mask, logits)]


def last_token_index(attention_mask: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
    """Index of the last attended position per row; with no mask (or no padding) the last position.

    Mantis pools at (first pad token - 1) mod length, which with batch size 1 and no padding (how
    every published script calls it) is the last token. This also handles left or right padding.
    """
    batch, length = logits.shape[:2]
    if attention_mask is None:
        return torch.full((batch,), length - 1, dtype=torch.long, device=logits.device)
    mask = attention_mask.to(logits.device).bool()
    return (length - 1) - mask.flip(-1).int().argmax(-1)


def load_videoscore_model(folder: Path, dtype, device="cpu") -> Idefics2ForVideoScore:
    """from_pretrained, refusing a checkpoint with weights missing (transformers would init them randomly)."""
    try:
        model, info = Idefics2ForVideoScore.from_pretrained(folder, dtype=dtype, output_loading_info=True)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load the VideoScore model from {folder} ({e}); is the download complete?") from None
    missing = sorted(info.get("missing_keys") or [])
    mismatched = info.get("mismatched_keys") or []
    if missing or mismatched:
        names = [str(m) for m in missing] + [str(m[0] if isinstance(m, tuple) else m) for m in mismatched]
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise UserError(
            f"the VideoScore checkpoint in {folder} lacks or mis-sizes {len(names)} weight(s) ({shown}); "
            "it is not a VideoScore regression checkpoint, or its download is incomplete."
        )
    return model.to(device).eval()


class VideoScoreReward(TorchReward):
    """Scores videos against their prompts on VQ, TC, DD, TVA, FC (raw regression outputs, about 1 to 4)."""

    frames: int = DEFAULT_FRAMES

    def __init__(self, entry: RewardEntry, frames: int | None = None):
        super().__init__(entry)
        from transformers import AutoProcessor

        from paav_cli import libs
        from paav_cli.registry import require_path

        if frames is not None or entry.frames is not None:
            self.frames = frames or entry.frames
        libs.quiet()
        folder = require_path(entry)
        try:
            self.processor = AutoProcessor.from_pretrained(folder)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load the VideoScore processor from {folder} ({e}); is the download complete?") from None
        self.model = load_videoscore_model(folder, self.dtype, self.device)
        if self.model.score.out_features != len(self.dims):
            raise UserError(
                f"reward {entry.name!r} lists {len(self.dims)} dims but its checkpoint has "
                f"{self.model.score.out_features} outputs; fix `dims` in models.toml."
            )

    def inputs(self, video: Path, prompt: str):
        """The processor's tensors for one video and prompt (batch size 1, no padding), on the model's device."""
        frames = sampled_frames(video, self.frames)
        batch = self.processor(text=build_query(prompt, len(frames)), images=frames, return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items()}

    def score_one(self, video: Path, prompt: str) -> dict[str, float]:
        batch = self.inputs(video, prompt)
        logits = self.model(
            input_ids=batch["input_ids"],
            attention_mask=batch.get("attention_mask"),
            pixel_values=batch.get("pixel_values"),
            pixel_attention_mask=batch.get("pixel_attention_mask"),
        )
        return dict(zip(self.dims, [round(float(x), ROUND_DIGITS) for x in logits[0]]))
