"""The `facesr` command line: one Typer app; each area registers its own subcommands.

`serve` and `worker` are always there. The model commands (`enhance`, `bench-model`, `bench-service`,
`convert-official`) need the model runtime (`pip install 'facesr[model]'`), and the training commands
(`prepare`, `evaluate`, `train`, `release`) come from the separate training package
(`pip install 'facesr[train]'`): each group is registered only where its dependencies are installed, and
elsewhere the help says how to get it.
Importing this module imports no torch: every command loads the model only when it runs.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Sequence
from typing import Annotated

import typer

from facesr.model import cli as model_cli
from facesr.service import commands as service_commands

# Modules that only an extra installs; their presence is what "installed" means for its commands.
MODEL_REQUIREMENTS = ("torch", "safetensors")
TRAINING_REQUIREMENTS = (*MODEL_REQUIREMENTS, "yaml", "onnxruntime", "skimage", "tensorboard")
MODEL_HINT = (
    "Model commands (enhance, bench-model, bench-service, convert-official) and `facesr worker` need the "
    "model runtime: "
    "pip install 'facesr[model]'"
)
TRAINING_HINT = (
    "Training commands (prepare, evaluate, train, release) are not installed here; "
    "get them with: pip install 'facesr[train]'"
)


def installed(requirements: tuple[str, ...]) -> bool:
    """True when every one of these modules can be imported (nothing is imported to find out)."""
    return all(importlib.util.find_spec(name) is not None for name in requirements)


def training_installed() -> bool:
    """True when every dependency of the training package can be imported."""
    return installed(TRAINING_REQUIREMENTS)


def _print_version(value: bool) -> None:
    """`--version`: print `facesr <version>` (the installed distribution's metadata) and stop."""
    if value:
        from facesr.service.version import __version__

        typer.echo(f"facesr {__version__}")
        raise typer.Exit()


def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Options of `facesr` itself (before any command)."""


def build_app() -> typer.Typer:
    """The `facesr` app with every command available in this installation."""
    has_model, has_training = installed(MODEL_REQUIREMENTS), training_installed()
    hints = [
        hint for hint, present in ((MODEL_HINT, has_model), (TRAINING_HINT, has_training)) if not present
    ]
    app = typer.Typer(
        name="facesr",
        help="Face super-resolution (DIC/DICGAN): small faces to 8x larger ones with 68 landmarks.",
        # Rich markup would eat "[train]" and "[model]" unless the bracket is escaped.
        epilog="\n\n".join(hints).replace("[", "\\[") or None,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
    )
    app.callback()(_options)
    if has_model:
        from facesr.service.bench import command as bench_command

        model_cli.register(app)
        bench_command.register(app)
    if has_training:
        from facesr.train import cli as train_cli

        train_cli.register(app)
    service_commands.register(app)
    return app


app = build_app()


# Typer raises the exceptions of the click it runs on: a copy inside typer in recent releases, the click
# package in older ones. `typer.BadParameter` is one of them, so its module holds the others.
_click_errors = importlib.import_module(typer.BadParameter.__module__)
INTERRUPTED_STATUS = 130  # 128 + SIGINT, as a shell reports Ctrl-C


def _error_line(message: str) -> str:
    """`error: <message>` on one line (click messages may span several)."""
    return f"error: {' '.join(message.split())}"


def main(args: Sequence[str] | None = None) -> None:
    """Console-script entry point: run the app, with every user error as one `error: ...` line on stderr.

    A usage error (unknown option, bad value, missing argument, unknown command) says which command's
    help to read and exits with status 2; `facesr` alone prints the help (status 2, as click does);
    `typer.Exit` codes pass through; Ctrl-C exits with status 130 and no traceback.

    Args:
        args: the command line without the program name (default: `sys.argv[1:]`).
    """
    try:
        result = app(args=args, prog_name="facesr", standalone_mode=False)
    except _click_errors.UsageError as error:
        if type(error).__name__ == "NoArgsIsHelpError":  # click >= 8.2: `no_args_is_help` raises this
            if message := error.format_message():  # rich help is printed already; plain help is the message
                typer.echo(message)
            sys.exit(error.exit_code)
        command = error.ctx.command_path if error.ctx is not None else "facesr"
        typer.secho(
            f"{_error_line(error.format_message())} (see {command} --help)", err=True, fg=typer.colors.RED
        )
        sys.exit(error.exit_code)
    except _click_errors.ClickException as error:
        typer.secho(_error_line(error.format_message()), err=True, fg=typer.colors.RED)
        sys.exit(error.exit_code)
    except (typer.Abort, getattr(_click_errors, "Abort", typer.Abort)):
        typer.secho("error: aborted", err=True, fg=typer.colors.RED)
        sys.exit(1)
    except KeyboardInterrupt:  # typer turns one inside a command into exit status 130; this is the rest
        sys.exit(INTERRUPTED_STATUS)
    # Without standalone mode typer returns an Exit's code (--help, --version, typer.Exit) and otherwise
    # the command's return value, which is None for every facesr command.
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    main()
