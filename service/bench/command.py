"""`facesr bench-service`: the CLI of the benchmark harness (registered where the model runtime is)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def _positive_list(text: str, option: str, parse: type[int] | type[float]) -> list:
    """``1,2,4`` -> [1, 2, 4]; anything but a list of positive numbers is a usage error."""
    try:
        values = [parse(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or min(values) <= 0:
        raise typer.BadParameter(
            f"expected comma-separated positive numbers, got {text!r}", param_hint=option
        )
    return values


def bench_service(
    out: Annotated[
        Path, typer.Option(help="Folder for result.json, the CSV files, tables.md and logs.")
    ] = Path("bench-results"),
    checkpoint: Annotated[
        Path | None, typer.Option(help="Checkpoint to serve (default: the bundled one).")
    ] = None,
    config: Annotated[
        str | None, typer.Option(help="Serve random weights of a preset instead: paper, reduced or tiny.")
    ] = None,
    faces: Annotated[
        Path | None,
        typer.Option(help="Folder of face images to send (made 16x16); default: synthetic faces."),
    ] = None,
    modes: Annotated[str, typer.Option(help="Service modes to start, comma-separated: embedded, redis.")] = (
        "embedded,redis"
    ),
    url: Annotated[
        str | None, typer.Option(help="Measure a running service instead of starting one.")
    ] = None,
    metrics_url: Annotated[
        list[str] | None,
        typer.Option(help="Worker /metrics URL(s) of --url (repeatable; default URL/metrics)."),
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes in Redis mode.")] = 1,
    device: Annotated[str, typer.Option(help="FACESR_DEVICE of the service and the raw model.")] = "auto",
    dtype: Annotated[str, typer.Option(help="FACESR_DTYPE of the service and the raw model.")] = "fp32",
    runners: Annotated[str, typer.Option(help="FACESR_RUNNERS of the service (auto: measured).")] = "auto",
    threads_per_runner: Annotated[
        str, typer.Option(help="FACESR_THREADS_PER_RUNNER (auto: measured).")
    ] = "auto",
    max_batch_size: Annotated[str, typer.Option(help="FACESR_MAX_BATCH_SIZE (auto: measured).")] = "auto",
    graph: Annotated[str, typer.Option(help="FACESR_GRAPH of the service and the raw model.")] = "auto",
    max_queue: Annotated[
        int, typer.Option(min=1, help="FACESR_MAX_QUEUE: small, so overload answers 429 soon.")
    ] = 32,
    concurrency: Annotated[
        str | None,
        typer.Option(
            help="Closed-loop client counts, comma-separated (default: 1, 2, 4, ... past saturation)."
        ),
    ] = None,
    window_s: Annotated[
        float, typer.Option(min=0.1, help="Closed-loop window; windows repeat until three agree within 10%.")
    ] = 5.0,
    max_windows: Annotated[int, typer.Option(min=1, help="Most windows per closed-loop level.")] = 6,
    warmup_s: Annotated[float, typer.Option(min=0, help="Unmeasured seconds before each level.")] = 2.0,
    open_fractions: Annotated[
        str, typer.Option(help="Open-loop rates as fractions of the mode's closed-loop saturation.")
    ] = "0.25,0.5,0.75,0.9,1.0,1.25,1.5",
    open_duration_s: Annotated[
        float, typer.Option(min=0.5, help="Seconds of arrivals per open-loop rate.")
    ] = 10.0,
    p99_budget_ms: Annotated[
        float | None,
        typer.Option(min=1, help="Open-loop p99 budget (default: 2 x one batch's compute time)."),
    ] = None,
    raw_seconds: Annotated[
        float, typer.Option(min=0.05, help="Seconds per raw-model measurement point.")
    ] = 2.0,
    samples: Annotated[
        int, typer.Option(min=1, help="Faces whose outputs are checked against the raw model.")
    ] = 8,
    readme: Annotated[
        Path | None, typer.Option(help="Replace the generated benchmark section of this markdown file.")
    ] = None,
) -> None:
    """Benchmark the service against the raw model: closed- and open-loop load, ratios, targets."""
    from facesr.service.bench import report
    from facesr.service.bench.run import BenchOptions, run
    from facesr.service.bench.stack import StackError

    if readme is not None:  # checked now, not after a run of many minutes
        try:
            report.splice_section(readme.read_text(), "")
        except (OSError, ValueError) as error:
            raise typer.BadParameter(str(error), param_hint="--readme") from None
    options = BenchOptions(
        out=out,
        checkpoint=checkpoint,
        config=config,
        faces=faces,
        modes=[mode.strip() for mode in modes.split(",") if mode.strip()],
        url=url,
        metrics_urls=metrics_url or [],
        workers=workers,
        device=device,
        dtype=dtype,
        runners=runners,
        threads_per_runner=threads_per_runner,
        max_batch_size=max_batch_size,
        graph=graph,
        max_queue=max_queue,
        concurrency=_positive_list(concurrency, "--concurrency", int) if concurrency else [],
        window_s=window_s,
        max_windows=max_windows,
        warmup_s=warmup_s,
        open_fractions=_positive_list(open_fractions, "--open-fractions", float),
        open_duration_s=open_duration_s,
        p99_budget_ms=p99_budget_ms,
        raw_seconds=raw_seconds,
        samples=samples,
        say=lambda line: typer.echo(line, err=True),
    )
    try:
        result = run(options)
    except (StackError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    paths = report.write_all(out, result)
    typer.echo(report.markdown(result))
    typer.echo(f"\nwrote {', '.join(str(path) for path in paths.values())}", err=True)
    if readme is not None:
        readme.write_text(report.splice_section(readme.read_text(), report.markdown(result)))
        typer.echo(f"updated the benchmark section of {readme}", err=True)


def register(app: typer.Typer) -> None:
    app.command("bench-service")(bench_service)
