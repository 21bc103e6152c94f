#!/usr/bin/env bash
# Runs every check and test of urbd: formatting, lints, unit and property tests, multi-process
# tests with real NBD clients, and the quick benchmark (which fails only on I/O or verify errors).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --release -- -D warnings
echo "== build"
cargo build --workspace --release --bins
echo "== simulator (seeded faults against the real replication core)"
cargo run --release -p urbd-sim -- --seeds "${URBD_SIM_SEEDS:-1000}"
cargo run --release -p urbd-sim -- --seeds "${URBD_SIM_SEEDS:-1000}" --csums
cargo run --release -p urbd-sim -- --seeds 500 --reckless
cargo run --release -p urbd-sim -- --seeds 500 --strict-peer-cache --flush-audit
echo "== quick benchmark (fails only on I/O or verify errors)"
bench/run --quick --json target/bench/quick.json
echo "== quick resync benchmark (fails only on errors)"
bench/resync --quick
echo "== tests"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
report=target/fault-report.txt
rm -f "$report"
cargo test --workspace --release -- --test-threads="${URBD_TEST_THREADS:-1}" 2>&1 | tee "$log" || status=$?
# One closing line for the whole run (cargo's last line is a doc-test summary).
passed=$(grep -o '[0-9]\+ passed' "$log" | awk '{s+=$1} END {print s+0}')
failed=$(grep -o '[0-9]\+ failed' "$log" | awk '{s+=$1} END {print s+0}')
if [ -s "$report" ]; then
    echo "== fault scenarios (invariant checked — figures)"
    cat "$report"
fi
echo "summary: $passed passed, $failed failed"
exit "$status"
