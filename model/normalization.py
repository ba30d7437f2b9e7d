"""The one pixel convention at the model boundary.

Outside the model: uint8 RGB, N x H x W x 3. Inside: float32 N x 3 x H x W, RGB in [0, 1] minus
`RGB_MEAN` (std 1), exactly as the authors' loader (multiply by float32(1/255), not divide).
"""

from __future__ import annotations

import numpy as np
import torch

RGB_MEAN: tuple[float, float, float] = (0.509, 0.424, 0.378)
_INV_255 = np.float32(1.0 / 255.0)


def _mean_tensor(like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(RGB_MEAN, dtype=like.dtype, device=like.device).view(1, 3, 1, 1)


def images_to_tensor(
    images: np.ndarray | torch.Tensor, device: torch.device | str | None = None
) -> torch.Tensor:
    """uint8 RGB images -> model input.

    Args:
        images: N x H x W x 3 uint8 (numpy or torch).
        device: where to put the result (default: CPU, or the tensor's own device).

    Returns:
        N x 3 x H x W float32, RGB in [0, 1] minus `RGB_MEAN` (values in about [-0.51, 0.63]).
    """
    # A copy: inputs are often read-only views (np.asarray of a PIL image), which torch cannot wrap.
    tensor = torch.from_numpy(np.array(images, copy=True)) if isinstance(images, np.ndarray) else images
    if tensor.dtype != torch.uint8 or tensor.ndim != 4 or tensor.shape[-1] != 3:
        raise ValueError(f"expected N x H x W x 3 uint8 images, got {tuple(tensor.shape)} {tensor.dtype}")
    if device is not None and torch.device(device).type == "cuda" and tensor.device.type == "cpu":
        # Page-locked host memory: the copy to the GPU is one DMA transfer that does not block the host.
        tensor = tensor.pin_memory().to(device, non_blocking=True)
    elif device is not None:
        tensor = tensor.to(device)
    x = tensor.permute(0, 3, 1, 2).to(torch.float32).mul_(float(_INV_255))
    return x - _mean_tensor(x)


def tensor_to_images(tensor: torch.Tensor) -> np.ndarray:
    """Model output -> uint8 RGB images, the authors' post-processing.

    Args:
        tensor: N x 3 x H x W in mean-subtracted space (any float dtype, any device).

    Returns:
        N x H x W x 3 uint8: add the mean, x255, clamp to [0, 255], round half to even.
    """
    x = tensor.detach().to(torch.float32)
    x = (x + _mean_tensor(x)).mul(255.0).clamp(0.0, 255.0).round()
    return x.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
