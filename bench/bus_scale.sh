#!/usr/bin/env bash
# One `scale0 forwarder` under a swarm of heartbeat-bus nodes (`scale0 swarm`: every node
# its own PUB, SUB and membership table, all in one process), full fan-out: every node
# hears every node. Prints, per scenario, the forwarder's CPU, deliveries lost, and how
# fast a silenced node is suspect and dead on the others.
#
#   bench/bus_scale.sh [MEASURE_MS]        (default 10000)
#
# Scenarios: 100 nodes at 10 heartbeats/s, 1,000 nodes at 1/s. Suspect after 2 intervals,
# dead after 5 (the node defaults).
set -euo pipefail
cd "$(dirname "$0")/.."
measure=${1:-10000}
cargo build --release -q -p scale0-cli
bin=target/release/scale0
hz=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

scenario() { # nodes interval_ms
    local port=$((20000 + RANDOM % 20000))
    "$bin" forwarder --frontend "tcp://127.0.0.1:$port" --backend "tcp://127.0.0.1:$((port + 1))" \
        >/dev/null 2>&1 &
    local fwd=$!
    sleep 0.2
    local t0 c0
    t0=$(date +%s.%N); c0=$(cpu_ticks "$fwd")
    local out
    out=$("$bin" swarm --nodes "$1" --interval-ms "$2" --measure-ms "$measure" \
        --kill-after-ms $((measure / 3)) \
        --publish "tcp://127.0.0.1:$port" --subscribe "tcp://127.0.0.1:$((port + 1))" 2>/dev/null)
    local t1 c1
    t1=$(date +%s.%N); c1=$(cpu_ticks "$fwd")
    kill "$fwd"; wait "$fwd" 2>/dev/null || true
    echo "== $1 nodes, one heartbeat every $2 ms"
    echo "$out"
    awk -v c="$((c1 - c0))" -v hz="$hz" -v t0="$t0" -v t1="$t1" \
        'BEGIN {printf "forwarder CPU: %.0f%% of one core over %.1f s\n", 100 * c / hz / (t1 - t0), t1 - t0}'
}

scenario 100 100
scenario 1000 1000
