#!/usr/bin/env bash
# Request/reply through the scale0 broker, side by side with libzmq alone (DEALER/ROUTER
# echo, no broker) and with NATS (Debian's nats-server on loopback, request-reply over a
# queue group, driven by async-nats), on the same sizes, clients, workers and in-flight
# counts, in one run. Installs nats-server if it is missing (apt-get, as root or via sudo).
#
#   bench/compare.sh [REPEAT] [WORKERS] [CAPACITY]   (defaults 5, 2 and 16; medians are reported)
#
# CAPACITY is what each scale0 worker may hold at once (`scale0 worker --capacity`): NATS
# pushes requests to queue-group members without waiting for replies, and so does a scale0
# broker up to a worker's capacity. 1 measures plain Majordomo, one request per worker.
set -euo pipefail
cd "$(dirname "$0")/.."
repeat=${1:-5}
workers=${2:-2}
capacity=${3:-16}
common=(--size 16,128,1024 --clients 2 --workers "$workers" --in-flight 64
        --requests 100000 --sync-requests 10000 --repeat "$repeat")

if ! command -v nats-server >/dev/null; then
    sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -q && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q nats-server
fi
cargo build --release -q -p scale0-cli
cargo build --release -q --manifest-path bench/compare/Cargo.toml

port=$((20000 + RANDOM % 20000))
nats-server -a 127.0.0.1 -p "$port" >/dev/null 2>&1 &
nats=$!
trap 'kill $nats 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.05
done

out=$(mktemp)
echo "nats-server $(nats-server --version 2>&1 | head -1) on 127.0.0.1:$port; $(nproc) cores" >&2
RUST_LOG=warn target/release/scale0 bench direct broker --json --worker-capacity "$capacity" "${common[@]}" | tee -a "$out" >&2
bench/compare/target/release/compare-nats --url "nats://127.0.0.1:$port" "${common[@]}" | tee -a "$out" >&2
python3 bench/ratios.py "$out"
