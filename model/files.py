"""Finding and reading the input images of `facesr enhance` (no torch).

Rules (the same format list as the API, `facesr.model.input_policy`):

* A file named on the command line is always tried, whatever its name: its content decides.
* A folder contributes, recursively and in sorted order, its files whose suffix is one of
  `ACCEPTED_SUFFIXES`; its other files are reported as not accepted, and so are broken symbolic links,
  pipes and sockets. Hidden entries (names
  starting with ".") are ignored, and so are folders reached through symbolic links.
* The same file reached twice (named twice, or named and inside a named folder) is read once.
* A path on the command line that does not exist is an error before anything is read.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from facesr.model.image_file import (
    DamagedImageError,
    DecodedFace,
    NotAnImageError,
    UnsupportedFormatError,
    decode_face,
)
from facesr.model.input_policy import ACCEPTED_FORMATS_TEXT, ACCEPTED_SUFFIXES, Fit, InputTooSmallError

#: Told with every refusal, so the user knows what would have been taken.
ACCEPTED_HINT = f"accepted formats: {ACCEPTED_FORMATS_TEXT}; suffixes {' '.join(sorted(ACCEPTED_SUFFIXES))}"


class MissingInputError(ValueError):
    """Paths given on the command line that do not exist (the message names the first)."""


class UnreadableImageError(ValueError):
    """A file that is no image, an image in a refused format, or a damaged one (message says which)."""


@dataclass(frozen=True)
class InputFile:
    """One input image and what its output name is made from.

    path: the file, as given or as found in a folder.
    relative: its path below the folder argument it was found in, or its name for a file argument.
    base: that folder argument, or the file's own folder for a file argument (absolute, normalised);
        its trailing folder names tell colliding outputs apart (`facesr.model.output_plan`).
    """

    path: Path
    relative: Path
    base: Path


@dataclass(frozen=True)
class Skipped:
    """A file that is not processed, and why (one line, no file name)."""

    path: Path
    reason: str


@dataclass(frozen=True)
class CollectedInputs:
    """What the command-line arguments amount to: the files to read and the files refused by name."""

    files: list[InputFile]
    skipped: list[Skipped]
    has_folder: bool


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(path))


def _walk(folder: Path, unreadable: list[Skipped]) -> list[Path]:
    """Entries other than folders below `folder` (not hidden, symlinked folders not followed), sorted.

    Folders that cannot be listed are added to `unreadable`.
    """

    def report(error: OSError) -> None:
        where = Path(error.filename) if error.filename else folder
        unreadable.append(Skipped(where, f"folder cannot be read: {error.strerror or error}"))

    found: list[Path] = []
    for root, dirs, names in os.walk(folder, onerror=report):
        dirs[:] = sorted(name for name in dirs if not name.startswith("."))
        found.extend(Path(root, name) for name in names if not name.startswith("."))
    return sorted(found, key=lambda path: path.relative_to(folder).parts)


def _not_regular(path: Path) -> str | None:
    """Why a folder entry is not read: None for a regular file (or a link to one)."""
    if path.is_file():
        return None
    if path.is_symlink():
        try:
            path.stat()
        except OSError as error:  # it leads nowhere, or into a loop
            return f"broken symbolic link ({error.strerror or error})"
    return "not a regular file (a pipe, socket or device)"


def collect_inputs(inputs: Iterable[Path]) -> CollectedInputs:
    """Turn command-line paths into the files to read.

    Args:
        inputs: files and folders as the user gave them.

    Returns:
        The files in argument order (each folder's files sorted), each distinct file once, and the
        folder files refused because of their suffix.

    Raises:
        MissingInputError: some paths do not exist (nothing has been read).
    """
    inputs = list(inputs)
    missing = [path for path in inputs if not path.exists()]
    if missing:
        more = f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else ""
        raise MissingInputError(f"{missing[0]}: no such file or folder{more}")
    files: list[InputFile] = []
    skipped: list[Skipped] = []
    seen: set[Path] = set()

    def add(candidate: InputFile) -> None:
        identity = candidate.path.resolve()
        if identity not in seen:
            seen.add(identity)
            files.append(candidate)

    for item in inputs:
        if not item.is_dir():
            add(InputFile(item, Path(item.name), _absolute(item).parent))
            continue
        base = _absolute(item)
        for path in _walk(item, skipped):
            if (not_regular := _not_regular(path)) is not None:
                skipped.append(Skipped(path, not_regular))
            elif path.suffix.lower() in ACCEPTED_SUFFIXES:
                add(InputFile(path, path.relative_to(item), base))
            else:
                kind = f"'{path.suffix}' files are" if path.suffix else "files without a suffix are"
                skipped.append(Skipped(path, f"{kind} not read from folders ({ACCEPTED_HINT})"))
    return CollectedInputs(files, skipped, has_folder=any(item.is_dir() for item in inputs))


def read_face(path: Path, fit: Fit) -> DecodedFace:
    """Read an image file into the model input, exactly as the API reads an upload.

    Args:
        path: any file; its content, not its name, decides.
        fit: how a non-square image becomes square (`facesr.model.input_policy`).

    Returns:
        The 16 x 16 model input and the input policy's record (`facesr.model.image_file.decode_face`).

    Raises:
        UnreadableImageError: not a regular file, not an image, a refused format (GIF, TIFF, ...), a
            damaged, enormous or too small image, or a read error; the message says which.
    """
    if not path.is_file():
        raise UnreadableImageError(f"not a regular file ({ACCEPTED_HINT})")
    try:
        return decode_face(path, fit=fit)
    except InputTooSmallError as error:
        raise UnreadableImageError(str(error)) from error
    except (UnsupportedFormatError, NotAnImageError) as error:
        raise UnreadableImageError(f"{error} ({ACCEPTED_HINT})") from error
    except DamagedImageError as error:
        raise UnreadableImageError(f"damaged or truncated image ({error.__cause__ or error})") from error
    except Image.DecompressionBombError as error:
        raise UnreadableImageError(f"image too large ({error})") from error
    except PermissionError as error:
        raise UnreadableImageError(f"cannot be read: {error.strerror or error}") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise UnreadableImageError(f"damaged or truncated image ({error})") from error
