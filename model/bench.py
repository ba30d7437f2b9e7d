"""Raw-model throughput: images/s and peak memory per batch size, FLOPs per image."""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, TypedDict

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from facesr.model.device import dtype_name
from facesr.model.inference import FaceSR
from facesr.model.runtime import bucket_sizes


@dataclass(frozen=True)
class BenchRow:
    """One batch size: mean seconds per batch, images/s and peak memory (bytes)."""

    batch_size: int
    seconds_per_batch: float
    images_per_second: float
    peak_memory_bytes: int
    memory_kind: str  # "cuda_max_allocated" or "process_peak_rss"


class BenchReport(TypedDict):
    """What `run_benchmark` measured (JSON-able); `rows` are `BenchRow`s as dicts."""

    model: dict[str, object]
    config: dict[str, Any]
    dtype: str
    device: str
    torch: str
    threads: int
    gflops_per_image: float
    graph: str
    peak_tflops: float | None
    repeats: int
    rows: list[dict[str, Any]]


def flops_per_image(engine: FaceSR) -> float:
    """Convolution FLOPs (2 x MAC) of one forward pass on one LR face (16 x 16), all steps."""
    config = engine.config
    x = torch.zeros(1, config.in_channels, config.lr_size, config.lr_size, device=engine.device)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        engine.generator(x)
    return float(counter.get_total_flops())


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def bench_batch(engine: FaceSR, batch_size: int, repeats: int, warmup: int = 1, seed: int = 0) -> BenchRow:
    """Time `repeats` forward passes of a random-face batch after `warmup` untimed ones."""
    rng = np.random.default_rng(seed)
    side = engine.config.lr_size
    lr = rng.integers(0, 256, size=(batch_size, side, side, 3), dtype=np.uint8)
    cuda = engine.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(engine.device)
    for _ in range(warmup):
        engine.enhance_tensor(lr)
    if cuda:
        torch.cuda.synchronize(engine.device)
    start = time.perf_counter()
    for _ in range(repeats):
        engine.enhance_tensor(lr)
    if cuda:
        torch.cuda.synchronize(engine.device)
    per_batch = (time.perf_counter() - start) / repeats
    if cuda:
        peak, kind = torch.cuda.max_memory_allocated(engine.device), "cuda_max_allocated"
    else:
        peak, kind = _peak_rss_bytes(), "process_peak_rss"
    return BenchRow(batch_size, per_batch, batch_size / per_batch, int(peak), kind)


def run_benchmark(
    engine: FaceSR, max_batch: int, repeats: int, *, peak_tflops: float | None = None
) -> BenchReport:
    """Every batch size 1, 2, 4, ... up to `max_batch`; a JSON-able report. With the device's
    ``peak_tflops`` the table also shows the fraction of it that the convolutions reach."""
    rows = [bench_batch(engine, size, repeats) for size in bucket_sizes(max_batch)]
    return BenchReport(
        model=engine.describe(),
        config=engine.config.to_dict(),
        dtype=dtype_name(engine.dtype),
        device=str(engine.device),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        gflops_per_image=flops_per_image(engine) / 1e9,
        graph=engine.graph,
        peak_tflops=peak_tflops,
        repeats=repeats,
        rows=[asdict(row) for row in rows],
    )


def format_table(report: BenchReport) -> str:
    """A markdown table of a `run_benchmark` report."""
    gflops, peak = report["gflops_per_image"], report["peak_tflops"]
    lines = [
        f"device {report['device']}, dtype {report['dtype']}, {report['graph']}, "
        f"threads {report['threads']}, {gflops:.2f} GFLOPs/image",
        "",
        "| batch | s/batch | images/s | TFLOP/s | fraction of peak | peak memory (MiB) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        tflops = row["images_per_second"] * gflops / 1000
        fraction = f"{tflops / peak:.3f}" if peak else "-"
        lines.append(
            f"| {row['batch_size']} | {row['seconds_per_batch']:.4f} | {row['images_per_second']:.2f} | "
            f"{tflops:.3f} | {fraction} | {row['peak_memory_bytes'] / 2**20:.0f} ({row['memory_kind']}) |"
        )
    return "\n".join(lines)
