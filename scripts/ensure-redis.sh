#!/usr/bin/env bash
# The test suite starts its own redis-server on a free port; this only makes sure the binary exists.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then
  exit 0
fi
echo "redis-server is not installed; the queue tests need it." >&2
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing it with apt-get (Debian/Ubuntu package redis-server)..." >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  command -v redis-server >/dev/null 2>&1 && exit 0
fi
cat >&2 <<'MSG'
Install it, then run `make test` again:
  Debian/Ubuntu: sudo apt-get install redis-server
  Fedora/RHEL:   sudo dnf install redis
  macOS:         brew install redis
MSG
exit 1
