"""`facesr train` on the command line: a run, a resume, and clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner

from facesr.service.cli import app
from tests.model.train.conftest import merged


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_train_then_resume_from_the_command_line(tiny_config_data: dict[str, Any], tmp_path: Path) -> None:
    runner = CliRunner()
    short = write_config(tmp_path / "short.yaml", merged(tiny_config_data, {"train": {"iterations": 1}}))
    longer = write_config(tmp_path / "long.yaml", merged(tiny_config_data, {"train": {"iterations": 2}}))
    out = tmp_path / "run"
    args = ["train", "--output", str(out), "--device", "cpu", "--no-progress"]
    first = runner.invoke(app, [*args, "--config", str(short)])
    assert first.exit_code == 0, first.output
    assert "final:" in first.output and (out / "final.safetensors").is_file()
    again = runner.invoke(app, [*args, "--config", str(longer)])
    assert again.exit_code == 1 and "--resume" in again.output
    resumed = runner.invoke(app, [*args, "--config", str(longer), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "step 2" in resumed.output


def test_bad_config_exits_with_a_message(tiny_config_data: dict[str, Any], tmp_path: Path) -> None:
    bad = write_config(
        tmp_path / "bad.yaml", merged(tiny_config_data, {"optim": {"lr": 1e-4, "nesterov": True}})
    )
    result = CliRunner().invoke(app, ["train", "--config", str(bad), "--output", str(tmp_path / "r")])
    assert result.exit_code == 1
    assert "optim.nesterov" in result.output and "Traceback" not in result.output


def test_missing_data_folder_exits_with_a_message(tiny_config_data: dict[str, Any], tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "c.yaml", merged(tiny_config_data, {"data": {"root": str(tmp_path / "no-data")}})
    )
    result = CliRunner().invoke(
        app, ["train", "--config", str(config), "--output", str(tmp_path / "r"), "--device", "cpu"]
    )
    assert result.exit_code == 1 and "face folder not found" in result.output


def test_init_continues_from_any_checkpoint_with_a_fresh_schedule(
    tiny_config_data: dict[str, Any], tmp_path: Path
) -> None:
    """`--init` takes the weights of a finished run (or the bundled model) and starts a new run."""
    from facesr.model.checkpoint import load_checkpoint

    runner = CliRunner()
    config = write_config(tmp_path / "c.yaml", merged(tiny_config_data, {"train": {"iterations": 2}}))
    args = ["train", "--config", str(config), "--device", "cpu", "--no-progress"]
    first = runner.invoke(app, [*args, "--output", str(tmp_path / "first")])
    assert first.exit_code == 0, first.output
    start = tmp_path / "first" / "final.safetensors"

    second = runner.invoke(app, [*args, "--output", str(tmp_path / "second"), "--init", str(start)])
    assert second.exit_code == 0, second.output
    saved = yaml.safe_load((tmp_path / "second" / "config.yaml").read_text(encoding="utf-8"))
    assert saved["init"]["weights"] == str(start), "the run records where it started"
    assert "step 2" in second.output, "a fresh schedule from step 0"
    card = load_checkpoint(tmp_path / "second" / "final.safetensors").card
    assert card.training["config"]["init"]["weights"] == str(start)

    refused = runner.invoke(
        app, [*args, "--output", str(tmp_path / "second"), "--init", str(start), "--resume"]
    )
    assert refused.exit_code == 1 and "--init starts a new run" in refused.output
    missing = runner.invoke(
        app, [*args, "--output", str(tmp_path / "third"), "--init", str(tmp_path / "nope")]
    )
    assert missing.exit_code == 1 and "checkpoint not found" in missing.output
    assert "Traceback" not in missing.output
