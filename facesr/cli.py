"""The `facesr` command line: one Typer app; each area registers its own subcommands."""

from __future__ import annotations

import typer

from facesr.model import cli as model_cli
from facesr.service import cli as service_cli
from facesr.train import cli as train_cli

app = typer.Typer(
    name="facesr",
    help="Face super-resolution (DIC/DICGAN): 16x16 faces to 128x128 with 68 landmarks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

model_cli.register(app)
train_cli.register(app)
service_cli.register(app)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
