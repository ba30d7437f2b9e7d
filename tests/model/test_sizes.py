"""Input size, scale and landmark count have one home: `facesr.model.config`."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from facesr.model import config as config_module
from facesr.model.config import HEATMAP_STRIDE, HR_SIZE, LR_SIZE, NUM_KEYPOINTS, SCALE, DICConfig
from facesr.model.input_policy import prepare_face
from facesr.model.landmarks import HEATMAP_SIZE, flip_landmarks, render_heatmaps
from facesr.model.preprocess import bicubic_baseline, make_lr

MODEL_DIR = Path(config_module.__file__).resolve().parent
#: A definition of one of the sizes (`LR_SIZE = 16`, `NUM_LANDMARKS: Final = 68`, ...) or a literal shape.
SIZE_DEFINITION = re.compile(
    r"^\s*(LR_SIZE|HR_SIZE|SCALE|NUM_KEYPOINTS|NUM_LANDMARKS|HEATMAP_STRIDE)\b[^=\n]*=\s*\d"
    r"|\(16, 16\)|, 16, 16\b",
    re.MULTILINE,
)


def test_the_config_reads_the_module_constants() -> None:
    config = DICConfig()
    assert (config.lr_size, config.scale, config.hr_size) == (LR_SIZE, SCALE, HR_SIZE) == (16, 8, 128)
    assert config.num_keypoints == NUM_KEYPOINTS == 68
    assert config.heatmap_size == HEATMAP_SIZE == HR_SIZE // HEATMAP_STRIDE == 32
    assert DICConfig.tiny().hr_size == HR_SIZE


def test_functions_without_a_config_default_to_the_constants() -> None:
    defaults = {
        (make_lr, "size"): LR_SIZE,
        (prepare_face, "size"): LR_SIZE,
        (prepare_face, "output_size"): HR_SIZE,
        (bicubic_baseline, "size"): HR_SIZE,
        (flip_landmarks, "width"): HR_SIZE,
        (render_heatmaps, "size"): HEATMAP_SIZE,
    }
    for (function, name), expected in defaults.items():
        assert inspect.signature(function).parameters[name].default == expected, function.__name__


def test_sizes_are_defined_in_config_only() -> None:
    found = {
        f"{path.relative_to(MODEL_DIR)}: {match.group(0).strip()}"
        for path in sorted(MODEL_DIR.rglob("*.py"))
        for match in SIZE_DEFINITION.finditer(path.read_text(encoding="utf-8"))
        if path.name != "config.py" or path.parent != MODEL_DIR
    }
    assert not found, f"sizes defined outside model/config.py: {sorted(found)}"
