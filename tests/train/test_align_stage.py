"""The `align` stage: the alignment branch trained alone, and the runs that start from it."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from facesr.model.checkpoint import load_checkpoint
from facesr.train.align_stage import AlignmentStage, blurred_like_lr, step_images
from facesr.train.config import ConfigError, TrainConfig
from facesr.train.trainer import build_generator, run_training
from tests.train.helpers import CPU, first_batch

ALIGN = {"stage": "align", "alignment": {"unroll_steps": 2}, "loss": {"heatmap_kind": "foreground_mse"}}


def test_step_images_go_from_blurred_to_sharper_for_degraded_faces_only() -> None:
    torch.manual_seed(0)
    lr, hr = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 128, 128)
    images = step_images(lr, hr, 3, torch.tensor([True, False]), torch.tensor([0.5, 0.9]))
    blur = blurred_like_lr(lr, 128)
    assert len(images) == 3
    torch.testing.assert_close(images[0][0], blur[0])
    torch.testing.assert_close(images[1][0], blur[0] + 0.25 * (hr[0] - blur[0]))
    torch.testing.assert_close(images[2][0], blur[0] + 0.5 * (hr[0] - blur[0]))
    for image in images:
        torch.testing.assert_close(image[1], hr[1])


def test_align_step_updates_only_the_alignment_branch(make_config: Callable[..., TrainConfig]) -> None:
    config = make_config(ALIGN)
    generator = build_generator(config)
    before = {k: v.clone() for k, v in generator.state_dict().items()}
    stage = AlignmentStage(config, generator, CPU)
    parts = stage.train_step(first_batch(config), 0)
    assert math.isfinite(float(parts["total"]))
    after = generator.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "the branch must be updated"
    assert all(k.startswith("HG.") for k in changed), sorted(
        changed - {k for k in changed if k.startswith("HG.")}
    )


def test_align_loss_falls_on_a_repeated_batch(make_config: Callable[..., TrainConfig]) -> None:
    config = make_config({**ALIGN, "optim": {"lr": 2e-3}, "alignment": {"degraded_fraction": 0.0}})
    stage = AlignmentStage(config, build_generator(config), CPU)
    batch = first_batch(config)
    losses = [float(stage.train_step(batch, step)["total"]) for step in range(12)]
    assert min(losses[-3:]) < 0.7 * losses[0], losses


def test_align_run_selects_on_landmark_error_and_exports_the_branch(
    make_config: Callable[..., TrainConfig], tmp_path: Path
) -> None:
    config = make_config({**ALIGN, "logging": {"tensorboard": True}})
    result = run_training(config, tmp_path / "align", progress=False)
    assert result.best_checkpoint is not None and result.last_validation is not None
    assert any((tmp_path / "align" / "tensorboard").iterdir()), "unmeasured values are skipped, not fatal"
    validation = result.last_validation
    assert len(validation.nrmse_steps) == 2 and validation.nrmse == validation.nrmse_steps[-1]
    assert 0 < validation.nrmse < 10 and 0 < validation.nrmse_sharp < 10
    assert validation.psnr_y is None, "the align stage does not score images"
    assert result.best_score >= AlignmentStage.score(validation), "best is the lowest NRMSE seen"
    card = load_checkpoint(result.best_checkpoint).card
    assert card.training["stage"] == "align"
    assert card.metrics["validation"]["nrmse"] > 0


def test_dic_run_starts_from_an_aligned_branch_and_keeps_it_frozen(
    make_config: Callable[..., TrainConfig], tmp_path: Path
) -> None:
    aligned = run_training(make_config(ALIGN), tmp_path / "align", progress=False).final_checkpoint
    assert aligned is not None
    branch = {k: v for k, v in load_checkpoint(aligned).state_dict.items() if k.startswith("HG.")}

    config = make_config({"init": {"alignment": str(aligned)}, "train": {"hg_frozen_until": 100}})
    torch.manual_seed(config.seed)
    generator = build_generator(config)
    for key, tensor in branch.items():
        torch.testing.assert_close(generator.state_dict()[key], tensor, msg=key)
    torch.manual_seed(config.seed)
    fresh = build_generator(make_config())
    sr_keys = [k for k in generator.state_dict() if not k.startswith("HG.")]
    assert all(torch.equal(generator.state_dict()[k], fresh.state_dict()[k]) for k in sr_keys), (
        "init.alignment replaces the alignment branch only"
    )

    result = run_training(config, tmp_path / "dic", progress=False)
    assert result.final_checkpoint is not None
    trained = load_checkpoint(result.final_checkpoint).state_dict
    assert all(torch.equal(trained[k], v) for k, v in branch.items()), "frozen for the whole (short) run"
    assert any(not torch.equal(trained[k], fresh.state_dict()[k]) for k in sr_keys)


def test_init_weights_start_a_new_run_from_any_checkpoint(
    make_config: Callable[..., TrainConfig], tmp_path: Path
) -> None:
    first = run_training(make_config(), tmp_path / "first", progress=False).final_checkpoint
    assert first is not None
    config = make_config().with_init(weights=first)
    generator = build_generator(config)
    for key, tensor in load_checkpoint(first).state_dict.items():
        torch.testing.assert_close(generator.state_dict()[key], tensor, msg=key)
    second = run_training(config, tmp_path / "second", progress=False)
    assert second.step == config.train.iterations, "a fresh schedule: step 0 to the end"


def test_init_from_a_checkpoint_of_another_size_is_refused(
    make_config: Callable[..., TrainConfig], tmp_path: Path
) -> None:
    first = run_training(make_config(), tmp_path / "first", progress=False).final_checkpoint
    assert first is not None
    wider = make_config({"model": {"num_features": 12}}).with_init(weights=first)
    with pytest.raises(ConfigError, match="does not fit"):
        build_generator(wider)


def test_init_checkpoint_must_exist(make_config: Callable[..., TrainConfig], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="checkpoint not found"):
        make_config({"init": {"alignment": str(tmp_path / "missing.safetensors")}})
