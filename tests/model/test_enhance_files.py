"""`facesr enhance` never loses a file: output names, -o as a file, overwrites, reported inputs.

Every test runs the real `facesr` app on real image files with a tiny random-weight checkpoint. The
model runs eagerly here (the CPU default traces the network, which costs seconds per run and changes
no pixel), so the whole module takes a few seconds.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner, Result

from facesr.model import inference
from facesr.model.checkpoint import ModelCard, save_checkpoint
from facesr.model.config import DICConfig
from facesr.model.generator import DICGenerator
from facesr.model.output_plan import OUTPUT_FORMATS, OUTPUT_SUFFIXES_TEXT
from facesr.service.cli import app, main

runner = CliRunner()
ACCEPTED = "PNG, JPEG, WebP or BMP"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(path, DICGenerator(DICConfig.tiny()), DICConfig.tiny(), ModelCard(name="tiny", config={}))
    return path


@pytest.fixture(autouse=True)
def eager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inference, "default_graph", lambda device, dtype: "eager")


def face(path: Path, width: int = 16, height: int = 16, seed: int = 0, **save: object) -> Path:
    """Write a random RGB image (its format from the suffix unless `format` is given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, **save)
    return path


def enhance(checkpoint: Path, *args: str | Path) -> Result:
    return runner.invoke(
        app, ["enhance", *map(str, args), "-c", str(checkpoint), "--device", "cpu", "--batch-size", "4"]
    )


def files_below(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def digests(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in files_below(folder)}


def one_error_line(result: Result) -> str:
    """The run failed with exactly one `error: ` line on stderr and no traceback."""
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def size_of(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


# -- names that would collide ------------------------------------------------------------------------
def test_same_name_with_different_suffixes_keeps_every_result(checkpoint: Path, tmp_path: Path) -> None:
    for seed, suffix in enumerate((".bmp", ".webp", ".png")):
        face(tmp_path / "in" / f"face16{suffix}", seed=seed)
    face(tmp_path / "in" / "face16.gif", seed=9)
    face(tmp_path / "in" / "other.jpg", seed=5)

    result = enhance(checkpoint, tmp_path / "in", "-o", tmp_path / "out")

    assert result.exit_code == 1  # the GIF is reported
    assert files_below(tmp_path / "out") == [
        "face16.bmp.png",
        "face16.png.png",
        "face16.webp.png",
        "other.png",
    ]
    assert len(set(digests(tmp_path / "out").values())) == 4
    assert "wrote 4 image(s) to" in result.stdout
    gif_lines = [line for line in result.stderr.splitlines() if "face16.gif" in line]
    assert len(gif_lines) == 1 and gif_lines[0].startswith("error: ") and ACCEPTED in gif_lines[0]


def test_same_relative_paths_from_two_folders_go_below_their_folder_names(
    checkpoint: Path, tmp_path: Path
) -> None:
    face(tmp_path / "day1" / "nested" / "face.png", seed=1)
    face(tmp_path / "day2" / "nested" / "face.png", seed=2)
    face(tmp_path / "day2" / "only.png", seed=3)

    result = enhance(checkpoint, tmp_path / "day1", tmp_path / "day2", "-o", tmp_path / "out")

    assert result.exit_code == 0, result.output
    assert files_below(tmp_path / "out") == ["day1/nested/face.png", "day2/nested/face.png", "only.png"]


def test_same_file_name_from_two_folders_given_as_files(checkpoint: Path, tmp_path: Path) -> None:
    first = face(tmp_path / "a" / "face.png", seed=1)
    second = face(tmp_path / "b" / "face.png", seed=2)

    result = enhance(checkpoint, first, second, "-o", tmp_path / "out", "--landmarks-json")

    assert result.exit_code == 0, result.output
    assert files_below(tmp_path / "out") == [
        "a/face.landmarks.json",
        "a/face.png",
        "b/face.landmarks.json",
        "b/face.png",
    ]
    assert json.loads((tmp_path / "out" / "b" / "face.landmarks.json").read_text())["source"] == str(second)


def test_an_input_named_like_another_inputs_step_image(checkpoint: Path, tmp_path: Path) -> None:
    face(tmp_path / "in" / "a.png", seed=1)
    face(tmp_path / "in" / "a.step0.png", seed=2)

    result = enhance(checkpoint, tmp_path / "in", "-o", tmp_path / "out", "--steps")

    assert result.exit_code == 0, result.output
    written = files_below(tmp_path / "out")
    assert "a.png.png" in written and "a.step0.png.png" in written and "a.png.step0.png" in written
    assert len(written) == 2 * (1 + DICConfig.tiny().num_steps)


# -- nothing that exists is replaced without --overwrite, and no other input ever -----------------------
def test_output_into_the_input_folder_keeps_the_originals(checkpoint: Path, tmp_path: Path) -> None:
    face(tmp_path / "in" / "a.png", seed=1)
    face(tmp_path / "in" / "b.png", seed=2)
    before = digests(tmp_path / "in")

    line = one_error_line(enhance(checkpoint, tmp_path / "in", "-o", tmp_path / "in"))

    assert str(tmp_path / "in" / "a.png") in line and "2 existing file(s)" in line and "--overwrite" in line
    assert digests(tmp_path / "in") == before


def test_overwrite_replaces_an_input_by_its_own_result(checkpoint: Path, tmp_path: Path) -> None:
    source = face(tmp_path / "in" / "a.png", seed=1)

    result = enhance(checkpoint, tmp_path / "in", "-o", tmp_path / "in", "--overwrite")

    assert result.exit_code == 0, result.output
    assert files_below(tmp_path / "in") == ["a.png"] and size_of(source) == (128, 128)


def test_overwrite_never_writes_over_another_input(checkpoint: Path, tmp_path: Path) -> None:
    face(tmp_path / "top" / "a.jpg", seed=1)
    face(tmp_path / "top" / "sub" / "a.png", seed=2)
    before = digests(tmp_path / "top")

    line = one_error_line(
        enhance(checkpoint, tmp_path / "top", "-o", tmp_path / "top" / "sub", "--overwrite")
    )

    assert "input file" in line and str(tmp_path / "top" / "sub" / "a.png") in line
    assert digests(tmp_path / "top") == before


def test_one_existing_side_file_stops_the_run_before_the_model_loads(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    face(tmp_path / "in" / "a.png", seed=1)
    face(tmp_path / "in" / "b.png", seed=2)
    existing = tmp_path / "out" / "b.landmarks.json"
    existing.parent.mkdir()
    existing.write_text("{}")

    def no_model(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the model was loaded although the outputs conflict")

    monkeypatch.setattr(inference.FaceSR, "from_checkpoint", no_model)
    line = one_error_line(
        enhance(checkpoint, tmp_path / "in", "-o", tmp_path / "out", "--steps", "--landmarks-json")
    )

    assert str(existing) in line and "1 existing file(s)" in line
    assert files_below(tmp_path / "out") == ["b.landmarks.json"] and existing.read_text() == "{}"


# -- -o as one image file -------------------------------------------------------------------------------
def test_output_file_name_writes_that_file(checkpoint: Path, tmp_path: Path) -> None:
    source = face(tmp_path / "x.png")

    result = enhance(checkpoint, source, "-o", tmp_path / "new" / "sr.png", "--steps", "--landmarks-json")

    assert result.exit_code == 0, result.output
    assert (tmp_path / "new" / "sr.png").is_file() and size_of(tmp_path / "new" / "sr.png") == (128, 128)
    assert (tmp_path / "new" / "sr.step0.png").is_file()
    assert json.loads((tmp_path / "new" / "sr.landmarks.json").read_text())["image"] == "sr.png"
    assert "wrote 1 image(s) to" in result.stdout and str(tmp_path / "new" / "sr.png") in result.stdout


@pytest.mark.parametrize(
    ("name", "pil_format"), [("sr.jpg", "JPEG"), ("sr.JPEG", "JPEG"), ("sr.webp", "WEBP")]
)
def test_output_file_is_written_in_its_suffix_format(
    checkpoint: Path, tmp_path: Path, name: str, pil_format: str
) -> None:
    result = enhance(checkpoint, face(tmp_path / "x.bmp", format="BMP"), "-o", tmp_path / name)

    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / name) as image:
        assert image.format == pil_format


def test_output_file_name_for_a_folder_or_several_inputs_is_refused(checkpoint: Path, tmp_path: Path) -> None:
    first, second = face(tmp_path / "in" / "a.png"), face(tmp_path / "b.png", seed=1)

    for args in ((tmp_path / "in",), (first, second)):
        line = one_error_line(enhance(checkpoint, *args, "-o", tmp_path / "sr.png"))
        assert "-o" in line and "folder" in line
    assert not (tmp_path / "sr.png").exists()


def test_output_naming_an_existing_non_image_file_is_one_line(checkpoint: Path, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")

    line = one_error_line(enhance(checkpoint, face(tmp_path / "a.png"), "-o", notes))

    assert str(notes) in line and "not a folder" in line and notes.read_text() == "keep me"


@pytest.mark.parametrize(
    ("link", "output"),
    [
        ("loop.png", "loop.png"),  # -o names the loop as the image file
        ("out/a.png", "out"),  # the loop is where the result goes in the -o folder
        ("loop", "loop/sr.png"),  # the loop is where the folder of -o should be
        ("loop", "loop"),  # -o names the loop as the folder
    ],
)
def test_a_symbolic_link_loop_in_the_output_path_is_one_line(
    checkpoint: Path, tmp_path: Path, link: str, output: str
) -> None:
    source = face(tmp_path / "in" / "a.png")
    loop = tmp_path / link
    loop.parent.mkdir(exist_ok=True)
    loop.symlink_to(loop.name)  # the link points at itself

    line = one_error_line(enhance(checkpoint, source, "-o", tmp_path / output))

    assert str(loop) in line
    assert loop.is_symlink() and str(loop.readlink()) == loop.name


def test_output_file_that_exists_needs_overwrite(checkpoint: Path, tmp_path: Path) -> None:
    source, target = face(tmp_path / "a.png"), face(tmp_path / "sr.png", seed=7)
    before = target.read_bytes()

    one_error_line(enhance(checkpoint, source, "-o", target))
    assert target.read_bytes() == before
    assert enhance(checkpoint, source, "-o", target, "--overwrite").exit_code == 0
    assert size_of(target) == (128, 128)


# -- inputs that cannot be used are reported, the rest is processed ---------------------------------------
def test_non_image_files_in_a_folder_are_reported(checkpoint: Path, tmp_path: Path) -> None:
    face(tmp_path / "in" / "a.png")
    (tmp_path / "in" / "notes.txt").write_text("not a face")
    face(tmp_path / "in" / ".hidden.png", seed=1)

    result = enhance(checkpoint, tmp_path / "in", "-o", tmp_path / "out")

    assert result.exit_code == 1
    reported = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(reported) == 1 and "notes.txt" in reported[0] and ACCEPTED in reported[0]
    assert ".hidden" not in result.output
    assert files_below(tmp_path / "out") == ["a.png"]
    assert "wrote 1 image(s)" in result.stdout and "1 file(s) not processed" in result.stdout


def test_folder_entries_that_are_not_regular_files_are_reported(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dangling link, a link loop, a FIFO and a socket in a folder: each one error line, not silence."""
    folder = tmp_path / "in"
    face(folder / "a.png")
    (folder / "linked.png").symlink_to(face(tmp_path / "elsewhere.png", seed=1))  # a link to a file is read
    (folder / "gone.png").symlink_to("nowhere.png")
    (folder / "loop.png").symlink_to("loop.png")
    os.mkfifo(folder / "pipe.png")
    monkeypatch.chdir(folder)  # a short relative name: socket paths are limited to about 100 bytes
    listening = socket.socket(socket.AF_UNIX)
    listening.bind("socket.png")
    try:
        result = enhance(checkpoint, folder, "-o", tmp_path / "out")
    finally:
        listening.close()

    assert result.exit_code == 1, result.output
    reasons = {"gone.png": "symbolic link", "loop.png": "symbolic link", "pipe.png": "not a regular file"}
    reasons["socket.png"] = "not a regular file"
    for name, reason in reasons.items():
        lines = [line for line in result.stderr.splitlines() if str(folder / name) in line]
        assert len(lines) == 1 and lines[0].startswith("error: ") and reason in lines[0], result.stderr
        assert lines[0].endswith("; skipped")
    assert files_below(tmp_path / "out") == ["a.png", "linked.png"]
    assert "wrote 2 image(s)" in result.stdout and "4 file(s) not processed" in result.stdout


def test_the_output_suffixes_are_named_from_the_one_table(checkpoint: Path, tmp_path: Path) -> None:
    """Messages and the help name every suffix of OUTPUT_FORMATS, in one wording."""
    assert OUTPUT_SUFFIXES_TEXT == ".png, .jpg, .jpeg or .webp"
    assert all(suffix in OUTPUT_SUFFIXES_TEXT for suffix in OUTPUT_FORMATS)

    line = one_error_line(enhance(checkpoint, face(tmp_path / "a.png"), "-o", tmp_path / "sr.gif"))

    assert f"results are written as {OUTPUT_SUFFIXES_TEXT}, not .gif" in line
    help_text = " ".join(runner.invoke(app, ["enhance", "--help"], terminal_width=400).stdout.split())
    assert f"one image file ending in {OUTPUT_SUFFIXES_TEXT} " in help_text


def test_refused_formats_damaged_and_too_small_images_are_reported(checkpoint: Path, tmp_path: Path) -> None:
    gif_named_png = face(tmp_path / "gif.png", format="GIF")
    tiff = face(tmp_path / "scan.tiff")
    text = tmp_path / "readme.txt"
    text.write_text("hello")
    damaged = tmp_path / "damaged.png"
    damaged.write_bytes(face(tmp_path / "whole.png").read_bytes()[:60])
    tiny = face(tmp_path / "tiny.png", 5, 5)
    good = face(tmp_path / "good.jpg", 24, 24)  # in the same batch as the too small one

    result = enhance(checkpoint, gif_named_png, tiff, text, damaged, tiny, good, "-o", tmp_path / "out")

    assert result.exit_code == 1
    lines = {
        path: [line for line in result.stderr.splitlines() if str(path) in line]
        for path in (gif_named_png, tiff, text, damaged, tiny)
    }
    assert all(len(found) == 1 and found[0].startswith("error: ") for found in lines.values()), lines
    assert "GIF" in lines[gif_named_png][0] and ACCEPTED in lines[gif_named_png][0]
    assert "TIFF" in lines[tiff][0] and ACCEPTED in lines[text][0]
    assert "8x8" in lines[tiny][0]
    assert files_below(tmp_path / "out") == ["good.png"]
    assert "wrote 1 image(s)" in result.stdout


def test_a_missing_input_is_one_line_and_writes_nothing(checkpoint: Path, tmp_path: Path) -> None:
    line = one_error_line(
        enhance(checkpoint, face(tmp_path / "a.png"), tmp_path / "nope", "-o", tmp_path / "o")
    )

    assert str(tmp_path / "nope") in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("option", [("-c", "missing.safetensors"), ("--device", "no-such-device")])
def test_a_bad_checkpoint_or_device_is_one_line(
    checkpoint: Path, tmp_path: Path, option: tuple[str, str]
) -> None:
    args = ["enhance", str(face(tmp_path / "a.png")), "-o", str(tmp_path / "o"), "-c", str(checkpoint)]
    result = runner.invoke(app, [*args, "--device", "cpu", *option])

    one_error_line(result)
    assert not (tmp_path / "o").exists()


def test_a_write_failure_is_one_line_and_leaves_no_partial_file(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from facesr.model import output_write

    def disk_full(_descriptor: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(output_write.os, "fsync", disk_full)
    result = enhance(checkpoint, face(tmp_path / "a.png"), "-o", tmp_path / "out")

    line = one_error_line(result)
    assert str(tmp_path / "out" / "a.png") in line and "No space left on device" in line
    assert list((tmp_path / "out").iterdir()) == []  # not even a temporary file


# -- the input policy: --fit, warnings, landmarks in input pixels -------------------------------------------
def test_fit_pad_warns_once_and_maps_landmarks_back(checkpoint: Path, tmp_path: Path) -> None:
    wide = face(tmp_path / "wide.png", 60, 40)

    result = enhance(checkpoint, wide, "-o", tmp_path / "out", "--fit", "pad", "--landmarks-json", "--steps")

    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith(f"warning: {wide}: ")]
    assert len(warnings) == 1 and "60x40" in warnings[0]
    payload = json.loads((tmp_path / "out" / "wide.landmarks.json").read_text())
    assert payload["input"]["fit"] == "pad" and payload["input"]["side"] == 60
    assert [w["code"] for w in payload["input"]["warnings"]] == ["not-square"]
    point, mapped = payload["landmarks"][0], payload["landmarks_input_px"][0]
    # pixel centre to pixel centre: output pixel p covers 60/128 input pixels from the padded square's edge
    assert mapped["x"] == pytest.approx((point["x"] + 0.5) * 60 / 128 - 0.5, abs=0.02)
    assert mapped["y"] == pytest.approx((point["y"] + 0.5) * 60 / 128 - 0.5 - 10, abs=0.02)


def test_an_unknown_fit_is_a_one_line_usage_error(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Through the console entry point: one `error:` line naming the option, status 2, nothing written."""
    source, output = face(tmp_path / "a.png"), tmp_path / "o"
    args = ["enhance", str(source), "-o", str(output), "-c", str(checkpoint), "--fit", "stretch"]
    monkeypatch.setattr(sys, "argv", ["facesr", *args])

    with pytest.raises(SystemExit) as exited:
        main()

    assert exited.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--fit" in lines[0], captured.err
    assert lines[0].endswith("(see facesr enhance --help)") and captured.out == ""
    assert not output.exists()


def test_exif_orientation_is_applied_and_recorded(checkpoint: Path, tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    photo = face(tmp_path / "photo.jpg", 40, 20, exif=exif)

    result = enhance(checkpoint, photo, "-o", tmp_path / "out", "--landmarks-json")

    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "out" / "photo.landmarks.json").read_text())["input"]
    assert record["oriented"] is True and (record["width"], record["height"]) == (20, 40)


def test_a_folder_without_images_is_reported(checkpoint: Path, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("not a face")

    result = enhance(checkpoint, tmp_path / "in", "-o", tmp_path / "out")

    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and "notes.txt" in lines[0] and lines[1] == "error: no input images found"
    assert not (tmp_path / "out").exists()


def test_a_file_that_appears_while_writing_is_not_replaced(tmp_path: Path) -> None:
    from facesr.model.output_write import save_image

    target = tmp_path / "a.png"
    target.write_bytes(b"someone else's")
    pixels = np.zeros((8, 8, 3), dtype=np.uint8)

    with pytest.raises(FileExistsError):
        save_image(target, pixels, "PNG", replace=False)
    assert target.read_bytes() == b"someone else's" and [p.name for p in tmp_path.iterdir()] == ["a.png"]
    save_image(target, pixels, "PNG", replace=True)
    assert size_of(target) == (8, 8)
