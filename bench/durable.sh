#!/usr/bin/env bash
# Durable versus in-memory broker, side by side in one run: the same worker, client and
# load against `scale0 broker` and `scale0 broker --data-dir`, alternating, repeated.
# Prints every run and the medians, and the ratio durable / in-memory.
#
#   bench/durable.sh [REPEATS] [COUNT] [IN_FLIGHT]     (defaults: 5 30000 100)
#
# Until `scale0 bench` exists this script is the benchmark of record for BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
repeats=${1:-5}
count=${2:-30000}
in_flight=${3:-100}
cargo build --release -q -p scale0-cli
bin=target/release/scale0
port=$((20000 + RANDOM % 20000))
endpoint="tcp://127.0.0.1:$port"
data=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$data"' EXIT

run_once() { # mode -> prints "rate p50_ms"
    local extra=()
    if [ "$1" = durable ]; then rm -rf "$data/log"; extra=(--data-dir "$data/log"); fi
    "$bin" broker --bind "$endpoint" "${extra[@]}" >/dev/null 2>&1 &
    local broker=$!
    "$bin" worker --connect "$endpoint" --service echo --echo --concurrency 4 >/dev/null 2>&1 &
    local worker=$!
    # The client waits for the worker itself: requests queue until it is ready.
    local line
    line=$("$bin" request --connect "$endpoint" --service echo --count "$count" \
        --in-flight "$in_flight" --timeout-ms 10000 xxxxxxxxxxxxxxxx | tail -1)
    kill "$broker" "$worker"; wait "$broker" "$worker" 2>/dev/null || true
    awk '{for (i = 1; i < NF; i++) { if ($(i+1) == "req/s") r = $i; if ($i == "p50") p = $(i+1) } print r, p}' <<<"$line"
}

median() { sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

mem_rates=(); dur_rates=(); mem_p50=(); dur_p50=()
echo "count $count, in flight $in_flight, echo worker with concurrency 4, $repeats repeats"
for i in $(seq "$repeats"); do
    read -r r p < <(run_once memory); mem_rates+=("$r"); mem_p50+=("$p")
    echo "run $i  in-memory  $r req/s  p50 $p ms"
    read -r r p < <(run_once durable); dur_rates+=("$r"); dur_p50+=("$p")
    echo "run $i  durable    $r req/s  p50 $p ms"
done
m=$(printf '%s\n' "${mem_rates[@]}" | median)
d=$(printf '%s\n' "${dur_rates[@]}" | median)
mp=$(printf '%s\n' "${mem_p50[@]}" | median)
dp=$(printf '%s\n' "${dur_p50[@]}" | median)
echo "median  in-memory $m req/s (p50 $mp ms)  durable $d req/s (p50 $dp ms)"
awk -v d="$d" -v m="$m" 'BEGIN {printf "ratio durable / in-memory: %.2f\n", d / m}'
