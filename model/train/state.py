"""The training-state file: everything needed to continue a run exactly, in plain tensors and dicts.

Saved with `torch.save` and read back with `torch.load(weights_only=True)`: no arbitrary object is
ever unpickled. RNG states are converted to tensors / tuples of ints for that reason.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FORMAT = "facesr-training-state"
STATE_VERSION = 1


class TrainingStateError(RuntimeError):
    """A training-state file is missing, unreadable, or does not belong to this run."""


def capture_rng_state() -> dict[str, Any]:
    """The global RNG states of torch (CPU and every CUDA device), numpy and `random`."""
    # {"bit_generator": "MT19937", "state": {"key", "pos"}, "has_gauss", "gauss"}: the legacy tuple's values
    np_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state["state"]["key"], dtype=np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "cached_gaussian": float(np_state["gauss"]),
        },
        "python": random.getstate(),
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state` (CUDA states are restored only when the device count matches)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def save_training_state(path: Path, state: dict[str, Any]) -> None:
    """Write atomically (temporary file + rename), so an interrupted save never leaves a broken file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save({"format": STATE_FORMAT, "version": STATE_VERSION, **state}, temporary)
    os.replace(temporary, path)


def load_training_state(path: Path) -> dict[str, Any]:
    """Read a training-state file with `weights_only=True`; errors say what is wrong."""
    if not path.is_file():
        raise TrainingStateError(f"no training state to resume from: {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        raise TrainingStateError(f"{path}: cannot read training state: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise TrainingStateError(f"{path}: not a facesr training-state file")
    if state.get("version") != STATE_VERSION:
        raise TrainingStateError(f"{path}: training-state version {state.get('version')} is not supported")
    return state
