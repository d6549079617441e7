#!/bin/sh
# mmdebstrap --customize-hook for the autopilot-base root filesystem (run by build-images.sh;
# its content is part of the base image's input hash). $1 is the root directory being built.
#
# Adds the non-root user every Autopilot container runs as (autopilot, uid/gid 10001, home
# /home/autopilot), the /workspace directory runs work in, and drops what a container never needs.
set -eu
root=$1

chroot "$root" groupadd --gid 10001 autopilot
chroot "$root" useradd --uid 10001 --gid 10001 --home-dir /home/autopilot --no-create-home \
    --shell /bin/bash --comment Autopilot autopilot
# Both are usually tmpfs / volumes at run time; the image's own copies are for plain `docker run`.
install -d -m 0750 -o 10001 -g 10001 "$root/home/autopilot"
install -d -m 0755 -o 10001 -g 10001 "$root/workspace"

# No set-user-id or set-group-id programs: containers run with no-new-privileges anyway, so
# they could not use them; without them there is nothing to exploit if that ever failed.
find "$root" -xdev -type f -perm /6000 -exec chmod ug-s {} +

# Apt lists and caches are already cleaned by mmdebstrap; these are left over.
rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* \
    "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old \
    "$root"/etc/passwd- "$root"/etc/group- "$root"/etc/shadow- "$root"/etc/gshadow- \
    "$root"/var/log/apt/* "$root"/var/log/dpkg.log "$root"/var/log/alternatives.log \
    "$root"/var/log/bootstrap.log
# Keep only the copyright files under /usr/share/doc (dpkg's path-exclude covers packages
# unpacked by dpkg; this also catches anything extracted before those options applied).
if [ -d "$root/usr/share/doc" ]; then
    find "$root/usr/share/doc" -depth -mindepth 1 ! -name copyright ! -type d -delete
    find "$root/usr/share/doc" -depth -mindepth 1 -type d -empty -delete
fi
rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/lintian/*
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} + 2>/dev/null || true
