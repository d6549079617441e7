# autopilot-control-plane: `autopilot serve` (HTTP API, scheduler and, unless it runs as a fleet
# control plane with AUTOPILOT_NATS_URL and a PostgreSQL AUTOPILOT_DATABASE_URL, the embedded
# worker). Built by docker/build-images.sh; the build context holds just the release binary
# `autopilot` (cargo build --release --bin autopilot).
#
# The embedded worker runs the Claude Code CLI as a local process: this image (FROM the base)
# has no CLI, so use it as a fleet control plane, or build it on the runtime image
# (AUTOPILOT_CONTROL_PLANE_FROM=runtime docker/build-images.sh control-plane).
#
#   docker run -d -p 8080:8080 -v autopilot-data:/var/lib/autopilot autopilot-control-plane:latest
ARG BASE=autopilot-base:latest
FROM ${BASE}

LABEL org.opencontainers.image.title="autopilot-control-plane" \
      org.opencontainers.image.description="Autopilot control plane: autopilot serve" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY autopilot /usr/local/bin/autopilot

# The SQLite database, secret.key, job workspaces and the CLI's home live in the data directory:
# it must be writable by uid 10001, so it is a volume (a named volume takes this ownership).
USER root
RUN install -d -m 0750 -o 10001 -g 10001 /var/lib/autopilot
VOLUME ["/var/lib/autopilot"]

ENV AUTOPILOT_BIND=0.0.0.0:8080 \
    AUTOPILOT_DATA_DIR=/var/lib/autopilot \
    HOME=/home/autopilot
EXPOSE 8080

USER 10001:10001
WORKDIR /var/lib/autopilot
ENTRYPOINT ["/usr/local/bin/autopilot"]
CMD ["serve"]
