"""Evaluate a DIC checkpoint on an aligned test set (the DIC paper's protocol).

For every 128 x 128 HR face of the set:

1. LR = HR resized to 16 x 16 with PIL bicubic (antialiased), as the paper builds its inputs and as
   training and serving make theirs (`facesr.model.preprocess.make_lr`);
2. the baseline is LR resized back to 128 x 128 with PIL bicubic (`preprocess.bicubic_baseline`);
3. the model super-resolves LR; every step's output is post-processed to uint8 (the authors' way);
4. PSNR / SSIM on Y (see `facesr.train.metrics`) for the baseline and every step, plus SSIM with the
   authors' luma wrap (what their evaluation code computes);
5. landmark NRMSE (normalised by the ground truth's face width) of the model's own alignment branch at
   every step (the paper's Tables 3-4), and, when a detector is given, of the external detector run
   on the baseline, on every step and on HR itself (the paper's Table 2 method; HR is its floor).

Scores are means over images. The test set is a face folder (`HR/<name>` PNG or JPEG, 128 x 128,
`landmarks68.npy` and `list.txt`), read by `facesr.train.face_folder.FaceFolder` as the training data.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from facesr.model.config import HR_SIZE, LR_SIZE
from facesr.model.inference import FaceSR
from facesr.model.landmarks import decode_heatmaps
from facesr.model.normalization import images_to_tensor, tensor_to_images
from facesr.model.preprocess import bicubic_baseline, make_lr
from facesr.train.face_folder import FaceFolder
from facesr.train.landmark_detector import OnnxLandmarkDetector
from facesr.train.metrics import DEFAULT_BORDER, landmark_nrmse, psnr_y, ssim_y

BICUBIC = "bicubic"
HR = "hr"


class EvaluationError(RuntimeError):
    """The run configuration cannot be used (problems of the test set itself are `DatasetError`s)."""


def step_key(step: int) -> str:
    """Method key of SR step `step` (1-based): "step_1", ..."""
    return f"step_{step}"


# -- image making ----------------------------------------------------------------------------------


RESAMPLING = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "box": Image.Resampling.BOX,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class Degradation:
    """How the LR test inputs are made from HR: the paper's (PIL bicubic) or a shifted distribution.

    kernel: PIL resampling filter of the HR -> LR downscale (one of `RESAMPLING`); "bicubic" is the
        training degradation (`facesr.model.preprocess.make_lr`).
    jpeg_quality: when set, each LR face is JPEG-compressed at this quality (1-95) after downscaling.
    """

    kernel: str = "bicubic"
    jpeg_quality: int | None = None

    def __post_init__(self) -> None:
        if self.kernel not in RESAMPLING:
            raise EvaluationError(f"unknown LR kernel {self.kernel!r}; choose from {', '.join(RESAMPLING)}")
        if self.jpeg_quality is not None and not 1 <= self.jpeg_quality <= 95:
            raise EvaluationError(f"JPEG quality must be within 1-95, got {self.jpeg_quality}")

    @property
    def is_paper(self) -> bool:
        return self.kernel == "bicubic" and self.jpeg_quality is None

    def describe(self) -> str:
        text = f"HR {HR_SIZE}x{HR_SIZE} resized to {LR_SIZE}x{LR_SIZE} with PIL {self.kernel} (antialiased)"
        if self.jpeg_quality is not None:
            text += f", then JPEG-compressed at quality {self.jpeg_quality}"
        return text

    def apply(self, hr: np.ndarray, size: int = LR_SIZE) -> np.ndarray:
        """N x 128 x 128 x 3 uint8 RGB -> N x size x size x 3 uint8 RGB (size: the model's LR side, 16)."""
        lr = make_lr(hr, size, resample=RESAMPLING[self.kernel])
        if self.jpeg_quality is None:
            return lr
        compressed = []
        for face in lr:
            buffer = io.BytesIO()
            Image.fromarray(face).save(buffer, format="JPEG", quality=self.jpeg_quality)
            with Image.open(buffer) as decoded:
                compressed.append(np.asarray(decoded.convert("RGB")))
        return np.stack(compressed)


PAPER_DEGRADATION = Degradation()


@dataclass(frozen=True)
class ModelOutputs:
    """One batch through the generator.

    steps: T arrays N x 128 x 128 x 3 uint8 (index -1 is the final output).
    landmarks: T arrays N x 68 x 2 float32 (x, y) HR pixels from the alignment branch, or empty when
        the model has no alignment branch (DIC-NL).
    """

    steps: list[np.ndarray]
    landmarks: list[np.ndarray]


@torch.inference_mode()
def run_generator(engine: FaceSR, lr: np.ndarray) -> ModelOutputs:
    """Every step's SR image and alignment-branch landmarks for N x 16 x 16 x 3 uint8 LR faces (fp32)."""
    sr_steps, heatmap_steps = engine.generator(images_to_tensor(lr, engine.device))
    return ModelOutputs(
        steps=[tensor_to_images(step) for step in sr_steps],
        landmarks=[decode_heatmaps(heatmaps).cpu().numpy() for heatmaps in heatmap_steps],
    )


# -- scores ----------------------------------------------------------------------------------------


@dataclass
class ImageScores:
    """Per-image scores, keyed by method ("bicubic", "step_1", ..., "hr")."""

    name: str
    psnr: dict[str, float] = field(default_factory=dict)
    ssim: dict[str, float] = field(default_factory=dict)
    ssim_authors: dict[str, float] = field(default_factory=dict)
    nrmse_alignment: dict[str, float] = field(default_factory=dict)
    nrmse_detector: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodSummary:
    """Mean scores of one method over the test set (None where the metric does not apply)."""

    method: str
    label: str
    psnr: float | None
    ssim: float | None
    ssim_authors: float | None
    nrmse_alignment: float | None
    nrmse_detector: float | None


@dataclass
class GridSamples:
    """The first few faces with every image and landmark set, for the picture grid.

    lr: 16 x 16 x 3 uint8 per face.
    images: method ("bicubic", "step_t", "hr") -> 128 x 128 x 3 uint8 per face.
    landmarks: "gt", "alignment/<method>" or "detector/<method>" -> 68 x 2 (x, y) per face.
    """

    names: list[str] = field(default_factory=list)
    lr: list[np.ndarray] = field(default_factory=list)
    images: dict[str, list[np.ndarray]] = field(default_factory=dict)
    landmarks: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def keep(
        self, name: str, lr: np.ndarray, images: dict[str, np.ndarray], landmarks: dict[str, np.ndarray]
    ) -> None:
        """Append one face (every dict holds that face's entries)."""
        self.names.append(name)
        self.lr.append(lr)
        for key, image in images.items():
            self.images.setdefault(key, []).append(image)
        for key, points in landmarks.items():
            self.landmarks.setdefault(key, []).append(points)


@dataclass
class Evaluation:
    """Everything a run measured."""

    model: dict[str, Any]
    data: dict[str, Any]
    methods: list[str]  # "bicubic", "step_1", ..., "step_T", "hr"
    per_image: list[ImageScores]
    detector: str | None
    samples: GridSamples

    @property
    def num_steps(self) -> int:
        return sum(method.startswith("step_") for method in self.methods)

    def label(self, method: str) -> str:
        if method == BICUBIC:
            return "Bicubic"
        if method == HR:
            return "HR (reference)"
        step = int(method.removeprefix("step_"))
        return f"SR step {step}" + (" (final)" if step == self.num_steps else "")

    def summary(self) -> list[MethodSummary]:
        """Mean of each metric per method, in table order."""
        return [
            MethodSummary(
                method=method,
                label=self.label(method),
                psnr=_mean([s.psnr.get(method) for s in self.per_image]),
                ssim=_mean([s.ssim.get(method) for s in self.per_image]),
                ssim_authors=_mean([s.ssim_authors.get(method) for s in self.per_image]),
                nrmse_alignment=_mean([s.nrmse_alignment.get(method) for s in self.per_image]),
                nrmse_detector=_mean([s.nrmse_detector.get(method) for s in self.per_image]),
            )
            for method in self.methods
        ]


def _mean(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return float(np.mean(present)) if present else None


def _batches(total: int, batch_size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, batch_size):
        yield start, min(start + batch_size, total)


@dataclass(frozen=True)
class _BatchOutputs:
    """One batch of the protocol: method -> N images, and landmark sets keyed by method."""

    lr: np.ndarray  # N x 16 x 16 x 3 uint8
    images: dict[str, np.ndarray]  # "bicubic", "step_t" -> N x 128 x 128 x 3 uint8
    aligned: dict[str, np.ndarray]  # "step_t" -> N x 68 x 2 (empty without an alignment branch)
    detected: dict[str, np.ndarray]  # "bicubic", "step_t", "hr" -> N x 68 x 2 (empty without detector)


def _run_batch(
    engine: FaceSR,
    hr: np.ndarray,
    steps: list[str],
    detector: OnnxLandmarkDetector | None,
    degradation: Degradation,
) -> _BatchOutputs:
    lr = degradation.apply(hr, engine.config.lr_size)
    outputs = run_generator(engine, lr)
    baseline = bicubic_baseline(lr, engine.config.hr_size)
    images = {BICUBIC: baseline, **dict(zip(steps, outputs.steps, strict=True))}
    aligned = dict(zip(steps, outputs.landmarks, strict=True)) if outputs.landmarks else {}
    detected = {}
    if detector is not None:
        detected = {method: detector.detect(batch) for method, batch in images.items()}
        detected[HR] = detector.detect(hr)
    return _BatchOutputs(lr, images, aligned, detected)


def _score_image(
    name: str, index: int, hr: np.ndarray, truth: np.ndarray, batch: _BatchOutputs, border: int
) -> ImageScores:
    """Scores of face `index` of a batch against its HR image and ground-truth landmarks."""
    scores = ImageScores(name)
    for method, images in batch.images.items():
        scores.psnr[method] = psnr_y(images[index], hr, border=border)
        scores.ssim[method] = ssim_y(images[index], hr, border=border)
        scores.ssim_authors[method] = ssim_y(images[index], hr, border=border, authors_wrap=True)
    for method, points in batch.aligned.items():
        scores.nrmse_alignment[method] = landmark_nrmse(points[index], truth)
    for method, points in batch.detected.items():
        scores.nrmse_detector[method] = landmark_nrmse(points[index], truth)
    return scores


def evaluate(
    engine: FaceSR,
    dataset: FaceFolder,
    *,
    detector: OnnxLandmarkDetector | None = None,
    batch_size: int = 16,
    grid_images: int = 4,
    border: int = DEFAULT_BORDER,
    progress: bool = True,
    degradation: Degradation = PAPER_DEGRADATION,
) -> Evaluation:
    """Run the protocol of this module's docstring.

    Args:
        engine: the model (run in fp32 on `engine.device`).
        dataset: the test set (its images must be the model's output size).
        detector: optional external landmark detector (scores bicubic, every step and HR).
        batch_size: faces per generator call.
        grid_images: how many leading faces to keep for the picture grid.
        border: pixels cut from each side before PSNR / SSIM (the scale, 8).
        progress: show a tqdm bar on stderr.
        degradation: how LR inputs are made (default: the paper's PIL bicubic).
    """
    if batch_size < 1:
        raise EvaluationError(f"batch size must be at least 1, got {batch_size}")
    steps = [step_key(t + 1) for t in range(engine.config.num_steps)]
    per_image: list[ImageScores] = []
    samples = GridSamples()
    batches = list(_batches(len(dataset), batch_size))
    for start, stop in tqdm(batches, desc="evaluate", unit="batch", disable=not progress):
        hr = dataset.read_images(start, stop)
        truth = dataset.landmarks[start:stop]
        batch = _run_batch(engine, hr, steps, detector, degradation)
        for i in range(stop - start):
            name = dataset.names[start + i]
            per_image.append(_score_image(name, i, hr[i], truth[i], batch, border))
            if len(samples.names) < grid_images:
                images = {HR: hr[i], **{method: images[i] for method, images in batch.images.items()}}
                landmarks = {"gt": truth[i]}
                landmarks |= {f"alignment/{m}": points[i] for m, points in batch.aligned.items()}
                landmarks |= {f"detector/{m}": points[i] for m, points in batch.detected.items()}
                samples.keep(name, batch.lr[i], images, landmarks)
    return Evaluation(
        model=engine.describe() | {"card_name": engine.card.name, "config": engine.config.to_dict()},
        data={
            "root": str(dataset.root),
            "num_images": len(dataset),
            "border": border,
            "lr": degradation.describe(),
        },
        methods=[BICUBIC, *steps, HR],
        per_image=per_image,
        detector=str(detector.model_path) if detector is not None else None,
        samples=samples,
    )


def finite_or_none(value: float | None) -> float | str | None:
    """JSON-safe number: infinities become the string "inf" (PSNR of identical images)."""
    if value is None or math.isfinite(value):
        return value
    return "inf" if value > 0 else "-inf"
