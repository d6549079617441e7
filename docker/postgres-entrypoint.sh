#!/bin/sh
# Entrypoint of autopilot-postgres: creates the cluster in $PGDATA on the first start, then runs
# the server in the foreground (arguments are passed on to `postgres`).
#
#   POSTGRES_PASSWORD  password of POSTGRES_USER (required the first time; TCP logins use
#                      scram-sha-256)
#   POSTGRES_USER      the superuser [autopilot]
#   POSTGRES_DB        a database made for it [the user's name]
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
POSTGRES_USER=${POSTGRES_USER:-autopilot}
POSTGRES_DB=${POSTGRES_DB:-$POSTGRES_USER}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
        echo "autopilot-postgres: POSTGRES_PASSWORD must be set to create the cluster in $PGDATA" >&2
        exit 1
    fi
    echo "autopilot-postgres: creating the cluster in $PGDATA (superuser $POSTGRES_USER, database $POSTGRES_DB)" >&2
    # The password goes through a pipe, never the command line.
    printf '%s\n' "$POSTGRES_PASSWORD" | initdb --pgdata="$PGDATA" --username="$POSTGRES_USER" \
        --pwfile=/dev/stdin --encoding=UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    # initdb admits TCP logins from the loopback only; other containers connect over the network.
    printf '%s\n' "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    if [ "$POSTGRES_DB" != postgres ]; then
        # Single-user mode: no server, no socket; one statement per line.
        printf 'CREATE DATABASE "%s" OWNER "%s"\n' "$POSTGRES_DB" "$POSTGRES_USER" \
            | postgres --single -D "$PGDATA" postgres >/dev/null
    fi
fi

exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
