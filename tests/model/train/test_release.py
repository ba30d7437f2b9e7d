"""`facesr release`: fp16 weights with the test-set evaluation in the card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from facesr.model.checkpoint import ModelCard, load_checkpoint, save_checkpoint
from facesr.model.config import DICConfig
from facesr.model.generator import DICGenerator
from facesr.service.cli import app

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


def _write_report(tmp_path: Path, model_id: str, *, final_nrmse: float | None, lr: str | None = None) -> Path:
    path = _report(tmp_path, model_id)
    report = json.loads(path.read_text())
    report["methods"] = [
        {"method": "bicubic", "psnr_y": 23.8, "nrmse_alignment": None},
        {"method": "step_1", "psnr_y": 24.5, "nrmse_alignment": 0.3},
        {"method": "step_2", "psnr_y": 24.9, "nrmse_alignment": final_nrmse},
    ]
    if lr is not None:
        report["protocol"] = {"lr": lr}
    path.write_text(json.dumps(report))
    return path


@pytest.mark.parametrize(("final_nrmse", "passed"), [(0.048, True), (0.94, False)])
def test_release_records_the_landmark_verdict_of_the_final_step(
    trained: Path, tmp_path: Path, final_nrmse: float, passed: bool
) -> None:
    from facesr.model.landmark_quality import landmark_quality

    sha = load_checkpoint(trained).sha256
    report = _write_report(tmp_path, f"run-{sha[:12]}", final_nrmse=final_nrmse)
    out = tmp_path / "default.safetensors"
    result = runner.invoke(app, ["release", str(trained), "--report", str(report), "-o", str(out)])
    assert result.exit_code == 0, result.output
    card = load_checkpoint(out).card
    assert card.metrics["landmarks"]["nrmse"] == pytest.approx(final_nrmse)
    assert card.metrics["landmarks"]["passed"] is passed and card.metrics["landmarks"]["num_images"] == 50
    assert landmark_quality(card).status == ("passed" if passed else "failed")


def test_release_refuses_reports_on_shifted_inputs(trained: Path, tmp_path: Path) -> None:
    sha = load_checkpoint(trained).sha256
    shifted = "HR 128x128 resized to 16x16 with PIL box (antialiased), then JPEG-compressed at quality 50"
    report = _write_report(tmp_path, f"run-{sha[:12]}", final_nrmse=0.05, lr=shifted)
    out = tmp_path / "default.safetensors"
    result = runner.invoke(app, ["release", str(trained), "--report", str(report), "-o", str(out)])
    assert result.exit_code == 1 and "shifted inputs" in result.output and not out.exists()


def test_release_refuses_an_align_stage_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "align.safetensors"
    card = ModelCard(name="align", config={}, training={"stage": "align"})
    save_checkpoint(path, DICGenerator(DICConfig.tiny()), DICConfig.tiny(), card)
    report = _write_report(tmp_path, f"align-{load_checkpoint(path).sha256[:12]}", final_nrmse=0.05)
    out = tmp_path / "default.safetensors"
    result = runner.invoke(app, ["release", str(path), "--report", str(report), "-o", str(out)])
    assert result.exit_code == 1 and "align run" in result.output and not out.exists()
