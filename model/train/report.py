"""Write an evaluation as a JSON report, a markdown table and a picture grid.

Files written into the output folder:

* `report.json`: model, data, protocol, the mean scores per method, and every image's scores;
* `report.md`: the same means as a markdown table;
* `grid.png`: one row per face: LR (nearest-neighbour x8) | bicubic | SR step 1..T | HR. Dots are
  landmarks: red = the model's alignment branch on its own step (the external detector when the model
  has no branch), blue = the external detector on the bicubic baseline, green = ground truth on HR.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from facesr.train.evaluate import BICUBIC, HR, PAPER_DEGRADATION, Evaluation, MethodSummary, finite_or_none

REPORT_JSON = "report.json"
REPORT_MARKDOWN = "report.md"
GRID_PNG = "grid.png"

PROTOCOL = {
    "lr": PAPER_DEGRADATION.describe(),
    "baseline": "LR resized to 128x128 with PIL bicubic",
    "image_metrics": (
        "PSNR and SSIM on BT.601 Y (16 + (65.481 R + 128.553 G + 24.966 B) / 255, rounded to uint8) after "
        "cutting the border; SSIM 11x11 Gaussian sigma 1.5, K1 0.01, K2 0.03, L 255, valid filtering"
    ),
    "ssim_authors": "the same SSIM on the luma wrapped to 256 - Y, as the authors' code computes it",
    "landmark_metric": "sqrt(mean_i ||p_i - g_i||^2) / (max x - min x of the ground-truth landmarks)",
    "alignment_landmarks": "the model's own heatmaps at each step, decoded with sub-pixel refinement",
    "detector_landmarks": "external 68-point detector on the 128x128 image (resized to its 112x112 input)",
    "aggregation": "mean over images",
}

GRID_GAP = 2
HEADER_HEIGHT = 14
DOT_RADIUS = 1.2
COLOURS = {
    "model": (255, 40, 40),
    "detector": (40, 140, 255),
    "truth": (40, 220, 40),
    "background": (255, 255, 255),
    "text": (0, 0, 0),
}


def report_dict(evaluation: Evaluation) -> dict[str, Any]:
    """The JSON-able report (infinite PSNRs become the string "inf")."""

    def clean(scores: dict[str, float]) -> dict[str, float | str | None]:
        return {method: finite_or_none(value) for method, value in scores.items()}

    return {
        "model": evaluation.model,
        "data": evaluation.data,
        "landmark_detector": evaluation.detector,
        "protocol": {**PROTOCOL, "lr": evaluation.data.get("lr", PROTOCOL["lr"])},
        "methods": [
            {
                "method": row.method,
                "label": row.label,
                "psnr_y": finite_or_none(row.psnr),
                "ssim_y": row.ssim,
                "ssim_y_authors": row.ssim_authors,
                "nrmse_alignment": row.nrmse_alignment,
                "nrmse_detector": row.nrmse_detector,
            }
            for row in evaluation.summary()
        ],
        "per_image": [
            {
                "name": scores.name,
                "psnr_y": clean(scores.psnr),
                "ssim_y": clean(scores.ssim),
                "ssim_y_authors": clean(scores.ssim_authors),
                "nrmse_alignment": clean(scores.nrmse_alignment),
                "nrmse_detector": clean(scores.nrmse_detector),
            }
            for scores in evaluation.per_image
        ],
    }


def _cell(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown_table(evaluation: Evaluation) -> str:
    """Mean scores as a markdown document (title line, table, notes)."""
    rows: list[MethodSummary] = evaluation.summary()
    model, data = evaluation.model, evaluation.data
    detector = Path(evaluation.detector).name if evaluation.detector else "not run"
    title = f"`{model.get('model_id', '?')}` on `{Path(data['root']).name}` ({data['num_images']} faces)"
    lines = [
        f"# Evaluation of {title}",
        "",
        "| method | PSNR (Y) | SSIM (Y) | SSIM (Y, authors' wrap) | NRMSE, alignment branch "
        "| NRMSE, external detector |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {row.label} | {_cell(row.psnr, 2)} | {_cell(row.ssim, 4)} | {_cell(row.ssim_authors, 4)} | "
        f"{_cell(row.nrmse_alignment, 4)} | {_cell(row.nrmse_detector, 4)} |"
        for row in rows
    ]
    lines += [
        "",
        f"PSNR/SSIM on BT.601 Y with a {data['border']}-pixel border cut; "
        f"LR: {data.get('lr', PROTOCOL['lr'])}; "
        "bicubic = PIL bicubic 16->128. The authors' evaluation code scores SSIM on wrapped luma "
        "(uint8 Y x 255 = 256 - Y); that column is the one to set beside the paper's SSIM.",
        "NRMSE = RMS landmark error / ground-truth face width (x-extent of the 68 points). "
        f"External detector: {detector}.",
        "",
    ]
    return "\n".join(lines)


def _draw_points(image: np.ndarray, points: np.ndarray | None, colour: tuple[int, int, int]) -> Image.Image:
    canvas = Image.fromarray(image).convert("RGB")
    if points is not None:
        draw = ImageDraw.Draw(canvas)
        for x, y in points:
            draw.ellipse((x - DOT_RADIUS, y - DOT_RADIUS, x + DOT_RADIUS, y + DOT_RADIUS), fill=colour)
    return canvas


def _pick(store: dict[str, list[np.ndarray]], key: str, row: int) -> np.ndarray | None:
    values = store.get(key)
    return values[row] if values is not None else None


def picture_grid(evaluation: Evaluation) -> Image.Image | None:
    """LR | bicubic | SR steps | HR for the kept faces, with landmark dots; None when none was kept."""
    samples = evaluation.samples
    if not samples.names:
        return None
    steps = [method for method in evaluation.methods if method.startswith("step_")]
    titles = ["LR x8", "bicubic", *[f"step {m.removeprefix('step_')}" for m in steps], "HR"]
    tile = samples.images[HR][0].shape[0]
    width = len(titles) * (tile + GRID_GAP) - GRID_GAP
    height = HEADER_HEIGHT + len(samples.names) * (tile + GRID_GAP) - GRID_GAP
    grid = Image.new("RGB", (width, height), COLOURS["background"])
    header = ImageDraw.Draw(grid)
    for column, title in enumerate(titles):
        header.text((column * (tile + GRID_GAP) + 2, 1), title, fill=COLOURS["text"])
    for row in range(len(samples.names)):
        lr = Image.fromarray(samples.lr[row]).resize((tile, tile), Image.Resampling.NEAREST)
        tiles = [
            lr,
            _draw_points(
                samples.images[BICUBIC][row],
                _pick(samples.landmarks, f"detector/{BICUBIC}", row),
                COLOURS["detector"],
            ),
        ]
        for method in steps:
            points = _pick(samples.landmarks, f"alignment/{method}", row)
            colour = COLOURS["model"]
            if points is None:
                points = _pick(samples.landmarks, f"detector/{method}", row)
            tiles.append(_draw_points(samples.images[method][row], points, colour))
        tiles.append(_draw_points(samples.images[HR][row], samples.landmarks["gt"][row], COLOURS["truth"]))
        top = HEADER_HEIGHT + row * (tile + GRID_GAP)
        for column, image in enumerate(tiles):
            grid.paste(image, (column * (tile + GRID_GAP), top))
    return grid


def write_report(evaluation: Evaluation, out_dir: Path) -> dict[str, Path]:
    """Write `report.json`, `report.md` and `grid.png` into `out_dir`; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {"json": out_dir / REPORT_JSON, "markdown": out_dir / REPORT_MARKDOWN}
    written["json"].write_text(json.dumps(report_dict(evaluation), indent=2, allow_nan=False) + "\n", "utf-8")
    written["markdown"].write_text(markdown_table(evaluation), encoding="utf-8")
    grid = picture_grid(evaluation)
    if grid is not None:
        written["grid"] = out_dir / GRID_PNG
        grid.save(written["grid"])
    return written
