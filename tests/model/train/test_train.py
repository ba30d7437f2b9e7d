"""The DIC training stage and loop: loss falls, exact resume, freezing, checkpoints."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from facesr.model.checkpoint import load_checkpoint, load_generator
from facesr.train.config import ConfigError, TrainConfig
from facesr.train.stages import DICStage
from facesr.train.state import TrainingStateError, load_training_state
from facesr.train.trainer import STATE_FILE, build_generator, check_resumable, run_training
from tests.model.train.helpers import CPU, first_batch


def test_loss_falls_on_a_repeated_batch(make_config: Callable[..., TrainConfig]) -> None:
    config = make_config({"optim": {"lr": 5e-4, "milestones": [1000]}, "train": {"hg_frozen_until": 0}})
    torch.manual_seed(0)
    stage = DICStage(config, build_generator(config), CPU)
    batch = first_batch(config)
    losses = [stage.train_step(batch, step) for step in range(12)]
    first, last = losses[0], losses[-1]
    assert torch.isfinite(last["total"])
    assert last["total"] < 0.7 * first["total"]
    assert last["pixel"] < first["pixel"] and last["heatmap"] < first["heatmap"]


def test_frozen_hourglass_gets_no_update_but_passes_gradient(make_config: Callable[..., TrainConfig]) -> None:
    config = make_config({"train": {"hg_frozen_until": 2}})
    stage = DICStage(config, build_generator(config), CPU)
    generator = stage.generator.module
    hg_before = {k: v.clone() for k, v in generator.HG.state_dict().items()}
    sr_before = generator.conv_in[0].weight.clone()
    batch = first_batch(config)
    stage.train_step(batch, 0)
    stage.train_step(batch, 1)
    assert all(torch.equal(hg_before[k], v) for k, v in generator.HG.state_dict().items())
    assert not torch.equal(sr_before, generator.conv_in[0].weight)
    stage.train_step(batch, 2)  # released at step 2
    assert any(not torch.equal(hg_before[k], v) for k, v in generator.HG.state_dict().items())


def test_learning_rate_halves_at_the_milestones(make_config: Callable[..., TrainConfig]) -> None:
    config = make_config({"optim": {"lr": 1e-3, "milestones": [2, 3]}})
    stage = DICStage(config, build_generator(config), CPU)
    batch = first_batch(config)
    seen = []
    for step in range(4):
        seen.append(stage.learning_rate)
        stage.train_step(batch, step)
    assert seen == pytest.approx([1e-3, 1e-3, 5e-4, 2.5e-4])


RESUME_OVERRIDES = {
    "optim": {"milestones": [2, 3], "grad_clip_norm": 1.0},
    "train": {"iterations": 4, "hg_frozen_until": 3, "ema_decay": 0.9},
    "logging": {"log_every": 1, "val_every": 2, "save_every": 2},
    "data": {"val_count": 2},
}


def state_tensors(state: dict) -> dict[str, torch.Tensor]:
    """Every tensor of a training state, flattened to dotted names (RNG states left out)."""
    flat: dict[str, torch.Tensor] = {}

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, torch.Tensor):
            flat[prefix] = value
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}", item)
        elif isinstance(value, list | tuple):
            for index, item in enumerate(value):
                walk(f"{prefix}.{index}", item)

    walk("stage", state["stage"])
    return flat


def test_resume_continues_bit_for_bit(make_config: Callable[..., TrainConfig], tmp_path: Path) -> None:
    """4 straight steps == 2 steps + resume + 2 steps (optimiser, scheduler, EMA, freeze, data order)."""
    full = make_config(RESUME_OVERRIDES)
    half = make_config({**RESUME_OVERRIDES, "train": {**RESUME_OVERRIDES["train"], "iterations": 2}})
    straight = run_training(full, tmp_path / "straight", device="cpu", progress=False)
    assert straight.step == 4
    run_training(half, tmp_path / "split", device="cpu", progress=False)
    resumed = run_training(full, tmp_path / "split", resume=True, device="cpu", progress=False)
    assert resumed.step == 4

    a = load_training_state(tmp_path / "straight" / STATE_FILE)
    b = load_training_state(tmp_path / "split" / STATE_FILE)
    assert a["step"] == b["step"] == 4
    tensors_a, tensors_b = state_tensors(a), state_tensors(b)
    assert tensors_a.keys() == tensors_b.keys()
    assert any(".ema." in key for key in tensors_a) and any(".exp_avg" in key for key in tensors_a)
    for key, value in tensors_a.items():
        assert torch.equal(value, tensors_b[key]), f"{key} differs after resume"
    assert a["stage"]["scheduler"]["last_epoch"] == b["stage"]["scheduler"]["last_epoch"] == 4
    # the run really trained: weights moved away from the initial ones
    initial = build_generator(full).state_dict()
    assert any(not torch.equal(initial[k], v) for k, v in a["stage"]["generator"].items())


def test_resume_from_a_different_start_is_not_identical(
    make_config: Callable[..., TrainConfig], tmp_path: Path
) -> None:
    """Control for the resume test: a different seed gives different weights (the check can fail)."""
    first = run_training(make_config(RESUME_OVERRIDES), tmp_path / "a", device="cpu", progress=False)
    other = make_config({**RESUME_OVERRIDES, "seed": 1})
    second = run_training(other, tmp_path / "b", device="cpu", progress=False)
    a = load_training_state(first.output_dir / STATE_FILE)["stage"]["generator"]
    b = load_training_state(second.output_dir / STATE_FILE)["stage"]["generator"]
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_run_writes_serving_checkpoints_with_a_model_card(
    make_config: Callable[..., TrainConfig], tmp_path: Path
) -> None:
    config = make_config({"logging": {"tensorboard": True}})
    result = run_training(config, tmp_path / "run", device="cpu", progress=False)
    assert result.best_checkpoint is not None and result.final_checkpoint is not None
    loaded = load_checkpoint(result.best_checkpoint)
    assert loaded.config == config.dic_config()
    card = loaded.card
    assert card.name == config.name and "non-commercial" in card.licence
    assert card.training["config"] == config.to_plain()
    assert card.metrics["validation"]["psnr_y"] == pytest.approx(result.best_score), (
        "a DIC run selects on Y-PSNR"
    )
    assert card.metrics["validation"]["psnr_y_bicubic"] > 10
    generator = load_generator(result.final_checkpoint).generator
    assert generator.config == config.dic_config()
    for name in ("config.yaml", "best.config.yaml", "final.config.yaml"):
        assert (tmp_path / "run" / name).read_text(encoding="utf-8") == config.to_yaml()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in records} == {"train", "val"}
    assert any((tmp_path / "run" / "tensorboard").iterdir())


def test_second_run_into_the_same_directory_is_refused(
    make_config: Callable[..., TrainConfig], tmp_path: Path
) -> None:
    config = make_config({"train": {"iterations": 1}})
    run_training(config, tmp_path / "run", device="cpu", progress=False)
    with pytest.raises(ConfigError, match="--resume"):
        run_training(config, tmp_path / "run", device="cpu", progress=False)


def test_resume_refuses_a_changed_config(make_config: Callable[..., TrainConfig], tmp_path: Path) -> None:
    run_training(make_config({"train": {"iterations": 1}}), tmp_path / "run", device="cpu", progress=False)
    changed = make_config({"train": {"iterations": 2}, "optim": {"lr": 5e-3}})
    with pytest.raises(ConfigError, match=r"optim\.lr"):
        run_training(changed, tmp_path / "run", resume=True, device="cpu", progress=False)


def test_resume_without_a_state_file_is_refused(
    make_config: Callable[..., TrainConfig], tmp_path: Path
) -> None:
    with pytest.raises(TrainingStateError, match="does not exist"):
        run_training(make_config(), tmp_path / "empty", resume=True, device="cpu", progress=False)


def test_state_file_that_needs_unpickling_is_refused(tmp_path: Path) -> None:
    path = tmp_path / STATE_FILE
    torch.save({"format": "facesr-training-state", "version": 1, "payload": Path("x")}, path)
    with pytest.raises(TrainingStateError, match="cannot read"):
        load_training_state(path)


def test_model_card_licence_comes_from_the_data_section(
    make_config: Callable[..., TrainConfig], tmp_path: Path
) -> None:
    terms = "Made-up terms of a test data set: research only."
    config = make_config({"train": {"iterations": 1}, "data": {"licence": terms}})
    result = run_training(config, tmp_path / "run", device="cpu", progress=False)
    assert load_checkpoint(result.final_checkpoint).card.licence == terms
    assert load_checkpoint(result.best_checkpoint).card.licence == terms


def test_resuming_a_finished_run_keeps_the_validation_scores_on_its_card(
    make_config: Callable[..., TrainConfig], tmp_path: Path
) -> None:
    config = make_config({"train": {"iterations": 2}})
    finished = run_training(config, tmp_path / "run", device="cpu", progress=False)
    scores = load_checkpoint(finished.final_checkpoint).card.metrics["validation"]
    again = run_training(config, tmp_path / "run", resume=True, device="cpu", progress=False)
    assert again.step == 2 and again.last_validation == finished.last_validation
    assert load_checkpoint(again.final_checkpoint).card.metrics["validation"] == scores


def test_states_saved_before_data_licence_existed_can_be_resumed(
    make_config: Callable[..., TrainConfig],
) -> None:
    config = make_config()
    saved = config.to_plain()
    del saved["data"]["licence"]
    check_resumable(saved, config)  # the licence does not change the result: no error
    saved["data"]["val_seed"] += 1
    with pytest.raises(ConfigError, match=r"data\.val_seed"):
        check_resumable(saved, config)


def test_states_saved_before_the_align_stage_existed_can_be_resumed(
    make_config: Callable[..., TrainConfig],
) -> None:
    """Keys added later (init, alignment, heatmap loss, layout) take their defaults when resuming."""
    config = make_config()
    saved = config.to_plain()
    for section, key in (("loss", "heatmap_kind"), ("loss", "foreground_weight"), ("train", "channels_last")):
        del saved[section][key]
    del saved["init"], saved["alignment"]
    check_resumable(saved, config)
    saved["loss"]["heatmap"] = 0.5
    with pytest.raises(ConfigError, match=r"loss\.heatmap"):
        check_resumable(saved, config)


def test_resuming_a_run_started_with_init_keeps_its_record_and_needs_no_init_file(
    make_config: Callable[..., TrainConfig], tmp_path: Path
) -> None:
    start = run_training(make_config({"train": {"iterations": 1}}), tmp_path / "start", progress=False)
    assert start.final_checkpoint is not None
    moved = tmp_path / "start.safetensors"
    start.final_checkpoint.rename(moved)
    short = make_config({"train": {"iterations": 2}}).with_init(weights=moved)
    run_training(short, tmp_path / "run", progress=False)
    moved.unlink()  # the state holds the weights now; the file it started from may be gone

    longer = make_config({"train": {"iterations": 3}})  # the YAML as written: no init section
    resumed = run_training(longer, tmp_path / "run", resume=True, progress=False)
    assert resumed.step == 3
    card = load_checkpoint(resumed.final_checkpoint).card
    assert card.training["config"]["init"]["weights"] == str(moved)
    assert f"weights from {moved.name}" in card.provenance
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text(encoding="utf-8"))
    assert saved["init"]["weights"] == str(moved)
