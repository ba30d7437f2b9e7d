"""`facesr release`: fp16 weights with the test-set evaluation in the card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from facesr.cli import app
from facesr.model.checkpoint import ModelCard, load_checkpoint, save_checkpoint
from facesr.model.config import DICConfig
from facesr.model.generator import DICGenerator

runner = CliRunner()


@pytest.fixture
def trained(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "best.safetensors"
    card = ModelCard(name="run", config={}, metrics={"validation": {"psnr_y": 25.0}}, licence="research only")
    save_checkpoint(path, DICGenerator(DICConfig.tiny()), DICConfig.tiny(), card)
    return path


def _report(tmp_path: Path, model_id: str) -> Path:
    report = {
        "model": {"model_id": model_id},
        "data": {"root": "somewhere/helen-50", "num_images": 50, "border": 8},
        "landmark_detector": "models/pfld68.onnx",
        "protocol": "Y BT.601, 8 px border",
        "methods": [{"method": "bicubic", "psnr_y": 23.8}, {"method": "step_4", "psnr_y": 24.9}],
    }
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    return path


def test_release_writes_fp16_with_the_evaluation(trained: Path, tmp_path: Path) -> None:
    sha = load_checkpoint(trained).sha256
    report = _report(tmp_path, f"run-{sha[:12]}")
    out = tmp_path / "default.safetensors"
    result = runner.invoke(
        app, ["release", str(trained), "--report", str(report), "-o", str(out), "--name", "dic"]
    )
    assert result.exit_code == 0, result.output
    released = load_checkpoint(out)
    assert released.card.name == "dic"
    assert released.card.licence == "research only"
    assert released.card.metrics["validation"] == {"psnr_y": 25.0}
    evaluation = released.card.metrics["evaluation"]
    assert evaluation["test_set"] == "helen-50" and evaluation["num_images"] == 50
    assert evaluation["landmark_detector"] == "pfld68.onnx"
    assert evaluation["methods"][1] == {"method": "step_4", "psnr_y": 24.9}
    assert out.stat().st_size < 0.6 * trained.stat().st_size
    original = load_checkpoint(trained).state_dict["conv_in.0.weight"]
    torch.testing.assert_close(released.state_dict["conv_in.0.weight"], original, atol=1e-3, rtol=1e-3)


def test_release_refuses_a_report_of_another_model(trained: Path, tmp_path: Path) -> None:
    report = _report(tmp_path, "run-000000000000")
    out = tmp_path / "default.safetensors"
    result = runner.invoke(app, ["release", str(trained), "--report", str(report), "-o", str(out)])
    assert result.exit_code == 1
    assert "not" in result.output and "evaluate" in result.output
    assert not out.exists()
