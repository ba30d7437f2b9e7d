"""LightCNN-9 with 3-channel input: the DICGAN discriminator and the perceptual feature extractor.

Layer names follow the authors' state dict (`features.N.filter`, `features.N.conv_a.filter`, ...).
"""

from __future__ import annotations

import torch
from torch import nn

FEATURE_CHANNELS = 128
FEATURE_SIZE = 8


class MaxFeatureMap(nn.Module):
    """A conv (or linear) with twice the outputs followed by the element-wise max of the two halves."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int = 3,
        padding: int = 1,
        linear: bool = False,
    ) -> None:
        super().__init__()
        self.out_features = out_features
        self.filter: nn.Module = (
            nn.Linear(in_features, 2 * out_features)
            if linear
            else nn.Conv2d(in_features, 2 * out_features, kernel_size, stride=1, padding=padding)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, second = torch.split(self.filter(x), self.out_features, dim=1)
        return torch.max(first, second)


class MFMGroup(nn.Module):
    """mfm 1x1 (in -> in) followed by mfm 3x3 (in -> out)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv_a = MaxFeatureMap(in_channels, in_channels, kernel_size=1, padding=0)
        self.conv = MaxFeatureMap(in_channels, out_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.conv_a(x))


def _pool() -> nn.MaxPool2d:
    return nn.MaxPool2d(2, 2, ceil_mode=True)


class LightCNN9Features(nn.Module):
    """LightCNN-9 convolutional trunk. B x C x 128 x 128 (mean-subtracted RGB) -> B x 128 x 8 x 8."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            MaxFeatureMap(in_channels, 48, kernel_size=5, padding=2),
            _pool(),
            MFMGroup(48, 96),
            _pool(),
            MFMGroup(96, 192),
            _pool(),
            MFMGroup(192, 128),
            MFMGroup(128, 128),
            _pool(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class LightCNN9Discriminator(LightCNN9Features):
    """The DICGAN discriminator: the trunk, mfm linear 8192 -> 256, LeakyReLU(0.2), linear 256 -> 1.

    B x 3 x 128 x 128 -> B x 1 real/fake logits (use with BCE-with-logits).
    """

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__(in_channels)
        flat = FEATURE_CHANNELS * FEATURE_SIZE * FEATURE_SIZE
        self.classifier = nn.Sequential(
            MaxFeatureMap(flat, 256, linear=True),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(256, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))
