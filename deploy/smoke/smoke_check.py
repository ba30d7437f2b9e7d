#!/usr/bin/env python3
"""Checks of the running compose stack for scripts/compose-smoke.sh, and the Debian mirror it builds its
local base from (standard library only).

  smoke_check.py faces URL DIR [--count N] [--concurrency C] [--size 128]
      POST N faces from DIR (image files, cycled) to URL/v1/super-resolve, C at a time; each answer must
      be HTTP 200 and a PNG of SIZE x SIZE pixels.
  smoke_check.py targets PROMETHEUS_URL --expect JOB=N [--expect ...] [--timeout S]
      Prometheus' /api/v1/targets: wait until every active target is up and each JOB has N targets.
  smoke_check.py rules PROMETHEUS_URL [--timeout S]
      Prometheus' /api/v1/rules: wait until the alert rules are loaded and each has been evaluated without
      an error (health "ok") on the stack's real series.
  smoke_check.py batches PROMETHEUS_URL --job JOB --save FILE [--timeout S]
      Wait for a scrape of every target of JOB made after this command started, and write each target's
      facesr_batches_total to FILE (JSON): the baseline of the next form.
  smoke_check.py batches PROMETHEUS_URL --job JOB --instances N [--baseline FILE] [--timeout S]
      Wait until N distinct targets of JOB report more facesr_batches_total than in FILE (a target missing
      from FILE: more than 0), i.e. each worker took jobs since the baseline.
  smoke_check.py debian-mirror [--suite bookworm] [--apt-dir /etc/apt]
      Print "MIRROR SECURITY_MIRROR": the first Debian entries of the apt sources (deb822 and one-line) for
      SUITE with the component main, and for SUITE-security (no trailing slash). Entries of other
      repositories (Docker's, another distribution's) do not qualify: they lack SUITE or main.

Prints what it saw; exit status 0 when the check passed, 1 when it failed (or timed out), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import re
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


def query_by_instance(prometheus: str, expression: str) -> dict[str, float]:
    """An instant query's value for each ``instance`` label."""
    query = urllib.parse.quote(expression)
    result = get_json(f"{prometheus.rstrip('/')}/api/v1/query?query={query}")["data"]["result"]
    return {r["metric"]["instance"]: float(r["value"][1]) for r in result}


def check_batches(args: argparse.Namespace) -> int:
    series = f'facesr_batches_total{{job="{args.job}"}}'
    if args.save:
        return save_batches(args, series)
    baseline: dict[str, float] = {}
    if args.baseline:
        baseline = json.loads(Path(args.baseline).read_text(encoding="utf-8"))

    def attempt() -> tuple[bool, str]:
        counts = query_by_instance(args.prometheus, series)
        state = ", ".join(
            f"{instance} {value:.0f} batches (before: {baseline.get(instance, 0):.0f})"
            for instance, value in sorted(counts.items())
        )
        grown = [instance for instance, value in counts.items() if value > baseline.get(instance, 0.0)]
        return len(grown) >= args.instances, state or "no series yet"

    return poll("batches", args.timeout, attempt)


def save_batches(args: argparse.Namespace, series: str) -> int:
    """The baseline: each target's count from a scrape made after ``started`` (a sample scraped earlier may
    miss batches that were already answered)."""
    started = time.time()
    saved: dict[str, float] = {}

    def attempt() -> tuple[bool, str]:
        scraped = query_by_instance(args.prometheus, f"timestamp({series})")
        counts = query_by_instance(args.prometheus, series)
        stale = sorted(instance for instance, at in scraped.items() if at < started)
        saved.clear()
        saved.update(counts)
        state = ", ".join(f"{instance} {value:.0f} batches" for instance, value in sorted(counts.items()))
        if stale:
            state += f"; waiting for a new scrape of {', '.join(stale)}"
        return bool(counts) and not stale and set(scraped) == set(counts), state or "no series yet"

    status = poll("batches baseline", args.timeout, attempt)
    if status == 0:
        Path(args.save).write_text(json.dumps(saved, sort_keys=True), encoding="utf-8")
    return status


# --- the host's Debian mirror ------------------------------------------------------------------------------
DEFAULT_MIRROR = "http://deb.debian.org/debian"
AptEntry = tuple[list[str], list[str], list[str], list[str]]  # types, URIs, suites, components


def _one_line_entries(text: str) -> list[AptEntry]:
    """``deb [options] URI SUITE COMPONENT...`` lines (sources.list, sources.list.d/*.list)."""
    entries: list[AptEntry] = []
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split()
        if len(words) < 3:
            continue
        kind, rest = words[0], words[1:]
        if rest[0].startswith("["):  # options, possibly several words: [arch=amd64 signed-by=...]
            while rest and not rest[0].endswith("]"):
                rest = rest[1:]
            rest = rest[1:]
        if len(rest) >= 2:
            entries.append(([kind], [rest[0]], [rest[1]], rest[2:]))
    return entries


def _deb822_entries(text: str) -> list[AptEntry]:
    """The enabled stanzas of a deb822 file (sources.list.d/*.sources)."""
    entries: list[AptEntry] = []
    for stanza in re.split(r"\n[ \t]*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for raw in stanza.splitlines():
            if raw.startswith("#") or not raw.strip():
                continue
            if raw[0].isspace() and key:  # a continuation line
                fields[key] += " " + raw.strip()
            elif ":" in raw:
                key, value = raw.split(":", 1)
                key = key.strip().lower()
                fields[key] = value.strip()
        if fields.get("enabled", "yes").lower() != "no":
            types, uris, suites, components = (
                fields.get(name, "").split() for name in ("types", "uris", "suites", "components")
            )
            entries.append((types, uris, suites, components))
    return entries


def apt_entries(apt_dir: Path) -> list[AptEntry]:
    """Every enabled entry of the apt sources under ``apt_dir``, in apt's order."""
    entries = []
    for path in [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]:
        if path.is_file():
            entries += _one_line_entries(path.read_text(encoding="utf-8", errors="replace"))
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        entries += _deb822_entries(path.read_text(encoding="utf-8", errors="replace"))
    return entries


def debian_mirrors(apt_dir: Path, suite: str) -> tuple[str, str]:
    """(mirror, security mirror) of ``suite`` in the apt sources; Debian's own where there is none."""
    mirror = security = ""
    for types, uris, suites, components in apt_entries(apt_dir):
        if "deb" not in types or not uris or "main" not in components:
            continue
        if not mirror and suite in suites:
            mirror = uris[0].rstrip("/")
        if not security and f"{suite}-security" in suites:
            security = uris[0].rstrip("/")
    mirror = mirror or DEFAULT_MIRROR
    if not security:
        root = mirror[: -len("/debian")] if mirror.endswith("/debian") else "http://deb.debian.org"
        security = f"{root}/debian-security"
    return mirror, security


def print_debian_mirror(args: argparse.Namespace) -> int:
    print(*debian_mirrors(Path(args.apt_dir), args.suite))
    return 0


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
    batches.add_argument("--baseline", metavar="FILE", help="counts before (from --save)")
    batches.add_argument("--save", metavar="FILE", help="record the current counts instead of checking")
    batches.add_argument("--timeout", type=float, default=120.0)
    batches.set_defaults(run=check_batches)
    mirror = commands.add_parser("debian-mirror")
    mirror.add_argument("--suite", default="bookworm")
    mirror.add_argument("--apt-dir", default="/etc/apt")
    mirror.set_defaults(run=print_debian_mirror)
    args = parser.parse_args(argv)
    if any("=" not in item for item in getattr(args, "expect", [])):
        parser.error("--expect takes JOB=N")
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
