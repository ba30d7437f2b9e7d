"""How the generator is executed: channels-last on CPU, and the compiled path's batch buckets.

Compiling for real takes minutes on a small CPU, so the bucket tests replace ``torch.compile`` with a
recorder that runs the eager module and notes every input shape it is given.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from facesr.model import runtime
from facesr.model.config import DICConfig
from facesr.model.inference import FaceSR
from facesr.model.runtime import GeneratorRunner, bucket_sizes


class RecordingCompile:
    """Stands in for ``torch.compile``: returns the module itself, wrapped to record input shapes."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []
        self.modes: list[object] = []

    def __call__(self, module, *, dynamic: bool, mode: object = None):
        assert dynamic is False  # fixed shapes: the buckets
        self.modes.append(mode)

        def forward(x: torch.Tensor):
            self.shapes.append(tuple(x.shape))
            return module(x)

        return forward


def test_bucket_sizes_are_powers_of_two_up_to_the_largest_batch():
    assert bucket_sizes(1) == [1]
    assert bucket_sizes(8) == [1, 2, 4, 8]
    assert bucket_sizes(6) == [1, 2, 4, 6]
    with pytest.raises(ValueError, match="max_batch_size"):
        bucket_sizes(0)


def test_cpu_weights_are_kept_channels_last_and_outputs_do_not_change():
    eager = FaceSR.from_config(DICConfig.tiny(num_steps=2), graph="eager")
    conv = next(m for m in eager.generator.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)

    lr = np.random.default_rng(3).integers(0, 256, size=(3, 16, 16, 3), dtype=np.uint8)
    x = torch.from_numpy(lr).permute(0, 3, 1, 2).float() / 255 - 0.45
    with torch.inference_mode():
        reference = [t.clone() for t in eager.generator(x.contiguous())[0]]
        mine, _ = eager.runner(x)
    for ours, theirs in zip(mine, reference, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_the_cpu_default_is_a_trace_with_the_eager_outputs_at_every_batch_size():
    traced = FaceSR.from_config(DICConfig.tiny(num_steps=2), seed=7)
    eager = FaceSR.from_config(DICConfig.tiny(num_steps=2), seed=7, graph="eager")
    lr = np.random.default_rng(5).integers(0, 256, size=(5, 16, 16, 3), dtype=np.uint8)

    assert traced.graph == "trace" and traced.describe()["graph"] == "trace"
    for count in (1, 3, 5):  # traced at batch 1, replayed at others
        got = traced.enhance_tensor(lr[:count], return_steps=True)
        want = eager.enhance_tensor(lr[:count], return_steps=True)
        for ours, theirs in zip(got, want, strict=True):
            assert np.array_equal(ours.image, theirs.image)
            assert all(
                np.array_equal(a, b) for a, b in zip(ours.steps or [], theirs.steps or [], strict=True)
            )
            assert np.array_equal(ours.landmarks, theirs.landmarks)
            assert np.array_equal(ours.confidence, theirs.confidence)


def test_graph_defaults_and_what_a_trace_refuses():
    cpu = torch.device("cpu")
    assert runtime.default_graph(cpu, torch.float32) == "trace"
    assert runtime.default_graph(cpu, torch.bfloat16) == "eager"
    assert runtime.default_graph(torch.device("cuda"), torch.float32) == "eager"  # nothing measured on GPUs
    generator = FaceSR.from_config(DICConfig.tiny(num_steps=2), graph="eager").generator
    with pytest.raises(ValueError, match="fp32 only"):
        GeneratorRunner(generator, cpu, "trace", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="graph must be one of"):
        GeneratorRunner(generator, cpu, "jit")  # type: ignore[arg-type]


def test_compiled_batches_are_padded_to_buckets_and_trimmed_back(monkeypatch: pytest.MonkeyPatch):
    recorder = RecordingCompile()
    monkeypatch.setattr(runtime.torch, "compile", recorder)
    compiled = FaceSR.from_config(DICConfig.tiny(num_steps=2), graph="compile", seed=5)
    eager = FaceSR.from_config(DICConfig.tiny(num_steps=2), seed=5, graph="eager")
    compiled.runner.buckets = [1, 2, 4]
    lr = np.random.default_rng(4).integers(0, 256, size=(7, 16, 16, 3), dtype=np.uint8)

    for count in (1, 3, 7):  # 3 -> bucket 4; 7 -> 4 + 3, the rest padded to 4 again
        got = compiled.enhance_tensor(lr[:count], return_steps=True)
        want = eager.enhance_tensor(lr[:count], return_steps=True)
        assert len(got) == count
        for ours, theirs in zip(got, want, strict=True):
            assert np.array_equal(ours.image, theirs.image)
            assert np.allclose(ours.landmarks, theirs.landmarks, atol=0.01)  # batch size changes float bits
    assert {shape[0] for shape in recorder.shapes} == {1, 4}
    assert recorder.modes == [None]  # CUDA graphs only on CUDA
    assert compiled.describe()["graph"] == "compile"


def test_a_new_bucket_is_compiled_by_one_thread_at_a_time(monkeypatch: pytest.MonkeyPatch):
    inside, most = [0], [0]
    lock = threading.Lock()

    def slow_first_call(module, *, dynamic: bool, mode: object = None):
        def forward(x: torch.Tensor):
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            threading.Event().wait(0.05)
            with lock:
                inside[0] -= 1
            return module(x)

        return forward

    monkeypatch.setattr(runtime.torch, "compile", slow_first_call)
    generator = FaceSR.from_config(DICConfig.tiny(num_steps=2)).generator
    runner = GeneratorRunner(generator, torch.device("cpu"), "compile", buckets=[2])
    x = torch.zeros(2, 3, 16, 16)
    with torch.inference_mode():
        threads = [threading.Thread(target=runner, args=(x,)) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert most[0] == 1  # the first calls of a shape (the compilations) never overlapped
    assert runner._ready_buckets == {2}
