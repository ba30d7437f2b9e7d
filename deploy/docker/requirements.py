#!/usr/bin/env python3
"""The pip requirements of one image target, read from pyproject.toml (the Dockerfile runs it).

Usage: requirements.py {api,worker} [PYPROJECT]     (PYPROJECT defaults to ./pyproject.toml)

  api     [project.dependencies]: the HTTP API alone, no torch.
  worker  the same plus the `model` extra, without torch: the Dockerfile installs torch before, from the
          PyTorch index of the image's CUDA version, and a plain requirement would let pip replace it.

Prints one requirement per line. Standard library only (tomllib): it runs before anything is installed.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

ROLES = ("api", "worker")
# The extra whose packages the worker needs on top of the base install (pyproject.toml).
MODEL_EXTRA = "model"
# Installed by the Dockerfile from its own index; never from this list.
CUDA_INDEX_PACKAGES = frozenset({"torch"})

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def requirement_name(requirement: str) -> str:
    """The normalized project name of a requirement: ``"Uvicorn[standard]>=0.29"`` -> ``"uvicorn"``."""
    match = _NAME.match(requirement.strip())
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group()).lower()


def requirements(project: dict[str, Any], role: str) -> list[str]:
    """The requirements of ``role`` from the ``[project]`` table of pyproject.toml."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
    selected = list(project["dependencies"])
    if role == "worker":
        selected += project["optional-dependencies"][MODEL_EXTRA]
    own_name = requirement_name(project["name"])
    for requirement in selected:
        # `facesr[...]` would make pip fetch this project from an index: list the packages themselves.
        if requirement_name(requirement) == own_name:
            raise ValueError(f"{requirement!r} refers to the project itself; list its packages instead")
    return [r for r in selected if role == "api" or requirement_name(r) not in CUDA_INDEX_PACKAGES]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not 1 <= len(args) <= 2 or args[0] not in ROLES:
        print(__doc__, file=sys.stderr)
        return 2
    import tomllib  # Python 3.11+: the images run 3.12; importing the module alone does not need it

    pyproject = Path(args[1] if len(args) == 2 else "pyproject.toml")
    with pyproject.open("rb") as handle:
        project = tomllib.load(handle)["project"]
    try:
        lines = requirements(project, args[0])
    except (KeyError, ValueError) as error:
        print(f"requirements.py: {pyproject}: {error}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
