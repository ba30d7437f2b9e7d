"""Where `facesr enhance` writes every result, decided and checked before anything is written.

`-o` is either one image file (a path ending in one of the `OUTPUT_FORMATS` suffixes, for exactly one
input file) or a folder. In a folder each input's result is named after the input's path below its
folder argument (or its file name, for a file argument) with `.png`; `--steps` adds
`<name>.step<i>.png` and `--landmarks-json` `<name>.landmarks.json` beside it.

Names that would clash (two inputs, or an input and another input's step or landmarks file) are told
apart by one rule, applied to every member of the clashing group alike, at the first level that works:

1. the source suffix is kept: `face16.bmp` -> `face16.bmp.png`, `face16.webp` -> `face16.webp.png`;
2. the result goes below the last folder name of its source (the folder argument, or the file's own
   folder): `day1/face.png`, `day2/face.png` -> `day1/face.png`, `day2/face.png` in the output folder;
3. both; then two, three, ... trailing folder names, until the names differ.

Safety checks (`check_plan`): nothing that exists is replaced without `overwrite`; an input file is
never replaced by another input's result (only by its own, which was read first); no result replaces
a folder, and no output folder would have to replace a file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # importing this module reads no image code (the command's help text uses it)
    from facesr.model.files import InputFile

#: Image suffixes `-o` may end in, and the format each is written in.
OUTPUT_FORMATS: dict[str, str] = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def _listed(words: Sequence[str]) -> str:
    """Words as a sentence lists them: "a", "a or b", "a, b or c"."""
    return f"{', '.join(words[:-1])} or {words[-1]}" if len(words) > 1 else "".join(words)


#: The suffixes of `OUTPUT_FORMATS` as messages and the command's help name them.
OUTPUT_SUFFIXES_TEXT = _listed(list(OUTPUT_FORMATS))
#: Image suffixes that cannot be written; `-o` ending in one is refused rather than made a folder.
UNWRITABLE_IMAGE_SUFFIXES = frozenset({".bmp", ".gif", ".tif", ".tiff"})


class PlanError(ValueError):
    """The outputs cannot be written as asked; the message is one line for the user."""


@dataclass(frozen=True)
class PlannedOutput:
    """Every file one input's result is written to.

    image: the result image; image_format: its PIL format name (PNG, JPEG or WEBP).
    steps: each step's PNG (empty without --steps); landmarks: the JSON file, or None.
    """

    source: InputFile
    image: Path
    image_format: str
    steps: tuple[Path, ...]
    landmarks: Path | None

    @property
    def targets(self) -> tuple[Path, ...]:
        """All paths this input writes, the image first."""
        return (self.image, *self.steps, *((self.landmarks,) if self.landmarks else ()))


@dataclass(frozen=True)
class OutputPlan:
    """The outputs of a whole run: `destination` is the -o folder, or the file when `single_file`."""

    destination: Path
    single_file: bool
    items: tuple[PlannedOutput, ...]

    def targets(self) -> list[Path]:
        """Every path the run writes, in the order it writes them."""
        return [target for item in self.items for target in item.targets]


def _side_files(image: Path, num_steps: int, landmarks: bool) -> tuple[tuple[Path, ...], Path | None]:
    stem = image.name[: -len(image.suffix)] if image.suffix else image.name
    steps = tuple(image.with_name(f"{stem}.step{index}.png") for index in range(num_steps))
    return steps, image.with_name(f"{stem}.landmarks.json") if landmarks else None


def _name(source: InputFile, level: int) -> PurePath:
    """The output name (without .png) of `source` at a naming level (0: plain; see the module rules)."""
    depth, keep_suffix = divmod(level, 2)
    relative = (
        source.relative if keep_suffix or not source.relative.suffix else source.relative.with_suffix("")
    )
    folders = source.base.parts[1:]  # without the root
    prefix = folders[len(folders) - depth :] if depth else ()
    return PurePath(*prefix, relative)


def _relative_targets(name: PurePath, num_steps: int, landmarks: bool) -> list[str]:
    image = name.with_name(f"{name.name}.png")
    steps, json_file = _side_files(Path(image), num_steps, landmarks)
    return [str(path) for path in (image, *steps, *((json_file,) if json_file else ()))]


def _groups(clashes: Iterable[set[int]]) -> list[set[int]]:
    """Merge overlapping sets of input indices into disjoint groups (in first-seen order)."""
    groups: list[set[int]] = []
    for clash in clashes:
        merged = set(clash)
        rest = []
        for group in groups:
            if group & merged:
                merged |= group
            else:
                rest.append(group)
        groups = [*rest, merged]
    return groups


def assign_names(sources: Sequence[InputFile], num_steps: int, landmarks: bool) -> list[PurePath]:
    """Distinct output names (relative, without .png) for `sources`, following the module's rules.

    Raises:
        PlanError: two sources cannot be told apart even by their whole folder paths.
    """
    levels = [0] * len(sources)
    while True:
        owners: dict[str, set[int]] = {}
        for index, source in enumerate(sources):
            for target in _relative_targets(_name(source, levels[index]), num_steps, landmarks):
                owners.setdefault(target, set()).add(index)
        clashes = [owner for owner in owners.values() if len(owner) > 1]
        if not clashes:
            return [_name(source, level) for source, level in zip(sources, levels, strict=True)]
        for group in _groups(clashes):
            level = max(levels[index] for index in group) + 1
            deepest = max(len(sources[index].base.parts) for index in group)
            if level > 2 * deepest + 1:
                first, second = sorted(group)[:2]
                raise PlanError(
                    f"{sources[first].path} and {sources[second].path} cannot be given distinct output names"
                )
            for index in group:
                levels[index] = level


def plan_outputs(
    files: Sequence[InputFile],
    output: Path,
    *,
    has_folder_input: bool,
    num_steps: int,
    landmarks: bool,
) -> OutputPlan:
    """Decide every output path. Nothing is written or created.

    Args:
        files: the inputs to process (at least one).
        output: the `-o` path.
        has_folder_input: a folder was among the command-line paths (then `-o` must be a folder).
        num_steps: step images per input (0 without --steps).
        landmarks: whether `<name>.landmarks.json` files are written.

    Returns:
        The plan: one `PlannedOutput` per input, in input order.

    Raises:
        PlanError: `-o` cannot be used as asked (an image file name for several inputs or a folder, an
            unwritable image suffix, an existing file that is not a folder), or names cannot be made
            distinct.
    """
    suffix = output.suffix.lower()
    if not output.is_dir() and suffix in OUTPUT_FORMATS:
        if has_folder_input or len(files) != 1:
            what = "a folder is among the inputs" if has_folder_input else f"there are {len(files)} inputs"
            raise PlanError(f"-o {output} names one image file, but {what}; give -o a folder instead")
        steps, json_file = _side_files(output, num_steps, landmarks)
        item = PlannedOutput(files[0], output, OUTPUT_FORMATS[suffix], steps, json_file)
        return OutputPlan(output, single_file=True, items=(item,))
    if os.path.lexists(output) and not output.is_dir():
        raise PlanError(
            f"-o {output} exists and is not a folder (an output image must end in {OUTPUT_SUFFIXES_TEXT})"
        )
    if suffix in UNWRITABLE_IMAGE_SUFFIXES:
        raise PlanError(f"-o {output}: results are written as {OUTPUT_SUFFIXES_TEXT}, not {suffix}")
    items = []
    for source, name in zip(files, assign_names(files, num_steps, landmarks), strict=True):
        image = output / name.parent / f"{name.name}.png"
        steps, json_file = _side_files(image, num_steps, landmarks)
        items.append(PlannedOutput(source, image, "PNG", steps, json_file))
    return OutputPlan(output, single_file=False, items=tuple(items))


def _blocking_file(target: Path, known_folders: set[Path]) -> Path | None:
    """The first existing non-folder among `target`'s parents (a folder cannot be made there)."""
    for parent in target.parents:
        if parent in known_folders:
            return None
        if os.path.lexists(parent):
            if parent.is_dir():
                known_folders.add(parent)
                return None
            return parent
    return None


def _resolve(path: Path, action: str) -> Path:
    """`path` with every symbolic link followed; PlanError where that fails (a symbolic link loop)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError) as error:  # a loop raises RuntimeError before Python 3.13
        reason = error.strerror if isinstance(error, OSError) and error.strerror else "a symbolic link loop"
        raise PlanError(f"cannot {action} {path}: {reason}") from error


def check_plan(plan: OutputPlan, *, overwrite: bool) -> list[Path]:
    """Refuse a plan that would lose a file; return the targets that exist (to be replaced).

    Args:
        plan: from `plan_outputs`.
        overwrite: whether existing files may be replaced (never another input file, never a folder).

    Returns:
        The existing targets, in plan order (empty unless `overwrite`).

    Raises:
        PlanError: naming the first problem: a target is another input file (even with `overwrite`),
            a folder, or below a file; or targets exist without `overwrite` (with how many).
    """
    inputs = {_resolve(item.source.path, "read"): item.source.path for item in plan.items}
    folders: set[Path] = set()
    existing: list[Path] = []
    for item in plan.items:
        own = _resolve(item.source.path, "read")
        for target in item.targets:
            blocking = _blocking_file(target, folders)
            if blocking is not None:
                broken = blocking.is_symlink() and not blocking.exists()
                what = "a broken symbolic link" if broken else "a file"
                raise PlanError(f"cannot write {target}: {blocking} is {what}, not a folder")
            resolved = _resolve(target, "write")
            if resolved in inputs and resolved != own:
                other = inputs[resolved]
                alias = "" if target == other else f" (as {target})"
                raise PlanError(
                    f"{item.source.path}'s result would be written over the input file {other}{alias} "
                    "before it is read; even --overwrite replaces an input only by its own result: "
                    "choose another -o"
                )
            if os.path.lexists(target):
                if target.is_dir():
                    raise PlanError(f"cannot write {target}: a folder of that name exists")
                existing.append(target)
    if existing and not overwrite:
        raise PlanError(
            f"{existing[0]} already exists ({len(existing)} existing file(s) would be overwritten); "
            "nothing was written: pass --overwrite to replace them, or choose another -o"
        )
    return existing
