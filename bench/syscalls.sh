#!/usr/bin/env bash
# System calls per request of the pipelined broker scenario, by thread and call: what the
# broker, its clients and workers, and libzmq's I/O thread ask of the kernel for each
# request. Exact counts (tracepoints), unlike timings, barely vary between runs, so they
# show the effect of a change to a socket loop where throughput is lost in the noise.
#
#   bench/syscalls.sh [SCALE0_BINARY] [extra `scale0 bench broker` flags]
#
# Needs perf with syscall tracepoints (as root). Prints one line per thread and call.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/scale0}
shift || true
[ -x "$bin" ] || cargo build --release -q -p scale0-cli
requests=200000
data=$(mktemp)
trap 'rm -f "$data"' EXIT
events=()
for call in poll epoll_wait epoll_ctl sendto recvfrom sched_yield; do
    events+=(-e "syscalls:sys_enter_$call")
done
RUST_LOG=warn perf record -q -o "$data" "${events[@]}" -- "$bin" bench broker --size 128 \
    --workers 2 --clients 2 --in-flight 64 --worker-capacity 16 --repeat 1 \
    --requests "$requests" --sync-requests 1 "$@" | grep pipelined
# libzmq's I/O threads carry the process's name; clients and workers are summed.
name=$(basename "$bin")
perf script -i "$data" -F comm,event 2>/dev/null |
    awk -v n="$requests" -v name="$name" '
        { who = ($1 == name) ? "zmq-io" : $1
          sub(/-[0-9]+$/, "", who)
          call = $2; sub("syscalls:sys_enter_", "", call); sub(":$", "", call)
          count[who "\t" call]++; total++ }
        END { for (k in count) printf "%s\t%.2f\n", k, count[k] / n
              printf "all\tper request\t%.2f\n", total / n }' |
    sort -t$'\t' -k3 -rn | column -t -s$'\t'
