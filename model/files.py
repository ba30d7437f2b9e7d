"""Reading face images from files and folders for the `enhance` command."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from facesr.model.preprocess import as_rgb_image

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"})


@dataclass(frozen=True)
class InputFile:
    """An input image and the output name (relative path without suffix) its results take."""

    path: Path
    relative: Path


def collect_inputs(inputs: Iterable[Path]) -> list[InputFile]:
    """Explicit files are taken as given; folders contribute their image files (recursively, sorted)."""
    collected: list[InputFile] = []
    for item in inputs:
        if item.is_dir():
            for path in sorted(
                p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            ):
                collected.append(InputFile(path, path.relative_to(item).with_suffix("")))
        else:
            collected.append(InputFile(item, Path(item.stem)))
    return collected


def read_rgb(path: Path) -> np.ndarray:
    """Decode an image file to H x W x 3 uint8 RGB. Raises ValueError with a readable reason."""
    try:
        with Image.open(path) as image:
            image.load()
            return np.asarray(as_rgb_image(image), dtype=np.uint8)
    except FileNotFoundError as error:
        raise ValueError("file not found") from error
    except UnidentifiedImageError as error:
        raise ValueError("not an image file PIL can decode") from error
    except Image.DecompressionBombError as error:
        raise ValueError(f"image too large ({error})") from error
    except (OSError, SyntaxError) as error:
        raise ValueError(f"unreadable image ({error})") from error
