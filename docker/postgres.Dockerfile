# autopilot-postgres: PostgreSQL from Debian's own packages, for trying the fleet on one machine
# (docker/compose.yaml). Built by docker/build-images.sh on autopilot-postgres-packages, the
# base plus the postgresql-15 packages installed offline (one committed layer); the build
# context holds just postgres-entrypoint.sh.
#
# Runs as `postgres` (uid/gid 999) with a read-only root: the data lives in the volume
# /var/lib/postgresql/data, the socket in /run/postgresql (give it a tmpfs). The first start
# creates the cluster from POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB, e.g.
#
#   docker run -d -e POSTGRES_PASSWORD=… -v autopilot-pg:/var/lib/postgresql/data \
#     --read-only --tmpfs /run/postgresql:uid=999,gid=999 --tmpfs /tmp autopilot-postgres:latest
ARG BASE=autopilot-postgres-packages:latest
FROM ${BASE}
ARG PG_MAJOR=15
ARG PG_UID=999

LABEL org.opencontainers.image.title="autopilot-postgres" \
      org.opencontainers.image.description="PostgreSQL from Debian bookworm for an Autopilot fleet" \
      org.opencontainers.image.licenses="PostgreSQL"

USER root
# The package made a cluster `main` the Debian way (/etc/postgresql, pg_ctlcluster); this image
# runs the server binary directly on its own data directory instead.
RUN rm -rf /etc/postgresql/${PG_MAJOR}/main /var/lib/postgresql/${PG_MAJOR} \
 && install -d -m 0700 -o ${PG_UID} -g ${PG_UID} /var/lib/postgresql/data \
 && install -d -m 2775 -o ${PG_UID} -g ${PG_UID} /run/postgresql
COPY postgres-entrypoint.sh /usr/local/bin/autopilot-postgres
VOLUME ["/var/lib/postgresql/data"]

ENV PATH=/usr/lib/postgresql/${PG_MAJOR}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PGDATA=/var/lib/postgresql/data \
    HOME=/var/lib/postgresql
EXPOSE 5432

USER ${PG_UID}:${PG_UID}
WORKDIR /var/lib/postgresql
ENTRYPOINT ["/usr/local/bin/autopilot-postgres"]
