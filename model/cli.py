"""`facesr` subcommands of the model package: enhance, convert-official, bench-model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from PIL import Image
from tqdm import tqdm

from facesr.model.errors import FaceSRError

if TYPE_CHECKING:
    from facesr.model.runtime import GraphMode

CheckpointOption = Annotated[
    Path | None, typer.Option("--checkpoint", "-c", help="facesr .safetensors checkpoint (default: bundled)")
]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")]
DtypeOption = Annotated[str, typer.Option(help="fp32, bf16 or fp16 (half precision on CUDA only)")]


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=1)


def enhance(
    inputs: Annotated[list[Path], typer.Argument(help="image files and/or folders of images")],
    output: Annotated[Path, typer.Option("--output", "-o", help="output folder")],
    checkpoint: CheckpointOption = None,
    landmarks_json: Annotated[
        bool, typer.Option("--landmarks-json", help="write <name>.landmarks.json")
    ] = False,
    steps: Annotated[bool, typer.Option("--steps", help="also write every step's image")] = False,
    batch_size: Annotated[int, typer.Option(min=1, max=1024)] = 16,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "fp32",
) -> None:
    """Super-resolve face images of any size (others than 16x16 are made into LR faces as in training)."""
    from facesr.model.files import collect_inputs, read_rgb
    from facesr.model.inference import FaceSR, landmark_points
    from facesr.model.landmark_quality import landmark_quality

    try:
        engine = FaceSR.from_checkpoint(checkpoint, device=device, dtype=dtype)
    except (FaceSRError, ValueError) as error:
        raise _fail(str(error)) from error
    files = collect_inputs(inputs)
    if not files:
        raise _fail("no input images found")
    quality = landmark_quality(engine.card)
    if landmarks_json and quality.status != "passed":
        typer.secho(quality.message(), err=True, fg=typer.colors.YELLOW)
    output.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    done = 0
    show_progress = len(files) > 1 or any(path.is_dir() for path in inputs)
    with tqdm(total=len(files), unit="img", disable=not show_progress) as progress:
        for start in range(0, len(files), batch_size):
            chunk, images = [], []
            for item in files[start : start + batch_size]:
                try:
                    images.append(read_rgb(item.path))
                    chunk.append(item)
                except ValueError as error:
                    failures.append(f"{item.path}: {error}")
                    progress.update(1)
            if not chunk:
                continue
            for item, result in zip(chunk, engine.enhance(images, return_steps=steps), strict=True):
                target = output / item.relative
                target.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(result.image).save(target.with_suffix(".png"))
                if steps and result.steps is not None:
                    for index, image in enumerate(result.steps):
                        Image.fromarray(image).save(target.with_name(f"{target.name}.step{index}.png"))
                if landmarks_json:
                    payload = {
                        "image": target.with_suffix(".png").name,
                        "model_id": engine.model_id,
                        "landmarks": None if quality.withheld else landmark_points(result),
                        "landmark_quality": quality.as_dict(),
                        "resized_from": result.resized_from,
                    }
                    target.with_name(f"{target.name}.landmarks.json").write_text(json.dumps(payload))
                done += 1
                progress.update(1)
    typer.echo(f"wrote {done} image(s) to {output} with {engine.model_id} on {engine.device}")
    for failure in failures:
        typer.secho(f"skipped {failure}", err=True, fg=typer.colors.YELLOW)
    if failures:
        raise typer.Exit(code=1)


def convert_official(
    source: Annotated[Path, typer.Argument(help="the authors' DIC or DICGAN .pth checkpoint")],
    destination: Annotated[Path, typer.Argument(help="facesr .safetensors checkpoint to write")],
    num_steps: Annotated[int, typer.Option(min=1, max=16, help="iterations (not stored in the weights)")] = 4,
    name: Annotated[str | None, typer.Option(help="model name in the card")] = None,
    discriminator: Annotated[
        Path | None, typer.Option(help="also write a DICGAN file's discriminator here (.safetensors)")
    ] = None,
) -> None:
    """Convert the authors' released checkpoint (loaded with weights_only=True) to a facesr checkpoint."""
    from facesr.model.official import convert_official as convert

    try:
        config, card = convert(
            source, destination, num_steps=num_steps, name=name, discriminator_destination=discriminator
        )
    except FaceSRError as error:
        raise _fail(str(error)) from error
    typer.echo(f"wrote {destination}: {card.architecture} '{card.name}', {card.parameters:,} parameters")
    typer.echo(json.dumps(config.to_dict()))


def bench_model(
    checkpoint: CheckpointOption = None,
    config: Annotated[
        str | None, typer.Option(help="bench random weights of a preset instead: paper, reduced or tiny")
    ] = None,
    max_batch: Annotated[int, typer.Option(min=1, max=4096)] = 16,
    repeats: Annotated[int, typer.Option(min=1)] = 3,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "fp32",
    graph: Annotated[
        str | None,
        typer.Option(help="eager, trace or compile (torch.compile per batch size; CUDA graphs on CUDA)"),
    ] = None,
    peak_tflops: Annotated[
        float | None,
        typer.Option(help="the device's peak TFLOP/s at this dtype, to print the fraction reached"),
    ] = None,
    json_out: Annotated[Path, typer.Option("--json", help="where to write the JSON report")] = Path(
        "bench-model.json"
    ),
) -> None:
    """Images/s and peak memory per batch size (1, 2, 4, ... max), and FLOPs per image."""
    from facesr.model.bench import format_table, run_benchmark
    from facesr.model.config import DICConfig
    from facesr.model.inference import FaceSR

    try:
        if config is not None:
            engine = FaceSR.from_config(
                DICConfig.preset(config),
                device=device,
                dtype=dtype,
                name=f"{config}-random",
                graph=_graph(graph),
                max_batch_size=max_batch,
            )
        else:
            engine = FaceSR.from_checkpoint(
                checkpoint, device=device, dtype=dtype, graph=_graph(graph), max_batch_size=max_batch
            )
    except (FaceSRError, ValueError) as error:
        raise _fail(str(error)) from error
    report = run_benchmark(engine, max_batch, repeats, peak_tflops=peak_tflops)
    json_out.write_text(json.dumps(report, indent=2))
    typer.echo(format_table(report))
    typer.echo(f"report written to {json_out}")


def _graph(name: str | None) -> GraphMode | None:
    """--graph checked against the runtime's modes (imported here: the CLI module imports no torch)."""
    from facesr.model.runtime import GRAPH_MODES

    if name is not None and name not in GRAPH_MODES:
        raise _fail(f"--graph must be one of {', '.join(GRAPH_MODES)}")
    return name


def register(app: typer.Typer) -> None:
    """Add the model subcommands to the main app."""
    app.command("enhance")(enhance)
    app.command("convert-official")(convert_official)
    app.command("bench-model")(bench_model)
