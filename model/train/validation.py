"""Periodic validation on the held-out slice of the training data: Y-PSNR of the final step.

Scores follow `facesr.train.metrics` (uint8 outputs, BT.601 luma, 8-pixel border cut). The bicubic
baseline (`facesr.model.preprocess.bicubic_baseline`: PIL bicubic 16 -> 128 of the same LR) is
reported beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from facesr.model.generator import DICGenerator
from facesr.model.landmarks import decode_heatmaps
from facesr.model.normalization import tensor_to_images
from facesr.model.preprocess import bicubic_baseline
from facesr.train.metrics import landmark_nrmse, psnr_y


@dataclass(frozen=True)
class ValidationResult:
    """Mean scores over the validation faces.

    Attributes:
        psnr_y: final-step Y-PSNR in dB (None in the align stage, which makes no images).
        psnr_y_bicubic: Y-PSNR of PIL-bicubic upscaling of the same LR images (None likewise).
        heatmap_mse: MSE of the final-step heatmaps against the ground truth (None without landmarks;
            in the align stage, on blurred faces).
        count: number of faces.
        nrmse: the alignment branch's landmark NRMSE at the final step (RMS error / face width; None
            without landmarks); in the align stage, on blurred faces.
        nrmse_steps: the same at every step.
        nrmse_sharp: align stage only: final-step NRMSE when the branch sees the HR faces.
    """

    psnr_y: float | None
    psnr_y_bicubic: float | None
    heatmap_mse: float | None
    count: int
    nrmse: float | None = None
    nrmse_steps: tuple[float, ...] = field(default_factory=tuple)
    nrmse_sharp: float | None = None

    def as_dict(self) -> dict[str, float | int | None]:
        values: dict[str, float | int | None] = {
            "psnr_y": self.psnr_y,
            "psnr_y_bicubic": self.psnr_y_bicubic,
            "heatmap_mse": self.heatmap_mse,
            "count": self.count,
            "nrmse": self.nrmse,
        }
        values |= {f"nrmse_step_{i + 1}": value for i, value in enumerate(self.nrmse_steps)}
        values["nrmse_sharp"] = self.nrmse_sharp
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ValidationResult:
        """Inverse of `as_dict` (also reads the states of runs saved before the NRMSE fields existed)."""
        steps = sorted(
            (key for key in values if key.startswith("nrmse_step_")),
            key=lambda key: int(key.removeprefix("nrmse_step_")),
        )
        return cls(
            psnr_y=_optional(values["psnr_y"]),
            psnr_y_bicubic=_optional(values["psnr_y_bicubic"]),
            heatmap_mse=_optional(values["heatmap_mse"]),
            count=int(values["count"]),
            nrmse=_optional(values.get("nrmse")),
            nrmse_steps=tuple(float(values[key]) for key in steps),
            nrmse_sharp=_optional(values.get("nrmse_sharp")),
        )


def _optional(value: Any) -> float | None:
    return None if value is None else float(value)


@torch.no_grad()
def validate(generator: DICGenerator, loader: DataLoader, device: torch.device) -> ValidationResult:
    """Score `generator` (fp32, eval mode) on every batch of `loader`; restores its train/eval mode."""
    was_training = generator.training
    generator.eval()
    scores: list[float] = []
    baseline: list[float] = []
    heatmap_errors: list[float] = []
    step_errors: list[list[float]] = []
    try:
        for batch in loader:
            output = generator(batch["lr"].to(device))
            predictions = tensor_to_images(output.sr_steps[-1])
            targets = tensor_to_images(batch["hr"])
            upscaled = bicubic_baseline(tensor_to_images(batch["lr"]), generator.config.hr_size)
            scores += [psnr_y(p, t) for p, t in zip(predictions, targets, strict=True)]
            baseline += [psnr_y(b, t) for b, t in zip(upscaled, targets, strict=True)]
            if output.heatmap_steps:
                error = (output.heatmap_steps[-1].float().cpu() - batch["heatmaps"]) ** 2
                heatmap_errors += error.mean(dim=(1, 2, 3)).tolist()
                if not step_errors:
                    step_errors = [[] for _ in output.heatmap_steps]
                truth = batch["landmarks"].numpy()
                for errors, heatmaps in zip(step_errors, output.heatmap_steps, strict=True):
                    points = decode_heatmaps(heatmaps).cpu().numpy()
                    errors += [landmark_nrmse(p, t) for p, t in zip(points, truth, strict=True)]
    finally:
        generator.train(was_training)
    if not scores:
        raise ValueError("the validation loader produced no images")
    return ValidationResult(
        psnr_y=float(np.mean(scores)),
        psnr_y_bicubic=float(np.mean(baseline)),
        heatmap_mse=float(np.mean(heatmap_errors)) if heatmap_errors else None,
        count=len(scores),
        nrmse=float(np.mean(step_errors[-1])) if step_errors else None,
        nrmse_steps=tuple(float(np.mean(errors)) for errors in step_errors),
    )


@torch.no_grad()
def preview_grid(
    generator: DICGenerator, batch: dict[str, torch.Tensor], device: torch.device
) -> torch.Tensor:
    """An image grid for TensorBoard: one row per face with LR (nearest x8), every SR step, then HR.

    Args:
        batch: "lr" B x 3 x 16 x 16 and "hr" B x 3 x 128 x 128, mean-subtracted RGB.

    Returns:
        3 x (128 B) x (128 columns) float in [0, 1].
    """
    was_training = generator.training
    generator.eval()
    try:
        output = generator(batch["lr"].to(device))
    finally:
        generator.train(was_training)
    lr = (
        torch.from_numpy(tensor_to_images(batch["lr"]))
        .repeat_interleave(generator.config.scale, dim=1)
        .repeat_interleave(generator.config.scale, dim=2)
    )
    columns = [lr] + [torch.from_numpy(tensor_to_images(sr)) for sr in output.sr_steps]
    columns.append(torch.from_numpy(tensor_to_images(batch["hr"])))
    rows = torch.cat(columns, dim=2)  # N x 128 x (128 * columns) x 3
    grid = torch.cat(list(rows), dim=0)  # (128 * N) x (128 * columns) x 3
    return grid.permute(2, 0, 1).float() / 255.0
