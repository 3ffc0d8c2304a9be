#!/usr/bin/env python3
"""Reads the JSON lines of `scale0 bench --json`, `compare-zmq` and `compare-nats` (as
bench/compare.sh collects them: each line with its "shape", threads or processes, and the
broker's lines with their "worker_capacity") and prints, per shape, mode, body size and
worker count, each system's median rate with its range (slowest–fastest run) and p50, and
the ratios the benchmarks are quoted by: against libzmq alone (direct) and against NATS in
the same shape. Then what the deployed shape costs each system: processes over threads.
A broker line's system names its worker capacity, "mdp" for plain MDP/0.2 clients instead
of native ones, and "unbundled" for clients and workers that did not ask for bundles."""
import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]


def key(r):
    workers = r.get("workers", 1) if r["scenario"] != "direct" else None
    return (r.get("shape", "threads"), r["mode"], r["size"], workers)


def system(r):
    if r["scenario"] == "direct":
        return "libzmq alone"
    if r["scenario"] == "nats":
        return "nats"
    cap = r.get("worker_capacity")
    name = f"scale0 cap {cap}" if cap is not None else "scale0"
    if r.get("client") == "mdp":
        name += " mdp"
    if r.get("bundle") is False:
        name += " unbundled"
    return name


def ratio(x, y):
    return x / y if y else float("nan")


groups = {}
baselines = {}
for r in rows:
    shape, mode, size, workers = key(r)
    if r["scenario"] == "direct":
        baselines[(shape, mode, size)] = r
        continue
    groups.setdefault((shape, mode, size, workers), []).append(r)

order = {"threads": 0, "processes": 1}
print(f"{'shape':<9} {'mode':<9} {'bytes':>5} {'c×k':>6} {'w':>2} {'system':<23}"
      f" {'req/s':>8} {'range':>15} {'p50 µs':>7} {'×libzmq':>8} {'×nats':>6}"
      f" {'p50×libzmq':>10} {'p50×nats':>8}")
for (shape, mode, size, workers), members in sorted(
        groups.items(), key=lambda kv: (order.get(kv[0][0], 2), kv[0][1] != "sync", kv[0][2], kv[0][3])):
    d = baselines.get((shape, mode, size))
    n = next((m for m in members if m["scenario"] == "nats"), None)
    scale0 = sorted((m for m in members if m["scenario"] == "broker"),
                    key=lambda m: (m.get("worker_capacity") or 0, system(m)))
    for r in ([d] if d else []) + ([n] if n else []) + scale0:
        rates = r.get("rates") or [r["rate_median"]]
        line = (f"{shape:<9} {mode:<9} {size:>5} {str(r.get('clients', 1)) + '×' + str(r.get('in_flight', 1)):>6}"
                f" {workers if r is not d else '-':>2} {system(r):<23} {r['rate_median']:>8.0f}"
                f" {f'{min(rates):.0f}–{max(rates):.0f}':>15} {r['p50_us']:>7.0f}")
        if r is not d and d:
            line += f" {ratio(r['rate_median'], d['rate_median']):>7.2f}×"
        else:
            line += f" {'':>8}"
        if r["scenario"] == "broker" and n:
            line += f" {ratio(r['rate_median'], n['rate_median']):>5.2f}×"
        else:
            line += f" {'':>6}"
        if r is not d and d:
            line += f" {ratio(r['p50_us'], d['p50_us']):>9.2f}×"
        else:
            line += f" {'':>10}"
        if r["scenario"] == "broker" and n:
            line += f" {ratio(r['p50_us'], n['p50_us']):>7.2f}×"
        print(line.rstrip())

# The deployed shape's cost: each system's processes rate over its threads rate.
by = {}
for r in rows:
    shape, mode, size, workers = key(r)
    by[(system(r), shape, mode, size, workers)] = r
costs = []
for (sys_, shape, mode, size, workers), r in sorted(by.items(), key=lambda kv: str(kv[0])):
    if shape != "processes":
        continue
    t = by.get((sys_, "threads", mode, size, workers))
    if t:
        costs.append(f"  {sys_:<15} {mode:<9} {size:>5} B"
                     f"{'' if workers is None else f' {workers}w'}:"
                     f" req/s {ratio(r['rate_median'], t['rate_median']):.2f}×,"
                     f" p50 {ratio(r['p50_us'], t['p50_us']):.2f}×")
if costs:
    print("\nprocesses / threads (what the deployed shape costs each system):")
    print("\n".join(costs))
