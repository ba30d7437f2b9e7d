#!/usr/bin/env python3
"""Container health probe: exit 0 when an HTTP endpoint answers 200, else 1 (Docker HEALTHCHECK).

Usage: facesr-healthcheck [URL] [--timeout SECONDS]
URL defaults to the API's liveness endpoint. Standard library only, so the image needs no curl; the reason
for a failure is printed, and Docker keeps it in `docker inspect`.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:8000/healthz"


def probe(url: str, timeout_s: float) -> tuple[bool, str]:
    """GET ``url``; (True, detail) on HTTP 200, (False, reason) on any other status or error."""
    if not url.startswith(("http://", "https://")):
        return False, f"not an http(s) URL: {url!r}"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (scheme checked)
            status = response.status
    except urllib.error.HTTPError as error:
        return False, f"{url} answered HTTP {error.code}"
    except (urllib.error.URLError, OSError) as error:
        return False, f"{url} unreachable: {error}"
    if status != 200:
        return False, f"{url} answered HTTP {status}"
    return True, f"{url} answered HTTP 200"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "url", nargs="?", default=DEFAULT_URL, help=f"endpoint to probe (default {DEFAULT_URL})"
    )
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the answer")
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    healthy, detail = probe(args.url, args.timeout)
    print(detail, file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
