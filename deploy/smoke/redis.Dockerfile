# Stand-in for the `redis` image of docker-compose.yml, used only by the CPU smoke test
# (scripts/compose-smoke.sh) when redis:<tag> cannot be pulled: Debian's redis-server on a Debian base.
#
#   docker build -f deploy/smoke/redis.Dockerfile --build-arg BASE_IMAGE=<debian image> deploy/smoke
#
# apt trusts the BuildKit secret `ca` when it is given (--secret id=ca,src=<CA bundle>), as in the Dockerfile.
#
# The compose service's `command` (redis-server --maxmemory ...) runs unchanged through the entrypoint;
# the healthcheck's `redis-cli ping` comes with the redis-tools package.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

ARG DEBIAN_FRONTEND=noninteractive
# Distribution packages are not pinned: the base image pins the Debian release.
# hadolint ignore=DL3008
RUN --mount=type=secret,id=ca,required=false,mode=0444 \
    if [ -s /run/secrets/ca ]; then set -- -o Acquire::https::CAInfo=/run/secrets/ca; fi \
    && apt-get "$@" update \
    && apt-get "$@" install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/*

COPY --chmod=0755 redis-entrypoint.sh /usr/local/bin/redis-entrypoint

# The package's maintainer scripts create this system user; its uid is Debian's choice, so the name.
# hadolint ignore=DL3066
USER redis
WORKDIR /var/lib/redis
EXPOSE 6379
ENTRYPOINT ["/usr/local/bin/redis-entrypoint"]
CMD ["redis-server"]
