// A model card (#/models/NAME/VERSION): one version's audit document, readable.
//
// Everything comes from GET /api/v1/models/NAME/VERSION/audit (registry.modelcard):
// the scores with per-class recall and the bias gap, the lineage (dataset, commit,
// parent version as a link), aliases and their moves, approvals, rollouts, the
// devices that ran it with first and last seen, their events about it, and the
// audit-log entries that name it. "Download audit JSON" saves that same document.
// It reloads when one of its rollouts changes on the live stream.
"use strict";

import { DASH, badge, fixed, h, percent, text, throttled, when } from "./util.js";

const ROWS = 300; // most devices (and events) drawn; the download has them all

function short(value, n = 12) {
  return typeof value === "string" && value.length > n ? value.slice(0, n) : text(value);
}

function cardPath(name, version) {
  return `#/models/${encodeURIComponent(name)}/${encodeURIComponent(version)}`;
}

/** The link to a version's card, for the models page and the parent link. */
export function cardLink(name, version, label) {
  return h("a", { href: cardPath(name, version), class: "card-link", onclick: e => e.stopPropagation() },
    label === undefined ? version : label);
}

/** One term of a facts list: a div per pair, so the grid never splits a label from its value. */
function fact(label, value) {
  return [h("div", {}, h("dt", {}, label), h("dd", {}, value))];
}

function table(id, columns, rows, empty) {
  return h("table", { id },
    h("thead", {}, h("tr", {}, columns.map(c => h("th", { class: c.startsWith("#") ? "num" : "" }, c.replace(/^#/, ""))))),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: columns.length, class: "empty" }, empty))));
}

function scores(metrics) {
  const perClass = Object.entries(metrics.per_class || {});
  const recalls = perClass.map(([, c]) => c.recall).filter(r => typeof r === "number");
  const best = perClass.find(([, c]) => c.recall === Math.max(...recalls));
  const worst = perClass.find(([, c]) => c.recall === Math.min(...recalls));
  const gap = typeof metrics.recall_gap === "number" ? metrics.recall_gap
    : recalls.length ? Math.max(...recalls) - Math.min(...recalls) : null;
  return h("div", { class: "panel", id: "card-scores" },
    h("h2", {}, "Scores ", h("span", { class: "muted small" },
      `${text(metrics.split || "test")} split${metrics.samples ? `, ${metrics.samples} samples` : ""}`)),
    h("dl", { class: "facts" },
      ...fact("Accuracy", percent(metrics.accuracy)),
      ...fact("Macro F1", fixed(metrics.macro_f1, 3)),
      ...fact("Recall gap (bias)", h("span", { id: "card-bias", dataset: { gap: gap === null ? "" : String(gap) } },
        fixed(gap, 3), best && worst && best !== worst ? ` (${best[0]} over ${worst[0]})` : "")),
      ...fact("Calibration (ECE)", fixed(metrics.expected_calibration_error, 3))),
    perClass.length
      ? h("table", { class: "gates", id: "card-classes", style: "margin-top:.75rem" },
        h("thead", {}, h("tr", {}, ["Class", "Recall", "Precision", "F1", "Support"]
          .map((c, i) => h("th", { class: i ? "num" : "" }, c)))),
        h("tbody", {}, perClass.map(([label, c]) => h("tr", { dataset: { class: label } },
          h("td", {}, label),
          h("td", { class: "num" }, h("strong", {}, fixed(c.recall, 3))),
          h("td", { class: "num" }, fixed(c.precision, 3)),
          h("td", { class: "num" }, fixed(c.f1, 3)),
          h("td", { class: "num" }, text(c.support))))))
      : h("p", { class: "muted small" }, "The bundle carries no per-class figures."));
}

function lineage(doc) {
  const o = doc.origin;
  const rest = { ...doc.lineage };
  const hyper = rest.hyperparameters;
  const search = rest.search;
  delete rest.hyperparameters;
  delete rest.search;
  let parent = DASH;
  if (o.parent_version) {
    parent = o.parent_registered
      ? cardLink(o.parent_name, o.parent_version, `${o.parent_name} ${o.parent_version}`)
      : `${o.parent_name} ${o.parent_version} (not in this registry)`;
  }
  const dirty = o.code_dirty === true ? badge("uncommitted changes", "warning")
    : o.code_dirty === false ? badge("clean", "passed") : null;
  return h("div", { class: "panel", id: "card-lineage" },
    h("h2", {}, "Lineage ", h("span", { class: "muted small" }, "as the trainer sent it")),
    h("dl", { class: "facts" },
      ...fact("Dataset version", h("code", { title: text(o.dataset_version) }, short(o.dataset_version))),
      ...fact("Manifest SHA-256", h("code", { title: text(o.dataset_manifest_sha256) }, short(o.dataset_manifest_sha256))),
      ...fact("Code commit", [h("code", { title: text(o.code_commit), id: "card-commit" }, short(o.code_commit)), " ", dirty]),
      ...fact("Parent version", h("span", { id: "card-parent" }, parent)),
      ...fact("Search", o.search_trials ? `${o.search_trials} trials` : "none"),
      ...fact("Trainer", text(o.trainer_version))),
    hyper ? h("details", {}, h("summary", {}, "Training config"), h("pre", {}, JSON.stringify(hyper, null, 2))) : null,
    search ? h("details", {}, h("summary", {}, "Search trials"), h("pre", {}, JSON.stringify(search, null, 2))) : null,
    h("details", {}, h("summary", {}, "Everything else in the lineage"), h("pre", {}, JSON.stringify(rest, null, 2))));
}

function sections(doc) {
  const moves = doc.aliases.moves.slice().reverse(); // newest first on the page
  const rollouts = doc.rollouts.slice().reverse();
  const devices = doc.devices;
  const events = doc.device_events.items.slice().reverse();
  const entries = doc.audit.slice().reverse();
  return [
    h("h2", {}, "Aliases ", h("span", { id: "card-aliases" },
      doc.aliases.current.length ? doc.aliases.current.flatMap(a => [badge(a.alias, "running"), " "]) : h("span", { class: "muted small" }, "none point here now"))),
    table("card-moves", ["When", "Alias", "From", "To", "Who", "Why"], moves.map(m => h("tr", { dataset: { alias: m.alias } },
      h("td", {}, when(m.moved_at)), h("td", {}, m.alias), h("td", {}, text(m.from_version)),
      h("td", {}, m.to_version), h("td", {}, m.moved_by), h("td", { style: "white-space:normal" }, m.reason))),
    "No alias was ever moved to or from this version."),
    h("h2", {}, "Approvals"),
    table("card-approvals", ["When", "Rollout", "Who", "What", "Note"], doc.approvals.slice().reverse().map(a => h("tr", {},
      h("td", {}, when(a.at)), h("td", {}, h("a", { href: "#/rollouts/" + a.rollout_id }, `#${a.rollout_id}`), " ", a.environment),
      h("td", {}, a.actor), h("td", { style: "white-space:normal" }, a.message), h("td", { style: "white-space:normal" }, a.note))),
    "No approval recorded."),
    h("h2", {}, "Rollouts"),
    table("card-rollouts", ["#", "Env", "Mode", "State", "Stage reached", "#Devices", "By", "Started", "Finished", "Reason"],
      rollouts.map(r => h("tr", { dataset: { rollout: String(r.id), state: r.state } },
        h("td", {}, h("a", { href: "#/rollouts/" + r.id }, "#" + r.id)),
        h("td", {}, r.environment), h("td", {}, r.mode), h("td", {}, badge(r.state.replace("_", " "), r.state)),
        h("td", {}, r.stages.length ? `${Math.min(r.stage + 1, r.stages.length)} of ${r.stages.length}: ${r.stages[Math.min(r.stage, r.stages.length - 1)].name}` : DASH),
        h("td", { class: "num" }, r.devices), h("td", {}, r.created_by), h("td", {}, when(r.created_at)),
        h("td", {}, when(r.finished_at)), h("td", { style: "white-space:normal" }, r.reason))),
      "Never rolled out."),
    doc.shadow_trials.length ? [h("h2", {}, "Shadow trials"),
      table("card-shadows", ["Name", "State", "#Devices", "By", "Started", "Stopped"], doc.shadow_trials.map(t => h("tr", {},
        h("td", {}, t.name), h("td", {}, badge(t.state)), h("td", { class: "num" }, t.devices.length),
        h("td", {}, t.created_by), h("td", {}, when(t.created_at)), h("td", {}, when(t.stopped_at)))), "")] : null,
    h("h2", {}, `Devices that ran it (${devices.length}) `, h("span", { class: "muted small" },
      "first and last report naming it" + (devices.length > ROWS ? `; first ${ROWS} shown, the download has all` : ""))),
    table("card-devices", ["Device", "First seen", "Last seen", "Runs it now", "Reports now", "State"],
      devices.slice(0, ROWS).map(d => h("tr", { dataset: { device: d.device_id, now: d.runs_now ? "1" : "0" } },
        h("td", {}, h("a", { href: "#/devices/" + encodeURIComponent(d.device_id) }, d.device_id)),
        h("td", { title: d.exact ? "arrival time" : "from retention's buckets: a bound" }, when(d.first_seen), d.exact ? "" : " ≈"),
        h("td", { title: d.exact ? "arrival time" : "from retention's buckets: a bound" }, when(d.last_seen), d.exact ? "" : " ≈"),
        h("td", {}, d.runs_now ? badge("yes", "running") : "no"),
        h("td", {}, d.model ? `${d.model} ${text(d.version)}` : DASH),
        h("td", {}, d.revoked ? badge("revoked") : text(d.state)))),
      "No device has reported running it."),
    h("h2", {}, `Device events (${doc.device_events.total})`),
    table("card-events", ["Device time", "Device", "Event", "Message"], events.slice(0, ROWS).map(e => h("tr", {},
      h("td", {}, when(e.ts)), h("td", {}, e.device_id), h("td", {}, e.event), h("td", { style: "white-space:normal" }, e.message))),
    "No install or rollback event names it."),
    h("h2", {}, "Audit log"),
    table("card-audit", ["When", "Who", "Action", "Target", "Details"], entries.map(e => h("tr", { dataset: { action: e.action } },
      h("td", {}, when(e.at)), h("td", {}, e.actor), h("td", {}, e.action), h("td", {}, e.target),
      h("td", { style: "white-space:normal" }, Object.entries(e.details)
        .filter(([, v]) => v !== null && !(Array.isArray(v) && !v.length))
        .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(", ")))),
    "No audit entry names it."),
  ].flat(); // the shadow trials' heading and table come as a pair
}

export function mount(root, session, name, version) {
  const { api, store } = session;
  let alive = true;
  let download = null; // the object URL of the last loaded document
  const title = h("div", { class: "title" }, h("h1", {}, `${name} ${version}`));
  const body = h("div", { id: "card" }, h("p", { class: "muted" }, "Loading the model card…"));
  root.dataset.model = name;
  root.dataset.version = version;
  root.append(h("p", { class: "small" }, h("a", { href: "#/models" }, "← Models")), title, body);

  function render(doc) {
    const b = doc.bundle;
    if (download) URL.revokeObjectURL(download);
    download = URL.createObjectURL(new Blob([JSON.stringify(doc, null, 2) + "\n"], { type: "application/json" }));
    title.replaceChildren(h("h1", {}, `${b.name} ${b.version}`),
      h("a", { id: "card-download", href: download, download: `${b.name}-${b.version}-audit.json`,
        title: "The whole audit document, as GET .../audit and `corral model audit` give it" },
      "⤓ Download audit JSON"));
    body.replaceChildren(
      h("p", { class: "muted", id: "card-summary" },
        `created ${when(b.created)} · registered ${when(b.registered_at)} · variants ${b.variants.join(", ") || DASH} · ` +
        `bundle.json SHA-256 `, h("code", { title: b.bundle_sha256 }, short(b.bundle_sha256, 16)),
        ` · ${b.files.length} file(s), ${b.labels.length} classes`),
      h("div", { class: "grid2" }, scores(doc.metrics), lineage(doc)),
      h("div", { id: "card-sections" }, sections(doc)));
    root.dataset.ready = "1";
  }

  async function load() {
    try {
      const doc = await api.get(`/api/v1/models/${encodeURIComponent(name)}/${encodeURIComponent(version)}/audit`);
      if (alive) render(doc);
    } catch (e) {
      if (alive) body.replaceChildren(h("p", { class: "error", id: "card-error" }, e.status === 404
        ? `No model ${name} ${version}: ${e.message}` : "Could not load the model card: " + e.message));
    }
  }

  // Reload when a rollout of this version changes state or stage on the live stream.
  const digest = () => JSON.stringify([...store.rollouts.values()]
    .filter(r => r.model === name && r.version === version).map(r => [r.id, r.state, r.stage]));
  let shown = digest();
  const reload = throttled(load);
  const unsubscribe = store.subscribe(kind => {
    if (kind !== "rollouts") return;
    const now = digest();
    if (now !== shown) {
      shown = now;
      reload();
    }
  });
  load();
  return () => {
    alive = false;
    unsubscribe();
    if (download) URL.revokeObjectURL(download);
  };
}
