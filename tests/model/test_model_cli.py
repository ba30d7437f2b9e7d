"""`facesr enhance`, `facesr bench-model` as a user runs them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from facesr.model.checkpoint import ModelCard, save_checkpoint
from facesr.model.config import DICConfig
from facesr.model.generator import DICGenerator
from facesr.service.cli import app

runner = CliRunner()


def _size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(path, DICGenerator(DICConfig.tiny()), DICConfig.tiny(), ModelCard(name="tiny", config={}))
    return path


def _write_faces(folder: Path) -> None:
    rng = np.random.default_rng(0)
    (folder / "nested").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(folder / "nested" / "b.jpg")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")


def test_enhance_a_folder_with_a_broken_file(tiny_checkpoint: Path, tmp_path: Path) -> None:
    _write_faces(tmp_path / "in")
    result = runner.invoke(
        app,
        [
            "enhance",
            str(tmp_path / "in"),
            "-o",
            str(tmp_path / "out"),
            "-c",
            str(tiny_checkpoint),
            "--landmarks-json",
            "--steps",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 1, result.output
    assert "broken.png" in result.output
    assert _size(tmp_path / "out" / "a.png") == (128, 128)
    assert _size(tmp_path / "out" / "nested" / "b.png") == (128, 128)
    assert _size(tmp_path / "out" / "a.step0.png") == (128, 128)
    payload = json.loads((tmp_path / "out" / "nested" / "b.landmarks.json").read_text())
    assert len(payload["landmarks"]) == 68 and payload["resized_from"] == [40, 48]  # (width, height)


def test_enhance_single_file_succeeds(tiny_checkpoint: Path, tmp_path: Path) -> None:
    _write_faces(tmp_path / "in")
    result = runner.invoke(
        app,
        ["enhance", str(tmp_path / "in" / "a.png"), "-o", str(tmp_path / "out"), "-c", str(tiny_checkpoint)],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "a.png").is_file()


def test_enhance_reports_a_bad_checkpoint(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"junk")
    result = runner.invoke(app, ["enhance", str(bad), "-o", str(tmp_path / "o"), "-c", str(bad)])
    assert result.exit_code == 1
    assert "corrupt" in result.output


def test_bench_model_prints_a_table_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = runner.invoke(
        app,
        [
            "bench-model",
            "--config",
            "tiny",
            "--max-batch",
            "2",
            "--repeats",
            "1",
            "--device",
            "cpu",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert [row["batch_size"] for row in report["rows"]] == [1, 2]
    assert all(row["images_per_second"] > 0 for row in report["rows"])
    assert report["gflops_per_image"] > 0
    assert "| 2 |" in result.output


# -- through the console entry point (`facesr.service.cli.main`) ------------------------------------------
def _run_main(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    """Call `main()` with `facesr ARGS` as the command line; returns its exit status."""
    from facesr.service import cli

    monkeypatch.setattr(sys, "argv", ["facesr", *args])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    code = exited.value.code
    return code if isinstance(code, int) else 0 if code is None else 1


def test_enhance_keeps_its_exit_status_and_one_error_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert _run_main(monkeypatch, "enhance", str(tmp_path / "nope.png"), "-o", str(tmp_path / "o")) == 1
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nope.png'}: no such file or folder"


def _interrupt(*_args: object, **_kwargs: object) -> None:
    raise KeyboardInterrupt


def _abort(*_args: object, **_kwargs: object) -> None:
    raise typer.Abort()


def _click_error(*_args: object, **_kwargs: object) -> None:
    from facesr.service import cli

    raise cli._click_errors.ClickException("the disk\nis on fire")


@pytest.mark.parametrize(
    ("raise_it", "status", "stderr"),
    [(_interrupt, 130, ""), (_abort, 1, "error: aborted"), (_click_error, 1, "error: the disk is on fire")],
)
def test_an_interrupted_or_aborted_enhance_exits_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    raise_it: object,
    status: int,
    stderr: str,
) -> None:
    """Ctrl-C while a command runs exits with 130; an abort or another click error is one line, 1."""
    from facesr.model import files

    monkeypatch.setattr(files, "collect_inputs", raise_it)
    face = tmp_path / "a.png"
    Image.new("RGB", (16, 16)).save(face)

    assert _run_main(monkeypatch, "enhance", str(face), "-o", str(tmp_path / "o")) == status
    assert capsys.readouterr().err.strip() == stderr
    assert not (tmp_path / "o").exists()
