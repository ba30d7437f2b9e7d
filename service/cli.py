"""The `facesr` command line: one Typer app; each area registers its own subcommands.

The serving and model commands are always there. The training commands (`prepare`, `evaluate`, `train`,
`release`) come from the separate training package and are registered only where its dependencies are
installed (`pip install 'facesr[train]'`); elsewhere the help says how to get them. Importing this module
imports no torch: every command loads the model only when it runs.
"""

from __future__ import annotations

import importlib.util

import typer

from facesr.model import cli as model_cli
from facesr.service import commands as service_commands

# Modules that only the training extra installs; their presence is what "training is installed" means.
TRAINING_REQUIREMENTS = ("torch", "yaml", "onnxruntime")
TRAINING_HINT = (
    "Training commands (prepare, evaluate, train, release) are not installed here; "
    "get them with: pip install 'facesr[train]'"
)


def training_installed() -> bool:
    """True when every dependency of the training package can be imported."""
    return all(importlib.util.find_spec(name) is not None for name in TRAINING_REQUIREMENTS)


def build_app() -> typer.Typer:
    """The `facesr` app with every command available in this installation."""
    has_training = training_installed()
    app = typer.Typer(
        name="facesr",
        help="Face super-resolution (DIC/DICGAN): small faces to 8x larger ones with 68 landmarks.",
        epilog=None if has_training else TRAINING_HINT.replace("[", "\\["),  # rich markup would eat [train]
        no_args_is_help=True,
        pretty_exceptions_enable=False,
    )
    model_cli.register(app)
    if has_training:
        from facesr.train import cli as train_cli

        train_cli.register(app)
    service_commands.register(app)
    return app


app = build_app()


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
