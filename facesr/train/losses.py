"""Training losses of DIC and DICGAN (the authors' weights and reductions).

Every image tensor here is B x 3 x 128 x 128 in the model's mean-subtracted RGB space; heatmaps are
B x 68 x 32 x 32. Each term is mean-reduced over its elements; step terms are summed over the steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from facesr.model.generator import DICOutput


def pixel_loss(sr_steps: Sequence[torch.Tensor], hr: torch.Tensor) -> torch.Tensor:
    """sum_t L1(SR_t, HR)."""
    return torch.stack([F.l1_loss(sr.float(), hr) for sr in sr_steps]).sum()


def heatmap_loss(heatmap_steps: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """sum_t MSE(hm_t, GT) on the raw 68 channels; zero when the model has no alignment branch."""
    if not heatmap_steps:
        return target.new_zeros(())
    return torch.stack([F.mse_loss(hm.float(), target) for hm in heatmap_steps]).sum()


def dic_loss(
    output: DICOutput, hr: torch.Tensor, heatmaps: torch.Tensor, *, pixel_weight: float, heatmap_weight: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The DIC objective `sum_t [w_pix L1(SR_t, HR) + w_hm MSE(hm_t, GT)]` and its detached parts."""
    pixel = pixel_loss(output.sr_steps, hr)
    align = heatmap_loss(output.heatmap_steps, heatmaps)
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
