#!/usr/bin/env bash
# Offline checks of the Helm chart in charts/autopilot (no cluster is reachable here):
# Helm's strict lint, a render per values file in charts/autopilot/ci/, every object against the
# Kubernetes schemas of the oldest and newest supported versions, values.schema.json (and unknown
# keys refused), security and availability policies, `promtool check rules` on the alert rules,
# and the dashboards' queries against the metrics Autopilot exports (charts/check.py).
#
# Installs what it needs when missing: a venv with pinned PyPI packages under
# ${AUTOPILOT_CACHE_DIR:-/var/cache/autopilot}/chart-venv (Helm 4 comes as a library inside
# helm-python-sdk: no helm binary), and Debian's `prometheus` for promtool.
# Exits non-zero naming every check that failed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${AUTOPILOT_CACHE_DIR:-/var/cache/autopilot}"
venv="$cache/chart-venv"
pins=(helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 check-jsonschema==0.39.0 PyYAML==6.0.4)

sudo_if_needed() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if [ "$(cat "$venv/.pins" 2>/dev/null)" != "${pins[*]}" ]; then
  echo "charts/test.sh: installing ${pins[*]} into $venv" >&2
  mkdir -p "$cache" || { echo "charts/test.sh: cannot create $cache (set AUTOPILOT_CACHE_DIR)" >&2; exit 1; }
  python3 -m venv "$venv" || { echo "charts/test.sh: python3 -m venv failed (install python3-venv)" >&2; exit 1; }
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${pins[@]}" \
    || { echo "charts/test.sh: pip install ${pins[*]} failed" >&2; exit 1; }
  echo "${pins[*]}" > "$venv/.pins"
fi

if ! command -v promtool >/dev/null 2>&1; then
  echo "charts/test.sh: installing Debian's prometheus for promtool" >&2
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
    || { echo "charts/test.sh: apt-get install prometheus failed: promtool is needed" >&2; exit 1; }
fi

exec "$venv/bin/python" "$here/check.py" "$(command -v promtool)"
