#!/usr/bin/env python3
"""Ways to run the model faster on a CPU, compared in interleaved rounds (medians and ratios).

Variants, all on the same weights and the same inputs:

- ``eager-nchw``: plain eager PyTorch, contiguous tensors (the service before channels-last);
- ``eager-channels-last``: weights and inputs in NHWC (what the service runs by default on CPU);
- ``bf16-autocast``: channels-last under ``torch.autocast("cpu", torch.bfloat16)``;
- ``trace``: a TorchScript trace (``torch.jit.trace``) of the channels-last model;
- ``export``: the graph module of ``torch.export`` (ATen ops, no module call overhead);
- ``compile`` (with ``--compile``): ``torch.compile`` of the channels-last model, one shape.

Each round runs every variant for ``--seconds`` with ``--runners`` threads of one intra-op thread each,
in turn, so that the machine's drift hits all of them alike. With ``--helen DIR`` it also reports the
PSNR_Y change of bf16 against fp32 on that test set (the paper's protocol: bicubic LR, 8-pixel border).

    python benchmarks/cpu_options.py --rounds 5 --runners 2 --helen ../shared/data/helen-50
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from facesr.model.inference import FaceSR
from facesr.model.normalization import images_to_tensor, tensor_to_images
from facesr.model.preprocess import make_lr

Forward = Callable[[torch.Tensor], object]


def variants(engine: FaceSR, with_compile: bool) -> dict[str, tuple[Forward, bool, bool]]:
    """name -> (forward, channels-last input, bf16 autocast)."""
    nchw = copy.deepcopy(engine.generator).to(memory_format=torch.contiguous_format)
    nhwc = copy.deepcopy(engine.generator).to(memory_format=torch.channels_last)
    example = torch.zeros(1, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit.trace is deprecated; measured here to say so
        traced = torch.jit.trace(nhwc, example, check_trace=False)
        exported = torch.export.export(nhwc, (example,)).module()
    found: dict[str, tuple[Forward, bool, bool]] = {
        "eager-nchw": (nchw, False, False),
        "eager-channels-last": (nhwc, True, False),
        "bf16-autocast": (nhwc, True, True),
        "trace": (traced, True, False),
        "export": (exported, True, False),
    }
    if with_compile:
        found["compile"] = (torch.compile(nhwc, dynamic=False), True, False)
    return found


def faces_per_second(
    forward: Forward, channels_last: bool, bf16: bool, runners: int, seconds: float
) -> float:
    x = torch.randn(1, 3, 16, 16)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    counts = [0] * runners
    start = threading.Barrier(runners + 1)

    def run(index: int) -> None:
        torch.set_num_threads(1)
        precision = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with torch.inference_mode(), precision:
            forward(x)
            start.wait()
            stop = time.perf_counter() + seconds
            while time.perf_counter() < stop:
                forward(x)
                counts[index] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(runners)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - began)


def bf16_psnr_change(engine: FaceSR, helen: Path) -> tuple[float, float]:
    """Mean PSNR_Y on ``helen`` in fp32 and under bf16 autocast (channels-last)."""
    from facesr.train.face_folder import FaceFolder
    from facesr.train.metrics import psnr_y

    dataset = FaceFolder.open(helen)
    hr = dataset.read_images(0, len(dataset))
    x = images_to_tensor(make_lr(hr)).contiguous(memory_format=torch.channels_last)
    scores = []
    for bf16 in (False, True):
        precision = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with torch.inference_mode(), precision:
            sr = tensor_to_images(engine.generator(x)[0][-1].float())
        scores.append(float(np.mean([psnr_y(s, h) for s, h in zip(sr, hr, strict=True)])))
    return scores[0], scores[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--checkpoint", type=Path, help="default: the bundled checkpoint")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="per variant per round")
    parser.add_argument(
        "--runners", type=int, default=1, help="threads side by side, one intra-op thread each"
    )
    parser.add_argument("--compile", action="store_true", help="also torch.compile (minutes to compile)")
    parser.add_argument("--helen", type=Path, help="a test set folder: report bf16's PSNR_Y change on it")
    args = parser.parse_args()

    engine = FaceSR.from_checkpoint(args.checkpoint, device="cpu")
    found = variants(engine, args.compile)
    rates: dict[str, list[float]] = {name: [] for name in found}
    for round_index in range(args.rounds):
        for name, (forward, channels_last, bf16) in found.items():
            rates[name].append(faces_per_second(forward, channels_last, bf16, args.runners, args.seconds))
        latest = ", ".join(f"{name} {values[-1]:.1f}" for name, values in rates.items())
        print(f"round {round_index + 1}: {latest}", flush=True)
    base = statistics.median(rates["eager-nchw"])
    print(f"\n{args.runners} runner(s) x 1 thread, batch 1, {args.rounds} rounds of {args.seconds:g} s each")
    print("| variant | median faces/s | vs eager-nchw | rounds |")
    print("|---|---:|---:|---|")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.2f} | {median / base:.2f}x | {', '.join(f'{v:.1f}' for v in values)} |")
    if args.helen:
        fp32, bf16 = bf16_psnr_change(engine, args.helen)
        change = f"fp32 {fp32:.3f} dB, bf16 autocast {bf16:.3f} dB ({bf16 - fp32:+.3f} dB)"
        print(f"\nPSNR_Y on {args.helen.name}: {change}")


if __name__ == "__main__":
    main()
