// Models: every version with its test metrics, lineage and aliases, and where it
// runs now (devices reporting it, devices told to run it, its rollouts), live.
// A version's name links to its model card (modelcard.js).
"use strict";

import { DASH, badge, fixed, h, percent, text, throttled } from "./util.js";
import { cardLink } from "./modelcard.js";

function short(value, n = 10) {
  return typeof value === "string" && value.length > n ? value.slice(0, n) : text(value);
}

export function mount(root, session) {
  const { api, store } = session;
  let versions = null;
  const aliases = new Map(); // model -> {alias: version}
  const container = h("div", { id: "models" }, h("p", { class: "muted" }, "Loading models…"));
  const expanded = new Set();
  root.append(h("div", { class: "title" }, h("h1", {}, "Models")), container);

  function deployment(name, version) {
    let running = 0, desired = 0;
    for (const d of store.devices.values()) {
      if (d.revoked_at) continue;
      if (d.model === name && d.version === version) running += 1;
      if (d.desired_model === name && d.desired_version === version) desired += 1;
    }
    const rollouts = [...store.rollouts.values()].filter(r => r.model === name && r.version === version);
    return { running, desired, rollouts };
  }

  function detailRow(m, columns) {
    const lineage = { ...m.lineage };
    const hyper = lineage.hyperparameters;
    delete lineage.hyperparameters;
    const perClass = m.metrics.per_class || {};
    return h("tr", { class: "detail" }, h("td", { colspan: columns },
      h("div", { class: "grid2" },
        h("div", {}, h("h2", {}, "Per class (test split)"),
          h("table", {}, h("thead", {}, h("tr", {}, ["Class", "Precision", "Recall", "F1", "Support"].map(c => h("th", { class: c === "Class" ? "" : "num" }, c)))),
            h("tbody", {}, Object.entries(perClass).map(([label, c]) => h("tr", {},
              h("td", {}, label), h("td", { class: "num" }, fixed(c.precision, 3)),
              h("td", { class: "num" }, fixed(c.recall, 3)), h("td", { class: "num" }, fixed(c.f1, 3)),
              h("td", { class: "num" }, text(c.support))))))),
        h("div", {}, h("h2", {}, "Lineage"), h("pre", {}, JSON.stringify(lineage, null, 2)),
          hyper ? h("details", {}, h("summary", {}, "Hyperparameters"), h("pre", {}, JSON.stringify(hyper, null, 2))) : null,
          h("p", {}, cardLink(m.name, m.version, "Model card: approvals, rollouts, devices that ran it, audit JSON →"))),
      )));
  }

  let alive = true;

  function render() {
    if (!alive || !versions) return;
    if (!versions.length) {
      container.replaceChildren(h("p", { class: "empty" }, "No model versions yet. Push one with `corral model push DIR`."));
      return;
    }
    const names = [...new Set(versions.map(m => m.name))];
    const columns = 11;
    container.replaceChildren(...names.map(name => {
      const rows = versions.filter(m => m.name === name).reverse(); // newest first
      const pointers = aliases.get(name) || {};
      return h("section", { dataset: { model: name } },
        h("h2", {}, name, " ", h("span", { class: "muted small" }, `${rows.length} version${rows.length === 1 ? "" : "s"}`)),
        h("table", {},
          h("thead", {}, h("tr", {}, ["Version", "Created", "Accuracy", "Macro F1", "Recall gap", "Dataset", "Code", "Aliases", "Running on", "Desired by", "Rollouts"]
            .map((c, i) => h("th", { class: i >= 2 && i <= 4 || i === 8 || i === 9 ? "num" : "" }, c)))),
          h("tbody", {}, rows.flatMap(m => {
            const where = deployment(m.name, m.version);
            const key = m.name + "@" + m.version;
            const row = h("tr", { class: "link", dataset: { version: m.version }, onclick: () => {
              if (expanded.has(key)) expanded.delete(key); else expanded.add(key);
              render();
            } },
              h("td", {}, h("strong", {}, cardLink(m.name, m.version))),
              h("td", {}, m.created ? new Date(m.created).toLocaleString() : DASH),
              h("td", { class: "num" }, percent(m.metrics.accuracy)),
              h("td", { class: "num" }, fixed(m.metrics.macro_f1, 3)),
              h("td", { class: "num" }, fixed(m.metrics.recall_gap, 3)),
              h("td", {}, h("code", {}, short(m.lineage.dataset_version))),
              h("td", {}, h("code", {}, short(m.lineage.code_commit, 8))),
              h("td", {}, Object.entries(pointers).filter(([, v]) => v === m.version).map(([a]) => badge(a, "running"))),
              h("td", { class: "num", dataset: { running: String(where.running) } }, where.running),
              h("td", { class: "num" }, where.desired),
              h("td", {}, where.rollouts.slice(0, 4).map(r => h("a", { href: "#/rollouts/" + r.id, onclick: e => e.stopPropagation() }, badge(`#${r.id} ${r.state}`, r.state), " "))),
            );
            return expanded.has(key) ? [row, detailRow(m, columns)] : [row];
          }))));
    }));
    root.dataset.ready = "1";
  }

  async function load() {
    try {
      versions = await api.get("/api/v1/models");
      const names = [...new Set(versions.map(m => m.name))];
      await Promise.all(names.map(async name => {
        const list = await api.get(`/api/v1/models/${encodeURIComponent(name)}/aliases`).catch(() => []);
        aliases.set(name, Object.fromEntries(list.map(a => [a.alias, a.version])));
      }));
      render();
    } catch (e) {
      container.replaceChildren(h("p", { class: "error" }, "Could not load the models: " + e.message));
    }
  }

  // Redraw only when where a version runs changed, not on every report.
  let shown = "";
  const update = throttled(() => {
    if (!versions) return;
    const now = JSON.stringify(versions.map(m => deployment(m.name, m.version))
      .map(w => [w.running, w.desired, w.rollouts.map(r => r.id + r.state)]));
    if (now !== shown) {
      shown = now;
      render();
    }
  });
  const unsubscribe = store.subscribe(() => update());
  load();
  return () => {
    alive = false;
    unsubscribe();
  };
}
