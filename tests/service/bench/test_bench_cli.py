"""`facesr bench-service` refuses bad options at once, with a usage error and no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from facesr.service.cli import app


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        (["--workers", "0"], "--workers"),
        (["--window-s", "0"], "--window-s"),
        (["--max-windows", "0"], "--max-windows"),
        (["--concurrency", "1,two"], "--concurrency"),
        (["--concurrency", "0,2"], "--concurrency"),
        (["--open-fractions", ""], "--open-fractions"),
    ],
)
def test_bad_options_are_usage_errors(arguments: list[str], complaint: str, tmp_path: Path):
    result = CliRunner().invoke(app, ["bench-service", "--out", str(tmp_path), *arguments])
    assert result.exit_code == 2, result.output
    assert complaint in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "result.json").exists()


def test_a_readme_without_the_generated_section_is_refused_before_the_run(tmp_path: Path):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    result = CliRunner().invoke(app, ["bench-service", "--out", str(tmp_path / "o"), "--readme", str(readme)])
    assert result.exit_code == 2
    assert "--readme" in result.output and "no '<!-- bench-service:begin" in result.output
    assert not (tmp_path / "o").exists()
