"""Per-point confidences and the landmark verdict a checkpoint's card carries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facesr.model.checkpoint import ModelCard
from facesr.model.config import DICConfig
from facesr.model.inference import FaceSR, landmark_points
from facesr.model.landmark_quality import PASS_NRMSE, landmark_quality, landmark_summary
from facesr.model.landmarks import landmark_confidence, render_heatmaps


def test_confidence_is_the_heatmap_peak_clipped_to_the_unit_interval() -> None:
    points = torch.tensor([[[40.0, 60.0], [80.0, 20.0], [10.0, 100.0]]])
    heatmaps = render_heatmaps(points)  # peaks of about 1
    heatmaps[0, 1] *= 0.3
    heatmaps[0, 2] = heatmaps[0, 2] * 5.0 - 2.0  # peak 3 -> clipped to 1, background negative
    confidence = landmark_confidence(heatmaps)
    assert confidence.shape == (1, 3)
    assert confidence[0, 0] == pytest.approx(1.0, abs=1e-6)
    assert confidence[0, 1] == pytest.approx(0.3, abs=1e-6)
    assert confidence[0, 2] == 1.0
    assert landmark_confidence(torch.full((1, 2, 32, 32), -0.5)).tolist() == [[0.0, 0.0]]


def test_engine_results_carry_one_confidence_per_point() -> None:
    engine = FaceSR.from_config(DICConfig.tiny(), device="cpu", dtype="fp32")
    face = np.random.default_rng(0).integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    (result,) = engine.enhance([face])
    assert result.confidence is not None and result.confidence.shape == (68,)
    assert np.all((result.confidence >= 0) & (result.confidence <= 1))
    points = landmark_points(result)
    assert points is not None and len(points) == 68
    assert set(points[0]) == {"x", "y", "confidence"}
    assert points[5]["x"] == pytest.approx(float(result.landmarks[5, 0]), abs=0.005)
    assert points[5]["confidence"] == pytest.approx(float(result.confidence[5]), abs=5e-5)


def _card(metrics: dict, **config: object) -> ModelCard:
    return ModelCard(name="m", config=DICConfig.tiny(**config).to_dict(), metrics=metrics)


@pytest.mark.parametrize(
    ("nrmse", "status"),
    [(0.05, "passed"), (PASS_NRMSE, "failed"), (0.94, "failed"), (float("nan"), "failed")],
)
def test_card_verdict_follows_the_recorded_nrmse(nrmse: float, status: str) -> None:
    quality = landmark_quality(_card({"landmarks": landmark_summary(nrmse, "helen-50")}))
    assert quality.status == status
    assert quality.withheld == (status == "failed")
    assert "helen-50" in quality.message()


def test_card_without_evaluation_is_unevaluated_and_a_model_without_branch_is_absent() -> None:
    assert landmark_quality(_card({})).status == "unevaluated"
    assert landmark_quality(_card({"landmarks": "garbage"})).status == "unevaluated"
    assert landmark_quality(_card({}, landmark_mode="none")).status == "absent"


def test_older_cards_are_judged_by_the_final_step_of_their_evaluation() -> None:
    methods = [
        {"method": "bicubic", "nrmse_alignment": None},
        {"method": "step_1", "nrmse_alignment": 0.05},
        {"method": "step_2", "nrmse_alignment": 0.94},
    ]
    quality = landmark_quality(_card({"evaluation": {"test_set": "helen-50", "methods": methods}}))
    assert quality.status == "failed" and quality.nrmse == pytest.approx(0.94)
