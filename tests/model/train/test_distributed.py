"""Multi-process training under torchrun (gloo on the CPU) matches a single process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from facesr.train.config import parse_config
from facesr.train.state import load_training_state
from facesr.train.trainer import STATE_FILE, build_generator, run_training
from tests.model.train.conftest import merged

REPO_ROOT = Path(__file__).resolve().parents[3]


def train_losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [record["total"] for record in map(json.loads, lines) if record["kind"] == "train"]


def flat(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([value.flatten().float() for value in state.values()])


@pytest.mark.slow
def test_two_processes_of_batch_one_match_one_process_of_batch_two(
    tiny_config_data: dict[str, Any], tmp_path: Path
) -> None:
    """DistributedSampler shards + gradient all-reduce == the same global batch in one process."""
    common = {"train": {"iterations": 3}, "logging": {"log_every": 1, "tensorboard": False}}
    ddp_data = merged(tiny_config_data, merged(common, {"train": {"batch_size": 1}}))
    single_data = merged(tiny_config_data, merged(common, {"train": {"batch_size": 2}}))
    config_file = tmp_path / "ddp.yaml"
    config_file.write_text(yaml.safe_dump(ddp_data), encoding="utf-8")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "facesr.service.cli", "train", "--config", str(config_file), "--output", str(tmp_path / "ddp"),
        "--device", "cpu", "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]

    single = parse_config(single_data)
    run_training(single, tmp_path / "single", device="cpu", progress=False)
    ddp_state = load_training_state(tmp_path / "ddp" / STATE_FILE)
    single_state = load_training_state(tmp_path / "single" / STATE_FILE)
    assert ddp_state["world_size"] == 2 and len(ddp_state["rng"]) == 2

    # the rank-averaged loss equals the single-process loss of the same two faces
    assert train_losses(tmp_path / "ddp") == pytest.approx(train_losses(tmp_path / "single"), rel=1e-4)
    # weights agree up to float reduction order (Adam's normalisation amplifies it on tiny gradients)
    torch.manual_seed(single.seed)
    start = flat(build_generator(single).state_dict())
    ddp_weights, single_weights = (
        flat(ddp_state["stage"]["generator"]),
        flat(single_state["stage"]["generator"]),
    )
    update = (single_weights - start).norm()
    assert update > 0
    assert (ddp_weights - single_weights).norm() < 0.02 * update
