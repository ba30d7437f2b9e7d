"""Shapes, parameter counts, ablations and gradient flow of the generator."""

from __future__ import annotations

import pytest
import torch

from facesr.model.config import DICConfig
from facesr.model.generator import DICGenerator, count_parameters, init_weights
from facesr.model.lightcnn import LightCNN9Discriminator, LightCNN9Features


def _meta_generator(config: DICConfig) -> DICGenerator:
    with torch.device("meta"):
        return DICGenerator(config)


def test_paper_config_has_the_papers_parameter_count() -> None:
    generator = _meta_generator(DICConfig.paper())
    assert count_parameters(generator) == 21_803_849
    assert count_parameters(generator.HG) == 11_999_172
    assert len(generator.state_dict()) == 296


def test_tiny_config_matches_the_authors_tiny_network() -> None:
    generator = _meta_generator(DICConfig.tiny())
    assert count_parameters(generator) == 284_337
    assert count_parameters(generator.HG) == 192_244
    assert len(generator.state_dict()) == 180


def test_lightcnn_parameter_counts() -> None:
    with torch.device("meta"):
        assert count_parameters(LightCNN9Discriminator()) == 5_485_921
        assert count_parameters(LightCNN9Features()) == 1_290_848


@pytest.mark.parametrize("mode", ["attention", "concat", "none"])
def test_shapes_of_every_step(mode: str) -> None:
    config = DICConfig.tiny(landmark_mode=mode, num_steps=3)
    generator = DICGenerator(config).eval()
    with torch.no_grad():
        sr_steps, heatmap_steps = generator(torch.rand(2, 3, 16, 16) - 0.45)
    assert [tuple(t.shape) for t in sr_steps] == [(2, 3, 128, 128)] * 3
    if mode == "none":
        assert heatmap_steps == []
        assert generator.HG is None
    else:
        assert [tuple(t.shape) for t in heatmap_steps] == [(2, 68, 32, 32)] * 3


def test_ablations_change_only_what_they_should() -> None:
    attention = _meta_generator(DICConfig.tiny())
    concat = _meta_generator(DICConfig.tiny(landmark_mode="concat"))
    none = _meta_generator(DICConfig.tiny(landmark_mode="none"))
    assert not hasattr(concat.block, "fusion_block")
    assert concat.block.compress_in[0].in_channels == 2 * 8 + 5
    assert count_parameters(none) < count_parameters(concat) < count_parameters(attention)


def test_gradients_reach_both_branches() -> None:
    torch.manual_seed(0)
    generator = DICGenerator(DICConfig.tiny())
    init_weights(generator)
    sr_steps, heatmap_steps = generator(torch.rand(2, 3, 16, 16) - 0.45)
    loss = sum(step.abs().mean() for step in sr_steps) + sum(h.pow(2).mean() for h in heatmap_steps)
    loss.backward()
    for name in (
        "conv_in.0.weight",
        "first_block.upBlocks.0.0.weight",
        "block.fusion_block.conv_in.0.weight",
        "out.0.weight",
        "HG.pre_conv_block.0.weight",
        "HG.hg_conv_out.2.weight",
    ):
        grad = dict(generator.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_pixel_loss_of_later_steps_trains_the_alignment_branch_through_attention() -> None:
    """The attention is not detached: step t's SR loss reaches the hourglass via hm_{t-1}."""
    torch.manual_seed(0)
    generator = DICGenerator(DICConfig.tiny())
    init_weights(generator)
    sr_steps, _ = generator(torch.rand(1, 3, 16, 16) - 0.45)
    sr_steps[1].abs().mean().backward()
    assert generator.HG.hg_conv_out[2].weight.grad.abs().sum() > 0


def test_steps_differ_and_depend_on_the_input() -> None:
    torch.manual_seed(0)
    generator = DICGenerator(DICConfig.tiny()).eval()
    init_weights(generator)
    with torch.no_grad():
        first = generator(torch.rand(1, 3, 16, 16) - 0.45).sr_steps
        second = generator(torch.rand(1, 3, 16, 16) - 0.45).sr_steps
    assert (first[0] - first[-1]).abs().max() > 1e-4
    assert (first[-1] - second[-1]).abs().max() > 1e-3


def test_wrong_input_shape_is_refused() -> None:
    generator = DICGenerator(DICConfig.tiny())
    with pytest.raises(ValueError, match="16 x 16"):
        generator(torch.zeros(1, 3, 32, 32))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_features": 0}, "num_features"),
        ({"scale": 4}, "scale"),
        ({"landmark_mode": "bogus"}, "landmark_mode"),
        ({"num_keypoints": 5}, "num_keypoints"),
        ({"hg_num_features": 30}, "hg_num_features"),
    ],
)
def test_config_refuses_bad_values(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DICConfig.tiny(**overrides)


def test_config_round_trip_and_unknown_keys() -> None:
    config = DICConfig.reduced(landmark_mode="concat")
    assert DICConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown"):
        DICConfig.from_dict({**config.to_dict(), "depth": 3})
