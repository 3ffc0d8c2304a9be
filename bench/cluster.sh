#!/usr/bin/env bash
# A 3-node `scale0 broker --cluster` against one durable broker (`--data-dir`), in the
# same run, each a process of its own on loopback with echo workers and `scale0 request`
# clients as processes of their own; then failover: kill -9 the leader, time until the
# next leader has served a request, restart the killed node, repeat.
#
#   bench/cluster.sh [REPEAT] [KILLS]     (defaults 3 and 20)
#
# Environment: REQUESTS per pipelined run [20000], IN_FLIGHT [64], SYNC [2000] round trips
# one at a time, NO_BUILD=1 to use target/release/scale0 as it is, TICK_MS [100] and
# ELECTION_TICKS [10] for the cluster. Prints one line per measurement and the medians.
set -euo pipefail
cd "$(dirname "$0")/.."
repeat=${1:-3}
kills=${2:-20}
requests=${REQUESTS:-20000}
in_flight=${IN_FLIGHT:-64}
sync=${SYNC:-2000}
tick=${TICK_MS:-100}
election=${ELECTION_TICKS:-10}
[[ ${NO_BUILD:-0} == 1 ]] || cargo build --release -q -p scale0-cli
bin=$PWD/target/release/scale0
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Starts node $1 of the cluster (client port in ports[$1]).
declare -A ports
nodes=()
for id in 1 2 3; do
    ports[$id]=$(port)
    nodes+=(--cluster "$id=ipc://$work/node$id")
done
start_node() {
    local id=$1
    "$bin" broker --bind "tcp://127.0.0.1:${ports[$id]}" --node-id "$id" \
        --data-dir "$work/data$id" --cluster-tick-ms "$tick" --election-ticks "$election" \
        "${nodes[@]}" >/dev/null 2>>"$work/node$id.log" &
    node_pid[$id]=$!
    pids+=($!)
    disown $!
}
declare -A node_pid
leader() {
    for id in 1 2 3; do
        if "$bin" status --json --connect "tcp://127.0.0.1:${ports[$id]}" --timeout-ms 300 2>/dev/null |
            grep -q '"serving":true'; then
            echo "$id"
            return
        fi
    done
    echo 0
}
wait_leader() {
    local l=0
    for _ in $(seq 200); do
        l=$(leader)
        [[ $l != 0 ]] && { echo "$l"; return; }
        sleep 0.05
    done
    echo "no leader" >&2
    exit 1
}
rate() { sed -n 's/.* \([0-9.]*\) req\/s.*/\1/p'; }
p50() { sed -n 's/.*p50 \([0-9.]*\) \(ms\|µs\|us\).*/\1 \2/p'; }

run_load() { # endpoint label
    local ep=$1 label=$2
    local out
    out=$("$bin" request --connect "$ep" --service echo --count "$requests" --in-flight "$in_flight" x 2>&1 | tail -1)
    echo "$label pipelined: $(echo "$out" | rate) req/s ($out)"
    out=$("$bin" request --connect "$ep" --service echo --count "$sync" --in-flight 1 x 2>&1 | tail -1)
    echo "$label sync: p50 $(echo "$out" | p50) ($out)"
}

# One durable broker.
dport=$(port)
"$bin" broker --bind "tcp://127.0.0.1:$dport" --data-dir "$work/durable" >/dev/null 2>"$work/durable.log" &
pids+=($!)
disown $!
for _ in 1 2 3 4; do
    "$bin" worker --connect "tcp://127.0.0.1:$dport" --service echo --echo --inline >/dev/null 2>&1 &
    pids+=($!)
    disown $!
done
# The cluster, with as many workers, each registered with every node (`--cluster`: each
# node is given the whole capacity, since only the leader hands out requests).
for id in 1 2 3; do start_node "$id"; done
all_nodes=$(for id in 1 2 3; do printf -- '--connect tcp://127.0.0.1:%s ' "${ports[$id]}"; done)
for _ in 1 2 3 4; do
    # shellcheck disable=SC2086
    "$bin" worker $all_nodes --cluster --service echo --echo --inline >/dev/null 2>&1 &
    pids+=($!)
    disown $!
done
l=$(wait_leader)
sleep 1
for r in $(seq "$repeat"); do
    run_load "tcp://127.0.0.1:$dport" "durable[$r]"
    l=$(wait_leader)
    run_load "tcp://127.0.0.1:${ports[$l]}" "cluster[$r]"
done

# Failover: kill -9 the leader, then ask every node until one serves a request.
times=()
for k in $(seq "$kills"); do
    l=$(wait_leader)
    sleep 0.5
    t0=$(date +%s%N)
    kill -9 "${node_pid[$l]}"
    served=0
    while [[ $served == 0 ]]; do
        for id in 1 2 3; do
            [[ $id == "$l" ]] && continue
            if "$bin" request --connect "tcp://127.0.0.1:${ports[$id]}" --service echo --timeout-ms 200 x >/dev/null 2>&1; then
                served=1
                break
            fi
        done
    done
    t1=$(date +%s%N)
    ms=$(((t1 - t0) / 1000000))
    times+=("$ms")
    echo "failover[$k]: node $l killed, served again after $ms ms"
    start_node "$l"
done
printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {
    p50=a[int((NR+1)/2)]; p99=a[int(NR*0.99+0.999)]; if (p99=="") p99=a[NR];
    printf "failover over %d kills: p50 %d ms, p99 %d ms, min %d, max %d\n", NR, p50, p99, a[1], a[NR] }'
