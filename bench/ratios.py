#!/usr/bin/env python3
"""Reads the JSON lines of `scale0 bench --json` and `compare-nats` and prints, per body
size and mode, the throughput and p50 of the broker, of libzmq alone (direct) and of NATS,
with the ratios the benchmarks are quoted by."""
import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
by = {}
for r in rows:
    by[(r["scenario"], r["mode"], r["size"], r.get("workers", 1))] = r

print(f"{'mode':<10} {'bytes':>5} {'w':>3} {'broker/s':>10} {'direct/s':>10} {'nats/s':>10}"
      f" {'b/direct':>9} {'b/nats':>7} {'p50 b/d/n µs':>16} {'p50 b/d':>8} {'p50 b/n':>8}")
for (scenario, mode, size, workers), b in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][3])):
    if scenario != "broker":
        continue
    d = by.get(("direct", mode, size, 1))
    n = by.get(("nats", mode, size, workers))
    if not d or not n:
        continue
    ratio = lambda x, y: x / y if y else float("nan")
    print(f"{mode:<10} {size:>5} {workers:>3} {b['rate_median']:>10.0f} {d['rate_median']:>10.0f}"
          f" {n['rate_median']:>10.0f} {ratio(b['rate_median'], d['rate_median']):>8.2f}×"
          f" {ratio(b['rate_median'], n['rate_median']):>6.2f}×"
          f" {b['p50_us']:>5.0f}/{d['p50_us']:>4.0f}/{n['p50_us']:>4.0f}"
          f" {ratio(b['p50_us'], d['p50_us']):>7.2f}× {ratio(b['p50_us'], n['p50_us']):>7.2f}×")
