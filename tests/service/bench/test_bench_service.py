"""`facesr bench-service` end to end, short: both modes started for real, swept, compared, reported.

This is the CI smoke of the harness. It asserts that the run is complete and self-consistent, not how
fast anything is (speed targets are read from the full run's tables, see benchmarks/README.md).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from facesr.service.bench import report

pytestmark = pytest.mark.redis


def test_a_short_run_measures_both_modes_against_the_raw_model(tiny_checkpoint: Path, tmp_path: Path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{report.README_BEGIN}\nold\n{report.README_END}\n")
    out = tmp_path / "results"
    command = [
        *(sys.executable, "-m", "facesr.service.cli", "bench-service", "--out", str(out)),
        *("--checkpoint", str(tiny_checkpoint), "--modes", "embedded,redis", "--concurrency", "1,2"),
        *("--window-s", "0.5", "--max-windows", "3", "--warmup-s", "0.3", "--open-fractions", "0.5,1.5"),
        *("--open-duration-s", "1", "--raw-seconds", "0.2", "--samples", "3", "--readme", str(readme)),
    ]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]

    result = json.loads((out / "result.json").read_text())
    assert set(result["modes"]) == {"embedded", "redis"}
    assert [(row["mode"], row["concurrency"]) for row in result["closed"]] == [
        ("embedded", 1), ("embedded", 2), ("redis", 1), ("redis", 2),
    ]  # fmt: skip
    for row in result["closed"]:
        assert row["req_per_s"] > 0 and row["errors"] == 0
        assert row["mean_batch"] is not None and 1 <= row["mean_batch"] <= result["layout"]["max_batch_size"]
        assert row["model_ms"] > 0  # the worker's own phase timings were read
    assert len(result["open"]) == 4 and all(row["requests"] > 0 for row in result["open"])
    assert result["outputs"] == {"checked": 6, "identical": 6, "max_abs_diff": 0}
    layout = result["layout"]
    assert layout["chosen_by"] == "measured" and layout["runners"] >= 1
    assert result["raw"][0]["batch_size"] == 1
    assert result["single_core"]["faces_per_second"] > 0
    quantities = {(row["mode"], row["quantity"]) for row in result["targets"]}
    assert ("redis", "saturation / 1 client") in quantities
    assert ("embedded", "service / raw at the same layout") in quantities

    with (out / "closed_loop.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 4
    tables = (out / "tables.md").read_text()
    assert readme.read_text() == f"# x\n\n{report.README_BEGIN}\n{tables.rstrip()}\n{report.README_END}\n"
    assert "saturation / 1 client" in finished.stdout
    assert (out / "logs" / "worker-0.log").exists()


def test_a_service_that_cannot_start_is_one_clear_error(tmp_path: Path):
    missing = tmp_path / "missing.safetensors"
    command = [
        *(sys.executable, "-m", "facesr.service.cli", "bench-service", "--out", str(tmp_path / "out")),
        *("--checkpoint", str(missing), "--modes", "embedded"),
    ]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 1
    assert finished.stderr.strip().splitlines()[-1].startswith("error: embedded exited with status")
