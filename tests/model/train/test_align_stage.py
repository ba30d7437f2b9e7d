"""The `align` stage: the alignment branch trained alone, and the runs that start from it."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from facesr.model.checkpoint import load_checkpoint
from facesr.train.align_stage import AlignmentStage, blurred_like_lr, step_images
from facesr.train.config import ConfigError, TrainConfig
from facesr.train.trainer import build_generator, run_training
from tests.model.train.conftest import merged
from tests.model.train.helpers import CPU, first_batch

ALIGN = {
    "stage": "align",
    "alignment": {"unroll_steps": 2},
    "loss": {"heatmap_kind": "foreground_mse"},
    "train": {"hg_frozen_until": 0},
}


def align(**overrides: dict) -> dict:
    """The align-stage overrides of the tiny config, plus `overrides` merged section by section."""
    return merged(ALIGN, overrides)


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
    config = make_config(align(optim={"lr": 2e-3}, alignment={"degraded_fraction": 0.0}))
    stage = AlignmentStage(config, build_generator(config), CPU)
    batch = first_batch(config)
    losses = [float(stage.train_step(batch, step)["total"]) for step in range(12)]
    assert min(losses[-3:]) < 0.7 * losses[0], losses


def test_align_run_selects_on_landmark_error_and_exports_the_branch(
    make_config: Callable[..., TrainConfig], tmp_path: Path
) -> None:
    config = make_config(align(logging={"tensorboard": True}))
    result = run_training(config, tmp_path / "align", progress=False)
    assert result.best_checkpoint is not None and result.last_validation is not None
    assert any((tmp_path / "align" / "tensorboard").iterdir()), "unmeasured values are skipped, not fatal"
    validation = result.last_validation
    assert len(validation.nrmse_steps) == 2 and validation.nrmse == validation.nrmse_steps[-1]
    assert 0 < validation.nrmse < 10 and 0 < validation.nrmse_sharp < 10
    assert validation.psnr_y is None, "the align stage does not score images"
    assert validation.heatmap_mse is not None and 0 < validation.heatmap_mse < 10
    card = load_checkpoint(result.best_checkpoint).card
    assert card.training["stage"] == "align" and "not for serving" in card.description
    records = [json.loads(line) for line in (tmp_path / "align" / "metrics.jsonl").read_text().splitlines()]
    seen = [r["nrmse"] for r in records if r["kind"] == "val"]
    assert len(seen) >= 2 and card.metrics["validation"]["nrmse"] == pytest.approx(min(seen))
    assert result.best_score == pytest.approx(-min(seen)), "best is the lowest NRMSE seen"


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


def test_adaptive_wing_is_continuous_at_theta_and_weights_the_foreground() -> None:
    from facesr.train.losses import HeatmapLoss, adaptive_wing

    target = torch.tensor([0.0, 0.5, 1.0])
    below = adaptive_wing(target + 0.5 - 1e-5, target)  # errors just under theta = 0.5
    above = adaptive_wing(target + 0.5 + 1e-5, target)  # and just over it
    torch.testing.assert_close(below, above, atol=1e-3, rtol=0)
    zero = torch.zeros(3, requires_grad=True)
    adaptive_wing(zero, torch.zeros(3)).sum().backward()
    assert zero.grad is not None and torch.isfinite(zero.grad).all()
    assert float(adaptive_wing(torch.tensor([0.0]), torch.tensor([0.0]))) == 0.0

    # foreground weighting: the same error costs 10x where the target is above the threshold
    prediction, truth = torch.zeros(1, 1, 1, 2), torch.tensor([[[[0.05, 0.9]]]])
    error = (prediction - truth) ** 2
    weighted = HeatmapLoss(kind="foreground_mse")(prediction, truth)
    assert float(weighted) == pytest.approx(float((error[..., 0] + 10 * error[..., 1]).sum() / 2))
    plain = HeatmapLoss(kind="mse")(prediction, truth)
    assert float(plain) == pytest.approx(float(error.mean()))


def test_align_run_resumes_exactly(make_config: Callable[..., TrainConfig], tmp_path: Path) -> None:
    straight = run_training(make_config(align(train={"iterations": 4})), tmp_path / "a", progress=False)
    run_training(make_config(align(train={"iterations": 2})), tmp_path / "b", progress=False)
    resumed = run_training(
        make_config(align(train={"iterations": 4})), tmp_path / "b", resume=True, progress=False
    )
    assert straight.final_checkpoint is not None and resumed.final_checkpoint is not None
    expected = load_checkpoint(straight.final_checkpoint).state_dict
    for key, tensor in load_checkpoint(resumed.final_checkpoint).state_dict.items():
        assert torch.equal(tensor, expected[key]), key


def test_align_stage_refuses_settings_that_do_not_apply(make_config: Callable[..., TrainConfig]) -> None:
    with pytest.raises(ConfigError, match="do not apply"):
        make_config(align(train={"hg_frozen_until": 10}))


def test_cpu_bf16_is_opt_in(make_config: Callable[..., TrainConfig]) -> None:
    from facesr.train.precision import Precision, cpu_has_native_bf16

    assert not Precision(make_config().train, torch.device("cpu")).bf16, "amp alone is CUDA-only"
    opted = make_config({"train": {"cpu_bf16": True}}).train
    assert Precision(opted, torch.device("cpu")).bf16 == cpu_has_native_bf16()
