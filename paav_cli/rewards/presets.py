"""Normalisation and weighting presets: how the 7 reward dimensions become one number.

Three presets reproduce the method (../METHOD.md): the paper's "normalise to the same scale and
sum", the released evolution formula and the released DPO filter. A fourth, `text`, weighs the
text-side rewards of `rewards/text.py` (ranking DPO data without a generator). Every score record carries the
preset's name and its full definition, so a run can always say how its numbers were made.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from paav_cli.errors import UserError


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    # normalised = (raw - offset) * factor, per dimension; dimensions not listed pass through.
    offset: dict[str, float] = field(default_factory=dict)
    factor: dict[str, float] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    # Per-dimension lower bounds on RAW scores that a chosen candidate must pass (released DPO filter).
    gates: dict[str, float] = field(default_factory=dict)

    def normalise(self, raw: dict[str, float]) -> dict[str, float]:
        return {
            dim: (value - self.offset.get(dim, 0.0)) * self.factor.get(dim, 1.0) for dim, value in raw.items()
        }

    def combined(self, raw: dict[str, float]) -> float:
        """Weighted sum of the normalised dimensions this preset weighs (dims absent are skipped)."""
        norm = self.normalise(raw)
        return round(sum(w * norm[d] for d, w in self.weights.items() if d in norm), 4)

    def passes_gates(self, raw: dict[str, float]) -> bool:
        return all(raw.get(dim, float("-inf")) > bound for dim, bound in self.gates.items())

    def record(self) -> dict:
        return asdict(self)


VIDEOSCORE = ("VQ", "TC", "DD", "TVA", "FC")

PRESETS = {
    "paper": Preset(
        name="paper",
        description="Paper: every dimension mapped linearly to 0-5, then summed with equal weights",
        # VideoScore 1-4, AES 1-10, MPS 0-20 (so MPS/4, as the released code scales it).
        offset={**{d: 1.0 for d in VIDEOSCORE}, "AES": 1.0},
        factor={**{d: 5 / 3 for d in VIDEOSCORE}, "AES": 5 / 9, "MPS": 5 / 20},
        weights={**{d: 1.0 for d in VIDEOSCORE}, "AES": 1.0, "MPS": 1.0},
    ),
    "released-evolution": Preset(
        name="released-evolution",
        description="Released evolution code: AES x 5/8, MPS / 4; VQ + TC + FC + TVA + 0.5 DD + AES + MPS",
        factor={"AES": 5 / 8, "MPS": 1 / 4},
        weights={"VQ": 1.0, "TC": 1.0, "FC": 1.0, "TVA": 1.0, "DD": 0.5, "AES": 1.0, "MPS": 1.0},
    ),
    "released-dpo": Preset(
        name="released-dpo",
        description="Released DPO filter: VQ + TC + FC + 1.1 DD + 1.3 TVA + 0.8 AES + MPS/3 on raw scores, with gates",
        weights={"VQ": 1.0, "TC": 1.0, "FC": 1.0, "DD": 1.1, "TVA": 1.3, "AES": 0.8, "MPS": 1 / 3},
        gates={"VQ": 2.6, "TC": 2.6, "FC": 2.55, "AES": 5.5, "TVA": 2.9, "MPS": 8.5, "DD": 2.65},
    ),
    # Text rewards (rewards/text.py), for `paav rank` without a generator: each in [0, 1].
    "text": Preset(
        name="text",
        description="Text rewards: 2 x faithfulness + detail + budget, each in [0, 1] (rank without a generator)",
        weights={"faithfulness": 2.0, "detail": 1.0, "budget": 1.0},
    ),
}
DEFAULT_PRESET = "paper"


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise UserError(f"unknown score preset {name!r}; choose one of {', '.join(PRESETS)}.") from None
