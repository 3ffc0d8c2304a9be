#!/usr/bin/env bash
# Pipelines: `scale0 map` with no-op jobs against the same ventilator -> workers -> sink
# pipeline on raw PUSH/PULL sockets (and one PUSH -> PULL hop), measured in the same run;
# then the map's scaling from 1 to 4 workers with jobs that sleep.
#
#   bench/pipeline.sh [REPEAT]        (default 5; medians are reported)
set -euo pipefail
cd "$(dirname "$0")/.."
repeat=${1:-5}
cargo build --release -q -p scale0-cli
bin=target/release/scale0
export RUST_LOG=warn

echo "== no-op jobs: the map against raw PUSH/PULL (2 workers)"
"$bin" bench push-pull pipeline map --size 16,1024 --workers 2 --messages 100000 --repeat "$repeat"
echo
echo "== the same with --prefetch 8 (more jobs queued per worker)"
"$bin" bench map --size 16 --workers 2 --messages 100000 --prefetch 8 --repeat "$repeat"
echo
echo "== scaling: 400 jobs of 20 ms (one worker: 50 jobs/s at best)"
"$bin" bench map --size 16 --workers 1,2,4 --messages 400 --sleep-ms 20 --repeat "$repeat"
