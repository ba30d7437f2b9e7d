"""`facesr` subcommands of the model package: enhance, convert-official, bench-model."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from tqdm import tqdm

from facesr.model.errors import FaceSRError
from facesr.model.input_policy import ACCEPTED_FORMATS_TEXT, DEFAULT_FIT, Fit
from facesr.model.output_plan import OUTPUT_SUFFIXES_TEXT

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


# Typer's rich help keeps line breaks, so each paragraph is one line here.
ENHANCE_HELP = "\n\n".join(
    (
        f"Super-resolve face images of any size ({ACCEPTED_FORMATS_TEXT}).",
        f"-o is a folder (created when missing), or one image file ending in {OUTPUT_SUFFIXES_TEXT} "
        "(written in that format) when the input is exactly one file.",
        "In a folder each result is named after its input's path below the folder argument (or the "
        "file's name) with .png; --steps adds NAME.stepI.png and --landmarks-json NAME.landmarks.json "
        "beside it. When names would clash, every member of the clashing group keeps its source suffix "
        "(face16.bmp.png, face16.webp.png), else goes below its source folder's name (day1/face.png, "
        "day2/face.png), else both, with more folder names until the names differ.",
        "Folders are read recursively: files with an image suffix are read, other files are reported, "
        "hidden files and folders (names starting with a dot) are ignored. A file named on the command "
        "line is always tried by its content. Each file that cannot be used is reported and the exit "
        "status is 1; the others are still processed.",
        "Every output is checked before the model runs: nothing that exists is replaced without "
        "--overwrite (and even then an input file only by its own result), and a conflict writes nothing.",
    )
)


def enhance(
    inputs: Annotated[list[Path], typer.Argument(help="image files and/or folders of images")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="output folder, or an image file for a single input")
    ],
    checkpoint: CheckpointOption = None,
    landmarks_json: Annotated[
        bool, typer.Option("--landmarks-json", help="write <name>.landmarks.json")
    ] = False,
    steps: Annotated[bool, typer.Option("--steps", help="also write every step's image")] = False,
    fit: Annotated[
        Fit, typer.Option(help="make a non-square image square by a centre crop or by edge padding")
    ] = DEFAULT_FIT,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="replace existing output files (never another input)")
    ] = False,
    batch_size: Annotated[int, typer.Option(min=1, max=1024)] = 16,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "fp32",
) -> None:
    from facesr.model.enhance_run import OutputWriteError, RunOptions, run
    from facesr.model.files import MissingInputError, collect_inputs
    from facesr.model.inference import FaceSR
    from facesr.model.landmark_quality import landmark_quality
    from facesr.model.output_plan import PlanError, check_plan, plan_outputs

    try:
        collected = collect_inputs(inputs)
        num_steps = _checkpoint_steps(checkpoint)
    except (FaceSRError, MissingInputError) as error:
        raise _fail(str(error)) from error
    if not collected.files:
        for skipped in collected.skipped:
            typer.echo(f"error: {skipped.path}: {skipped.reason}; skipped", err=True)
        raise _fail("no input images found")
    try:
        plan = plan_outputs(
            collected.files,
            output,
            has_folder_input=collected.has_folder,
            num_steps=num_steps if steps else 0,
            landmarks=landmarks_json,
        )
        check_plan(plan, overwrite=overwrite)
    except PlanError as error:
        raise _fail(str(error)) from error
    try:
        engine = FaceSR.from_checkpoint(checkpoint, device=device, dtype=dtype)
    except (FaceSRError, ValueError, RuntimeError) as error:  # torch.device("nonsense"): RuntimeError
        raise _fail(str(error)) from error
    quality = landmark_quality(engine.card)
    if landmarks_json and quality.status != "passed":
        typer.secho(f"warning: {quality.message()}", err=True, fg=typer.colors.YELLOW)
    options = RunOptions(
        fit=fit, steps=steps, landmarks=landmarks_json, replace=overwrite, batch_size=batch_size
    )
    show_progress = len(plan.items) > 1 or collected.has_folder
    with tqdm(total=len(plan.items), unit="img", disable=not show_progress, file=sys.stderr) as progress:

        def report(line: str) -> None:
            progress.write(line, file=sys.stderr)

        for skipped in collected.skipped:
            report(f"error: {skipped.path}: {skipped.reason}; skipped")
        try:
            tally = run(engine, plan, options, quality, report, progress.update)
        except OutputWriteError as error:
            report(f"error: {error}")
            raise typer.Exit(code=1) from error
    failed = tally.failed + len(collected.skipped)
    problems = f"; {failed} file(s) not processed (see above)" if failed else ""
    typer.echo(
        f"wrote {tally.written} image(s) to {plan.destination} with {engine.model_id} on {engine.device}"
        f"{problems}"
    )
    if failed:
        raise typer.Exit(code=1)


enhance.__doc__ = ENHANCE_HELP


def _checkpoint_steps(checkpoint: Path | None) -> int:
    """The number of SR steps of a checkpoint, from its header alone (no weights are loaded).

    Raises:
        CheckpointError: the file is missing, unreadable or not a facesr checkpoint.
    """
    from facesr.model.checkpoint import read_card
    from facesr.model.checkpoints import DEFAULT_CHECKPOINT
    from facesr.model.config import DICConfig
    from facesr.model.errors import CheckpointError

    path = checkpoint if checkpoint is not None else DEFAULT_CHECKPOINT
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint not found: {path}"
            if checkpoint is not None
            else f"the bundled default checkpoint is missing ({path}); pass --checkpoint"
        )
    card = read_card(path)
    try:
        return DICConfig.from_dict(card.config).num_steps
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: the model card has no usable configuration ({error})") from error


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
