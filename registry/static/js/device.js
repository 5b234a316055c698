// One device: what it reports now, charts of its inference, accuracy and telemetry
// over a time window, its quality as the alert rules see it, its installs and its
// events. Charts load the window once (GET /api/v1/devices/ID/series) and then,
// whenever the stream says the device reported, fetch only the points after the
// last seq they hold. Windows longer than the registry keeps raw reports come
// back in buckets (one point per hour or more: see registry.retention); those
// charts reload at most every BUCKETS_EVERY_MS instead of following each report.
// The quality panel (GET /api/v1/devices/ID/quality) covers the rules' own
// window and reloads at most every QUALITY_EVERY_MS.
"use strict";

import { timeChart } from "./charts.js";
import {
  DASH, ago, badge, deviceStatus, fixed, h, percent, text, updating, when,
} from "./util.js";

const WINDOWS = [
  ["15 min", 900], ["1 h", 3600], ["6 h", 21600], ["24 h", 86400],
  ["7 d", 7 * 86400], ["30 d", 30 * 86400], ["90 d", 90 * 86400], ["1 y", 365 * 86400],
];
const LIMIT = 2000;
const DETAIL_EVERY_MS = 5000;
const QUALITY_EVERY_MS = 10000;
const BUCKETS_EVERY_MS = 60000;
const DRIFT_TESTS = {
  chi2_classes: "classes, chi-square",
  ks_confidence: "confidence, Kolmogorov-Smirnov",
  js_classes: "classes, Jensen-Shannon distance",
  psi_confidence: "confidence, PSI",
};

// kind -> chart: which series fields to draw, with labels, units and axis.
const CHARTS = {
  inference: {
    title: "Inference", empty: "No inference reported in this window.", axes: ["fps", "ms"],
    series: [
      { field: "fps", label: "FPS", digits: 1 },
      { field: "p95_ms", label: "p95 latency", unit: " ms", axis: 1, digits: 2 },
      { field: "p50_ms", label: "p50 latency", unit: " ms", axis: 1, digits: 2 },
    ],
  },
  accuracy: {
    title: "Accuracy on labelled frames", empty: "No labelled frames in this window.", axes: ["%", "labelled"],
    // Close enough to see a drop of a few points, never above 100 %.
    leftRange: (min, max) => [Math.max(0, Math.floor((Math.min(min, max) - 5) / 5) * 5), 100],
    series: [
      { field: "accuracy", label: "Accuracy", unit: " %", digits: 1, scale: 100 },
      { field: "labelled", label: "Labelled", axis: 1, digits: 0 },
    ],
  },
  telemetry: {
    title: "Hardware", empty: "No telemetry reported in this window.", axes: ["%", "°C"],
    leftRange: () => [0, 100],
    series: [
      { field: "cpu_percent", label: "CPU", unit: " %", digits: 0 },
      { field: "memory_percent", label: "Memory", unit: " %", digits: 0 },
      { field: "gpu_util_percent", label: "GPU util", unit: " %", digits: 0 },
      { field: "gpu_temp_c", label: "GPU temp", unit: " °C", axis: 1, digits: 0 },
    ],
  },
};

// Why a TensorRT variant the agent chose was given up (an installed event's fallback.reason).
const FAILED = { incompatible: "did not load", smoke_test: "failed its smoke test" };

/** An install's version with its variant, and the variant it fell back from, if any. */
function installedVersion(data) {
  const out = [text(data.version)];
  if (typeof data.variant === "string") out.push(h("span", { class: "variant" }, ` · ${data.variant}`));
  const f = data.fallback;
  if (f && typeof f === "object" && typeof f.variant === "string") {
    out.push(h("div", { class: "fallback" }, `${f.variant} ${FAILED[f.reason] || `failed (${text(f.reason)})`}`));
  }
  return out;
}

export function mount(root, session, id) {
  const { api, store } = session;
  let windowS = 3600;
  let alive = true;
  let lastDetail = 0;
  let lastQuality = 0;
  let lastLoad = 0;
  let pulling = false;
  let again = false;
  const data = {}; // kind -> {ts, seq, values, bucketS}
  const charts = {};

  const statusEl = h("span", { id: "device-status" });
  const heading = h("div", { class: "title" }, h("h1", {}, id), statusEl);
  const facts = h("dl", { class: "facts", id: "device-facts" });
  const note = h("p", { class: "muted small", id: "device-note" });
  const windowButtons = WINDOWS.map(([label, seconds]) => h("button", {
    type: "button", class: seconds === windowS ? "on" : "",
    onclick: e => {
      windowS = seconds;
      for (const b of windowButtons) b.classList.toggle("on", b === e.currentTarget);
      loadAll();
    },
  }, label));
  const chartPanels = Object.keys(CHARTS).map(kind => {
    const el = h("div", { class: "chart", id: "chart-" + kind });
    return [kind, h("div", { class: "panel" }, el), el];
  });
  const quality = h("div", { class: "panel quality", id: "device-quality" },
    h("h2", {}, "Quality"), h("p", { class: "muted" }, "Loading…"));
  const versions = h("tbody", { id: "device-versions" });
  const events = h("tbody", { id: "device-events" });
  root.append(
    h("p", { class: "small" }, h("a", { href: "#/" }, "← Fleet")),
    heading,
    h("div", { class: "panel" }, facts, note),
    h("div", { class: "toolbar", style: "margin-top:1rem" }, h("strong", {}, "Window"),
      h("span", { class: "windows" }, windowButtons)),
    // Three charts leave the grid a fourth place: quality sits beside the hardware.
    h("div", { class: "grid2" }, chartPanels.map(([, panel]) => panel), quality),
    h("div", { class: "grid2" },
      h("div", {}, h("h2", {}, "Installed versions"),
        h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "When"), h("th", {}, "What"), h("th", {}, "Version"))), versions)),
      h("div", {}, h("h2", {}, "Events"),
        h("table", {}, h("thead", {}, h("tr", {}, h("th", { class: "num" }, "Seq"), h("th", {}, "When"), h("th", {}, "Event"), h("th", {}, "Message"))), events))),
  );
  for (const [kind, , el] of chartPanels) {
    const spec = CHARTS[kind];
    charts[kind] = timeChart(el, {
      title: spec.title, empty: spec.empty, axes: spec.axes, series: spec.series, leftRange: spec.leftRange || null,
    });
  }

  let seqStats = null; // from the last detail: the stream's summaries do not carry it

  function renderFacts(summary) {
    const d = { ...summary, seq: summary.seq || seqStats };
    const status = deviceStatus(d);
    statusEl.replaceChildren(badge(status));
    if (updating(d)) statusEl.append(" ", badge("updating"));
    const fact = (label, value) => [h("dt", {}, label), h("dd", {}, value)];
    facts.replaceChildren(
      ...fact("Model", d.model ? `${d.model} ${text(d.version)}` : DASH),
      // "not reported": an agent that predates the field, or a new version before its status.
      ...fact("Variant", d.model ? d.variant || "not reported" : DASH),
      ...fact("Desired", d.desired_version ? `${d.desired_model} ${d.desired_version}` : DASH),
      ...fact("Last data", d.last_seen ? ago(d.last_seen) + " ago" : "never"),
      ...fact("Profile", text(d.profile)),
      ...fact("Site / group", [d.site, d.group].filter(Boolean).join(" / ") || DASH),
      ...fact("Tags", (d.tags || []).join(", ") || DASH),
      ...fact("FPS", fixed(d.fps, 1)),
      ...fact("Latency p50 / p95", `${fixed(d.latency_p50_ms, 1)} / ${fixed(d.latency_p95_ms, 1)} ms`),
      ...fact("Accuracy (this version)", `${percent(d.accuracy)} of ${d.labelled} labelled`),
      ...fact("Frames / drops", `${d.frames} / ${d.drops}`),
      ...fact("CPU / memory", `${fixed(d.cpu_percent, 0)} % / ${fixed(d.memory_percent, 0)} %`),
      ...fact("GPU temperature", d.gpu_temp_c === null ? DASH : fixed(d.gpu_temp_c, 0) + " °C"),
      ...(d.seq ? fact("Messages (lost)", `${d.seq.count} (${d.seq.missing})`) : []),
      ...(d.revoked_at ? fact("Revoked", when(d.revoked_at)) : []),
    );
  }

  function renderDetail(detail) {
    seqStats = detail.seq;
    renderFacts(store.devices.get(id) || detail);
    const history = detail.events.filter(e => ["installed", "rolled_back", "install_failed", "load_failed"].includes(e.event));
    versions.replaceChildren(...(history.length ? history.map(e => h("tr", {},
      h("td", {}, when(e.ts)),
      h("td", {}, badge(e.event.replace("_", " "), e.event === "installed" ? "passed" : "failed")),
      h("td", {}, e.event === "rolled_back"
        ? `${text(e.data.version)} → ${text(e.data.to_version)}`
        : installedVersion(e.data)),
    )) : [h("tr", {}, h("td", { colspan: 3, class: "empty" }, "No installs among the last 50 events."))]));
    events.replaceChildren(...(detail.events.length ? detail.events.map(e => h("tr", {},
      h("td", { class: "num" }, e.seq), h("td", {}, when(e.ts)), h("td", {}, e.event),
      h("td", { style: "white-space:normal" }, e.message))) : [h("tr", {}, h("td", { colspan: 4, class: "empty" }, "No events yet."))]));
  }

  function renderQuality(q) {
    const minutes = Math.round(q.window_s / 60);
    const fact = (label, value) => [h("dt", {}, label), h("dd", {}, value)];
    const gap = q.recall_gap;
    const classes = Object.entries(q.per_class);
    quality.dataset.labelled = String(q.labelled);
    quality.dataset.classes = String(classes.length);
    quality.replaceChildren(
      h("h2", {}, "Quality ", h("span", { class: "muted small" },
        `last ${minutes} min of ${q.model ? `${q.model} ${text(q.version)}` : "its current version"}: what the alert rules see`)),
      h("dl", { class: "facts" },
        ...fact("Accuracy", `${percent(q.accuracy)} of ${q.labelled} labelled`),
        ...fact("Macro F1", fixed(q.macro_f1, 3)),
        ...fact("Recall gap", !gap ? DASH : gap.best === gap.worst ? fixed(gap.gap, 3)
          : `${fixed(gap.gap, 3)} (${gap.best} over ${gap.worst})`),
        ...fact("Windows / frames", `${q.windows} / ${q.frames}`)),
      h("div", { class: "grid2", style: "margin-top:.75rem" },
        h("div", {}, h("h3", {}, "Per class"), classes.length
          ? h("table", { class: "gates" },
            h("thead", {}, h("tr", {}, ["Class", "Precision", "Recall", "F1", "Support", "Predicted"]
              .map((c, i) => h("th", { class: i ? "num" : "" }, c)))),
            h("tbody", {}, classes.map(([label, c]) => h("tr", { dataset: { class: label } },
              h("td", {}, label),
              h("td", { class: "num" }, fixed(c.precision, 3)),
              h("td", { class: "num" }, fixed(c.recall, 3)),
              h("td", { class: "num" }, fixed(c.f1, 3)),
              h("td", { class: "num" }, c.support),
              h("td", { class: "num" }, c.predicted)))))
          : h("p", { class: "muted small" }, "No labelled frames with per-class figures in this window.")),
        h("div", {}, h("h3", {}, "Drift from the bundle's baseline"), q.drift.length
          ? h("table", { class: "gates", id: "device-drift" },
            h("thead", {}, h("tr", {}, ["Test", "Value", "p-value", "Effective n", "Limit"]
              .map((c, i) => h("th", { class: i ? "num" : "" }, c)))),
            h("tbody", {}, q.drift.map(d => h("tr", { dataset: { test: d.test } },
              h("td", {}, DRIFT_TESTS[d.test] || d.test),
              h("td", { class: "num" }, fixed(d.value, 4)),
              h("td", { class: "num" }, d.p_value === null ? DASH : Number(d.p_value).toPrecision(2)),
              h("td", { class: "num" }, fixed(d.effective_n, 0)),
              // Small windows are judged by p-value across the fleet (FDR), large ones by this limit.
              h("td", { class: "num" }, d.p_value === null ? fixed(d.threshold, 3) : "FDR")))))
          : h("p", { class: "muted small" }, "No drift test: no baseline in this version's bundle, or no frames in the window."))),
    );
  }

  async function loadQuality() {
    lastQuality = Date.now();
    try {
      const answer = await api.get(`/api/v1/devices/${encodeURIComponent(id)}/quality`);
      if (alive) renderQuality(answer);
    } catch (e) {
      if (!alive) return;
      quality.hidden = e.status === 404; // the facts panel says there is no such device
      quality.replaceChildren(h("h2", {}, "Quality"), h("p", { class: "error" }, "Could not load the quality figures: " + e.message));
    }
  }

  async function loadDetail() {
    lastDetail = Date.now();
    try {
      const detail = await api.get("/api/v1/devices/" + encodeURIComponent(id));
      if (alive) renderDetail(detail);
    } catch (e) {
      if (alive) note.textContent = e.status === 404 ? `No device ${id}.` : "Could not load the device: " + e.message;
    }
  }

  function draw(kind) {
    const spec = CHARTS[kind];
    const series = data[kind];
    charts[kind].set(series.ts, spec.series.map(s => series.values[s.field].map(
      v => (v === null || v === undefined ? null : v * (s.scale || 1)))));
  }

  function trim(series) {
    const cutoff = Date.now() / 1000 - windowS;
    let drop = 0;
    while (drop < series.ts.length && series.ts[drop] < cutoff) drop += 1;
    if (!drop) return;
    series.ts.splice(0, drop);
    series.seq.splice(0, drop);
    for (const column of Object.values(series.values)) column.splice(0, drop);
  }

  function hours(seconds) {
    return seconds % 86400 ? `${seconds / 3600}-hour` : `${seconds / 86400}-day`;
  }

  async function loadAll() {
    lastLoad = Date.now();
    const since = new Date(Date.now() - windowS * 1000).toISOString();
    const answers = await Promise.all(Object.keys(CHARTS).map(kind =>
      api.get(`/api/v1/devices/${encodeURIComponent(id)}/series?kind=${kind}&since=${since}&limit=${LIMIT}`)
        .catch(() => null)));
    if (!alive) return;
    const cut = [];
    let bucketS = null;
    Object.keys(CHARTS).forEach((kind, i) => {
      const answer = answers[i] || { ts: [], seq: [], values: Object.fromEntries(CHARTS[kind].series.map(s => [s.field, []])), truncated: false };
      data[kind] = { ts: answer.ts, seq: answer.seq, values: answer.values, bucketS: answer.bucket_s || null };
      if (answer.truncated) cut.push(kind);
      if (answer.bucket_s) bucketS = answer.bucket_s;
      draw(kind);
    });
    const notes = [];
    if (bucketS) {
      notes.push(`Each point is a ${hours(bucketS)} figure: mean fps and accuracy over it, `
        + "the worst window's p95, mean hardware readings; raw reports are kept for days only.");
    }
    if (cut.length) {
      notes.push(`The ${cut.join(" and ")} chart${cut.length > 1 ? "s show" : " shows"} the newest ${LIMIT} points of the window.`);
    }
    note.textContent = notes.join(" ");
  }

  async function pull() {
    // New points since the last seq each chart holds; one pull at a time.
    if (pulling) { again = true; return; }
    pulling = true;
    try {
      for (const kind of Object.keys(CHARTS)) {
        const series = data[kind];
        if (!series || series.bucketS) continue; // buckets reload as a whole (BUCKETS_EVERY_MS)
        const after = series.seq.length ? series.seq[series.seq.length - 1] : null;
        const query = after === null
          ? `since=${new Date(Date.now() - windowS * 1000).toISOString()}`
          : `after_seq=${after}`;
        const answer = await api.get(`/api/v1/devices/${encodeURIComponent(id)}/series?kind=${kind}&${query}&limit=500`);
        if (!alive) return;
        if (data[kind] !== series) continue; // the window changed meanwhile
        for (let i = 0; i < answer.ts.length; i++) {
          if (series.seq.length && answer.seq[i] <= series.seq[series.seq.length - 1]) continue;
          series.ts.push(answer.ts[i]);
          series.seq.push(answer.seq[i]);
          for (const field of Object.keys(series.values)) series.values[field].push(answer.values[field][i]);
        }
        trim(series);
        draw(kind);
      }
    } catch (e) {
      // The stream says when the registry is unreachable; the next report retries.
    } finally {
      pulling = false;
      if (again && alive) { again = false; pull(); }
    }
  }

  let lastSeen = null;
  const unsubscribe = store.subscribe((kind, ids) => {
    if (kind !== "devices" || !ids.includes(id)) return;
    const d = store.devices.get(id);
    if (!d) return;
    renderFacts(d);
    if (d.last_seen !== lastSeen) {
      lastSeen = d.last_seen;
      if (Object.values(data).some(series => series.bucketS)) {
        if (Date.now() - lastLoad > BUCKETS_EVERY_MS) loadAll();
      } else {
        pull();
      }
      if (Date.now() - lastDetail > DETAIL_EVERY_MS) loadDetail();
      if (Date.now() - lastQuality > QUALITY_EVERY_MS) loadQuality();
    }
  });
  const clock = setInterval(() => {
    const d = store.devices.get(id);
    if (d) renderFacts(d);
  }, 1000);
  if (store.devices.has(id)) renderFacts(store.devices.get(id));
  loadDetail();
  loadQuality();
  loadAll();
  return () => {
    alive = false;
    unsubscribe();
    clearInterval(clock);
    for (const chart of Object.values(charts)) chart.destroy();
  };
}
