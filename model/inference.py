"""The inference engine used by the CLI and the service: checkpoint in, uint8 faces and landmarks out."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from facesr.model.checkpoint import ModelCard, load_generator
from facesr.model.checkpoints import DEFAULT_CHECKPOINT
from facesr.model.config import DICConfig
from facesr.model.device import dtype_name, resolve_device, resolve_dtype
from facesr.model.errors import CheckpointError, InputImageError
from facesr.model.generator import DICGenerator, count_parameters
from facesr.model.input_policy import DEFAULT_FIT, Fit, InputTransform, prepare_face
from facesr.model.landmarks import decode_heatmaps, landmark_confidence
from facesr.model.normalization import images_to_tensor, tensor_to_images
from facesr.model.runtime import GeneratorRunner, GraphMode, bucket_sizes, default_graph

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FaceResult:
    """One super-resolved face.

    image: 128 x 128 x 3 uint8 RGB (final step).
    landmarks: 68 x 2 float32 (x, y) in output pixels, or None for a model without landmark branch.
    steps: every step's 128 x 128 x 3 uint8 image when asked, else None.
    confidence: 68 float32 in [0, 1], each point's heatmap peak (None without landmarks).
    transform: what the input policy did to the input (`facesr.model.input_policy`), None for inputs
        given at the model's size to `enhance_tensor`.
    """

    image: np.ndarray
    landmarks: np.ndarray | None
    steps: list[np.ndarray] | None = None
    confidence: np.ndarray | None = None
    transform: InputTransform | None = None

    @property
    def resized_from(self) -> tuple[int, int] | None:
        """The input's (width, height) when it was not used as it was, else None."""
        return None if self.transform is None else self.transform.resized_from


def _weights_digest(generator: DICGenerator) -> str:
    digest = hashlib.sha256()
    for key, tensor in generator.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


class FaceSR:
    """A DIC generator on a device, ready for batches of faces.

    Half-precision dtypes run the fp32 weights under autocast; when an output is not finite the batch
    is run again in fp32 (counted in `fp32_fallbacks`). ``graph`` says how the network is executed
    (`facesr.model.runtime`: eager, trace or compile; None: trace on CPU in fp32, else eager);
    ``max_batch_size`` bounds the batch buckets of ``compile``.
    """

    def __init__(
        self,
        generator: DICGenerator,
        card: ModelCard,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        weights_sha256: str | None = None,
        graph: GraphMode | None = None,
        max_batch_size: int = 8,
    ) -> None:
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.generator = generator.to(self.device).eval()
        for parameter in self.generator.parameters():
            parameter.requires_grad_(False)
        self.graph: GraphMode = graph or default_graph(self.device, self.dtype)
        self.runner = GeneratorRunner(
            self.generator, self.device, self.graph, dtype=self.dtype, buckets=bucket_sizes(max_batch_size)
        )
        self.card = card
        self.config: DICConfig = generator.config
        sha = weights_sha256 or _weights_digest(generator)
        self.model_id = f"{card.name}-{sha[:12]}"
        self.fp32_fallbacks = 0

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        graph: GraphMode | None = None,
        max_batch_size: int = 8,
    ) -> FaceSR:
        """Load a facesr checkpoint (None = the bundled default)."""
        path = Path(path) if path is not None else DEFAULT_CHECKPOINT
        if path == DEFAULT_CHECKPOINT and not path.is_file():
            raise CheckpointError(
                f"the bundled default checkpoint is missing ({path}); pass a checkpoint path"
            )
        loaded = load_generator(path)
        return cls(
            loaded.generator,
            loaded.card,
            device=device,
            dtype=dtype,
            weights_sha256=loaded.sha256,
            graph=graph,
            max_batch_size=max_batch_size,
        )

    @classmethod
    def from_config(
        cls,
        config: DICConfig,
        *,
        seed: int = 0,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        name: str = "random",
        graph: GraphMode | None = None,
        max_batch_size: int = 8,
    ) -> FaceSR:
        """Random weights (PyTorch default init, seeded): for tests and benchmarks, not for faces."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            generator = DICGenerator(config)
        card = ModelCard(
            name=name,
            description="randomly initialised weights (tests and benchmarks only)",
            config=config.to_dict(),
            parameters=count_parameters(generator),
            provenance=f"torch.manual_seed({seed})",
        )
        return cls(generator, card, device=device, dtype=dtype, graph=graph, max_batch_size=max_batch_size)

    # -- inference -------------------------------------------------------------------------------
    def enhance(
        self,
        images: Sequence[np.ndarray | Image.Image],
        *,
        return_steps: bool = False,
        fit: Fit = DEFAULT_FIT,
    ) -> list[FaceResult]:
        """Super-resolve upright faces of any size, following the input policy.

        Inputs that are not at the model's input size (16 x 16) are made square (``fit``: centre crop or
        edge padding) and resized exactly as the training LR images (`facesr.model.input_policy`).
        Each result's `transform` records what was done; too small an input raises `InputTooSmallError`.
        """
        if len(images) == 0:
            return []
        config = self.config
        prepared = [
            prepare_face(image, fit=fit, size=config.lr_size, output_size=config.hr_size) for image in images
        ]
        batch = np.stack([face.lr_rgb for face in prepared])
        results = self.enhance_tensor(batch, return_steps=return_steps)
        return [
            dataclasses.replace(result, transform=face.transform)
            for result, face in zip(results, prepared, strict=True)
        ]

    def enhance_tensor(self, lr: np.ndarray, *, return_steps: bool = False) -> list[FaceResult]:
        """Super-resolve a batch already at the model's input size.

        Args:
            lr: N x s x s x 3 uint8 RGB, s = `config.lr_size` (16).
        """
        lr = np.asarray(lr)
        side = self.config.lr_size
        if lr.dtype != np.uint8 or lr.ndim != 4 or lr.shape[1:] != (side, side, 3):
            raise InputImageError(f"expected N x {side} x {side} x 3 uint8, got {lr.shape} {lr.dtype}")
        if lr.shape[0] == 0:
            return []
        sr_steps, heatmaps = self._forward(images_to_tensor(lr, self.device))
        final = tensor_to_images(sr_steps[-1])
        steps = [tensor_to_images(step) for step in sr_steps] if return_steps else None
        landmarks = decode_heatmaps(heatmaps).cpu().numpy() if heatmaps is not None else None
        confidence = landmark_confidence(heatmaps).cpu().numpy() if heatmaps is not None else None
        return [
            FaceResult(
                image=final[i],
                landmarks=None if landmarks is None else landmarks[i],
                steps=None if steps is None else [step[i] for step in steps],
                confidence=None if confidence is None else confidence[i],
            )
            for i in range(lr.shape[0])
        ]

    @torch.inference_mode()
    def _forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Mean-subtracted B x 3 x 16 x 16 -> (every step's SR, final heatmaps or None)."""
        if self.dtype != torch.float32:
            with torch.autocast(device_type=self.device.type, dtype=self.dtype):
                sr_steps, heatmap_steps = self.runner(x)
            finite = all(torch.isfinite(t).all() for t in (*sr_steps, *heatmap_steps))
            if finite:
                return [t.float() for t in sr_steps], heatmap_steps[-1].float() if heatmap_steps else None
            self.fp32_fallbacks += 1
            log.warning("non-finite %s output; re-running the batch in fp32", dtype_name(self.dtype))
            sr_steps, heatmap_steps = self.generator(x)  # eager: a graph compiled under autocast is not fp32
            return list(sr_steps), heatmap_steps[-1] if heatmap_steps else None
        sr_steps, heatmap_steps = self.runner(x)
        return sr_steps, heatmap_steps[-1] if heatmap_steps else None

    def describe(self) -> dict[str, object]:
        """A short JSON-able description (model id, device, dtype, parameters)."""
        return {
            "model_id": self.model_id,
            "name": self.card.name,
            "device": str(self.device),
            "dtype": dtype_name(self.dtype),
            "graph": self.graph,
            "parameters": count_parameters(self.generator),
        }


def landmark_points(result: FaceResult) -> list[dict[str, float]] | None:
    """A result's landmarks as JSON-able points: `{"x", "y", "confidence"}` (2 and 4 decimals)."""
    if result.landmarks is None:
        return None
    if result.confidence is None:
        raise ValueError("a result with landmarks must carry their confidences")
    return [
        {"x": round(float(x), 2), "y": round(float(y), 2), "confidence": round(float(c), 4)}
        for (x, y), c in zip(result.landmarks, result.confidence, strict=True)
    ]
