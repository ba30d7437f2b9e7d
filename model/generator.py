"""The DIC generator: an SR branch and a landmark branch that help each other over T steps."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from facesr.model.blocks import conv_prelu, deconv_prelu
from facesr.model.config import DICConfig
from facesr.model.feedback import AttentiveFeedbackBlock, CoarseFeedbackBlock
from facesr.model.hourglass import FeedbackHourglass


class DICOutput(NamedTuple):
    """Every step's outputs; unpacks like the authors' `(sr_list, heatmap_list)`.

    sr_steps: T tensors B x 3 x 128 x 128, mean-subtracted RGB (not clamped).
    heatmap_steps: T tensors B x 68 x 32 x 32 raw heatmaps (empty for DIC-NL).
    """

    sr_steps: list[torch.Tensor]
    heatmap_steps: list[torch.Tensor]


class DICGenerator(nn.Module):
    """Deep Iterative Collaboration generator (CVPR 2020), x8.

    Input: B x 3 x 16 x 16, RGB in [0, 1] minus the mean (see `facesr.model.normalization`).
    Step 0 runs the coarse feedback block; steps 1..T-1 the shared attentive block, guided by the
    previous step's heatmaps. Reconstruction (`out`, `conv_out`) and the hourglass are shared by all
    steps; every step adds the bilinear x8 upsampling of the input (global residual).
    """

    def __init__(self, config: DICConfig) -> None:
        super().__init__()
        self.config = config
        n = config.num_features
        self.conv_in = conv_prelu(config.in_channels, 4 * n, 3, padding=1)  # then PixelShuffle(2)
        self.first_block = CoarseFeedbackBlock(n, config.num_groups)
        self.block = AttentiveFeedbackBlock(config)
        self.out = deconv_prelu(n, n, 8, 4, 2)  # 32 -> 128
        self.conv_out = nn.Sequential(nn.Conv2d(n, config.in_channels, 3, padding=1))
        self.HG = (
            FeedbackHourglass(config.hg_num_features, config.num_keypoints, config.in_channels)
            if config.has_landmarks
            else None
        )

    def forward(self, lr: torch.Tensor) -> DICOutput:
        side = self.config.lr_size
        if lr.ndim != 4 or lr.shape[1] != self.config.in_channels or tuple(lr.shape[-2:]) != (side, side):
            raise ValueError(
                f"DICGenerator expects B x {self.config.in_channels} x {side} x {side}, got {tuple(lr.shape)}"
            )
        upsampled = F.interpolate(lr, scale_factor=self.config.scale, mode="bilinear", align_corners=False)
        features = F.pixel_shuffle(self.conv_in(lr), 2)  # B x N x 32 x 32
        sr_steps: list[torch.Tensor] = []
        heatmap_steps: list[torch.Tensor] = []
        hidden = heatmaps = hg_hidden = None
        for step in range(self.config.num_steps):
            if step == 0:
                hidden = self.first_block(features)
            else:
                hidden = self.block(features, hidden, heatmaps)
            sr = upsampled + self.conv_out(self.out(hidden))  # B x 3 x 128 x 128
            sr_steps.append(sr)
            if self.HG is not None:
                heatmaps, hg_hidden = self.HG(sr, hg_hidden)
                heatmap_steps.append(heatmaps)
        return DICOutput(sr_steps, heatmap_steps)


def init_weights(module: nn.Module) -> None:
    """The authors' training init: kaiming_normal (fan_in, a=0) on every conv/deconv, zero bias."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.kaiming_normal_(layer.weight, a=0, mode="fan_in")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in module.parameters())
