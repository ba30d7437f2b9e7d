"""The recurrent hourglass alignment branch (FeedbackHourGlass), no BatchNorm, as the authors.

With F = hg_num_features (paper 256): SR image B x 3 x 128 x 128 (mean-subtracted) and the previous
hidden state B x F x 32 x 32 -> raw heatmaps B x 68 x 32 x 32 and the new hidden state B x F x 32 x 32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResidualUnit(nn.Module):
    """conv1x1 (a -> b/2), ReLU, conv3x3 (b/2 -> b/2), conv1x1 (b/2 -> b), plus a skip (1x1 if a != b).

    Only one ReLU and no activation after the sum (the authors' no-BN ResBlock). a x h x w -> b x h x w.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        self.conv_block = nn.Sequential(
            nn.Conv2d(in_channels, mid, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, padding=1),
            nn.Conv2d(mid, out_channels, 1),
        )
        self.skip_layer = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.skip_layer is None else self.skip_layer(x)
        return self.conv_block(x) + skip


class Hourglass(nn.Module):
    """Recursive hourglass of `depth` levels at C channels (32 -> 16 -> 8 -> 4 -> 2 for depth 4).

    Each level: skip = Res(x); low = Res(maxpool(x)); low = next level (or the centre Res);
    low = Res(low); return skip + bilinear x2 (align_corners=True) of low. C x h x w -> C x h x w.
    Names (res{level}_{1,2,3}, res_center) follow the authors' state dict.
    """

    def __init__(self, channels: int, depth: int = 4) -> None:
        super().__init__()
        self.depth = depth
        for level in range(depth, 0, -1):
            self.add_module(f"res{level}_1", ResidualUnit(channels, channels))
            self.add_module(f"res{level}_2", ResidualUnit(channels, channels))
        self.res_center = ResidualUnit(channels, channels)
        for level in range(1, depth + 1):
            self.add_module(f"res{level}_3", ResidualUnit(channels, channels))

    def _level(self, level: int, x: torch.Tensor) -> torch.Tensor:
        skip = getattr(self, f"res{level}_1")(x)
        low = getattr(self, f"res{level}_2")(F.max_pool2d(x, 2))
        low = self._level(level - 1, low) if level > 1 else self.res_center(low)
        low = getattr(self, f"res{level}_3")(low)
        return skip + F.interpolate(low, scale_factor=2, mode="bilinear", align_corners=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._level(self.depth, x)


class _ConvReLU(nn.Module):
    """1x1 conv + ReLU, kept as `conv_block` to match the authors' key names."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_block(x)


class FeedbackHourglass(nn.Module):
    """The alignment branch: a pre-network, a recurrent 1x1 merge with the hidden state, an hourglass.

    forward(sr, hidden) -> (heatmaps, new_hidden):
        sr: B x 3 x 128 x 128 (mean-subtracted); hidden: B x F x 32 x 32 or None at step 0
        (then the pre-features are concatenated with themselves, as the authors).
        heatmaps: B x K x 32 x 32 raw linear outputs (not normalised, may be negative).
    """

    def __init__(self, num_features: int, num_keypoints: int, in_channels: int = 3) -> None:
        super().__init__()
        f = num_features
        self.num_features = f
        self.pre_conv_block = nn.Sequential(
            nn.Conv2d(in_channels, f // 4, 7, stride=2, padding=3),  # 64 x 64
            nn.ReLU(inplace=True),
            ResidualUnit(f // 4, f // 2),
            nn.MaxPool2d(2),  # 32 x 32
            ResidualUnit(f // 2, f // 2),
            ResidualUnit(f // 2, f),
        )
        self.compress_in = nn.Conv2d(2 * f, 2 * f, 1)
        self.hg = Hourglass(2 * f, depth=4)
        self.hg_conv_out = nn.Sequential(
            ResidualUnit(f, f),
            _ConvReLU(f),
            nn.Conv2d(f, num_keypoints, 1),
        )

    def forward(self, sr: torch.Tensor, hidden: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.pre_conv_block(sr)  # B x F x 32 x 32
        previous = features if hidden is None else hidden
        merged = self.hg(self.compress_in(torch.cat((features, previous), dim=1)))  # B x 2F x 32 x 32
        heatmaps = self.hg_conv_out(merged[:, : self.num_features])
        return heatmaps, merged[:, self.num_features :]
