"""Writing `facesr enhance` results so that no file is half-written and none is replaced by surprise.

Each file is written to a hidden temporary name in its own folder (`.<name>.<random>.tmp`, created with
the usual permissions), flushed to disk, and then moved onto its name in one step: with `replace`,
`os.replace`; without it, as a hard link that fails if the name exists meanwhile (or, where the file
system has no hard links, a last existence check and `os.replace`). A crash leaves either the old file,
the new one, or a stray hidden temporary file, never a partial result.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

#: Encoder options per output format (JPEG and WebP are lossy: keep them close to the result).
SAVE_OPTIONS: dict[str, dict[str, Any]] = {"PNG": {}, "JPEG": {"quality": 95}, "WEBP": {"quality": 95}}


def _temporary(target: Path) -> tuple[Path, int]:
    """Create a new hidden temporary file beside `target`; returns its path and open descriptor."""
    for _ in range(16):
        candidate = target.with_name(f".{target.name[:200]}.{secrets.token_hex(4)}.tmp")
        try:
            return candidate, os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(target))


def _appeared(target: Path) -> FileExistsError:
    return FileExistsError(errno.EEXIST, "it appeared while results were written", str(target))


def _move_into_place(temporary: Path, target: Path, *, replace: bool) -> None:
    """Rename the finished temporary file to `target`; without `replace`, never over an existing file."""
    if replace:
        os.replace(temporary, target)
        return
    try:
        os.link(temporary, target)
    except FileExistsError:
        raise _appeared(target) from None
    except OSError:  # no hard links on this file system: check once more, then rename
        if os.path.lexists(target):
            raise _appeared(target) from None
        os.replace(temporary, target)
    else:
        os.unlink(temporary)


def write_atomic(target: Path, write: Callable[[IO[bytes]], None], *, replace: bool) -> None:
    """Write a file through a temporary one; its folder is created when missing.

    Args:
        target: the file to write.
        write: called with the open binary temporary file; writes the whole content.
        replace: whether an existing `target` may be replaced (else `FileExistsError`).

    Raises:
        OSError: the folder or file cannot be written (FileExistsError: the target exists, without
            `replace`); the temporary file is removed.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary, descriptor = _temporary(target)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        _move_into_place(temporary, target, replace=replace)
    finally:
        if os.path.lexists(temporary):
            os.unlink(temporary)


def save_image(target: Path, pixels: np.ndarray, image_format: str, *, replace: bool) -> None:
    """Write an H x W x 3 uint8 RGB array as `image_format` (PNG, JPEG or WEBP), atomically."""
    image = Image.fromarray(pixels)

    def write(handle: IO[bytes]) -> None:
        image.save(handle, format=image_format, **SAVE_OPTIONS[image_format])

    write_atomic(target, write, replace=replace)


def save_json(target: Path, payload: dict[str, Any], *, replace: bool) -> None:
    """Write a JSON document (UTF-8), atomically."""
    data = json.dumps(payload).encode()

    def write(handle: IO[bytes]) -> None:
        handle.write(data)

    write_atomic(target, write, replace=replace)
