"""Whether a checkpoint's landmarks can be trusted, as its model card records it.

`facesr release` writes `metrics.landmarks` into the card from the test-set evaluation: the alignment
branch's NRMSE at the final step (RMS point error / ground-truth face width) and whether it passed.
A branch at or above `PASS_NRMSE` has not learnt where the points are: predicting the average
training face shape for every face already scores 0.097 on Helen-50, so the bar sits below that.
Callers are told the status with every answer; points of a branch that failed are withheld instead
of being presented as if they were good.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, get_args

if TYPE_CHECKING:  # the verdict's vocabulary is read by processes without torch (the API, the queue codec)
    from facesr.model.checkpoint import ModelCard

#: Final-step alignment NRMSE (width-normalised) at or above which a checkpoint's landmarks fail.
PASS_NRMSE = 0.09

LandmarkStatus = Literal["passed", "failed", "unevaluated", "absent"]
#: Every value a landmark verdict can take.
LANDMARK_STATUSES: Final[frozenset[str]] = frozenset(get_args(LandmarkStatus))
#: One sentence per verdict, without the numbers (each answer of the API carries one).
STATUS_SUMMARIES: Final[dict[LandmarkStatus, str]] = {
    "passed": "the model's landmarks passed evaluation on its test set",
    "failed": "landmarks withheld: this model's landmarks failed evaluation on its test set",
    "unevaluated": "this model's landmarks have not been evaluated on a test set; use them with care",
    "absent": "this model has no landmark branch",
}


@dataclass(frozen=True)
class LandmarkQuality:
    """The landmark verdict of one checkpoint.

    status: "passed" / "failed" (evaluated on `test_set`), "unevaluated" (the card has no test-set
        evaluation) or "absent" (a model without alignment branch).
    nrmse: the final-step alignment NRMSE on the test set, when evaluated.
    """

    status: LandmarkStatus
    nrmse: float | None = None
    test_set: str | None = None
    threshold: float = PASS_NRMSE

    @property
    def withheld(self) -> bool:
        """Whether points must not be handed out (the evaluation says they are noise)."""
        return self.status == "failed"

    def message(self) -> str:
        """One sentence for API responses and CLI output."""
        if self.status == "passed":
            return f"landmarks evaluated on {self.test_set}: NRMSE {self.nrmse:.3f} (< {self.threshold})"
        if self.status == "failed":
            return (
                f"landmarks withheld: this model's landmarks failed evaluation on {self.test_set} "
                f"(NRMSE {self.nrmse:.3f}, must be < {self.threshold})"
            )
        return STATUS_SUMMARIES[self.status]

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "nrmse": self.nrmse,
            "test_set": self.test_set,
            "threshold": self.threshold,
            "message": self.message(),
        }


def landmark_summary(nrmse: float, test_set: str) -> dict[str, Any]:
    """The `metrics.landmarks` entry `facesr release` writes into a card."""
    return {
        "nrmse": nrmse,
        "test_set": test_set,
        "threshold": PASS_NRMSE,
        "passed": bool(math.isfinite(nrmse) and nrmse < PASS_NRMSE),
    }


def final_alignment_nrmse(methods: Any) -> float | None:
    """The alignment NRMSE at the last SR step of an evaluation's method list (None if absent)."""
    if not isinstance(methods, list):
        return None
    steps = [m for m in methods if isinstance(m, dict) and str(m.get("method", "")).startswith("step_")]
    try:
        final = max(steps, key=lambda m: int(str(m["method"]).removeprefix("step_")))
        value = final.get("nrmse_alignment")
        return None if value is None else float(value)
    except (TypeError, ValueError, KeyError):  # also max() of an empty list; a malformed card
        return None


def landmark_quality(card: ModelCard) -> LandmarkQuality:
    """Read the verdict from a card: `metrics.landmarks`, else the final step of `metrics.evaluation`.

    Cards with neither are unevaluated.
    """
    if card.config.get("landmark_mode") == "none":
        return LandmarkQuality(status="absent")
    entry = card.metrics.get("landmarks")
    if not isinstance(entry, dict):
        evaluation = card.metrics.get("evaluation")
        if isinstance(evaluation, dict):
            nrmse = final_alignment_nrmse(evaluation.get("methods"))
            if nrmse is not None:
                entry = landmark_summary(nrmse, str(evaluation.get("test_set", "its test set")))
    if not isinstance(entry, dict):
        return LandmarkQuality(status="unevaluated")
    try:
        nrmse = float(entry["nrmse"])
        test_set = str(entry["test_set"])
        threshold = float(entry.get("threshold", PASS_NRMSE))
    except (KeyError, TypeError, ValueError):
        return LandmarkQuality(status="unevaluated")
    passed = math.isfinite(nrmse) and nrmse < threshold
    return LandmarkQuality(
        status="passed" if passed else "failed", nrmse=nrmse, test_set=test_set, threshold=threshold
    )
