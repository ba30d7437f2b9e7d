#!/usr/bin/env bash
# The browser tests (pytest -m browser: the demo page and /docs) drive Debian's headless Chromium through
# Playwright; Playwright's own browser downloads are never used. This only makes sure the binaries exist.
set -euo pipefail
CHROMIUM=${FACESR_CHROMIUM:-/usr/bin/chromium}
if [ -x "$CHROMIUM" ] && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
echo "Chromium is not installed; the browser tests need it." >&2
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing it with apt-get (Debian packages chromium and chromium-driver)..." >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  [ -x "$CHROMIUM" ] && exit 0
fi
cat >&2 <<'MSG'
Install it, then run `make test` again:
  Debian: sudo apt-get install chromium chromium-driver   (or run this script as root)
  elsewhere:     install Chromium and point FACESR_CHROMIUM at its binary
Without it, run the other tests directly: .venv/bin/pytest -m "not browser"
MSG
exit 1
