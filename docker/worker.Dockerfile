# autopilot-worker: `autopilot worker`, one worker of a fleet (takes runs from NATS: set
# AUTOPILOT_NATS_URL; it must not get AUTOPILOT_DATABASE_URL). Built by docker/build-images.sh;
# the build context holds just the release binary `autopilot`.
#
# BASE is the runtime image by default (build-images.sh; AUTOPILOT_WORKER_FROM=base for a slim
# one): with the local executor the worker runs the Claude Code CLI (`claude` on PATH,
# /usr/local/bin/claude) and Python with mcp itself. With the Docker executor it starts run
# containers instead and needs the engine's socket, which the operator mounts and grants to the
# non-root user by the socket's group, e.g.
#
#   docker run -d -e AUTOPILOT_NATS_URL=nats://nats:4222 \
#     -v /var/run/docker.sock:/var/run/docker.sock \
#     --group-add "$(stat -c %g /var/run/docker.sock)" \
#     -v autopilot-worker:/var/lib/autopilot autopilot-worker:latest
#
# (access to the socket is root-equivalent on the host: give it only to trusted workers).
ARG BASE=autopilot-runtime:latest
FROM ${BASE}

LABEL org.opencontainers.image.title="autopilot-worker" \
      org.opencontainers.image.description="Autopilot fleet worker: autopilot worker" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY autopilot /usr/local/bin/autopilot

# Job workspaces and the CLI's home live in the data directory: writable by uid 10001.
USER root
RUN install -d -m 0750 -o 10001 -g 10001 /var/lib/autopilot
VOLUME ["/var/lib/autopilot"]

ENV AUTOPILOT_DATA_DIR=/var/lib/autopilot \
    HOME=/home/autopilot

USER 10001:10001
WORKDIR /var/lib/autopilot
ENTRYPOINT ["/usr/local/bin/autopilot"]
CMD ["worker"]
