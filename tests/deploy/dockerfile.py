"""A small Dockerfile reader: global ARGs, stages with their base images, and what a --target builds.

Enough for the checks of this repository's Dockerfile (hadolint checks the syntax and style). Comments are
dropped and continuation lines joined; heredocs and parser directives other than comments are not read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property

_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    pairs = []
    for line in re.sub(r"\\\n", " ", text).splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, arguments = stripped.partition(" ")
            pairs.append((keyword.upper(), arguments.strip()))
    return pairs


def arg_default(arguments: str) -> tuple[str, str | None]:
    """``NAME=value`` -> (NAME, value); ``NAME`` -> (NAME, None)."""
    name, equals, value = arguments.partition("=")
    return name.strip(), value.strip().strip('"') if equals else None


def _without_flags(arguments: str) -> list[str]:
    return [token for token in arguments.split() if not token.startswith("--")]


@dataclass(frozen=True)
class Stage:
    """One FROM and the instructions after it, up to the next FROM."""

    name: str
    base: str  # as written after FROM, e.g. ``${PYTHON_IMAGE}``
    instructions: tuple[tuple[str, str], ...]

    def arguments(self, keyword: str) -> list[str]:
        """The arguments of every instruction of this kind, in order."""
        return [arguments for kw, arguments in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str | None:
        """The arguments of the last instruction of this kind (the one that takes effect), if any."""
        found = self.arguments(keyword)
        return found[-1] if found else None

    def index(self, keyword: str, pattern: str) -> int | None:
        """Position of the first instruction of this kind whose arguments match ``pattern`` (regex)."""
        for position, (kw, arguments) in enumerate(self.instructions):
            if kw == keyword and re.search(pattern, arguments):
                return position
        return None

    @property
    def runs(self) -> list[str]:
        return self.arguments("RUN")

    @property
    def copied_from(self) -> set[str]:
        """Stages (or images) this stage copies files from (``COPY --from=...``)."""
        return {
            flag.split("=", 1)[1]
            for arguments in self.arguments("COPY")
            for flag in arguments.split()
            if flag.startswith("--from=")
        }

    @property
    def args(self) -> dict[str, str | None]:
        """The ARGs declared in this stage, with their defaults."""
        return dict(arg_default(arguments) for arguments in self.arguments("ARG"))


_DIRECTIVE = re.compile(r"#\s*([A-Za-z]+)\s*=\s*(\S.*?)\s*$")


def directives(text: str) -> dict[str, str]:
    """The parser directives (``# syntax=...``, ``# escape=...``): the ``# key=value`` lines at the very top.
    Docker reads them only there; after the first other line they are ordinary comments."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        match = _DIRECTIVE.fullmatch(line)
        if match is None:
            break
        found[match.group(1).lower()] = match.group(2)
    return found


@dataclass(frozen=True)
class Dockerfile:
    global_args: dict[str, str | None]
    stages: tuple[Stage, ...]
    directives: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Dockerfile:
        global_args: dict[str, str | None] = {}
        stages: list[tuple[str, str, list[tuple[str, str]]]] = []
        for keyword, arguments in instructions(text):
            if keyword == "FROM":
                tokens = _without_flags(arguments)
                name = tokens[2] if len(tokens) == 3 and tokens[1].upper() == "AS" else str(len(stages))
                stages.append((name, tokens[0], []))
            elif stages:
                stages[-1][2].append((keyword, arguments))
            elif keyword == "ARG":
                name, default = arg_default(arguments)
                global_args[name] = default
        return cls(
            global_args,
            tuple(Stage(name, base, tuple(body)) for name, base, body in stages),
            directives(text),
        )

    @cached_property
    def names(self) -> list[str]:
        return [stage.name for stage in self.stages]

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"the Dockerfile has no stage {name!r}; stages: {', '.join(self.names)}")

    def image(self, stage: Stage) -> str:
        """The base image of a stage with the global ARG defaults filled in (or the stage it builds on)."""

        def value(match: re.Match[str]) -> str:
            name = match.group(1) or match.group(2)
            return self.global_args.get(name) or ""

        return _VARIABLE.sub(value, stage.base)

    def target(self, name: str) -> list[Stage]:
        """The stages `docker build --target NAME` builds: the stage and those it builds on or copies from,
        dependencies first."""
        ordered: list[Stage] = []

        def visit(stage: Stage) -> None:
            if stage in ordered:
                return
            base = self.image(stage)
            for dependency in sorted({base, *stage.copied_from}):
                if dependency in self.names:
                    visit(self.stage(dependency))
            ordered.append(stage)

        visit(self.stage(name))
        return ordered
