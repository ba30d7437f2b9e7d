"""One optimisation step of each training stage, with its optimisers and resumable state.

`DICStage`: the generator alone, `sum_t [L1(SR_t, HR) + 0.1 MSE(hm_t, GT)]`.
`DICGANStage`: adds a LightCNN-9 discriminator (vanilla GAN) and a perceptual L1 on frozen features.

A batch is the dict from `facesr.train.dataset.make_sample` (collated): lr B x 3 x 16 x 16,
hr B x 3 x 128 x 128 (mean-subtracted RGB), heatmaps B x 68 x 32 x 32.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import MultiStepLR
from torch.utils.data import DataLoader

from facesr.model.generator import DICGenerator, DICOutput
from facesr.model.lightcnn import LightCNN9Discriminator
from facesr.train import losses
from facesr.train.config import GanSection, TrainConfig
from facesr.train.distributed import DistributedContext
from facesr.train.ema import WeightAverage
from facesr.train.precision import Precision
from facesr.train.validation import ValidationResult, validate

Batch = dict[str, torch.Tensor]


def _ddp(module: nn.Module, context: DistributedContext) -> nn.Module:
    if not context.is_distributed:
        return module
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids)


def _adam(parameters: Any, config: TrainConfig, lr: float) -> torch.optim.Adam:
    return torch.optim.Adam(
        parameters, lr=lr, betas=config.optim.betas, weight_decay=config.optim.weight_decay
    )


class TrainableGenerator:
    """The generator, its DDP wrapper and the alignment-branch (hourglass) freeze switch.

    Freezing sets `requires_grad=False` on the hourglass parameters: they get no updates, but the
    losses still backpropagate through the hourglass into the SR branch (as the authors). Under DDP
    the wrapper is rebuilt whenever the set of trainable parameters changes.
    """

    def __init__(self, generator: DICGenerator, context: DistributedContext) -> None:
        self.module = generator
        self.context = context
        self._frozen: bool | None = None
        self._wrapped: nn.Module = generator

    def set_alignment_frozen(self, frozen: bool) -> None:
        if frozen == self._frozen:
            return
        self._frozen = frozen
        if self.module.HG is not None:
            self.module.HG.requires_grad_(not frozen)
        self._wrapped = _ddp(self.module, self.context)

    @property
    def alignment_frozen(self) -> bool:
        return bool(self._frozen)

    def __call__(self, lr: torch.Tensor) -> DICOutput:
        return self._wrapped(lr)


class DICStage:
    """Generator training (the DIC stage); also the base of the DICGAN stage."""

    def __init__(self, config: TrainConfig, generator: DICGenerator, context: DistributedContext) -> None:
        self.config = config
        self.context = context
        self.generator = TrainableGenerator(generator.to(context.device), context)
        self.optimizer = _adam(generator.parameters(), config, config.optim.lr)
        self.scheduler = MultiStepLR(
            self.optimizer, milestones=config.optim.milestones, gamma=config.optim.gamma
        )
        self.ema = WeightAverage(generator, config.train.ema_decay) if config.train.ema_decay else None
        self.precision = Precision(config.train, context.device)
        self.precision.prepare(generator)
        self.criterion = losses.HeatmapLoss(
            kind=config.loss.heatmap_kind,
            foreground_weight=config.loss.foreground_weight,
            foreground_threshold=config.loss.foreground_threshold,
        )

    # -- helpers -------------------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast where `train.amp` enables it for this device (see `Precision`)."""
        return self.precision.autocast()

    def _to_device(self, batch: Batch) -> Batch:
        return {key: value.to(self.context.device, non_blocking=True) for key, value in batch.items()}

    def _clip(self, parameters: Any) -> torch.Tensor | None:
        if self.config.optim.grad_clip_norm is None:
            return None
        return torch.nn.utils.clip_grad_norm_(parameters, self.config.optim.grad_clip_norm)

    def prepare_step(self, step: int) -> None:
        """Apply the hourglass freezing schedule for the step about to run (0-based)."""
        self.generator.set_alignment_frozen(step < self.config.train.hg_frozen_until)

    def evaluation_generator(self) -> DICGenerator:
        """The weights to validate and export: the EMA copy when enabled, else the live generator."""
        if self.ema is not None:
            return self.ema.averaged_copy(self.generator.module)
        return self.generator.module

    def validate(self, generator: DICGenerator, loader: DataLoader) -> ValidationResult:
        """Final-step Y-PSNR (and the branch's NRMSE per step) of `generator` on `loader`."""
        return validate(generator, loader, self.context.device)

    @staticmethod
    def score(result: ValidationResult) -> float:
        """Higher is better: the final-step Y-PSNR."""
        return -math.inf if result.psnr_y is None else result.psnr_y

    # -- one step ------------------------------------------------------------------------------------
    def generator_objective(
        self, output: DICOutput, batch: Batch
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The generator loss of this stage and its detached parts."""
        return losses.dic_loss(
            output,
            batch["hr"],
            batch["heatmaps"],
            pixel_weight=self.config.loss.pixel,
            heatmap_weight=self.config.loss.heatmap,
            criterion=self.criterion,
        )

    def train_step(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        """Run one optimisation step on `batch` (step = number of steps already done); detached losses."""
        parts, _ = self._generator_step(self._to_device(batch), step)
        return parts

    def _generator_step(self, batch: Batch, step: int) -> tuple[dict[str, torch.Tensor], DICOutput]:
        """Forward, loss, backward and update of the generator; returns the loss parts and the output."""
        self.prepare_step(step)
        self.generator.module.train()
        with self.autocast():
            output = self.generator(self.precision.layout(batch["lr"]))
        total, parts = self.generator_objective(output, batch)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        grad_norm = self._clip(self.generator.module.parameters())
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.generator.module)
        parts["total"] = total.detach()
        if grad_norm is not None:
            parts["grad_norm"] = grad_norm.detach()
        return parts, output

    @property
    def learning_rate(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    # -- state ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.module.load_state_dict(state["generator"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if (self.ema is None) != (state["ema"] is None):
            raise ValueError("EMA setting differs from the saved training state")
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])


class DICGANStage(DICStage):
    """DICGAN fine-tuning: generator loss + 0.005 vanilla adversarial + 0.1 perceptual, one D step per G step.

    The pixel term is `w_pix sum_t L1(SR_t, HR)` by default (`gan.pixel_loss: per_step`); the authors'
    loop instead counts the final SR once per step (`final_repeated`), which leaves the intermediate
    steps without pixel supervision.
    """

    def __init__(
        self,
        config: TrainConfig,
        generator: DICGenerator,
        context: DistributedContext,
        feature_extractor: nn.Module,
        discriminator: LightCNN9Discriminator | None = None,
    ) -> None:
        super().__init__(config, generator, context)
        if config.gan is None:
            raise ValueError("DICGANStage needs a config with a 'gan' section")
        self.gan: GanSection = config.gan
        self.features = feature_extractor.to(context.device).eval().requires_grad_(False)
        self.discriminator_module = (discriminator or LightCNN9Discriminator(in_channels=3)).to(
            context.device
        )
        self.discriminator = _ddp(self.discriminator_module, context)
        self.d_optimizer = _adam(self.discriminator_module.parameters(), config, self.gan.discriminator_lr)
        self.d_scheduler = MultiStepLR(
            self.d_optimizer, milestones=config.optim.milestones, gamma=config.optim.gamma
        )

    def generator_objective(
        self, output: DICOutput, batch: Batch
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        hr = batch["hr"]
        final = output.sr_steps[-1]
        if self.gan.pixel_loss == "final_repeated":
            pixel = losses.final_repeated_pixel_loss(output, hr)
        else:
            pixel = losses.pixel_loss(output.sr_steps, hr)
        align = losses.heatmap_loss(output.heatmap_steps, batch["heatmaps"], self.criterion)
        with self.autocast():
            perceptual = losses.perceptual_loss(self.features, final, hr)
            # the generator's adversarial term goes through the bare discriminator with its weights
            # frozen, so no gradient reaches (or is all-reduced for) the discriminator here
            self.discriminator_module.requires_grad_(False)
            fake_logits = self.discriminator_module(final)
            self.discriminator_module.requires_grad_(True)
        adversarial = losses.generator_adversarial_loss(fake_logits)
        total = (
            self.config.loss.pixel * pixel
            + self.config.loss.heatmap * align
            + self.gan.perceptual * perceptual
            + self.gan.adversarial * adversarial
        )
        parts = {
            "pixel": pixel.detach(),
            "heatmap": align.detach(),
            "perceptual": perceptual.detach(),
            "adversarial": adversarial.detach(),
        }
        return total, parts

    def train_step(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        batch = self._to_device(batch)
        parts, output = self._generator_step(batch, step)
        fake = output.sr_steps[-1].detach()
        self.discriminator_module.train()
        with self.autocast():
            real_logits = self.discriminator(batch["hr"])
            fake_logits = self.discriminator(fake)
        d_loss = losses.discriminator_loss(real_logits, fake_logits)
        self.d_optimizer.zero_grad(set_to_none=True)
        d_loss.backward()
        self._clip(self.discriminator_module.parameters())
        self.d_optimizer.step()
        self.d_scheduler.step()
        parts["discriminator"] = d_loss.detach()
        parts["d_real"] = torch.sigmoid(real_logits.detach().float()).mean()
        parts["d_fake"] = torch.sigmoid(fake_logits.detach().float()).mean()
        return parts

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "discriminator": self.discriminator_module.state_dict(),
            "d_optimizer": self.d_optimizer.state_dict(),
            "d_scheduler": self.d_scheduler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.discriminator_module.load_state_dict(state["discriminator"])
        self.d_optimizer.load_state_dict(state["d_optimizer"])
        self.d_scheduler.load_state_dict(state["d_scheduler"])
