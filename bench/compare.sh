#!/usr/bin/env bash
# Request/reply through the scale0 broker, side by side with libzmq alone (DEALER/ROUTER
# echo, no broker) and with NATS (Debian's nats-server on loopback, request-reply over a
# queue group, driven by async-nats), on the same sizes, clients, workers and in-flight
# counts, in one run, in two shapes:
#
#   threads    every part a thread of one process: `scale0 bench direct broker`, and
#              compare-nats with its workers and clients tasks of one process (nats-server
#              is a process of its own either way);
#   processes  the deployed shape: the broker a process of its own and every worker and
#              every client a process of its own (`scale0 bench broker --processes`:
#              `scale0 broker`, `scale0 worker --echo --inline`, native-client processes),
#              libzmq alone as one ROUTER echo process and a DEALER process per client
#              (bench/compare's compare-zmq), NATS with a process per worker and per client
#              (compare-nats --processes).
#
# The broker runs twice in each shape: with plain MDP/0.1-style workers (capacity 1, one
# request at a time) and with credit workers (capacity CAPACITY): NATS pushes requests to
# queue-group members without waiting for replies, and so does a scale0 broker up to a
# worker's capacity. In the processes shape it also runs the credit case with plain
# MDP/0.2 clients (`--mdp-clients`) instead of native ones, and with clients and workers
# that do not ask for bundles (`--no-bundle`, every message alone, as before bundles).
# Installs nats-server if it is missing (apt-get, as root or via sudo).
#
#   bench/compare.sh [REPEAT] [WORKERS] [CAPACITY]   (defaults 5, 4 and 32, the worker's default
#                                                      capacity; medians reported)
#
# Environment (defaults in brackets; the default run is 4 clients × 64 in flight × 4
# workers at 128 B, about 5 minutes on a 2-core machine):
#   SIZES          body sizes, comma-separated [128]
#   CLIENTS        pipelining clients [4]
#   IN_FLIGHT      requests each client keeps outstanding [64]
#   REQUESTS       requests per pipelined run [100000]
#   SYNC_REQUESTS  round trips per synchronous run (one client, one in flight) [10000]
#   SHAPES         which shapes, in order ["threads processes"]
#   NO_BUILD       set to 1 to run the binaries already in target/ and bench/compare/target/
#                  instead of building first (the main build takes in whatever crates/ holds)
# The JSON lines go to $OUT if set (else a temporary file), then bench/ratios.py reads them.
set -euo pipefail
cd "$(dirname "$0")/.."
repeat=${1:-5}
workers=${2:-4}
capacity=${3:-32}
common=(--size "${SIZES:-128}" --clients "${CLIENTS:-4}" --workers "$workers"
        --in-flight "${IN_FLIGHT:-64}" --requests "${REQUESTS:-100000}"
        --sync-requests "${SYNC_REQUESTS:-10000}" --repeat "$repeat")
capacities=(1)
[ "$capacity" = 1 ] || capacities+=("$capacity")

if ! command -v nats-server >/dev/null; then
    sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -q && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q nats-server
fi
if [ "${NO_BUILD:-0}" != 1 ]; then
    cargo build --release -q -p scale0-cli
    cargo build --release -q --manifest-path bench/compare/Cargo.toml
fi

# The run uses copies of the binaries, so a build in the shared target directory while it
# runs (someone else's) cannot swap one out between cases.
bin=$(mktemp -d)
cp target/release/scale0 bench/compare/target/release/compare-zmq \
   bench/compare/target/release/compare-nats "$bin"/
port=$((20000 + RANDOM % 20000))
nats-server -a 127.0.0.1 -p "$port" >/dev/null 2>&1 &
nats=$!
trap 'kill $nats 2>/dev/null || true; rm -rf "$bin"' EXIT
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.05
done

out=${OUT:-$(mktemp)}
: >"$out"
# scale0 bench's lines carry neither shape nor capacity: add them.
tag() { sed -u "s/^{/{\"shape\":\"$1\",\"worker_capacity\":$2,/" | tee -a "$out" >&2; }
scale0=$bin/scale0
echo "nats-server $(nats-server --version 2>&1 | head -1) on 127.0.0.1:$port; $(nproc) cores;" \
     "scale0 $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates || echo ' (crates/ modified)')" >&2
for shape in ${SHAPES:-threads processes}; do
    case $shape in
    threads)
        RUST_LOG=warn $scale0 bench direct --json "${common[@]}" | tag threads null
        for cap in "${capacities[@]}"; do
            RUST_LOG=warn $scale0 bench broker --json --worker-capacity "$cap" "${common[@]}" | tag threads "$cap"
        done
        "$bin"/compare-nats --url "nats://127.0.0.1:$port" "${common[@]}" | tee -a "$out" >&2
        ;;
    processes)
        "$bin"/compare-zmq "${common[@]}" | tee -a "$out" >&2
        for cap in "${capacities[@]}"; do
            RUST_LOG=warn $scale0 bench broker --processes --json --worker-capacity "$cap" "${common[@]}" | tag processes "$cap"
        done
        # Beside the fast path, at the highest capacity: plain MDP/0.2 clients instead of
        # native ones, and clients and workers that do not ask for bundles.
        cap=${capacities[-1]}
        for extra in --mdp-clients --no-bundle; do
            RUST_LOG=warn $scale0 bench broker --processes --json --worker-capacity "$cap" "$extra" "${common[@]}" | tag processes "$cap"
        done
        "$bin"/compare-nats --processes --url "nats://127.0.0.1:$port" "${common[@]}" | tee -a "$out" >&2
        ;;
    *) echo "unknown shape $shape (threads, processes)" >&2; exit 2 ;;
    esac
done
python3 bench/ratios.py "$out"
