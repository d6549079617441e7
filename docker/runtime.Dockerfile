# autopilot-runtime: the image one run executes in (the Docker executor's default image).
# Built by docker/build-images.sh from local material only; the build context holds just:
#   claude   the Claude Code CLI (mode 0755), from the claude-agent-sdk wheel's _bundled/claude
#   python/  the `mcp` package and its dependencies (pip install --target, CPython 3.11)
#   autopilot-relay  the model relay of `model-only` runs (worker/relay)
#   autopilot-servers  Autopilot's fixed MCP servers (fixed-servers/), mode 0711: execute-only
#   autopilot-mcp-guard  the guard every other stdio MCP server runs under, mode 0711
# Run it with a read-only root, --cap-drop ALL, --security-opt no-new-privileges, the run's
# workspace mounted at /workspace and tmpfs at /home/autopilot and /tmp (see docker/README.md).
ARG BASE=autopilot-base:latest
FROM ${BASE}

LABEL org.opencontainers.image.title="autopilot-runtime" \
      org.opencontainers.image.description="Autopilot run image: the Claude Code CLI and Python 3 with the mcp package, as a non-root user" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="autopilot-base"

# Owned by root and not writable by the run user.
COPY claude /usr/local/bin/claude
COPY autopilot-relay /usr/local/bin/autopilot-relay
COPY autopilot-servers /usr/local/bin/autopilot-servers
COPY autopilot-mcp-guard /usr/local/bin/autopilot-mcp-guard
# The interpreter execute-only too: a Python process (an MCP server the guard started) is then
# not dumpable, and the run's other processes cannot read its environment, which holds that
# server's credentials, or its memory. Scripts still run: only the interpreter's file is closed.
USER root
RUN chmod 0711 "$(readlink -f /usr/bin/python3)"
COPY python/ /opt/autopilot/python/

# The root is read-only at run time: no byte-code writes, no self-update of the CLI.
ENV PYTHONPATH=/opt/autopilot/python \
    PYTHONDONTWRITEBYTECODE=1 \
    DISABLE_AUTOUPDATER=1 \
    HOME=/home/autopilot

USER 10001:10001
WORKDIR /workspace
CMD ["claude", "--version"]
