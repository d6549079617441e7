#!/usr/bin/env bash
# Fuzzes what Autopilot reads from outside, with cargo-fuzz (libFuzzer): webhook templates,
# webhook signature headers, cron and `at` schedules, the CLI's stream-json, MCP tool arguments,
# OAuth requests, access tokens and the worker protocol's messages (one target each, in
# fuzz/fuzz_targets/; each file says what its input is and which properties it checks).
#
#   bash tests/fuzz/run.sh [SECONDS-PER-TARGET] [TARGET ...]     (default: 60 s, every target)
#
# Installs cargo-fuzz if missing (pinned, under the cache), builds every target, runs each for
# the given time and prints, per target, its executions, executions per second, corpus size and
# whether it found a crash (a panic or a failed property), a timeout (one input running longer
# than its limit: a hang) or an out-of-memory, then one Markdown table row per target. Exits
# non-zero if any target found one, printing the reproducer's path:
#
#   tests/fuzz/artifacts/TARGET/crash-…   replay it: "$CARGO_TARGET_DIR"/x86_64-unknown-linux-gnu/release/TARGET FILE
#
# Corpora: tests/fuzz/corpus/TARGET holds the committed seeds (small, written by hand, meaningful);
# they are only read. Runs of a minute or more per target also read and grow a corpus kept in
# the cache ($AUTOPILOT_CACHE_DIR/fuzz-corpus/TARGET), so long runs build on each other on one
# machine without churning the repository. Shorter runs (the test suite's) start from the seeds
# alone: libFuzzer first replays every input it is given, and a grown corpus would make a 5 s
# run take minutes. To keep a find, copy it into the seeds and minimise them:
# cargo fuzz cmin --fuzz-dir tests/fuzz -s none TARGET tests/fuzz/corpus/TARGET, then commit what remains.
#
# Built without a sanitizer (`-s none`): the project's own code has no `unsafe` (the workspace
# denies it), what is sought is panics, hangs and broken properties, and AddressSanitizer needs a
# nightly compiler. The coverage instrumentation works on stable Rust.
set -euo pipefail

# The fuzz crate is where this script is.
fuzz_dir=$(cd "$(dirname "$0")" && pwd)
seconds=${1:-60}
shift || true
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ]; then
  echo "usage: bash tests/fuzz/run.sh [SECONDS-PER-TARGET] [TARGET ...]" >&2
  exit 2
fi

# Each target with its largest input (bytes) and its per-input time limit (seconds): an input
# that runs longer is reported as a hang.
declare -A max_len=(
  [webhook_template]=4096
  [signature_headers]=2048
  [schedule]=256
  [stream_json]=8192
  [mcp_tool_args]=4096
  [oauth_params]=4096
  [access_token]=2048
  [worker_protocol]=8192
)
all_targets=(webhook_template signature_headers schedule stream_json mcp_tool_args oauth_params
  access_token worker_protocol)
per_input_timeout_secs=10
max_work_corpus=4000
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then targets=("${all_targets[@]}"); fi
for target in "${targets[@]}"; do
  [ -n "${max_len[$target]:-}" ] || { echo "unknown target \`$target\`; the targets are: ${all_targets[*]}" >&2; exit 2; }
done

cache=${AUTOPILOT_CACHE_DIR:-/var/cache/autopilot}
mkdir -p "$cache"
# A target directory of its own: instrumented builds share nothing with the normal ones.
export CARGO_TARGET_DIR=${AUTOPILOT_FUZZ_TARGET_DIR:-$cache/target-fuzz}
corpus_dir=${AUTOPILOT_FUZZ_CORPUS_DIR:-$cache/fuzz-corpus}
log_dir="$CARGO_TARGET_DIR/fuzz-logs"
mkdir -p "$corpus_dir" "$log_dir"

# --- cargo-fuzz (pinned) ---------------------------------------------------------------------
cargo_fuzz_version=0.13.2
cargo_fuzz_root="$cache/cargo-fuzz"
cargo_fuzz="$cargo_fuzz_root/bin/cargo-fuzz"
if [ ! -x "$cargo_fuzz" ] || [ "$("$cargo_fuzz" --version 2>/dev/null)" != "cargo-fuzz $cargo_fuzz_version" ]; then
  echo "installing cargo-fuzz $cargo_fuzz_version into $cargo_fuzz_root"
  cargo install --quiet --locked --force cargo-fuzz --version "$cargo_fuzz_version" --root "$cargo_fuzz_root"
fi
export PATH="$cargo_fuzz_root/bin:$PATH"

# --- Build every target ----------------------------------------------------------------------
build_start=$SECONDS
# 16 codegen units instead of cargo-fuzz's 1: the large crates build on every core, for a few
# percent fewer executions per second. (tests/fuzz/Cargo.toml sets how much the project's crates are
# optimised.) Changing these flags rebuilds every dependency.
cargo fuzz build --fuzz-dir "$fuzz_dir" --sanitizer none --codegen-units 16
echo "fuzz targets built in $((SECONDS - build_start)) s"
bin_dir="$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release"

# --- Run each target ---------------------------------------------------------------------------
failed=()
rows=()
for target in "${targets[@]}"; do
  if [ "$seconds" -ge 60 ]; then
    work="$corpus_dir/$target"
  else
    work=$(mktemp -d "${TMPDIR:-/tmp}/autopilot-fuzz-$target.XXXXXX")
  fi
  seeds="$fuzz_dir/corpus/$target"
  artifacts="$fuzz_dir/artifacts/$target"
  log="$log_dir/$target.log"
  mkdir -p "$work" "$artifacts"
  # What long runs find only grows; past a few thousand inputs, keep only those that add
  # coverage, so a run does not spend its first minutes re-reading it.
  if [ "$(find "$work" -type f | wc -l)" -gt "$max_work_corpus" ]; then
    echo "minimising $work"
    rm -rf "$work.min" && mkdir -p "$work.min"
    "$bin_dir/$target" -merge=1 "$work.min" "$work" -max_len="${max_len[$target]}" \
      -timeout="$per_input_timeout_secs" -rss_limit_mb=2048 >"$log_dir/$target.merge.log" 2>&1
    rm -rf "$work" && mv "$work.min" "$work"
  fi
  dict=()
  if [ -f "$fuzz_dir/dict/$target.dict" ]; then dict=("-dict=$fuzz_dir/dict/$target.dict"); fi
  before=$(mktemp)
  echo "=== $target: ${seconds} s ==="
  status=0
  started=$SECONDS
  # The outer limit only guards against libFuzzer itself never returning.
  RUST_BACKTRACE=1 timeout --kill-after=10 $((seconds + per_input_timeout_secs + 60)) \
    "$bin_dir/$target" "$work" "$seeds" "${dict[@]}" \
    -max_total_time="$seconds" -max_len="${max_len[$target]}" \
    -timeout="$per_input_timeout_secs" -rss_limit_mb=2048 \
    -artifact_prefix="$artifacts/" -print_final_stats=1 >"$log" 2>&1 || status=$?
  # Counts from libFuzzer's last status line and final statistics.
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
  [ -n "$execs" ] || execs=$(sed -E -n 's/^#([0-9]+).*/\1/p' <<<"$last")
  [ -n "$rate" ] || rate=$(sed -E -n 's/.*exec\/s: ([0-9]+).*/\1/p' <<<"$last")
  corpus=$(sed -E -n 's/.*corp: ([0-9]+)\/.*/\1/p' <<<"$last")
  found=$(find "$artifacts" -type f -newer "$before" | sort)
  rm -f "$before"
  if [ "$seconds" -lt 60 ]; then rm -rf "$work"; fi
  if [ "$status" -eq 0 ] && [ -z "$found" ]; then
    result="no crash, no timeout"
  else
    kinds=$(for file in $found; do basename "$file" | cut -d- -f1; done | sort -u | paste -sd, -)
    result="FOUND ${kinds:-failure} (libFuzzer exit $status)"
    failed+=("$target")
    echo "--- end of $log ---"
    tail -n 40 "$log"
    for file in $found; do
      echo "reproducer: $file"
      echo "  replay: $bin_dir/$target $file"
    done
  fi
  echo "$target: ${execs:-?} executions in ${seconds} s (${rate:-?}/s; $((SECONDS - started)) s" \
    "with start-up), corpus ${corpus:-?} inputs ($(find "$seeds" -type f | wc -l) committed" \
    "seeds), $result; log: $log"
  rows+=("| $target | $seconds | ${execs:-?} | ${rate:-?} | ${corpus:-?} | $result |")
done

echo
echo "| target | seconds | executions | executions/s | corpus | result |"
echo "| --- | --- | --- | --- | --- | --- |"
printf '%s\n' "${rows[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzzing found failures in: ${failed[*]}" >&2
  exit 1
fi
