#!/usr/bin/env python3
"""Checks of the running compose stack for scripts/compose-smoke.sh (standard library only).

  smoke_check.py faces URL DIR [--count N] [--concurrency C] [--size 128]
      POST N faces from DIR (image files, cycled) to URL/v1/super-resolve, C at a time; each answer must
      be HTTP 200 and a PNG of SIZE x SIZE pixels.
  smoke_check.py targets PROMETHEUS_URL --expect JOB=N [--expect ...] [--timeout S]
      Prometheus' /api/v1/targets: wait until every active target is up and each JOB has N targets.
  smoke_check.py rules PROMETHEUS_URL [--timeout S]
      Prometheus' /api/v1/rules: wait until the alert rules are loaded and each has been evaluated without
      an error (health "ok") on the stack's real series.
  smoke_check.py batches PROMETHEUS_URL --job JOB --instances N [--timeout S]
      Wait until N distinct targets of JOB report facesr_batches_total > 0 (each worker took jobs).

Prints what it saw; exit status 0 when the check passed, 1 when it failed (or timed out), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, or None when ``data`` is not a PNG."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def multipart(field: str, filename: str, payload: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body with one file part, and its Content-Type header."""
    boundary = uuid.uuid4().hex
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    body = head + payload + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def super_resolve(url: str, face: Path, size: int, timeout_s: float) -> str | None:
    """One request; None when the answer is a SIZE x SIZE PNG with status 200, else what was wrong."""
    body, content_type = multipart("image", face.name, face.read_bytes())
    request = urllib.request.Request(  # noqa: S310 (the URL comes from the smoke script)
        f"{url.rstrip('/')}/v1/super-resolve",
        data=body,
        method="POST",
        headers={"Content-Type": content_type, "Accept": "image/png"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            status, data = response.status, response.read()
    except urllib.error.HTTPError as error:
        return f"{face.name}: HTTP {error.code}: {error.read()[:300]!r}"
    except (urllib.error.URLError, OSError) as error:
        return f"{face.name}: {error}"
    if status != 200:
        return f"{face.name}: HTTP {status}"
    found = png_size(data)
    if found != (size, size):
        return f"{face.name}: expected a {size}x{size} PNG, got {found or data[:16]!r}"
    return None


def check_faces(args: argparse.Namespace) -> int:
    faces = sorted(p for p in Path(args.dir).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not faces:
        print(f"faces: no images in {args.dir}", file=sys.stderr)
        return 1
    chosen = [faces[i % len(faces)] for i in range(args.count)]
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        errors = [
            e for e in pool.map(lambda f: super_resolve(args.url, f, args.size, args.timeout), chosen) if e
        ]
    elapsed = time.monotonic() - started
    print(
        f"faces: {len(chosen) - len(errors)}/{len(chosen)} answered 200 with a {args.size}x{args.size} PNG "
        f"({len(set(chosen))} distinct faces from {args.dir}, {args.concurrency} at a time, {elapsed:.1f} s)"
    )
    for error in errors:
        print(f"faces: FAILED {error}", file=sys.stderr)
    return 1 if errors else 0


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (the smoke script's URL)
        return json.load(response)


def poll(what: str, timeout_s: float, attempt: Callable[[], tuple[bool, str]]) -> int:
    """Call ``attempt`` every 3 s until it reports success or the time is up; print the last state."""
    deadline = time.monotonic() + timeout_s
    state = "no answer yet"
    while True:
        try:
            done, state = attempt()
        except (urllib.error.URLError, OSError, ValueError, KeyError) as error:
            done, state = False, f"error: {error}"
        if done:
            print(f"{what}: {state}")
            return 0
        if time.monotonic() >= deadline:
            print(f"{what}: FAILED after {timeout_s:.0f} s: {state}", file=sys.stderr)
            return 1
        time.sleep(3)


def check_targets(args: argparse.Namespace) -> int:
    expected = dict(item.split("=", 1) for item in args.expect)

    def attempt() -> tuple[bool, str]:
        active = get_json(f"{args.prometheus.rstrip('/')}/api/v1/targets?state=active")["data"][
            "activeTargets"
        ]
        by_job: dict[str, list[str]] = {}
        for target in active:
            job = target["labels"]["job"]
            by_job.setdefault(job, []).append(
                f"{target['labels']['instance']}={target['health']}"
                + (f" ({target['lastError']})" if target.get("lastError") else "")
            )
        state = "; ".join(f"{job}: {', '.join(sorted(t))}" for job, t in sorted(by_job.items()))
        all_up = bool(active) and all(t["health"] == "up" for t in active)
        counts_ok = all(len(by_job.get(job, [])) == int(n) for job, n in expected.items())
        return all_up and counts_ok, state

    return poll("targets", args.timeout, attempt)


def check_rules(args: argparse.Namespace) -> int:
    def attempt() -> tuple[bool, str]:
        groups = get_json(f"{args.prometheus.rstrip('/')}/api/v1/rules")["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        bad = [
            f"{r['name']}={r['health']} ({r.get('lastError') or 'not evaluated yet'})"
            for r in rules
            if r["health"] != "ok"
        ]
        firing = sorted(r["name"] for r in rules if r.get("state") == "firing")
        state = f"{len(rules)} rules in {len(groups)} groups, {len(rules) - len(bad)} evaluated ok"
        state += f"; firing: {', '.join(firing) or 'none'}" + (f"; {'; '.join(bad)}" if bad else "")
        return bool(rules) and not bad, state

    return poll("rules", args.timeout, attempt)


def check_batches(args: argparse.Namespace) -> int:
    query = urllib.parse.quote(f'facesr_batches_total{{job="{args.job}"}}')

    def attempt() -> tuple[bool, str]:
        result = get_json(f"{args.prometheus.rstrip('/')}/api/v1/query?query={query}")["data"]["result"]
        counts = {r["metric"]["instance"]: float(r["value"][1]) for r in result}
        state = ", ".join(f"{instance} {value:.0f} batches" for instance, value in sorted(counts.items()))
        busy = [instance for instance, value in counts.items() if value > 0]
        return len(busy) >= args.instances, state or "no series yet"

    return poll("batches", args.timeout, attempt)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    faces = commands.add_parser("faces")
    faces.add_argument("url")
    faces.add_argument("dir")
    faces.add_argument("--count", type=int, default=8)
    faces.add_argument("--concurrency", type=int, default=4)
    faces.add_argument("--size", type=int, default=128)
    faces.add_argument("--timeout", type=float, default=60.0)
    faces.set_defaults(run=check_faces)
    targets = commands.add_parser("targets")
    targets.add_argument("prometheus")
    targets.add_argument("--expect", action="append", default=[], metavar="JOB=N")
    targets.add_argument("--timeout", type=float, default=120.0)
    targets.set_defaults(run=check_targets)
    rules = commands.add_parser("rules")
    rules.add_argument("prometheus")
    rules.add_argument("--timeout", type=float, default=120.0)
    rules.set_defaults(run=check_rules)
    batches = commands.add_parser("batches")
    batches.add_argument("prometheus")
    batches.add_argument("--job", default="facesr-worker")
    batches.add_argument("--instances", type=int, default=2)
    batches.add_argument("--timeout", type=float, default=120.0)
    batches.set_defaults(run=check_batches)
    args = parser.parse_args(argv)
    if any("=" not in item for item in getattr(args, "expect", [])):
        parser.error("--expect takes JOB=N")
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
