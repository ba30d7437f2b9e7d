"""The work of `facesr enhance` once its outputs are planned: read, super-resolve, write (needs torch).

Inputs are read batch by batch, each by `facesr.model.files.read_face` (the API's reader and input
policy); a file that cannot be read or is refused by the policy is reported through `report` and the
run goes on. Writing stops the run at the first failure
(`OutputWriteError`), since a folder that cannot be written fails for every file alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from facesr.model.files import UnreadableImageError, read_face
from facesr.model.image_file import DecodedFace
from facesr.model.inference import FaceResult, FaceSR, landmark_points
from facesr.model.input_policy import Fit, InputTransform
from facesr.model.landmark_quality import LandmarkQuality
from facesr.model.output_plan import OutputPlan, PlannedOutput
from facesr.model.output_write import save_image, save_json

#: Receives one line for the user's error stream ("error: ..." or "warning: ...").
Report = Callable[[str], None]


class OutputWriteError(OSError):
    """A result could not be written; the message names the file and says why."""


@dataclass
class RunTally:
    """What a run did: images written (the result images, not step or JSON files), inputs that failed."""

    written: int = 0
    failed: int = 0


@dataclass(frozen=True)
class RunOptions:
    """How to run: `steps` and `landmarks` as on the command line; `replace` lets existing files go."""

    fit: Fit
    steps: bool
    landmarks: bool
    replace: bool
    batch_size: int


def _enhance(engine: FaceSR, faces: Sequence[DecodedFace], steps: bool) -> list[FaceResult]:
    """One batch of model inputs; each result carries its input's policy record."""
    results = engine.enhance_tensor(np.stack([face.lr_rgb for face in faces]), return_steps=steps)
    return [
        dataclasses.replace(result, transform=face.transform)
        for result, face in zip(results, faces, strict=True)
    ]


def landmarks_payload(
    item: PlannedOutput,
    result: FaceResult,
    transform: InputTransform | None,
    engine: FaceSR,
    quality: LandmarkQuality,
) -> dict[str, Any]:
    """The `<name>.landmarks.json` document of one result.

    Points are in output pixels (`landmarks`, with confidences) and mapped back onto the upright input
    (`landmarks_input_px`); both are None when the model's landmarks are withheld or absent. `input`
    records what the input policy did to the image; `resized_from` is kept for older readers.
    """
    points = None if quality.withheld else landmark_points(result)
    input_points = None
    if points is not None and result.landmarks is not None and transform is not None:
        mapped = transform.to_input(result.landmarks, output_size=engine.config.hr_size)
        input_points = [{"x": round(float(x), 2), "y": round(float(y), 2)} for x, y in mapped]
    return {
        "image": item.image.name,
        "source": str(item.source.path),
        "model_id": engine.model_id,
        "landmarks": points,
        "landmarks_input_px": input_points,
        "landmark_quality": quality.as_dict(),
        "input": None if transform is None else transform.as_dict(),
        "resized_from": result.resized_from,
    }


def _write(item: PlannedOutput, result: FaceResult, payload: dict[str, Any] | None, replace: bool) -> None:
    """All files of one result, the image first. Raises OutputWriteError."""
    step_images = result.steps or []
    if len(step_images) != len(item.steps) and item.steps:
        raise OutputWriteError(
            f"{len(item.steps)} step images were planned, the model gave {len(step_images)}"
        )
    try:
        target = item.image
        save_image(target, result.image, item.image_format, replace=replace)
        for target, pixels in zip(item.steps, step_images, strict=False):
            save_image(target, pixels, "PNG", replace=replace)
        if item.landmarks is not None and payload is not None:
            target = item.landmarks
            save_json(target, payload, replace=replace)
    except OSError as error:
        raise OutputWriteError(f"cannot write {target}: {error.strerror or error}") from error


def run(
    engine: FaceSR,
    plan: OutputPlan,
    options: RunOptions,
    quality: LandmarkQuality,
    report: Report,
    advance: Callable[[int], object] = lambda _count: None,
) -> RunTally:
    """Process every planned input, batch by batch.

    Args:
        engine: the loaded model; plan: from `plan_outputs`, already checked.
        options: fit, steps, landmarks, replace and batch size.
        quality: the model's landmark verdict (withheld points are not written).
        report: receives each problem and warning as one line.
        advance: called with the number of inputs finished (a progress bar).

    Returns:
        The counts of result images written and of inputs that failed.

    Raises:
        OutputWriteError: a file could not be written (the run stops there).
    """
    tally = RunTally()
    items = plan.items
    for start in range(0, len(items), options.batch_size):
        readable: list[tuple[PlannedOutput, DecodedFace]] = []
        for item in items[start : start + options.batch_size]:
            try:
                face = read_face(item.source.path, options.fit)
            except UnreadableImageError as error:
                report(f"error: {item.source.path}: {error}; skipped")
                tally.failed += 1
                advance(1)
                continue
            readable.append((item, face))
        if not readable:
            continue
        outcomes = _enhance(engine, [face for _, face in readable], options.steps)
        for (item, _), outcome in zip(readable, outcomes, strict=True):
            transform = outcome.transform
            for warning in transform.warnings if transform is not None else ():
                report(f"warning: {item.source.path}: {warning.message}")
            payload = (
                landmarks_payload(item, outcome, transform, engine, quality) if options.landmarks else None
            )
            _write(item, outcome, payload, options.replace)
            tally.written += 1
            advance(1)
    return tally
