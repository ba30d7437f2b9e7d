"""Feedback projection blocks of the SR branch (the SRFBN-style core that DIC iterates).

Shapes use N = num_features and G = num_groups. Every tensor is float, mean-subtracted feature space.
The up/down projections are k12 s8 p2 (de)convolutions on the 32x32 LR-feature grid, so the HR
projections are N x 256 x 256, as in the authors' code (built with upscale_factor 8 although the
features already sit at 2x the input).
"""

from __future__ import annotations

import torch
from torch import nn

from facesr.model.blocks import conv_prelu, deconv_prelu
from facesr.model.config import DICConfig
from facesr.model.fusion import AttentiveFusion
from facesr.model.landmarks import NUM_COMPONENTS, merge_heatmaps

PROJECTION_KERNEL, PROJECTION_STRIDE, PROJECTION_PADDING = 12, 8, 2


class ProjectionCore(nn.Module):
    """G dense up/down projection groups.

    Input L0: B x N x 32 x 32. Group g up-projects (a 1x1 fusion of L0..L_{g-1} for g > 0) to
    H_g: B x N x 256 x 256, then down-projects (a 1x1 fusion of H_0..H_g for g > 0) to L_{g+1}.
    Output: 1x1 compression of cat(L_1..L_G) (L0 excluded): B x N x 32 x 32.
    """

    def __init__(self, num_features: int, num_groups: int) -> None:
        super().__init__()
        n, g = num_features, num_groups
        k, s, p = PROJECTION_KERNEL, PROJECTION_STRIDE, PROJECTION_PADDING
        self.num_groups = g
        self.upBlocks = nn.ModuleList(deconv_prelu(n, n, k, s, p) for _ in range(g))
        self.downBlocks = nn.ModuleList(conv_prelu(n, n, k, s, p) for _ in range(g))
        self.uptranBlocks = nn.ModuleList(conv_prelu(n * (i + 2), n, 1) for i in range(g - 1))
        self.downtranBlocks = nn.ModuleList(conv_prelu(n * (i + 2), n, 1) for i in range(g - 1))
        self.compress_out = conv_prelu(n * g, n, 1)

    def project(self, l0: torch.Tensor) -> torch.Tensor:
        """B x N x 32 x 32 -> B x N x 32 x 32."""
        lr_features = [l0]
        hr_features: list[torch.Tensor] = []
        for idx in range(self.num_groups):
            low = torch.cat(lr_features, dim=1)
            if idx > 0:
                low = self.uptranBlocks[idx - 1](low)
            hr_features.append(self.upBlocks[idx](low))  # B x N x 256 x 256
            high = torch.cat(hr_features, dim=1)
            if idx > 0:
                high = self.downtranBlocks[idx - 1](high)
            lr_features.append(self.downBlocks[idx](high))  # B x N x 32 x 32
        return self.compress_out(torch.cat(lr_features[1:], dim=1))


class CoarseFeedbackBlock(ProjectionCore):
    """Step 0 (`first_block`): no landmarks, no hidden state. F (B x N x 32 x 32) -> O0 (same shape)."""

    def __init__(self, num_features: int, num_groups: int) -> None:
        super().__init__(num_features, num_groups)
        self.compress_in = conv_prelu(num_features, num_features, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.project(self.compress_in(features))


class AttentiveFeedbackBlock(ProjectionCore):
    """Steps 1..T-1 (`block`, weights shared across steps).

    forward(features F, hidden O_{t-1}, heatmaps hm_{t-1}):
        F, O_{t-1}: B x N x 32 x 32; hm_{t-1}: B x 68 x 32 x 32 raw heatmaps (None for DIC-NL).
        Returns O_t: B x N x 32 x 32.

    landmark_mode "attention" (DIC): L = PReLU(1x1(cat(F, O))) then attentive fusion over the 5
    facial components of the previous heatmaps. "concat" (DIC-CL): the 5 merged component maps are
    concatenated to cat(F, O) before the 1x1 compression. "none" (DIC-NL): no landmark input.
    """

    def __init__(self, config: DICConfig) -> None:
        n = config.num_features
        super().__init__(n, config.num_groups)
        self.landmark_mode = config.landmark_mode
        extra = NUM_COMPONENTS if config.landmark_mode == "concat" else 0
        self.compress_in = conv_prelu(2 * n + extra, n, 1)
        if config.landmark_mode == "attention":
            self.fusion_block = AttentiveFusion(n, config.num_fusion_blocks)

    def forward(
        self, features: torch.Tensor, hidden: torch.Tensor, heatmaps: torch.Tensor | None
    ) -> torch.Tensor:
        x = torch.cat((features, hidden), dim=1)
        if self.landmark_mode == "none":
            return self.project(self.compress_in(x))
        if heatmaps is None:
            raise ValueError(f"landmark_mode {self.landmark_mode!r} needs the previous step's heatmaps")
        if self.landmark_mode == "concat":
            x = torch.cat((x, merge_heatmaps(heatmaps)), dim=1)
        x = self.compress_in(x)
        if self.landmark_mode == "attention":
            x = self.fusion_block(x, merge_heatmaps(heatmaps))
        return self.project(x)
