"""The `align` stage: the recurrent hourglass (alignment branch) trained alone, before DIC.

The authors start DIC from a pre-trained, frozen hourglass. Trained inside DIC from scratch with the
weak `0.1 MSE` on sparse 32 x 32 maps, the branch settles on empty heatmaps; trained alone with a
foreground-weighted loss it leaves that solution within seconds. The branch sees what it sees inside
DIC: an image and the previous step's hidden state, over several recurrent steps, where the images of
the early steps are blurry (the SR branch's first outputs) and sharpen towards the last.

A batch is the dict of `facesr.train.dataset.make_sample` (collated): lr B x 3 x 16 x 16,
hr B x 3 x 128 x 128 (mean-subtracted RGB), heatmaps B x 68 x 32 x 32, landmarks B x 68 x 2.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import MultiStepLR
from torch.utils.data import DataLoader

from facesr.model.generator import DICGenerator
from facesr.model.hourglass import FeedbackHourglass
from facesr.model.landmarks import decode_heatmaps
from facesr.train import losses
from facesr.train.config import TrainConfig
from facesr.train.distributed import DistributedContext
from facesr.train.metrics import landmark_nrmse
from facesr.train.precision import Precision
from facesr.train.validation import ValidationResult

Batch = dict[str, torch.Tensor]


def blurred_like_lr(lr: torch.Tensor, size: int) -> torch.Tensor:
    """The LR faces brought back to `size` with bicubic interpolation (B x 3 x 16 x 16 -> B x 3 x s x s).

    This is what the alignment branch sees of a face the SR branch has not sharpened yet.
    """
    return F.interpolate(lr, size=(size, size), mode="bicubic", align_corners=False)


def step_images(
    lr: torch.Tensor, hr: torch.Tensor, steps: int, degraded: torch.Tensor, sharpening: torch.Tensor
) -> list[torch.Tensor]:
    """The image the branch sees at each recurrent step.

    Args:
        lr: B x 3 x 16 x 16 and hr: B x 3 x 128 x 128, mean-subtracted RGB.
        steps: number of recurrent steps T.
        degraded: B bool, which faces follow the blurry-to-sharper path (the others are HR throughout).
        sharpening: B floats in [0, 1], how close to HR a degraded face gets at the last step.

    Returns:
        T tensors B x 3 x 128 x 128: `blur + a_t (hr - blur)` with a_t = sharpening * t / (T - 1) for the
        degraded faces, `hr` for the others.
    """
    blur = blurred_like_lr(lr, hr.shape[-1])
    images = []
    for step in range(steps):
        fraction = 0.0 if steps == 1 else step / (steps - 1)
        amount = (sharpening * fraction).view(-1, 1, 1, 1)
        path = blur + amount * (hr - blur)
        images.append(torch.where(degraded.view(-1, 1, 1, 1), path, hr))
    return images


def unroll(branch: FeedbackHourglass, images: list[torch.Tensor]) -> list[torch.Tensor]:
    """Run the recurrent branch over the step images, carrying its hidden state; T heatmap tensors."""
    hidden = None
    heatmaps = []
    for image in images:
        heatmap, hidden = branch(image, hidden)
        heatmaps.append(heatmap)
    return heatmaps


class AlignmentStage:
    """Optimises only the generator's `HG` (the SR branch is left as it was initialised or loaded)."""

    def __init__(self, config: TrainConfig, generator: DICGenerator, context: DistributedContext) -> None:
        if generator.HG is None:
            raise ValueError("the align stage needs a generator with an alignment branch")
        self.config = config
        self.context = context
        self.module = generator.to(context.device)
        self.branch: FeedbackHourglass = generator.HG
        self.steps = config.alignment.unroll_steps or generator.config.num_steps
        self.criterion = losses.HeatmapLoss(
            kind=config.loss.heatmap_kind,
            foreground_weight=config.loss.foreground_weight,
            foreground_threshold=config.loss.foreground_threshold,
        )
        self.optimizer = torch.optim.Adam(
            self.branch.parameters(),
            lr=config.optim.lr,
            betas=config.optim.betas,
            weight_decay=config.optim.weight_decay,
        )
        self.scheduler = MultiStepLR(
            self.optimizer, milestones=config.optim.milestones, gamma=config.optim.gamma
        )
        self.precision = Precision(config.train, context.device)
        self.precision.prepare(self.module)
        self._generator = torch.Generator().manual_seed(config.seed)

    # the interface the trainer uses ------------------------------------------------------------------
    def evaluation_generator(self) -> DICGenerator:
        return self.module

    @property
    def learning_rate(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def train_step(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        """One update of the branch on `batch`; returns the detached loss parts."""
        steps = 1 if step < self.config.alignment.single_step_until else self.steps
        lr = batch["lr"].to(self.context.device)
        hr = batch["hr"].to(self.context.device)
        target = batch["heatmaps"].to(self.context.device)
        count = lr.shape[0]
        degraded = torch.rand(count, generator=self._generator) < self.config.alignment.degraded_fraction
        sharpening = torch.rand(count, generator=self._generator)
        images = step_images(lr, hr, self.steps, degraded.to(lr.device), sharpening.to(lr.device))[:steps]
        self.branch.train()
        with self.precision.autocast():
            heatmaps = unroll(self.branch, [self.precision.layout(image) for image in images])
        total = losses.heatmap_loss(heatmaps, target, self.criterion)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        parts = {"heatmap": total.detach(), "total": total.detach()}
        if self.config.optim.grad_clip_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.branch.parameters(), self.config.optim.grad_clip_norm)
            parts["grad_norm"] = norm.detach()
        self.optimizer.step()
        self.scheduler.step()
        with torch.no_grad():
            parts["peak"] = heatmaps[-1].detach().float().amax(dim=(2, 3)).mean()
        return parts

    @torch.no_grad()
    def validate(self, generator: DICGenerator, loader: DataLoader) -> ValidationResult:
        """NRMSE of every step on held-out faces, blurred throughout (selection) and sharp throughout."""
        if generator is not self.module:
            raise ValueError("the align stage validates its own generator")
        was_training = self.branch.training
        self.branch.eval()
        blurred: list[list[float]] = [[] for _ in range(self.steps)]
        sharp: list[float] = []
        heatmap_errors: list[float] = []
        try:
            for batch in loader:
                lr = batch["lr"].to(self.context.device)
                hr = batch["hr"].to(self.context.device)
                truth = batch["landmarks"].numpy()
                blur = blurred_like_lr(lr, hr.shape[-1])
                steps = unroll(self.branch, [blur] * self.steps)
                for step, heatmaps in enumerate(steps):
                    points = decode_heatmaps(heatmaps).cpu().numpy()
                    blurred[step] += [landmark_nrmse(p, t) for p, t in zip(points, truth, strict=True)]
                error = (steps[-1].float().cpu() - batch["heatmaps"]) ** 2
                heatmap_errors += error.mean(dim=(1, 2, 3)).tolist()
                final = unroll(self.branch, [hr] * self.steps)[-1]
                points = decode_heatmaps(final).cpu().numpy()
                sharp += [landmark_nrmse(p, t) for p, t in zip(points, truth, strict=True)]
        finally:
            self.branch.train(was_training)
        per_step = tuple(float(np.mean(values)) for values in blurred)
        return ValidationResult(
            psnr_y=None,
            psnr_y_bicubic=None,
            heatmap_mse=float(np.mean(heatmap_errors)),
            count=len(sharp),
            nrmse=per_step[-1],
            nrmse_steps=per_step,
            nrmse_sharp=float(np.mean(sharp)),
        )

    @staticmethod
    def score(result: ValidationResult) -> float:
        """Higher is better: the negative final-step NRMSE on blurred faces."""
        return -math.inf if result.nrmse is None else -result.nrmse

    # -- state ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler_rng": self._generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["generator"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self._generator.set_state(state["sampler_rng"])
