#!/bin/sh
# Entrypoint of the Redis stand-in (redis.Dockerfile). Started without a configuration file, Debian's
# redis-server keeps protected mode on and refuses clients from other containers; the official image turns
# it off (its network is the container's), and so does this one. Anything else runs as given.
set -eu
if [ "${1:-}" = "redis-server" ]; then
  shift
  exec redis-server --protected-mode no "$@"
fi
exec "$@"
