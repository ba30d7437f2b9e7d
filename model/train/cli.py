"""`facesr` subcommands for the train area."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from facesr.model.config import HR_SIZE


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=1)


# -- prepare / evaluate (data preparation and evaluation) -----------------------------------------------


def prepare_command(
    src_dir: Annotated[Path, typer.Argument(help="folder of photos (searched recursively for .pts files)")],
    out_dir: Annotated[Path, typer.Argument(help="output data set folder (HR/, landmarks68.npy, list.txt)")],
    annotations: Annotated[
        Path | None,
        typer.Option(
            help="a .csv (name,x0,y0,...,x67,y67) or .npy (N x 68 x 2) file; default: .pts beside images"
        ),
    ] = None,
    names: Annotated[
        Path | None, typer.Option(help="image names for a .npy annotation file (default: list.txt beside it)")
    ] = None,
    scale: Annotated[float, typer.Option(min=0.1, help="crop side / landmark extent")] = 1.25,
    size: Annotated[int, typer.Option(min=8, help="output crop side in pixels")] = HR_SIZE,
    shift_y: Annotated[
        float, typer.Option(help="move the crop centre down by this fraction of the extent")
    ] = 0.0,
    origin: Annotated[
        int | None,
        typer.Option(
            min=0, max=1, help="first pixel centre in the annotations (default: 1 for .pts, 0 otherwise)"
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing data set in OUT_DIR")] = False,
) -> None:
    """Crop annotated face photos into a training set (square box, 1.25x the landmark extent)."""
    from facesr.train.prepare import CropRule, PrepareError, load_annotations, prepare_dataset

    try:
        rule = CropRule(scale=scale, size=size, shift_y=shift_y)
        faces, problems = load_annotations(src_dir, annotations, names_file=names, origin=origin)
        summary = prepare_dataset(faces, out_dir, rule, problems=problems, overwrite=overwrite)
    except (PrepareError, ValueError) as error:
        raise _fail(str(error)) from error
    typer.echo(summary.describe())
    if not summary.written:
        raise _fail("no face could be prepared")


def evaluate_command(
    data: Annotated[Path, typer.Option(help="test set folder: HR/, landmarks68.npy, list.txt")],
    checkpoint: Annotated[
        Path | None, typer.Option(help="facesr .safetensors checkpoint (default: bundled)")
    ] = None,
    landmark_model: Annotated[
        Path | None, typer.Option(help="external 68-point detector (PFLD ONNX); omitted = not run")
    ] = None,
    out: Annotated[Path, typer.Option(help="folder for report.json, report.md and grid.png")] = Path(
        "outputs/evaluate"
    ),
    limit: Annotated[int | None, typer.Option(min=1, help="only the first N faces")] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=1024)] = 16,
    grid: Annotated[int, typer.Option(min=0, help="faces shown in grid.png")] = 4,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
    lr_kernel: Annotated[
        str,
        typer.Option(help="PIL filter making the LR inputs: bicubic (the paper), bilinear, box, lanczos"),
    ] = "bicubic",
    lr_jpeg_quality: Annotated[
        int | None, typer.Option(min=1, max=95, help="also JPEG-compress each LR input at this quality")
    ] = None,
) -> None:
    """Score a checkpoint on a test set: PSNR/SSIM (Y) per step vs bicubic, landmark NRMSE."""
    from facesr.model.errors import FaceSRError
    from facesr.model.inference import FaceSR
    from facesr.train.evaluate import Degradation, EvaluationError, evaluate
    from facesr.train.face_folder import DatasetError, FaceFolder
    from facesr.train.landmark_detector import LandmarkDetectorError, OnnxLandmarkDetector
    from facesr.train.report import markdown_table, write_report

    try:
        degradation = Degradation(kernel=lr_kernel, jpeg_quality=lr_jpeg_quality)
        dataset = FaceFolder.open(data, limit=limit)
        detector = OnnxLandmarkDetector(landmark_model) if landmark_model is not None else None
        engine = FaceSR.from_checkpoint(checkpoint, device=device, dtype="fp32")
        evaluation = evaluate(
            engine,
            dataset,
            detector=detector,
            batch_size=batch_size,
            grid_images=grid,
            degradation=degradation,
        )
    except (EvaluationError, DatasetError, LandmarkDetectorError, FaceSRError, ValueError) as error:
        raise _fail(str(error)) from error
    evaluation.model["checkpoint"] = str(checkpoint) if checkpoint is not None else "bundled default"
    written = write_report(evaluation, out)
    typer.echo(markdown_table(evaluation))
    for kind, path in written.items():
        typer.echo(f"{kind}: {path}")


# -- train ------------------------------------------------------------------------------------------------


def train_command(
    config: Annotated[Path, typer.Option(help="training config (YAML), e.g. configs/cpu-reduced.yaml")],
    output: Annotated[Path | None, typer.Option(help="run directory (default: runs/<config name>)")] = None,
    resume: Annotated[
        bool, typer.Option(help="continue the run in the output directory from its training-state.pt")
    ] = False,
    init: Annotated[
        Path | None,
        typer.Option(
            help="start from the weights of this facesr checkpoint (weights only: a fresh optimiser and "
            "schedule); sets init.weights of the config"
        ),
    ] = None,
    init_alignment: Annotated[
        Path | None,
        typer.Option(
            help="take the alignment branch from this facesr checkpoint (e.g. the best of an align run); "
            "sets init.alignment of the config"
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda (torchrun: one GPU per process)")] = "auto",
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
    time_limit: Annotated[
        float | None,
        typer.Option(min=0.0, help="stop cleanly after this many minutes (validate, save, export final)"),
    ] = None,
) -> None:
    """Train the alignment branch, DIC or DICGAN (one process, or one process per GPU under torchrun)."""
    from facesr.model.errors import FaceSRError
    from facesr.train.config import ConfigError, load_config
    from facesr.train.face_folder import DatasetError
    from facesr.train.perceptual import PerceptualWeightsError
    from facesr.train.state import TrainingStateError
    from facesr.train.trainer import run_training

    if device not in ("auto", "cpu", "cuda"):
        raise _fail(f"--device must be auto, cpu or cuda, got {device!r}")
    try:
        train_config = load_config(config)
        if init is not None or init_alignment is not None:
            if resume:
                raise ConfigError("--init starts a new run; --resume continues one from its own state")
            train_config = train_config.with_init(weights=init, alignment=init_alignment)
        result = run_training(
            train_config,
            output,
            resume=resume,
            device=None if device == "auto" else device,
            progress=progress,
            time_limit_s=None if time_limit is None else 60.0 * time_limit,
        )
    except (ConfigError, DatasetError, TrainingStateError, PerceptualWeightsError, FaceSRError) as error:
        raise _fail(str(error)) from error
    if result.final_checkpoint is not None:
        typer.echo(f"step {result.step}: best validation score {result.best_score:.4f}")
        if result.best_checkpoint is not None:
            typer.echo(f"best: {result.best_checkpoint}")
        typer.echo(f"final: {result.final_checkpoint}")


def release_command(
    checkpoint: Annotated[Path, typer.Argument(help="trained checkpoint (e.g. runs/NAME/best.safetensors)")],
    report: Annotated[Path, typer.Option(help="report.json of `facesr evaluate` on this checkpoint")],
    output: Annotated[Path, typer.Option("--output", "-o", help="release checkpoint to write")],
    name: Annotated[
        str | None, typer.Option(help="model name in the card (the service's model name)")
    ] = None,
    test_set: Annotated[str, typer.Option(help="name of the evaluation set for the card")] = "helen-50",
    description: Annotated[str | None, typer.Option(help="one-line description for the card")] = None,
) -> None:
    """Store a trained checkpoint in fp16 with its test-set scores in the model card."""
    from facesr.model.errors import FaceSRError
    from facesr.train.release import release_checkpoint

    try:
        card = release_checkpoint(
            checkpoint, report, output, name=name, test_set=test_set, description=description
        )
    except (FaceSRError, OSError, ValueError) as error:
        raise _fail(str(error)) from error
    size_mb = output.stat().st_size / 1e6
    typer.echo(f"wrote {output} ({size_mb:.1f} MB, fp16): '{card.name}', {card.parameters:,} parameters")


def register(app: typer.Typer) -> None:
    """Add this area's subcommands to the main app."""
    app.command("prepare")(prepare_command)
    app.command("evaluate")(evaluate_command)
    app.command("train")(train_command)
    app.command("release")(release_command)
