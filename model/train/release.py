"""Turning a trained checkpoint plus its test-set evaluation into a servable release.

The release is the same safetensors format, stored in fp16 (half the size; loading returns fp32), with
the evaluation's mean scores written into the model card so `GET /v1/models` shows them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from facesr.model.checkpoint import ModelCard, load_checkpoint, save_checkpoint
from facesr.model.errors import CheckpointError
from facesr.model.landmark_quality import final_alignment_nrmse, landmark_summary
from facesr.train.evaluate import PAPER_DEGRADATION


def _evaluation_summary(report: dict[str, Any], test_set: str) -> dict[str, Any]:
    try:
        methods = report["methods"]
        num_images = report["data"]["num_images"]
    except (KeyError, TypeError) as error:
        raise CheckpointError(f"not a `facesr evaluate` report (missing {error})") from error
    return {
        "test_set": test_set,
        "num_images": num_images,
        "protocol": report.get("protocol"),
        "landmark_detector": Path(report["landmark_detector"]).name
        if report.get("landmark_detector")
        else None,
        "methods": methods,
    }


PAPER_LR = PAPER_DEGRADATION.describe()


def release_checkpoint(
    source: str | Path,
    report_path: str | Path,
    destination: str | Path,
    *,
    name: str | None = None,
    test_set: str = "helen-50",
    description: str | None = None,
    dtype: torch.dtype = torch.float16,
) -> ModelCard:
    """Write `destination`: the weights of `source` (in `dtype`) with the evaluation in the card.

    The report must be of this very checkpoint (its model id carries the file's digest), so a card
    can never show another model's scores.
    """
    loaded = load_checkpoint(source)
    if loaded.card.training.get("stage") == "align":
        raise CheckpointError(
            f"{source} comes from an align run: only its alignment branch is trained; train DIC from it "
            "(--init-alignment) and release that"
        )
    report = json.loads(Path(report_path).read_text("utf-8"))
    protocol = report.get("protocol")
    lr_protocol = protocol.get("lr", PAPER_LR) if isinstance(protocol, dict) else PAPER_LR
    if lr_protocol != PAPER_LR:
        raise CheckpointError(
            f"{report_path} was measured on shifted inputs ({lr_protocol}); a card records the test "
            "set's own protocol: evaluate without --lr-kernel / --lr-jpeg-quality"
        )
    model_id = str(report.get("model", {}).get("model_id", ""))
    if not model_id.endswith(loaded.sha256[:12]):
        raise CheckpointError(
            f"{report_path} evaluates {model_id or 'an unknown model'}, not {source} "
            f"(weights {loaded.sha256[:12]}); run `facesr evaluate --checkpoint {source}` first"
        )
    metrics = dict(loaded.card.metrics)
    metrics["evaluation"] = _evaluation_summary(report, test_set)
    final_nrmse = final_alignment_nrmse(metrics["evaluation"]["methods"])
    if final_nrmse is not None:
        metrics["landmarks"] = {
            **landmark_summary(final_nrmse, test_set),
            "num_images": metrics["evaluation"]["num_images"],
        }
    else:
        metrics.pop("landmarks", None)
    update: dict[str, Any] = {"metrics": metrics}
    if name is not None:
        update["name"] = name
    if description is not None:
        update["description"] = description
    card = ModelCard.model_validate({**loaded.card.model_dump(), **update})
    return save_checkpoint(destination, loaded.state_dict, loaded.config, card, dtype=dtype)
