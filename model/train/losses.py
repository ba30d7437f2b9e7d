"""Training losses of DIC and DICGAN (the authors' weights and reductions).

Every image tensor here is B x 3 x 128 x 128 in the model's mean-subtracted RGB space; heatmaps are
B x 68 x 32 x 32. Each term is mean-reduced over its elements; step terms are summed over the steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from facesr.model.generator import DICOutput


def pixel_loss(sr_steps: Sequence[torch.Tensor], hr: torch.Tensor) -> torch.Tensor:
    """sum_t L1(SR_t, HR)."""
    return torch.stack([F.l1_loss(sr.float(), hr) for sr in sr_steps]).sum()


@dataclass(frozen=True, kw_only=True)
class HeatmapLoss:
    """One heatmap-loss choice (`loss.heatmap_kind` of the training config).

    kind: "mse" (the authors'), "foreground_mse" or "adaptive_wing".
    foreground_weight / foreground_threshold: pixels where the target exceeds the threshold count
        `foreground_weight` times (both weighted kinds).
    """

    kind: str = "mse"
    foreground_weight: float = 10.0
    foreground_threshold: float = 0.1

    def __call__(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean loss of B x K x h x w raw heatmaps against targets in [0, 1]."""
        prediction = prediction.float()
        if self.kind == "mse":
            return F.mse_loss(prediction, target)
        weight = 1.0 + (self.foreground_weight - 1.0) * (target > self.foreground_threshold).float()
        if self.kind == "foreground_mse":
            return (weight * (prediction - target) ** 2).mean()
        if self.kind == "adaptive_wing":
            return (weight * adaptive_wing(prediction, target)).mean()
        raise ValueError(f"unknown heatmap loss {self.kind!r}")


def adaptive_wing(
    prediction: torch.Tensor,
    target: torch.Tensor,
    *,
    omega: float = 14.0,
    theta: float = 0.5,
    epsilon: float = 1.0,
    alpha: float = 2.1,
) -> torch.Tensor:
    """Element-wise Adaptive Wing loss (Wang, Bo and Fuxin, ICCV 2019) with the paper's constants.

    Logarithmic below `theta` (its exponent `alpha - y` makes the foreground error count more than the
    background), linear above with the slope and offset that make it continuous and smooth.
    """
    error = (prediction - target).abs()
    power = alpha - target
    ratio = theta / epsilon
    slope = omega * power * ratio ** (power - 1) / (epsilon * (1 + ratio**power))
    offset = theta * slope - omega * torch.log1p(ratio**power)
    small = omega * torch.log1p((error / epsilon).clamp(min=0) ** power)
    return torch.where(error < theta, small, slope * error - offset)


MSE = HeatmapLoss()


def heatmap_loss(
    heatmap_steps: Sequence[torch.Tensor], target: torch.Tensor, criterion: HeatmapLoss = MSE
) -> torch.Tensor:
    """sum_t criterion(hm_t, GT) on the raw 68 channels; zero when the model has no alignment branch."""
    if not heatmap_steps:
        return target.new_zeros(())
    return torch.stack([criterion(hm, target) for hm in heatmap_steps]).sum()


def dic_loss(
    output: DICOutput,
    hr: torch.Tensor,
    heatmaps: torch.Tensor,
    *,
    pixel_weight: float,
    heatmap_weight: float,
    criterion: HeatmapLoss = MSE,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The DIC objective `sum_t [w_pix L1(SR_t, HR) + w_hm loss(hm_t, GT)]` and its detached parts."""
    pixel = pixel_loss(output.sr_steps, hr)
    align = heatmap_loss(output.heatmap_steps, heatmaps, criterion)
    total = pixel_weight * pixel + heatmap_weight * align
    return total, {"pixel": pixel.detach(), "heatmap": align.detach()}


def final_repeated_pixel_loss(output: DICOutput, hr: torch.Tensor) -> torch.Tensor:
    """The authors' DICGAN pixel term: L1 of the *final* SR counted once per step (T x L1(SR_T, HR))."""
    return len(output.sr_steps) * F.l1_loss(output.sr_steps[-1].float(), hr)


def perceptual_loss(
    features: Callable[[torch.Tensor], torch.Tensor], sr: torch.Tensor, hr: torch.Tensor
) -> torch.Tensor:
    """L1 between the features of SR and of HR (the HR side carries no gradient)."""
    with torch.no_grad():
        target = features(hr)
    return F.l1_loss(features(sr).float(), target.float())


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Vanilla GAN generator term: BCE(D(SR), real)."""
    return F.binary_cross_entropy_with_logits(
        fake_logits.float(), torch.ones_like(fake_logits, dtype=torch.float32)
    )


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Vanilla GAN discriminator loss: BCE(D(HR), real) + BCE(D(SR.detach()), fake)."""
    real = F.binary_cross_entropy_with_logits(
        real_logits.float(), torch.ones_like(real_logits, dtype=torch.float32)
    )
    fake = F.binary_cross_entropy_with_logits(
        fake_logits.float(), torch.zeros_like(fake_logits, dtype=torch.float32)
    )
    return real + fake
