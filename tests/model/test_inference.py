"""The inference engine: inputs of any size and kind, outputs, device and dtype rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from facesr.model.config import DICConfig
from facesr.model.device import resolve_device, resolve_dtype
from facesr.model.errors import CheckpointError, InputImageError
from facesr.model.inference import FaceSR
from facesr.model.input_policy import InputTooSmallError, prepare_face


@pytest.fixture(scope="module")
def engine() -> FaceSR:
    return FaceSR.from_config(DICConfig.tiny(), device="cpu")


def _face(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)


def test_outputs_and_landmarks(engine: FaceSR) -> None:
    results = engine.enhance([_face((16, 16)), _face((16, 16), seed=1)], return_steps=True)
    assert len(results) == 2
    for result in results:
        assert result.image.shape == (128, 128, 3) and result.image.dtype == np.uint8
        assert result.landmarks.shape == (68, 2) and result.landmarks.dtype == np.float32
        assert (result.landmarks >= 0).all() and (result.landmarks <= 127).all()
        assert len(result.steps) == 4
        np.testing.assert_array_equal(result.steps[-1], result.image)
        assert result.resized_from is None
    assert not np.array_equal(results[0].image, results[1].image)


def test_batched_equals_single(engine: FaceSR) -> None:
    faces = [_face((16, 16), seed=s) for s in range(3)]
    together = engine.enhance(faces)
    for face, batched in zip(faces, together, strict=True):
        alone = engine.enhance([face])[0]
        assert np.abs(alone.image.astype(int) - batched.image).max() <= 1


def test_any_size_is_made_square_then_resized_with_pil_bicubic(engine: FaceSR) -> None:
    face = _face((64, 80))  # 64 wide, 80 high: the centred 64 x 64 square starts 8 rows down
    result = engine.enhance([face])[0]
    assert result.resized_from == (64, 80)
    assert result.transform is not None and (result.transform.fit, result.transform.y) == ("crop", 8)
    square = Image.fromarray(face[8:72])
    expected = np.asarray(square.resize((16, 16), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(engine.enhance([expected])[0].image, result.image)
    padded = engine.enhance([face], fit="pad")[0]
    assert padded.transform is not None and (padded.transform.x, padded.transform.side) == (-8, 80)


def test_too_small_an_input_is_refused(engine: FaceSR) -> None:
    with pytest.raises(InputTooSmallError, match="at least 8x8"):
        engine.enhance([_face((7, 40))])


@pytest.mark.parametrize(
    "image",
    [
        Image.new("L", (20, 20), 128),
        Image.new("RGBA", (16, 16), (10, 20, 30, 255)),
        Image.new("P", (32, 32)),
        np.full((16, 16), 7, np.uint8),
        np.zeros((16, 16, 4), np.uint8),
    ],
)
def test_gray_alpha_and_palette_inputs(engine: FaceSR, image: object) -> None:
    assert engine.enhance([image])[0].image.shape == (128, 128, 3)


@pytest.mark.parametrize(
    "image",
    [np.zeros((16, 16, 3), np.float32), np.zeros((16, 16, 2), np.uint8), np.zeros((0, 16, 3), np.uint8)],
)
def test_bad_arrays_are_refused(image: np.ndarray) -> None:
    with pytest.raises(InputImageError):
        prepare_face(image)


def test_enhance_tensor_checks_its_batch(engine: FaceSR) -> None:
    with pytest.raises(InputImageError, match="N x 16 x 16 x 3"):
        engine.enhance_tensor(np.zeros((2, 32, 32, 3), np.uint8))
    assert engine.enhance_tensor(np.zeros((0, 16, 16, 3), np.uint8)) == []
    assert engine.enhance([]) == []


def test_half_precision_is_refused_on_cpu() -> None:
    cpu = resolve_device("cpu")
    assert resolve_dtype("fp32", cpu) == torch.float32
    for dtype in ("fp16", "bf16"):
        with pytest.raises(ValueError, match="only on CUDA"):
            resolve_dtype(dtype, cpu)
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype("int8", cpu)
    if not torch.cuda.is_available():
        assert resolve_device(None).type == "cpu"
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_non_finite_half_output_falls_back_to_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulate a reduced-precision overflow: the batch is re-run in fp32 and counted."""
    engine = FaceSR.from_config(DICConfig.tiny(), graph="eager")  # half precision never runs a trace
    real_forward = engine.generator.forward
    calls: list[bool] = []

    def flaky_forward(x: torch.Tensor):
        autocast = torch.is_autocast_enabled("cpu")
        calls.append(autocast)
        sr_steps, heatmaps = real_forward(x)
        if autocast:
            sr_steps = [step * float("nan") for step in sr_steps]
        return sr_steps, heatmaps

    monkeypatch.setattr(engine.generator, "forward", flaky_forward)
    monkeypatch.setattr(engine, "dtype", torch.bfloat16)
    before = engine.fp32_fallbacks
    result = engine.enhance_tensor(np.zeros((1, 16, 16, 3), np.uint8))[0]
    assert calls == [True, False]
    assert engine.fp32_fallbacks == before + 1
    assert result.image.shape == (128, 128, 3)


def test_model_without_landmarks_returns_none() -> None:
    engine = FaceSR.from_config(DICConfig.tiny(landmark_mode="none"), device="cpu")
    assert engine.enhance([_face((16, 16))])[0].landmarks is None


def test_missing_checkpoint_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        FaceSR.from_checkpoint(tmp_path / "none.safetensors")


def test_model_id_is_stable_and_names_the_weights() -> None:
    first = FaceSR.from_config(DICConfig.tiny(), seed=1, device="cpu")
    again = FaceSR.from_config(DICConfig.tiny(), seed=1, device="cpu")
    other = FaceSR.from_config(DICConfig.tiny(), seed=2, device="cpu")
    assert first.model_id == again.model_id != other.model_id
    assert first.model_id.startswith("random-")


def test_read_only_arrays_are_accepted() -> None:
    from facesr.model.normalization import images_to_tensor, tensor_to_images

    frozen = np.arange(16 * 16 * 3, dtype=np.uint8).reshape(1, 16, 16, 3)
    frozen.setflags(write=False)
    np.testing.assert_array_equal(tensor_to_images(images_to_tensor(frozen)), frozen)
