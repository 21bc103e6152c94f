#!/usr/bin/env bash
# Soak mode of the fault scenarios (issue 6): runs the fault tests (faults_nodes, faults_network,
# faults_disk) again and again, each round with a new random URBD_FAULT_SEED, for N rounds or
# until a duration has passed, and stops at the first failure, printing the seed that replays it.
#
#   scripts/soak.sh                      # 10 rounds
#   scripts/soak.sh --rounds 50
#   scripts/soak.sh --duration 2h        # until 2 hours have passed (s, m, h suffixes; plain = s)
#   scripts/soak.sh --duration 30m --rounds 1000 -- s5_split   # both bounds; a test filter
#   scripts/soak.sh --seed 12345 --rounds 1                     # replay one seed
#
# Options: --rounds N (default 10 when no --duration is given), --duration D, --seed S (the first
# round's seed; later rounds are random), --test NAME (repeatable; default the three fault
# tests), --no-build (skip `cargo build --release --bins`: the binaries are fresh); anything after
# `--` goes to the test binaries (a name filter, --ignored, ...).
# Each round's output is kept in target/soak/round-N.log; the report lines of every round
# (invariant and figures per scenario) accumulate in target/soak/fault-report.txt. On failure the
# scratch directories of the failed test are kept (their paths are in the round's log).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

rounds=""
duration=""
first_seed=""
build=1
tests=()
passthrough=()
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds="${2:?--rounds needs a number}"; shift 2 ;;
        --duration) duration="${2:?--duration needs a value}"; shift 2 ;;
        --seed) first_seed="${2:?--seed needs a number}"; shift 2 ;;
        --no-build) build=0; shift ;;
        --test) tests+=("${2:?--test needs a name}"); shift 2 ;;
        -h|--help) usage 0 ;;
        --) shift; passthrough=("$@"); break ;;
        *) echo "soak.sh: unknown argument $1" >&2; usage 2 ;;
    esac
done
[ ${#tests[@]} -gt 0 ] || tests=(faults_nodes faults_network faults_disk)

case "$rounds" in
    ""|*[!0-9]*) [ -z "$rounds" ] || { echo "soak.sh: --rounds wants a number" >&2; exit 2; } ;;
esac
deadline=""
if [ -n "$duration" ]; then
    case "$duration" in
        *h) secs=$(( ${duration%h} * 3600 )) ;;
        *m) secs=$(( ${duration%m} * 60 )) ;;
        *s) secs=${duration%s} ;;
        *) secs=$duration ;;
    esac
    case "$secs" in ""|*[!0-9]*) echo "soak.sh: bad --duration $duration" >&2; exit 2 ;; esac
    deadline=$(( $(date +%s) + secs ))
elif [ -z "$rounds" ]; then
    rounds=10
fi
case "$first_seed" in
    ""|*[!0-9]*) [ -z "$first_seed" ] || { echo "soak.sh: --seed wants a number" >&2; exit 2; } ;;
esac

test_args=()
for t in "${tests[@]}"; do test_args+=(--test "$t"); done

outdir=target/soak
mkdir -p "$outdir"
export URBD_FAULT_REPORT="$PWD/$outdir/fault-report.txt"
: > "$URBD_FAULT_REPORT"

echo "== soak: building (binaries and the fault tests)"
[ "$build" -eq 0 ] || cargo build --release --bins
cargo test --release -p urbd-tests "${test_args[@]}" --no-run

random_seed() {
    # 63 random bits as a decimal u64.
    echo $(( $(od -An -N8 -tu8 /dev/urandom | tr -d ' ') & 0x7fffffffffffffff ))
}

start=$(date +%s)
round=0
while :; do
    if [ -n "$rounds" ] && [ "$round" -ge "$rounds" ]; then break; fi
    if [ -n "$deadline" ] && [ "$(date +%s)" -ge "$deadline" ]; then break; fi
    round=$((round + 1))
    if [ "$round" -eq 1 ] && [ -n "$first_seed" ]; then
        seed=$first_seed
    else
        seed=$(random_seed)
    fi
    log="$outdir/round-$round.log"
    t0=$(date +%s)
    echo "== soak round $round: URBD_FAULT_SEED=$seed (log: $log)"
    echo "round $round seed $seed" >> "$URBD_FAULT_REPORT"
    status=0
    URBD_FAULT_SEED=$seed cargo test --release -p urbd-tests "${test_args[@]}" \
        -- --test-threads=1 "${passthrough[@]}" > "$log" 2>&1 || status=$?
    if [ "$status" -ne 0 ]; then
        echo "== soak: round $round FAILED (exit $status) after $(( $(date +%s) - start )) s"
        grep -E "^test .* FAILED|panicked at" "$log" | head -20 || true
        echo "-- last lines of $log:"
        tail -n 40 "$log"
        echo
        echo "seed: $seed"
        echo "replay: URBD_FAULT_SEED=$seed cargo test --release -p urbd-tests ${test_args[*]}" \
             "-- --test-threads=1 ${passthrough[*]}"
        echo "    or: scripts/soak.sh --seed $seed --rounds 1 ${tests[*]/#/--test }" \
             "${passthrough[*]:+-- ${passthrough[*]}}"
        exit 1
    fi
    passed=$(grep -o '[0-9]\+ passed' "$log" | awk '{s+=$1} END {print s+0}')
    echo "   ok: $passed passed in $(( $(date +%s) - t0 )) s"
done
echo "== soak: $round rounds passed in $(( $(date +%s) - start )) s;" \
     "report lines in $URBD_FAULT_REPORT"
