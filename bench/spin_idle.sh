#!/usr/bin/env bash
# What spinning costs a sparsely used broker: CPU time of a `scale0 broker` process (its
# thread and libzmq's) over 200 requests sent one every 20 ms by a pyzmq MDP/0.1 client
# to one echo worker, with --spin-us 0 and 100 in turn.
#
#   bench/spin_idle.sh [ROUNDS]    (default 2; needs pyzmq: scripts/test.sh makes a venv)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
cargo build --release -q -p scale0-cli
bin=target/release/scale0
python=${SCALE0_PYTHON:-target/pyenv/bin/python}
ticks_per_s=$(getconf CLK_TCK)
cpu_ms() { awk -v t="$ticks_per_s" '{print int(($14 + $15) * 1000 / t)}' "/proc/$1/stat"; }
client=$(mktemp)
trap 'rm -f "$client"' EXIT
# COUNT requests to `echo`, each sent GAP seconds after the previous answer.
cat > "$client" <<'PY'
import sys, time, zmq
port, count, gap = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = zmq.Context().socket(zmq.DEALER)
s.connect(f"tcp://127.0.0.1:{port}")
for _ in range(count):
    s.send_multipart([b"", b"MDPC01", b"echo", b"x"])
    s.recv_multipart()
    time.sleep(gap)
PY
for _ in $(seq "$rounds"); do
    for spin in 0 100; do
        port=$((30000 + RANDOM % 20000))
        RUST_LOG=warn "$bin" broker --bind "tcp://127.0.0.1:$port" --spin-us "$spin" >/dev/null &
        broker=$!
        RUST_LOG=warn "$bin" worker --connect "tcp://127.0.0.1:$port" --service echo --echo >/dev/null &
        worker=$!
        # The first request waits for the worker; CPU is counted from its answer on.
        "$python" "$client" "$port" 1 0
        before=$(cpu_ms "$broker")
        "$python" "$client" "$port" 200 0.02
        after=$(cpu_ms "$broker")
        echo "--spin-us $spin: broker CPU $((after - before)) ms over 200 requests 20 ms apart"
        kill "$worker" "$broker"
        wait "$worker" "$broker" 2>/dev/null || true
    done
done
