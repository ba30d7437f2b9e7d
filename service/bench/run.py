"""One benchmark run: the raw model, then each service mode under closed- and open-loop load.

Order: start the first mode and read the runner layout it chose (later modes are started with that
layout fixed, so every mode and the raw model run the same layout); measure the raw model in this process
at that layout while the service idles; check a sample of the service's outputs against the raw model's;
sweep the closed loop (1, 2, 4, ... clients until two levels past the best gain nothing), then the open
loop at fractions of that mode's saturation; stop it and go on with the next mode; measure the raw model
again at the end. Raw figures are the median of the two measurements, as the machine's speed drifts.
"""

from __future__ import annotations

import asyncio
import datetime
import io
import logging
import platform
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import numpy as np
import torch
from PIL import Image

from facesr.model.checkpoint import ModelCard, save_checkpoint
from facesr.model.config import LR_SIZE, DICConfig
from facesr.model.generator import DICGenerator, count_parameters
from facesr.model.image_file import decode_face
from facesr.model.inference import FaceSR
from facesr.model.input_policy import ACCEPTED_SUFFIXES
from facesr.model.runtime import GraphMode, bucket_sizes
from facesr.service.bench import counters, load, raw, stack
from facesr.service.worker.layout import usable_cores

log = logging.getLogger(__name__)


@dataclass
class BenchOptions:
    """What to measure and how long (see `facesr bench-service --help` for each)."""

    out: Path
    checkpoint: Path | None = None
    config: str | None = None
    faces: Path | None = None
    modes: Sequence[str] = ("embedded", "redis")
    url: str | None = None
    metrics_urls: Sequence[str] = ()
    workers: int = 1
    device: str = "auto"
    dtype: str = "fp32"
    runners: str = "auto"
    threads_per_runner: str = "auto"
    max_batch_size: str = "auto"
    graph: str = "auto"
    max_queue: int = 32
    concurrency: Sequence[int] = ()
    max_concurrency: int = 64
    warmup_s: float = 2.0
    window_s: float = 5.0
    max_windows: int = 6
    open_fractions: Sequence[float] = (0.25, 0.5, 0.75, 0.9, 1.0, 1.25, 1.5)
    open_duration_s: float = 10.0
    p99_budget_ms: float | None = None
    raw_seconds: float = 2.0
    samples: int = 8
    say: Callable[[str], None] = field(default=print)


def load_faces(folder: Path | None, count: int) -> np.ndarray:
    """``count`` LR faces (N x 16 x 16 x 3 uint8): images of ``folder`` made 16 x 16 as the service
    would, or smooth synthetic patterns when no folder is given."""
    if folder is None:
        rng = np.random.default_rng(0)
        ys, xs = np.mgrid[0:LR_SIZE, 0:LR_SIZE].astype(np.float32) / LR_SIZE
        faces = []
        for _ in range(count):
            k = rng.uniform(2, 7, size=3)
            rgb = np.stack([np.sin(xs * k[0]), np.cos(ys * k[1]), np.sin((xs + ys) * k[2])], axis=-1)
            faces.append(((rgb + 1) * 127.5).astype(np.uint8))
        return np.stack(faces)
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in ACCEPTED_SUFFIXES)[:count]
    if not paths:
        raise ValueError(f"no images ({', '.join(sorted(ACCEPTED_SUFFIXES))}) in {folder}")
    return np.stack([decode_face(path, size=LR_SIZE).lr_rgb for path in paths])


def random_checkpoint(preset: str, folder: Path) -> Path:
    """A checkpoint of the ``preset`` network with seeded random weights, for speed measurements of
    widths that no trained checkpoint has (the paper's, on a GPU)."""
    config = DICConfig.preset(preset)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        generator = DICGenerator(config)
    card = ModelCard(
        name=f"{preset}-random",
        description="random weights: for speed measurements only",
        config=config.to_dict(),
        parameters=count_parameters(generator),
        provenance="torch.manual_seed(0)",
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{preset}-random.safetensors"
    save_checkpoint(path, generator, config, card)
    return path


def service_settings(options: BenchOptions, layout: dict[str, Any] | None) -> dict[str, str]:
    """FACESR_ settings of the service under test; a known layout is fixed so that it is not re-measured."""
    env = {
        "FACESR_DEVICE": options.device,
        "FACESR_DTYPE": options.dtype,
        "FACESR_MAX_QUEUE": str(options.max_queue),
        "FACESR_LOG_LEVEL": "warning",
        "FACESR_GRAPH": options.graph,
        "FACESR_RUNNERS": options.runners,
        "FACESR_THREADS_PER_RUNNER": options.threads_per_runner,
        "FACESR_MAX_BATCH_SIZE": options.max_batch_size,
    }
    if options.checkpoint is not None:
        env["FACESR_CHECKPOINT"] = str(options.checkpoint)
    if layout is not None:
        env["FACESR_RUNNERS"] = str(layout["runners"])
        env["FACESR_THREADS_PER_RUNNER"] = str(layout["threads_per_runner"])
        env["FACESR_MAX_BATCH_SIZE"] = str(layout["max_batch_size"])
    return env


def start(options: BenchOptions, mode: str, layout: dict[str, Any] | None) -> stack.Stack:
    logs = options.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    settings = service_settings(options, layout)
    if mode == "embedded":
        return stack.start_embedded(settings, logs)
    if mode == "redis":
        return stack.start_redis_mode(settings, options.workers, logs)
    if mode == "url" and options.url:
        return stack.existing(options.url, options.metrics_urls)
    raise ValueError(f"unknown mode {mode!r} (embedded, redis, or url with --url)")


def served_layout(service: stack.Stack) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(model id, runner layout, card) of the one model the service serves."""
    models = service.served_models()
    if len(models) != 1:
        raise stack.StackError(f"the benchmark needs exactly one served model, found {sorted(models)}")
    model = next(iter(models.values()))
    card, model_id = model["card"], model.get("model_id") or ""
    if "runner_layout" not in card:
        raise stack.StackError("the service does not report its runner layout (an older version?)")
    return model_id, dict(card["runner_layout"]), card


def check_outputs(service: stack.Stack, faces: np.ndarray, references: list[np.ndarray]) -> dict[str, int]:
    """Send each face once; count outputs identical to the raw model's and the largest difference."""
    identical, worst = 0, 0
    with httpx.Client(base_url=service.url, timeout=60) as client:
        for face, reference in zip(faces, references, strict=True):
            response = client.post(
                "/v1/super-resolve",
                files={"image": ("face.png", raw.png(face), "image/png")},
                headers={"Accept": "image/png"},
            )
            if response.status_code != 200:
                raise stack.StackError(
                    f"a sample face was answered {response.status_code}: {response.text[:300]}"
                )
            served = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))
            difference = int(np.abs(served.astype(np.int16) - reference.astype(np.int16)).max())
            identical += difference == 0
            worst = max(worst, difference)
    return {"checked": len(faces), "identical": identical, "max_abs_diff": worst}


def closed_sweep(options: BenchOptions, service: stack.Stack, request: load.Request) -> list[dict[str, Any]]:
    """Levels 1, 2, 4, ... (or the given ones) until two levels in a row gain under 5% on the best."""

    async def read_counters() -> counters.Counters:
        return await counters.read(service.metrics_urls)

    given = list(options.concurrency)
    rows: list[dict[str, Any]] = []
    concurrency = given.pop(0) if given else 1
    best, flat = 0.0, 0
    while True:
        windows, agreed = asyncio.run(
            load.closed_loop(
                service.url,
                request,
                concurrency,
                warmup_s=options.warmup_s,
                window_s=options.window_s,
                max_windows=options.max_windows,
                read_counters=read_counters,
            )
        )
        kept = windows.samples[-3:]
        seconds = sum(windows.durations[-len(kept) :])
        summary = load.summarize([s for window in kept for s in window], seconds)
        seen = counters.difference(windows.counters[-len(kept) - 1], windows.counters[-1])
        row = {
            "mode": service.mode,
            "concurrency": concurrency,
            **summary,
            "mean_batch": seen["mean_batch"],
            **{f"{phase}_ms": ms for phase, ms in seen["phase_ms"].items()},
            "windows": len(windows.samples),
            "agreed": agreed,
        }
        rows.append(row)
        options.say(
            f"  {service.mode:8} closed c={concurrency:<3} {row['req_per_s']:7.1f} req/s  "
            f"p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms  batch {row['mean_batch']}  "
            f"429s {row['rejected']}  errors {row['errors']}"
        )
        if options.concurrency:
            if not given:
                break
            concurrency = given.pop(0)
            continue
        if row["req_per_s"] > best * 1.05:
            best, flat = max(best, row["req_per_s"]), 0
        else:
            best, flat = max(best, row["req_per_s"]), flat + 1
        if flat >= 2 or concurrency * 2 > options.max_concurrency:
            break
        concurrency *= 2
    return rows


def open_sweep(
    options: BenchOptions, service: stack.Stack, request: load.Request, saturation: float, budget_ms: float
) -> list[dict[str, Any]]:
    """Poisson arrivals at each fraction of ``saturation``."""
    rows = []
    for index, fraction in enumerate(options.open_fractions):
        rate = max(0.5, fraction * saturation)
        samples, seconds = asyncio.run(
            load.open_loop(service.url, request, rate, options.open_duration_s, seed=index)
        )
        summary = load.summarize(samples, seconds)
        p99 = summary["p99_ms"]
        row = {
            "mode": service.mode,
            "fraction": fraction,
            "offered_per_s": round(rate, 2),
            **summary,
            "budget_ms": round(budget_ms),
            "within_budget": p99 is not None
            and p99 <= budget_ms
            and summary["rejected_fraction"] < 0.001
            and summary["errors"] == 0,
        }
        rows.append(row)
        options.say(
            f"  {service.mode:8} open {rate:6.1f}/s -> {row['req_per_s']:6.1f} req/s  "
            f"p50 {row['p50_ms']} ms  p99 {p99} ms  "
            f"rejected {row['rejected_fraction']:.2%} (p50 {row['rejected_p50_ms']} ms)"
        )
    return rows


def total_runners(mode: str, layout: dict[str, Any], workers: int) -> int:
    """Runners of the whole service in ``mode``: the layout's, times the worker processes in Redis mode."""
    return int(layout["runners"]) * (workers if mode == "redis" else 1)


def _median_rows(*measurements: list[raw.RawRow]) -> list[dict[str, Any]]:
    rows = []
    for points in zip(*measurements, strict=True):
        rate = statistics.median(point.faces_per_second for point in points)
        first = points[0]
        rows.append(
            {
                "runners": first.runners,
                "threads_per_runner": first.threads_per_runner,
                "batch_size": first.batch_size,
                "faces_per_second": round(rate, 2),
                "seconds_per_batch": round(first.runners * first.batch_size / rate, 4),
            }
        )
    return rows


def _target(mode: str, quantity: str, value: float, target: str, met: bool | None) -> dict[str, Any]:
    return {"mode": mode, "quantity": quantity, "value": value, "target": target, "met": met}


def targets(
    mode: str,
    closed: list[dict[str, Any]],
    opened: list[dict[str, Any]],
    yardstick: Yardstick,
    raw_rows: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """The service/raw ratio and the three targets of one mode.

    - saturation >= 0.9 x cores x the best single-runner faces/s of the raw model on one core;
    - saturation / 1 client >= 1.8;
    - p99 at half the saturating load <= 2 x the compute time of one batch (one runner, the layout's
      largest batch, from the raw measurement).
    """
    saturation = max(row["req_per_s"] for row in closed)
    raw_best = max(row["faces_per_second"] for row in raw_rows)
    single = yardstick.single.faces_per_second
    cores = usable_cores()
    wanted = 0.9 * cores * single
    rows = [
        _target(mode, "service / raw at the same layout", round(saturation / raw_best, 3), "-", None),
        _target(
            mode,
            "saturation req/s",
            saturation,
            f">= {wanted:.1f} (0.9 x {cores} cores x {single:.1f} faces/s on one core)",
            saturation >= wanted,
        ),
    ]
    one_client = next((row["req_per_s"] for row in closed if row["concurrency"] == 1), None)
    if one_client:
        ratio = round(saturation / one_client, 2)
        rows.append(_target(mode, "saturation / 1 client", ratio, ">= 1.8", ratio >= 1.8))
    half = min(opened, key=lambda row: abs(row["fraction"] - 0.5)) if opened else None
    if half is not None and half["p99_ms"] is not None:
        limit_ms = 2000 * batch_seconds(raw_rows, yardstick.layout)
        rows.append(
            _target(
                mode,
                f"p99 ms at {half['fraction']:.2f} x saturation",
                half["p99_ms"],
                f"<= {limit_ms:.0f} (2 x one batch)",
                half["p99_ms"] <= limit_ms,
            )
        )
    return rows


def batch_seconds(raw_rows: list[dict[str, Any]], layout: dict[str, Any]) -> float:
    """One runner's compute time for a batch of the layout's largest size."""
    largest = int(layout["max_batch_size"])
    return float(next(row["seconds_per_batch"] for row in raw_rows if row["batch_size"] == largest))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass
class Yardstick:
    """The raw model at the service's layout, with as many runners as the service has in all (one
    process's runners embedded; every worker's in Redis mode): measured before the load and after."""

    engine: FaceSR
    layout: dict[str, Any]
    seconds: float
    single: raw.RawRow
    references: list[np.ndarray]
    before: dict[int, list[raw.RawRow]] = field(default_factory=dict)  # by total runners

    @classmethod
    def measure(cls, options: BenchOptions, layout: dict[str, Any], faces: np.ndarray) -> Yardstick:
        engine = FaceSR.from_checkpoint(
            options.checkpoint,
            device=None if options.device == "auto" else options.device,
            dtype=options.dtype,
            graph=None if options.graph == "auto" else cast("GraphMode", options.graph),
            max_batch_size=int(layout["max_batch_size"]),
        )
        sizes = bucket_sizes(int(layout["max_batch_size"]))
        single = raw.single_core_best(engine, sizes, options.raw_seconds)
        return cls(engine, layout, options.raw_seconds, single, raw.reference_outputs(engine, faces))

    def _measure(self, runners: int) -> list[raw.RawRow]:
        threads = max(1, int(self.layout["threads_per_runner"]))
        sizes = bucket_sizes(int(self.layout["max_batch_size"]))
        return raw.measure(self.engine, runners, threads, sizes, self.seconds)

    def first(self, runners: int) -> list[dict[str, Any]]:
        """The measurement before the load with ``runners`` in all (made on first use)."""
        if runners not in self.before:
            self.before[runners] = self._measure(runners)
        return _median_rows(self.before[runners])

    def final(self) -> list[dict[str, Any]]:
        """For every runner count measured: the median of the measurement before and a new one now."""
        return [
            row
            for runners, before in self.before.items()
            for row in _median_rows(before, self._measure(runners))
        ]


def run(options: BenchOptions) -> dict[str, Any]:
    """The whole benchmark; returns the JSON-able result (see `report.write_all`)."""
    if options.config is not None:
        options.checkpoint = random_checkpoint(options.config, options.out)
    faces = load_faces(options.faces, max(1, options.samples))
    request = load.Request(raw.png(faces[0]))
    source = f"faces from {options.faces.name}" if options.faces else "synthetic faces"
    yardstick: Yardstick | None = None
    result: dict[str, Any] = {
        "started": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "environment": {
            "cpus": usable_cores(),
            "cpu": cpu_name(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "upload": f"one {LR_SIZE}x{LR_SIZE} PNG ({source}), answered as PNG",
        "closed": [],
        "open": [],
        "modes": {},
        "outputs": {"checked": 0, "identical": 0, "max_abs_diff": 0},
    }
    for mode in ["url"] if options.url else list(options.modes):
        options.say(f"{mode}: starting")
        service = start(options, mode, yardstick.layout if yardstick else None)
        try:
            model_id, layout, card = served_layout(service)
            if yardstick is None:
                options.say(f"layout {layout}; measuring the raw model in this process")
                yardstick = Yardstick.measure(options, layout, faces)
                if model_id and yardstick.engine.model_id != model_id:
                    raise stack.StackError(
                        f"the service serves {model_id}, the raw model here is {yardstick.engine.model_id}: "
                        "pass the served checkpoint with --checkpoint"
                    )
                result.update(
                    model_id=model_id, model_device=card.get("device"), model_graph=card.get("graph")
                )
            runners = total_runners(mode, layout, options.workers)
            raw_first = yardstick.first(runners)
            checked = check_outputs(service, faces, yardstick.references)
            outputs = result["outputs"]
            outputs["checked"] += checked["checked"]
            outputs["identical"] += checked["identical"]
            outputs["max_abs_diff"] = max(outputs["max_abs_diff"], checked["max_abs_diff"])
            closed = closed_sweep(options, service, request)
            saturation = max(row["req_per_s"] for row in closed)
            budget = options.p99_budget_ms or 2000 * batch_seconds(raw_first, layout)
            result["modes"][mode] = {"layout": layout, "runners": runners, "saturation_req_per_s": saturation}
            result["closed"] += closed
            result["open"] += open_sweep(options, service, request, saturation, budget)
        finally:
            service.stop()
    if yardstick is None:
        raise ValueError("no service mode was measured")
    raw_rows = yardstick.final()
    result["raw"] = raw_rows
    result["layout"] = yardstick.layout
    result["single_core"] = {
        "batch_size": yardstick.single.batch_size,
        "faces_per_second": round(yardstick.single.faces_per_second, 2),
    }
    result["targets"] = [
        target
        for mode in result["modes"]
        for target in targets(
            mode,
            [row for row in result["closed"] if row["mode"] == mode],
            [row for row in result["open"] if row["mode"] == mode],
            yardstick,
            [row for row in raw_rows if row["runners"] == result["modes"][mode]["runners"]],
        )
    ]
    return result
