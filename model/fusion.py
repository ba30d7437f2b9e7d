"""Attentive fusion: landmark-guided attention over 5 facial components."""

from __future__ import annotations

import torch
from torch import nn

from facesr.model.landmarks import NUM_COMPONENTS

LEAKY_SLOPE = 0.2


class GroupedResBlock(nn.Module):
    """conv3x3 (groups=5) + LeakyReLU(0.2) + conv3x3 (groups=5), identity skip. C x h x w -> same."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.res = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, groups=groups),
            nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, groups=groups),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res(x)


class AttentiveFusion(nn.Module):
    """Component-wise features weighted by a softmax over the 5 component heatmaps.

    forward(x, components):
        x: B x N x 32 x 32 features; components: B x 5 x 32 x 32 merged heatmaps (`merge_heatmaps`).
        Returns B x N x 32 x 32: sum_k softmax_k(components) * features_k, where features_k are
        channels [N*k, N*(k+1)) of the grouped branch (component-major layout, as the authors).
    """

    def __init__(self, num_features: int, num_blocks: int) -> None:
        super().__init__()
        width = num_features * NUM_COMPONENTS
        self.num_features = num_features
        self.conv_in = nn.Sequential(
            nn.Conv2d(num_features, width, 1), nn.LeakyReLU(LEAKY_SLOPE, inplace=True)
        )
        self.resnet = nn.Sequential(*(GroupedResBlock(width, NUM_COMPONENTS) for _ in range(num_blocks)))

    def forward(self, x: torch.Tensor, components: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        per_component = self.resnet(self.conv_in(x)).view(B, NUM_COMPONENTS, self.num_features, H, W)
        attention = torch.softmax(components, dim=1).unsqueeze(2)  # B x 5 x 1 x H x W
        return (per_component * attention).sum(dim=1)
