"""Small building blocks shared by the SR branch.

The Sequential layouts (conv at index 0, activation at index 1) keep the authors' state-dict
names (`conv_in.0.weight`, `conv_in.1.weight`, ...) so their checkpoints load 1:1.
"""

from __future__ import annotations

from torch import nn

PRELU_INIT = 0.2


def conv_prelu(
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0
) -> nn.Sequential:
    """Conv2d + PReLU with one shared slope (init 0.2), as every SR-branch layer of DIC."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=True),
        nn.PReLU(num_parameters=1, init=PRELU_INIT),
    )


def deconv_prelu(
    in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int
) -> nn.Sequential:
    """ConvTranspose2d + PReLU with one shared slope (init 0.2)."""
    return nn.Sequential(
        nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=True),
        nn.PReLU(num_parameters=1, init=PRELU_INIT),
    )
