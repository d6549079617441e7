# Shared by start-engine.sh and build-images.sh, which source it after defining `log` and `die`.

# Root runs commands as is; anyone else through sudo when there is one.
if [[ $(id -u) -eq 0 ]] || ! command -v sudo >/dev/null 2>&1; then
    SUDO=()
else
    SUDO=(sudo)
fi

# The docker client: $DOCKER, else Debian's /usr/bin/docker (it matches the engine), else the
# one on PATH; empty when there is none.
pick_docker() {
    if [[ -n ${DOCKER:-} ]]; then
        printf '%s\n' "$DOCKER"
    elif [[ -x /usr/bin/docker ]]; then
        printf '%s\n' /usr/bin/docker
    else
        command -v docker 2>/dev/null || true
    fi
}

apt_install() {
    log "installing $* with apt-get"
    "${SUDO[@]}" apt-get update -qq || die "apt-get update failed"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" || die "apt-get install $* failed"
}
