"""Frozen feature extractors for the DICGAN perceptual loss.

* `lightcnn`: the authors' choice, LightCNN-9 `features` (B x 3 x 128 x 128 -> B x 128 x 8 x 8) with
  weights from a local file: the authors' `LightCNN_feature.pth` (RGB trunk) or a LightCNN-9
  face-recognition checkpoint (grey input), whose first conv is adapted to RGB with the BT.601 luma
  weights (a grey-image conv applied to 0.299 R + 0.587 G + 0.114 B).
* `hourglass`: the front end (`pre_conv_block`) of the alignment branch of the initial DIC generator,
  frozen (B x 3 x 128 x 128 -> B x F x 32 x 32). It needs no extra file; its features are
  face-structure features learnt for landmark heatmaps, not identity features.
"""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import torch
from torch import nn

from facesr.model.generator import DICGenerator
from facesr.model.lightcnn import LightCNN9Features
from facesr.train.config import PerceptualSection

LUMA_WEIGHTS = (0.299, 0.587, 0.114)
_FIRST_CONV = "features.0.filter.weight"


class PerceptualWeightsError(ValueError):
    """The perceptual-feature weights are missing or do not fit LightCNN-9."""


def _extract_trunk_state(payload: object, path: Path) -> dict[str, torch.Tensor]:
    """Pick the LightCNN-9 trunk tensors out of a loaded file (plain, `state_dict`, DataParallel keys)."""
    if isinstance(payload, dict) and "state_dict" in payload and isinstance(payload["state_dict"], dict):
        payload = payload["state_dict"]
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise PerceptualWeightsError(f"{path}: expected a state dict of tensors")
    state = {key.removeprefix("module."): value for key, value in payload.items()}
    return {key: value for key, value in state.items() if key.startswith("features.")}


def adapt_grey_conv_to_rgb(weight: torch.Tensor) -> torch.Tensor:
    """O x 1 x k x k grey conv -> O x 3 x k x k that computes the same on the luma of an RGB input."""
    luma = torch.tensor(LUMA_WEIGHTS, dtype=weight.dtype).view(1, 3, 1, 1)
    return weight * luma


def load_lightcnn_features(path: Path) -> LightCNN9Features:
    """LightCNN-9 trunk with weights from `path` (torch.load with weights_only=True), frozen."""
    if not path.is_file():
        raise PerceptualWeightsError(f"perceptual weights file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        raise PerceptualWeightsError(f"{path}: cannot be loaded safely as weights: {exc}") from exc
    state = _extract_trunk_state(payload, path)
    first = state.get(_FIRST_CONV)
    if first is not None and first.ndim == 4 and first.shape[1] == 1:
        state[_FIRST_CONV] = adapt_grey_conv_to_rgb(first)
    network = LightCNN9Features(in_channels=3)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise PerceptualWeightsError(f"{path}: weights do not fit LightCNN-9 features: {exc}") from exc
    return network.eval().requires_grad_(False)


class HourglassFrontEnd(nn.Module):
    """A frozen copy of a DIC alignment branch's `pre_conv_block`. B x 3 x 128 x 128 -> B x F x 32 x 32."""

    def __init__(self, generator: DICGenerator) -> None:
        super().__init__()
        if generator.HG is None:
            raise PerceptualWeightsError(
                "perceptual source 'hourglass' needs a generator with an alignment branch "
                "(landmark_mode != 'none')"
            )
        self.trunk = copy.deepcopy(generator.HG.pre_conv_block).eval().requires_grad_(False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.trunk(image)

    def train(self, mode: bool = True) -> HourglassFrontEnd:
        """Always stays in eval mode (frozen)."""
        return super().train(False)


def build_feature_extractor(section: PerceptualSection, initial_generator: DICGenerator) -> nn.Module:
    """The frozen feature network that `section` selects."""
    if section.source == "lightcnn":
        if section.weights is None:
            raise PerceptualWeightsError("perceptual source 'lightcnn' needs a weights file")
        return load_lightcnn_features(section.weights)
    return HourglassFrontEnd(initial_generator)
