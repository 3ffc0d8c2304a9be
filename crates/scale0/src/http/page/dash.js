// scale0's dashboards: one script for the broker's, the queue's and the map's pages
// (<body data-page=...>). It polls /api/status once a second, keeps the last minutes of
// samples in memory, draws them on canvases and tables, and tails /api/events. No
// library: everything here is drawn by hand, so the binary needs no network to show it.
"use strict";

const EVERY_MS = 1000;
// Samples kept and plotted: the last five minutes.
const KEEP = 300;
// Rates and quantiles are over this many seconds (samples) at each point.
const WINDOW = 10;
const TAIL = 200;

// A token given as /?token=... is passed on to the APIs.
const token = new URLSearchParams(location.search).get("token");
const withToken = (path) => (token ? path + "?token=" + encodeURIComponent(token) : path);
const headers = token ? { Authorization: "Bearer " + token } : {};

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  return e;
};

// --- formatting -------------------------------------------------------------------------

function fmtNum(v, digits) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  const a = Math.abs(v);
  if (a >= 1e9) return (v / 1e9).toFixed(1) + "G";
  if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (a >= 1e4) return (v / 1e3).toFixed(1) + "k";
  if (digits !== undefined) return v.toFixed(digits);
  return Number.isInteger(v) ? String(v) : v.toFixed(a < 10 ? 2 : 1);
}

function fmtMs(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms < 1000) return Math.round(ms) + " ms";
  const s = ms / 1000;
  if (s < 60) return s.toFixed(1) + " s";
  if (s < 3600) return Math.floor(s / 60) + "m" + String(Math.floor(s % 60)).padStart(2, "0") + "s";
  return Math.floor(s / 3600) + "h" + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
}

const fmtClock = (ms) => new Date(ms).toLocaleTimeString();

// --- samples ----------------------------------------------------------------------------

// The last KEEP documents with the time each was taken (ms, the server's own clock where
// it gives one), so rates are per second of the server's time.
class History {
  constructor() {
    this.samples = [];
  }
  push(t, doc) {
    this.samples.push({ t, doc });
    if (this.samples.length > KEEP) this.samples.shift();
  }
  get last() {
    return this.samples[this.samples.length - 1];
  }
  // Per point: value(doc now, doc WINDOW samples before, seconds between).
  series(value) {
    const out = [];
    this.samples.forEach((s, i) => {
      const before = this.samples[Math.max(0, i - WINDOW)];
      const dt = (s.t - before.t) / 1000;
      out.push({ t: s.t, v: i === 0 || dt <= 0 ? null : value(s.doc, before.doc, dt) });
    });
    return out;
  }
  // Per point: a value of the document alone.
  gauge(value) {
    return this.samples.map((s) => ({ t: s.t, v: value(s.doc) }));
  }
  // The latest windowed value.
  now(value) {
    const s = this.series(value);
    return s.length ? s[s.length - 1].v : null;
  }
}

const rate = (get) => (a, b, dt) => Math.max(0, (get(a) - get(b)) / dt);

// The q-quantile (0..1) of replies between two cumulative histograms, interpolated
// within its bucket as Prometheus's histogram_quantile does; null with no replies.
function quantile(q, le, now, before) {
  const counts = now.map((n, i) => n - (before[i] || 0));
  const total = counts[counts.length - 1];
  if (!(total > 0)) return null;
  const rank = q * total;
  for (let i = 0; i < counts.length; i++) {
    if (counts[i] >= rank) {
      if (i >= le.length) return le[le.length - 1];
      const lo = i === 0 ? 0 : le[i - 1];
      const below = i === 0 ? 0 : counts[i - 1];
      const inBucket = counts[i] - below;
      return lo + (le[i] - lo) * (inBucket > 0 ? (rank - below) / inBucket : 1);
    }
  }
  return le[le.length - 1];
}

// --- plots ------------------------------------------------------------------------------

const COLORS = ["#2f7ed8", "#e4572e", "#29a36a", "#f3a712", "#8e44ad", "#7f8c8d", "#c0392b"];

// Lines of `lines` ([{name, points:[{t,v}]}]) on a canvas, with a y axis from 0, the
// time axis over the last KEEP seconds, and the latest value of each in the legend.
function plot(canvas, lines, unit) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth;
  const h = canvas.clientHeight;
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  const g = canvas.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  const left = 48;
  const right = 8;
  const top = 8;
  const bottom = 18;
  const pw = w - left - right;
  const ph = h - top - bottom;
  const all = lines.flatMap((l) => l.points).filter((p) => p.v !== null);
  const tEnd = all.length ? Math.max(...all.map((p) => p.t)) : 0;
  // The axis spans what there is, from one minute up to the five kept.
  const first = all.length ? Math.min(...all.map((p) => p.t)) : 0;
  const span = Math.min(KEEP, Math.max(60, Math.ceil((tEnd - first) / 1000)));
  const tStart = tEnd - span * 1000;
  let max = Math.max(0, ...all.map((p) => p.v));
  max = max <= 0 ? 1 : niceCeil(max);
  g.font = "11px system-ui, sans-serif";
  g.fillStyle = "#666";
  g.strokeStyle = "#e3e3e3";
  g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = top + ph - (ph * i) / 4;
    g.beginPath();
    g.moveTo(left, y);
    g.lineTo(left + pw, y);
    g.stroke();
    g.textAlign = "right";
    g.textBaseline = "middle";
    g.fillText(fmtNum((max * i) / 4), left - 4, y);
  }
  g.textAlign = "center";
  g.textBaseline = "top";
  const step = [10, 15, 30, 60].find((s) => span / s <= 6) || 60;
  for (let ago = 0; ago <= span; ago += step) {
    const xt = left + pw - (pw * ago) / span;
    const label = ago === 0 ? "now" : ago % 60 === 0 ? "-" + ago / 60 + "m" : "-" + ago + "s";
    g.fillText(label, xt, top + ph + 4);
  }
  const x = (t) => left + (pw * (t - tStart)) / (tEnd - tStart || 1);
  const y = (v) => top + ph - (ph * v) / max;
  lines.forEach((l, i) => {
    g.strokeStyle = l.color || COLORS[i % COLORS.length];
    g.lineWidth = 1.6;
    g.beginPath();
    let pen = false;
    for (const p of l.points) {
      if (p.v === null || p.t < tStart) {
        pen = false;
        continue;
      }
      if (pen) g.lineTo(x(p.t), y(p.v));
      else g.moveTo(x(p.t), y(p.v));
      pen = true;
    }
    g.stroke();
  });
  const legend = canvas.parentElement.querySelector(".legend");
  if (legend) {
    legend.replaceChildren(
      ...lines.map((l, i) => {
        const last = l.points.length ? l.points[l.points.length - 1].v : null;
        const sw = el("span", { class: "swatch" });
        sw.style.background = l.color || COLORS[i % COLORS.length];
        return el("span", { class: "key" }, sw, l.name + " ", el("b", {}, fmtNum(last) + (unit || "")));
      }),
    );
  }
}

function niceCeil(v) {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

// --- tables -----------------------------------------------------------------------------

// A table whose column headers sort it (click again to reverse); rows are rebuilt on
// each update, keeping the chosen order.
class Table {
  constructor(table, columns, key) {
    this.table = table;
    this.columns = columns;
    this.key = key;
    this.sort = { col: 0, desc: false };
    const tr = el("tr", {});
    columns.forEach((c, i) => {
      const th = el("th", { "data-col": c.name }, c.title);
      th.addEventListener("click", () => {
        this.sort = { col: i, desc: this.sort.col === i ? !this.sort.desc : c.numeric === true };
        this.render();
      });
      tr.append(th);
    });
    table.replaceChildren(el("thead", {}, tr), el("tbody", {}));
    this.rows = [];
  }
  update(rows) {
    this.rows = rows;
    this.render();
  }
  render() {
    const c = this.columns[this.sort.col];
    const sign = this.sort.desc ? -1 : 1;
    const rows = [...this.rows].sort((a, b) => {
      const x = c.value(a);
      const y = c.value(b);
      if (x === y) return 0;
      if (x === null || x === undefined) return 1;
      if (y === null || y === undefined) return -1;
      return (x < y ? -1 : 1) * sign;
    });
    this.table.querySelectorAll("th").forEach((th, i) => {
      th.className = i === this.sort.col ? (this.sort.desc ? "desc" : "asc") : "";
    });
    this.table.tBodies[0].replaceChildren(
      ...rows.map((r) => {
        const tr = el("tr", { "data-key": this.key(r) });
        for (const col of this.columns) {
          const v = col.show ? col.show(r) : col.value(r);
          tr.append(el("td", { class: col.numeric ? "num" : "" }, v instanceof Node ? v : v ?? "–"));
        }
        return tr;
      }),
    );
  }
}

// --- tiles ------------------------------------------------------------------------------

function tile(name, value) {
  const t = document.querySelector(`[data-metric="${name}"] .value`);
  if (t) t.textContent = value;
}

// --- plumbing ---------------------------------------------------------------------------

function setHealth(ok, text) {
  const h = $("#health");
  h.className = ok ? "ok" : "bad";
  h.textContent = text;
}

async function poll(onDoc) {
  try {
    const r = await fetch(withToken("api/status"), { headers, cache: "no-store" });
    if (!r.ok) throw new Error("HTTP " + r.status);
    const doc = await r.json();
    // Until the server's first snapshot the document is `{}`: nothing to keep yet.
    if (doc.version !== 1) throw new Error("waiting for the first snapshot");
    onDoc(doc);
    setHealth(true, "live");
  } catch (e) {
    setHealth(false, "no answer: " + e.message);
  }
  setTimeout(() => poll(onDoc), EVERY_MS);
}

function tailEvents(onEvent) {
  const es = new EventSource(withToken("api/events"));
  es.onmessage = (m) => onEvent(JSON.parse(m.data));
}

// --- the broker's page ------------------------------------------------------------------

function brokerPage() {
  const h = new History();
  const services = new Table(
    $("#services"),
    [
      { name: "name", title: "service", value: (s) => s.name },
      { name: "queued", title: "queued", numeric: true, value: (s) => s.queued },
      { name: "idle", title: "idle", numeric: true, value: (s) => s.idle },
      { name: "busy", title: "busy", numeric: true, value: (s) => s.busy },
      { name: "rate", title: "replies/s", numeric: true, value: (s) => s.rate, show: (s) => fmtNum(s.rate) },
      { name: "failed", title: "failed", numeric: true, value: (s) => s.failed },
      { name: "fail_rate", title: "failed/s", numeric: true, value: (s) => s.failRate, show: (s) => fmtNum(s.failRate) },
    ],
    (s) => s.name,
  );
  const workers = new Table(
    $("#workers"),
    [
      { name: "service", title: "service", value: (w) => w.service },
      { name: "id", title: "worker", value: (w) => w.id },
      { name: "state", title: "state", value: (w) => w.state, show: (w) => el("span", { class: "state " + w.state }, w.state) },
      { name: "since", title: "for", numeric: true, value: (w) => w.since_ms, show: (w) => fmtMs(w.since_ms) },
      { name: "held", title: "held / capacity", numeric: true, value: (w) => w.held / w.capacity, show: (w) => w.held + " / " + w.capacity },
      { name: "heard", title: "last heard", numeric: true, value: (w) => w.heard_ms, show: (w) => (w.heard_ms === undefined ? "–" : fmtMs(w.heard_ms) + " ago") },
    ],
    (w) => w.id,
  );
  const svcTotal = (doc, name, field) => {
    const s = (doc.services || []).find((x) => x.name === name);
    return s ? s[field] || 0 : 0;
  };
  const t = (k) => (d) => d.totals[k];
  const reasons = (d) => Object.keys(d.failures || {});
  const lat = (q) => (a, b) => quantile(q, a.latency_ms.le, a.latency_ms.counts, b.latency_ms.counts);

  poll((doc) => {
    h.push(doc.uptime_ms, doc);
    $("#uptime").textContent = "up " + fmtMs(doc.uptime_ms) + (doc.draining ? ", draining" : "");
    // A cluster node says where it stands; a single broker has `cluster: null`.
    const c = doc.cluster;
    $("#cluster").textContent = c
      ? `node ${c.node} · ${c.role}${c.serving ? " (serving)" : ""} · term ${c.term} · leader ${c.leader ?? "?"}` +
        ` · commit ${c.commit}` + (c.lag.length ? " · behind: " + c.lag.map((l) => `${l.node}:${l.entries}`).join(" ") : "")
      : "single broker";
    const workerRows = (doc.services || []).flatMap((s) => s.workers.map((w) => ({ ...w, service: s.name })));
    tile("requests", fmtNum(h.now(rate(t("requests")))) + "/s");
    tile("errors", fmtNum(h.now(rate(t("failed")))) + "/s");
    tile("p50", fmtNum(h.now(lat(0.5))) + " ms");
    tile("p99", fmtNum(h.now(lat(0.99))) + " ms");
    tile("outstanding", fmtNum(doc.outstanding));
    tile("workers", String(workerRows.length));
    tile("replies_total", String(doc.totals.replies));
    tile("failed_total", String(doc.totals.failed));
    plot($("#plot-rate"), [
      { name: "requests/s", points: h.series(rate(t("requests"))) },
      { name: "replies/s", points: h.series(rate(t("replies"))) },
    ]);
    // Only the statuses that ever happened, so the legend stays short.
    const seen = reasons(doc).filter((r) => doc.failures[r] > 0);
    plot(
      $("#plot-errors"),
      seen.length
        ? seen.map((r) => ({ name: r, points: h.series(rate((d) => (d.failures || {})[r] || 0)) }))
        : [{ name: "none yet", points: h.series(rate(t("failed"))) }],
    );
    plot($("#plot-latency"), [
      { name: "p50", points: h.series(lat(0.5)) },
      { name: "p99", points: h.series(lat(0.99)) },
    ], " ms");
    plot($("#plot-outstanding"), [
      { name: "outstanding", points: h.gauge((d) => d.outstanding) },
      { name: "queued", points: h.gauge((d) => (d.services || []).reduce((n, s) => n + s.queued, 0)) },
    ]);
    services.update(
      (doc.services || []).map((s) => {
        const busy = s.workers.filter((w) => w.state === "busy").length;
        return {
          name: s.name,
          queued: s.queued,
          idle: s.workers.length - busy,
          busy,
          failed: s.failed || 0,
          rate: h.now(rate((d) => svcTotal(d, s.name, "replies"))),
          failRate: h.now(rate((d) => svcTotal(d, s.name, "failed"))),
        };
      }),
    );
    workers.update(workerRows);
  });

  const list = $("#events");
  tailEvents((e) => {
    const what = e.event;
    const who = e.worker ? " worker " + e.worker : "";
    const detail = e.detail ? (what === "request.redelivered" ? ` (attempt ${e.detail})` : ` (${e.detail})`) : "";
    list.prepend(
      el(
        "li",
        { class: "ev " + what.replace(".", "-"), "data-event": what, "data-worker": e.worker || "" },
        el("time", {}, fmtClock(e.at_ms)),
        el("b", {}, what),
        " " + e.service + who + detail,
      ),
    );
    while (list.children.length > TAIL) list.lastChild.remove();
  });
}

// --- the queue's page -------------------------------------------------------------------

function queuePage() {
  const h = new History();
  const drops = new Table(
    $("#drops"),
    [
      { name: "reason", title: "dropped because", value: (r) => r.reason },
      { name: "count", title: "count", numeric: true, value: (r) => r.count },
      { name: "rate", title: "per s", numeric: true, value: (r) => r.rate, show: (r) => fmtNum(r.rate) },
    ],
    (r) => r.reason,
  );
  const t = (k) => (d) => d.totals[k];
  const dropped = (d) => Object.values(d.dropped || {}).reduce((a, b) => a + b, 0);
  poll((doc) => {
    h.push(doc.uptime_ms, doc);
    $("#uptime").textContent = "up " + fmtMs(doc.uptime_ms);
    tile("servers", String(doc.servers));
    tile("workers", String(doc.workers));
    tile("in_flight", String(doc.in_flight));
    tile("waiting", String(doc.waiting));
    tile("requests", fmtNum(h.now(rate(t("requests")))) + "/s");
    tile("resent", String(doc.totals.resent));
    tile("dropped", String(dropped(doc)));
    plot($("#plot-rate"), [
      { name: "requests/s", points: h.series(rate(t("requests"))) },
      { name: "replies/s", points: h.series(rate(t("replies"))) },
    ]);
    plot($("#plot-trouble"), [
      { name: "re-sends/s", points: h.series(rate(t("resent"))) },
      { name: "drops/s", points: h.series(rate(dropped)) },
    ]);
    plot($("#plot-flight"), [
      { name: "in flight", points: h.gauge((d) => d.in_flight) },
      { name: "waiting", points: h.gauge((d) => d.waiting) },
    ]);
    drops.update(
      Object.entries(doc.dropped || {}).map(([reason, count]) => ({
        reason,
        count,
        rate: h.now(rate((d) => (d.dropped || {})[reason] || 0)),
      })),
    );
  });
}

// --- the map's page ---------------------------------------------------------------------

function mapPage() {
  const h = new History();
  const workers = new Table(
    $("#map-workers"),
    [
      { name: "name", title: "worker", value: (w) => w.name || "(unknown)" },
      { name: "done", title: "done", numeric: true, value: (w) => w.done },
      { name: "failed", title: "failed", numeric: true, value: (w) => w.failed },
      { name: "share", title: "share", numeric: true, value: (w) => w.share, show: (w) => (100 * w.share).toFixed(1) + "%" },
    ],
    (w) => w.name,
  );
  const failures = new Table(
    $("#map-failures"),
    [
      { name: "index", title: "job", numeric: true, value: (f) => f.index },
      { name: "attempts", title: "attempts", numeric: true, value: (f) => f.attempts },
      { name: "worker", title: "last worker", value: (f) => f.worker },
      { name: "error", title: "error", value: (f) => f.error },
    ],
    (f) => String(f.index),
  );
  const finished = (d) => d.totals.done + d.totals.failed;
  poll((doc) => {
    h.push(doc.elapsed_ms, doc);
    const c = doc.totals;
    const r = h.now(rate(finished));
    const left = c.jobs - finished(doc);
    const frac = c.jobs > 0 ? finished(doc) / c.jobs : 0;
    $("#uptime").textContent = "running for " + fmtMs(doc.elapsed_ms) + (doc.input_done ? "" : ", reading input");
    $("#bar-fill").style.width = (doc.input_done ? 100 * frac : 0).toFixed(1) + "%";
    $("#bar-text").textContent = `${finished(doc)} of ${c.jobs}${doc.input_done ? "" : "+"} (${(100 * frac).toFixed(1)}%)`;
    tile("rate", fmtNum(r) + "/s");
    tile("eta", doc.input_done ? (left === 0 ? "done" : r > 0 ? fmtMs((1000 * left) / r) : "–") : "input open");
    tile("done", String(c.done));
    tile("failed", String(c.failed));
    tile("retried", String(c.retried));
    tile("in_flight", String(doc.in_flight));
    tile("workers", `${doc.workers} (${doc.capacity} slots)`);
    plot($("#plot-rate"), [
      { name: "finished/s", points: h.series(rate(finished)) },
      { name: "failed/s", points: h.series(rate((d) => d.totals.failed)) },
      { name: "retried/s", points: h.series(rate((d) => d.totals.retried)) },
    ]);
    const total = doc.per_worker.reduce((n, w) => n + w.done + w.failed, 0) || 1;
    workers.update(doc.per_worker.map((w) => ({ ...w, share: (w.done + w.failed) / total })));
    failures.update(doc.failures);
  });
}

// Errors in this script are shown, not hidden: the page says it is broken.
window.addEventListener("error", (e) => setHealth(false, "page error: " + e.message));

const pages = { broker: brokerPage, queue: queuePage, map: mapPage };
pages[document.body.dataset.page]();
