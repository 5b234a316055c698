// Fleet overview: counts by state and one page of the device table, kept live.
//
// The whole fleet lives in the store (from the stream); only the visible page
// (PAGE rows) is in the DOM, and rows are kept per device between updates, so
// a thousand devices cost one filter and one sort per update, and at most
// PAGE rows and sparklines to refresh.
"use strict";

import { sparkline } from "./charts.js";
import {
  DASH, ago, badge, deviceStatus, fixed, h, percent, text, throttled, updating,
} from "./util.js";

const PAGE = 50;
const SPARK_POINTS = 30;
const SEVERITY = { offline: 0, stale: 1, never: 2, revoked: 4, online: 3 };

const COLUMNS = [
  ["device_id", "Device"],
  ["status", "Status"],
  ["age", "Last data", "num"],
  ["model", "Model"],
  ["fps", "FPS", "num"],
  ["latency_p95_ms", "p95 ms", "num"],
  ["accuracy", "Accuracy", "num"],
  ["gpu_temp_c", "GPU °C", "num"],
  ["cpu_percent", "CPU %", "num"],
  [null, "FPS trend"],
  ["site", "Site / group"],
];

function sortValue(d, key, now) {
  switch (key) {
    case "status": return SEVERITY[deviceStatus(d, now)];
    case "age": return d.last_seen ? -Date.parse(d.last_seen) : -Infinity;
    case "model": return (d.model || "") + " " + (d.version || "") + " " + (d.variant || "");
    case "site": return (d.site || "") + " " + (d.group || "");
    default: return d[key];
  }
}

function compare(a, b) {
  if (a === b) return 0;
  if (a === null || a === undefined) return 1;
  if (b === null || b === undefined) return -1;
  return a < b ? -1 : 1;
}

export function mount(root, session) {
  const { api, store } = session;
  const state = { sort: "status", asc: true, filter: "all", search: "", page: 0 };
  const rows = new Map(); // device id -> {tr, cells, spark}
  const sparks = new Map(); // device id -> fps values, oldest first
  const seen = new Map(); // device id -> last_seen folded into its sparkline
  const sparkVersion = new Map(); // device id -> bumped whenever its sparkline changes
  let visible = [];
  let fetching = null;

  const cards = h("div", { class: "cards", id: "fleet-cards" });
  const search = h("input", {
    type: "search", placeholder: "Filter: id, site, group, tag, version", id: "fleet-search",
    oninput: e => { state.search = e.target.value.trim().toLowerCase(); state.page = 0; render(); },
  });
  const pagerText = h("span", { class: "muted", id: "fleet-range" });
  const prev = h("button", { type: "button", onclick: () => { state.page -= 1; render(); } }, "‹ Prev");
  const next = h("button", { type: "button", onclick: () => { state.page += 1; render(); } }, "Next ›");
  const head = h("tr", {}, COLUMNS.map(([key, label, cls]) => h("th", {
    class: cls, dataset: key ? { sort: key } : undefined,
    onclick: key ? () => {
      state.asc = state.sort === key ? !state.asc : true;
      state.sort = key;
      render();
    } : undefined,
  }, label)));
  const body = h("tbody", { id: "devices" },
    h("tr", {}, h("td", { colspan: COLUMNS.length, class: "empty" }, "Loading the fleet…")));
  const countText = h("span", { class: "muted", id: "fleet-count" });
  root.append(
    h("div", { class: "title" }, h("h1", {}, "Fleet"), countText),
    cards,
    h("div", { class: "toolbar" }, search,
      h("span", { class: "pager" }, pagerText, prev, next)),
    h("table", { id: "fleet-table" }, h("thead", {}, head), body),
  );

  function counts(devices, now) {
    const c = { online: 0, stale: 0, offline: 0, never: 0, revoked: 0, updating: 0 };
    let fps = 0, hottest = null, lowest = null;
    for (const d of devices) {
      const s = deviceStatus(d, now);
      c[s] += 1;
      if (updating(d) && s !== "revoked") c.updating += 1;
      if (s === "online" || s === "stale") {
        fps += d.fps || 0;
        if (d.gpu_temp_c !== null && (hottest === null || d.gpu_temp_c > hottest)) hottest = d.gpu_temp_c;
      }
      if (d.accuracy !== null && s !== "revoked" && (lowest === null || d.accuracy < lowest)) lowest = d.accuracy;
    }
    return { ...c, fps, hottest, lowest };
  }

  function renderCards(all, now) {
    const c = counts(all, now);
    const card = (key, label, value, tone) => h("div", {
      class: "card " + (tone || "") + (state.filter === key ? " selected" : ""),
      dataset: key ? { filter: key, count: String(value) } : undefined,
      onclick: key ? () => { state.filter = state.filter === key ? "all" : key; state.page = 0; render(); } : undefined,
    }, h("div", { class: "n" }, value), h("div", { class: "k" }, label));
    cards.replaceChildren(
      card("all", "Devices", all.length),
      card("online", "Online", c.online, "ok"),
      card("stale", "Stale data", c.stale, c.stale ? "warn" : ""),
      card("offline", "Offline", c.offline, c.offline ? "bad" : ""),
      card("never", "Never reported", c.never, c.never ? "warn" : ""),
      card("updating", "Updating", c.updating, c.updating ? "warn" : ""),
      card("revoked", "Revoked", c.revoked),
      card(null, "Fleet FPS", fixed(c.fps, 0)),
      card(null, "Hottest GPU", c.hottest === null ? DASH : fixed(c.hottest, 0) + " °C",
        c.hottest !== null && c.hottest >= 85 ? "bad" : ""),
      card(null, "Lowest accuracy", percent(c.lowest), c.lowest !== null && c.lowest < 0.8 ? "bad" : ""),
    );
    countText.textContent =
      `${c.online} of ${all.length} online · ${new Date(now).toLocaleTimeString()}`;
  }

  function matches(d, now) {
    if (state.filter === "updating") { if (!updating(d)) return false; }
    else if (state.filter !== "all" && deviceStatus(d, now) !== state.filter) return false;
    if (!state.search) return true;
    const hay = [d.device_id, d.site, d.group, d.profile, d.model, d.version, d.variant, ...(d.tags || [])]
      .filter(Boolean).join(" ").toLowerCase();
    return state.search.split(/\s+/).every(word => hay.includes(word));
  }

  function makeRow(id) {
    const cells = COLUMNS.map(([, , cls]) => h("td", { class: cls }));
    cells[9].className = "spark";
    const tr = h("tr", { class: "link", dataset: { device: id }, onclick: () => { location.hash = "#/devices/" + encodeURIComponent(id); } }, cells);
    const row = { tr, cells, spark: sparkline(cells[9]), sparkVersion: -1 };
    rows.set(id, row);
    return row;
  }

  function fill(row, d, now) {
    const c = row.cells;
    const status = deviceStatus(d, now);
    c[0].replaceChildren(h("a", { href: "#/devices/" + encodeURIComponent(d.device_id) }, d.device_id));
    c[1].replaceChildren(badge(status));
    c[2].textContent = ago(d.last_seen, now);
    c[3].replaceChildren(d.model ? `${d.model} ${text(d.version)}` : DASH);
    // The variant unless it is plain fp32, so the engines of a mixed-GPU fleet stand out.
    if (d.model && d.variant && d.variant !== "fp32") {
      c[3].append(h("span", { class: "variant" }, ` · ${d.variant}`));
    }
    if (updating(d)) c[3].append(h("div", { class: "desired" }, `→ ${d.desired_model} ${d.desired_version}`));
    c[4].textContent = fixed(d.fps, 1);
    c[5].textContent = fixed(d.latency_p95_ms, 1);
    c[6].textContent = percent(d.accuracy);
    c[7].textContent = fixed(d.gpu_temp_c, 0);
    c[8].textContent = fixed(d.cpu_percent, 0);
    c[10].textContent = [d.site, d.group].filter(Boolean).join(" / ") || DASH;
    const version = sparkVersion.get(d.device_id) || 0;
    if (row.sparkVersion !== version) {
      row.sparkVersion = version;
      row.spark.set(sparks.get(d.device_id) || []);
    }
  }

  function fold(d) {
    // A new report since the last look: its fps is the sparkline's next point.
    if (!d.last_seen || seen.get(d.device_id) === d.last_seen) return;
    const first = !seen.has(d.device_id);
    seen.set(d.device_id, d.last_seen);
    if (first || d.fps === null || !sparks.has(d.device_id)) return;
    const values = sparks.get(d.device_id);
    values.push(d.fps);
    if (values.length > SPARK_POINTS) values.shift();
    sparkVersion.set(d.device_id, (sparkVersion.get(d.device_id) || 0) + 1);
  }

  async function loadSparks(ids) {
    const missing = ids.filter(id => !sparks.has(id));
    if (!missing.length || fetching) return;
    fetching = missing;
    try {
      const query = missing.map(id => "device=" + encodeURIComponent(id)).join("&");
      const answer = await api.get(`/api/v1/fleet/sparklines?points=${SPARK_POINTS}&${query}`);
      for (const id of missing) {
        const series = answer.devices[id];
        sparks.set(id, series ? series.fps.filter(v => v !== null) : []);
        sparkVersion.set(id, (sparkVersion.get(id) || 0) + 1);
      }
    } catch (e) {
      for (const id of missing) sparks.set(id, []);
    } finally {
      fetching = null;
      update();
    }
  }

  let alive = true;

  function render() {
    const now = Date.now();
    if (!alive || !store.loaded.devices) return;
    const all = [...store.devices.values()];
    for (const d of all) fold(d);
    renderCards(all, now);
    const list = all.filter(d => matches(d, now));
    const key = state.sort;
    list.sort((a, b) => {
      const order = compare(sortValue(a, key, now), sortValue(b, key, now)) * (state.asc ? 1 : -1);
      return order || (a.device_id < b.device_id ? -1 : 1);
    });
    const pages = Math.max(1, Math.ceil(list.length / PAGE));
    state.page = Math.min(Math.max(0, state.page), pages - 1);
    const start = state.page * PAGE;
    const page = list.slice(start, start + PAGE);
    pagerText.textContent = list.length
      ? `${start + 1}–${start + page.length} of ${list.length}` : "0 of 0";
    prev.disabled = state.page === 0;
    next.disabled = state.page >= pages - 1;
    for (const th of head.children) {
      th.classList.toggle("sorted", th.dataset.sort === key);
      th.classList.toggle("asc", th.dataset.sort === key && state.asc);
    }
    const ids = page.map(d => d.device_id);
    if (ids.join("\n") !== visible.join("\n")) {
      for (const [id, row] of rows) {
        if (!ids.includes(id)) {
          row.spark.destroy();
          rows.delete(id);
        }
      }
      body.replaceChildren(...ids.map(id => (rows.get(id) || makeRow(id)).tr));
      visible = ids;
    }
    loadSparks(ids);
    if (!page.length) {
      body.replaceChildren(h("tr", {}, h("td", { colspan: COLUMNS.length, class: "empty" },
        store.devices.size ? "No device matches the filter."
          : "No devices enrolled yet. Make an enrolment token with `corral token create`.")));
      visible = [];
    }
    for (const d of page) fill(rows.get(d.device_id), d, now);
    root.dataset.ready = "1";
    root.dataset.rows = String(page.length);
    root.dataset.total = String(all.length);
  }

  const update = throttled(render);
  const unsubscribe = store.subscribe(kind => { if (kind === "devices") update(); });
  const clock = setInterval(update, 1000); // ages and stale states move with time
  render();
  return () => {
    alive = false;
    unsubscribe();
    clearInterval(clock);
    for (const row of rows.values()) row.spark.destroy();
  };
}
