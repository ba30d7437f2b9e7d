# Stand-in for the `prom/prometheus` image of docker-compose.yml, used only by the CPU smoke test
# (scripts/compose-smoke.sh) when prom/prometheus:<tag> cannot be pulled: Debian's prometheus package (the
# same release `make check-deploy` takes promtool from) on a Debian base.
#
#   docker build -f deploy/smoke/prometheus.Dockerfile --build-arg BASE_IMAGE=<debian image> deploy/smoke
#
# apt trusts the BuildKit secret `ca` when it is given (--secret id=ca,src=<CA bundle>), as in the Dockerfile.
#
# Like the official image: the binary is the entrypoint (compose passes the flags), it runs unprivileged,
# keeps its data in /prometheus and has a wget for the compose healthcheck.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

ARG DEBIAN_FRONTEND=noninteractive
# The package's maintainer scripts create the `prometheus` user; the base's policy-rc.d (or the absence of
# an init system) keeps them from starting a server during the build.
# hadolint ignore=DL3008
RUN --mount=type=secret,id=ca,required=false,mode=0444 \
    if [ -s /run/secrets/ca ]; then set -- -o Acquire::https::CAInfo=/run/secrets/ca; fi \
    && apt-get "$@" update \
    && apt-get "$@" install -y --no-install-recommends prometheus wget \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /prometheus \
    && chown prometheus:prometheus /prometheus

# The package's maintainer scripts create this system user; its uid is Debian's choice, so the name.
# hadolint ignore=DL3066
USER prometheus
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
