"""Device and dtype choice for inference: CUDA when present, never half precision on the CPU."""

from __future__ import annotations

import torch

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """None or "auto" -> CUDA if available, else CPU; anything else is taken as given (and checked)."""
    if device is None or (isinstance(device, str) and device.lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {resolved} requested but CUDA is not available")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """ "fp32" / "bf16" / "fp16" (or a torch dtype; None = fp32). Half precision is refused on CPU."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str):
        if dtype.lower() not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype.lower()]
    if dtype not in DTYPES.values():
        raise ValueError(f"unsupported dtype {dtype}")
    if dtype != torch.float32 and device.type != "cuda":
        raise ValueError(f"{dtype} runs only on CUDA; use fp32 on {device.type}")
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    """torch dtype -> "fp32" / "bf16" / "fp16"."""
    return {v: k for k, v in DTYPES.items()}[dtype]
