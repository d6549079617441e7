#!/usr/bin/env bash
# Makes sure a Docker Engine is reachable.
#
#   docker/start-engine.sh
#
# If `docker info` answers, does nothing. Otherwise installs Debian's `docker.io` when dockerd is
# missing (apt-get, through sudo when not root), starts /usr/sbin/dockerd in the background with
# its log in $AUTOPILOT_DOCKERD_LOG (default /var/log/autopilot-dockerd.log) and waits up to
# $AUTOPILOT_DOCKERD_WAIT_SECS (default 30) seconds for it to answer. Safe to run again.
#
# Environment:
#   DOCKER                       docker client to use (default: /usr/bin/docker if present, else
#                                `docker` on PATH)
#   AUTOPILOT_DOCKERD_LOG        dockerd's log file
#   AUTOPILOT_DOCKERD_WAIT_SECS  how long to wait for the engine to answer
set -euo pipefail

log() { printf 'start-engine: %s\n' "$*" >&2; }
die() {
    printf 'start-engine: error: %s\n' "$*" >&2
    exit 1
}

# shellcheck source=docker/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

engine_answers() {
    local docker
    docker=$(pick_docker)
    [[ -n $docker ]] || return 1
    # The engine's socket is usually root's: try through sudo too when not root.
    "$docker" info >/dev/null 2>&1 || { [[ ${#SUDO[@]} -gt 0 ]] && "${SUDO[@]}" -n "$docker" info >/dev/null 2>&1; }
}

if engine_answers; then
    log "Docker Engine is reachable ($("$(pick_docker)" version --format '{{.Server.Version}}' 2>/dev/null || echo '?'))"
    exit 0
fi

if [[ $(id -u) -ne 0 && ${#SUDO[@]} -eq 0 ]]; then
    die "the Docker Engine is not reachable and this script needs root (or sudo) to install or start it"
fi

DOCKERD=/usr/sbin/dockerd
if [[ ! -x $DOCKERD || -z $(pick_docker) ]]; then
    apt_install docker.io
    [[ -x $DOCKERD ]] || die "docker.io is installed but $DOCKERD is missing"
fi

LOG_FILE=${AUTOPILOT_DOCKERD_LOG:-/var/log/autopilot-dockerd.log}
WAIT_SECS=${AUTOPILOT_DOCKERD_WAIT_SECS:-30}

if pgrep -x dockerd >/dev/null 2>&1; then
    # Started by someone else (or by an earlier call) and not answering yet: only wait.
    log "dockerd is already running (pid $(pgrep -x dockerd | head -n1)); waiting for it to answer"
else
    log "starting $DOCKERD (log: $LOG_FILE)"
    "${SUDO[@]}" mkdir -p "$(dirname "$LOG_FILE")"
    # setsid + nohup: dockerd outlives this script and the shell that ran it.
    "${SUDO[@]}" sh -c 'exec setsid nohup "$1" >>"$2" 2>&1 </dev/null &' sh "$DOCKERD" "$LOG_FILE"
fi

for ((i = 0; i < WAIT_SECS * 2; i++)); do
    if engine_answers; then
        log "Docker Engine is up ($("$(pick_docker)" version --format '{{.Server.Version}}' 2>/dev/null || echo '?'))"
        exit 0
    fi
    sleep 0.5
done

printf 'start-engine: error: the Docker Engine did not answer within %ss. Last lines of %s:\n' \
    "$WAIT_SECS" "$LOG_FILE" >&2
"${SUDO[@]}" tail -n 30 "$LOG_FILE" >&2 2>/dev/null || true
exit 1
