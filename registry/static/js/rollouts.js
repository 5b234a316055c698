// Rollouts: the list (from the stream's digests) and one rollout's page: stages
// with their gate numbers, devices with their progress, the decision log, and
// approve / pause / resume / abort for operators.
"use strict";

import { DASH, ago, badge, fixed, h, text, throttled, when } from "./util.js";

const ACTIVE = ["running", "waiting_approval", "paused", "rolling_back"];
const DEVICE_ROWS = 300;

function progressBar(total, good, bad) {
  const share = n => (total ? (100 * n) / total : 0) + "%";
  return h("div", { class: "bar", title: `${good} converged, ${bad} failed of ${total}` },
    h("span", { class: "ok", style: `width:${share(good)}` }),
    h("span", { class: "bad", style: `width:${share(bad)}` }));
}

function stageLabel(r) {
  const n = r.stages.length;
  if (!n) return DASH;
  return `${Math.min(r.stage + 1, n)} of ${n}: ${r.stages[Math.min(r.stage, n - 1)]}`;
}

const FAILED = ["failed", "timeout", "stuck"];

export const list = {
  mount(root, session) {
    const { store } = session;
    const body = h("div", { id: "rollouts" }, h("p", { class: "muted" }, "Loading rollouts…"));
    root.append(h("div", { class: "title" }, h("h1", {}, "Rollouts"),
      h("span", { class: "muted small" }, "Start one with `corral rollout start` or `corral rollout apply plan.toml`.")), body);

    function table(rows) {
      return h("table", {}, h("thead", {}, h("tr", {},
        ["#", "Model", "Env", "Mode", "State", "Stage", "Devices", "Progress", "Started", "By", "Updated"]
          .map((c, i) => h("th", { class: i === 6 ? "num" : "" }, c)))),
      h("tbody", {}, rows.map(r => {
        const converged = (r.progress.converged || 0);
        const failed = FAILED.reduce((n, s) => n + (r.progress[s] || 0), 0);
        return h("tr", { class: "link", dataset: { rollout: String(r.id) }, onclick: () => { location.hash = "#/rollouts/" + r.id; } },
          h("td", {}, h("a", { href: "#/rollouts/" + r.id }, "#" + r.id)),
          h("td", {}, `${r.model} ${r.version}`),
          h("td", {}, r.environment),
          h("td", {}, r.mode),
          h("td", {}, badge(r.state.replace("_", " "), r.state)),
          h("td", {}, stageLabel(r)),
          h("td", { class: "num" }, r.devices),
          h("td", { style: "min-width:9rem" }, progressBar(r.devices, converged, failed)),
          h("td", {}, when(r.created_at)),
          h("td", {}, r.created_by),
          h("td", { class: "muted" }, r.updated_at ? ago(r.updated_at) + " ago" : DASH));
      })));
    }

    let alive = true;

    function render() {
      if (!alive || !store.loaded.rollouts) return;
      const all = [...store.rollouts.values()].sort((a, b) => b.id - a.id);
      const active = all.filter(r => ACTIVE.includes(r.state));
      const done = all.filter(r => !ACTIVE.includes(r.state));
      body.replaceChildren(
        h("h2", {}, `Active (${active.length})`),
        active.length ? table(active) : h("p", { class: "muted" }, "No rollout is running."),
        h("h2", {}, `Finished (${done.length})`),
        done.length ? table(done) : h("p", { class: "muted" }, "None yet."),
      );
      root.dataset.ready = "1";
    }

    const update = throttled(render);
    const unsubscribe = store.subscribe(kind => { if (kind === "rollouts") update(); });
    const clock = setInterval(update, 5000);
    render();
    return () => {
      alive = false;
      unsubscribe();
      clearInterval(clock);
    };
  },
};

function gateValue(g) {
  if (g.value === null || g.value === undefined) return DASH;
  return fixed(g.value, Math.abs(g.value) < 10 ? 3 : 1);
}

function stageCard(stage, active) {
  const record = stage.gates;
  const waiting = record && record.waiting_for && record.waiting_for.length
    ? h("p", { class: "small muted" }, "Waiting for: " + record.waiting_for.join("; ")) : null;
  return h("div", { class: "stage " + stage.status + (active ? " current" : ""), dataset: { stage: String(stage.index), status: stage.status } },
    h("h3", {}, h("span", {}, `${stage.index + 1}. ${stage.name}`), badge(stage.status)),
    h("div", { class: "small muted" }, `size ${stage.size} · ${stage.devices} device(s) · ${stage.converged} converged · ${stage.failed} failed`),
    progressBar(stage.devices, stage.converged, stage.failed),
    record ? h("div", { class: "small" }, "Decision: ", h("strong", {}, text(record.decision)),
      record.at ? h("span", { class: "muted" }, " · " + when(record.at)) : null) : h("div", { class: "small muted" }, "Gates not evaluated yet."),
    waiting,
    record && record.results && record.results.length ? h("table", { class: "gates" },
      h("thead", {}, h("tr", {}, h("th", {}, "Gate"), h("th", {}, "Result"), h("th", { class: "num" }, "Value"), h("th", { class: "num" }, "Limit"))),
      h("tbody", {}, record.results.map(g => h("tr", { title: g.detail + (g.numbers ? "\n" + JSON.stringify(g.numbers) : ""), dataset: { gate: g.name } },
        h("td", {}, g.name), h("td", {}, badge(g.status)),
        h("td", { class: "num" }, gateValue(g)),
        h("td", { class: "num" }, g.threshold === null || g.threshold === undefined ? DASH : fixed(g.threshold, 3)))))) : null,
  );
}

export const detail = {
  mount(root, session, rolloutId) {
    const { api, store, canOperate, user } = session;
    const id = Number(rolloutId);
    let alive = true;
    let rollout = null;
    let shown = null; // the digest the page last loaded for
    let progressFilter = "all";
    let armedAbort = null;

    const stateEl = h("span", { id: "rollout-state" });
    const heading = h("div", { class: "title" }, h("h1", {}, `Rollout #${id}`), stateEl);
    const summary = h("p", { id: "rollout-summary", class: "muted" });
    const reason = h("p", { id: "rollout-reason" });
    const message = h("span", { id: "rollout-message", class: "small", role: "status" });
    const note = h("input", { id: "rollout-note", type: "text", placeholder: "Note for the decision log (why)", maxlength: "500" });
    const buttons = {
      approve: h("button", { type: "button", class: "primary", id: "rollout-approve", onclick: () => act("approve") }, "Approve"),
      pause: h("button", { type: "button", id: "rollout-pause", onclick: () => act("pause") }, "Pause"),
      resume: h("button", { type: "button", id: "rollout-resume", onclick: () => act("resume") }, "Resume"),
      abort: h("button", { type: "button", class: "danger", id: "rollout-abort", onclick: () => abortClicked() }, "Abort"),
    };
    const actions = canOperate
      ? h("div", { class: "actions", id: "rollout-actions" }, note, Object.values(buttons), message)
      : h("p", { class: "readonly muted", id: "rollout-readonly" },
        `Read only: ${user.name} holds the ${user.role} role; approve, pause, resume and abort need an operator token.`, message);
    const stages = h("div", { class: "stages", id: "rollout-stages" });
    const devices = h("tbody", { id: "rollout-devices" });
    const filter = h("select", { onchange: e => { progressFilter = e.target.value; renderDevices(); } });
    const deviceNote = h("span", { class: "muted small" });
    const log = h("tbody", { id: "rollout-log" });
    root.append(
      h("p", { class: "small" }, h("a", { href: "#/rollouts" }, "← Rollouts")),
      heading, summary, reason, actions,
      h("h2", {}, "Stages"), stages,
      h("h2", {}, "Devices ", filter, " ", deviceNote),
      h("table", {}, h("thead", {}, h("tr", {}, ["Device", "Stage", "Progress", "Reports", "Desired", "Was", "State", "Reason"].map(c => h("th", {}, c)))), devices),
      h("h2", {}, "Decision log"),
      h("table", { class: "log" }, h("thead", {}, h("tr", {}, ["When", "Who", "What", "Message"].map(c => h("th", {}, c)))), log),
    );

    function enable() {
      if (!rollout || !canOperate) return;
      const s = rollout.state;
      buttons.approve.disabled = !(s === "waiting_approval" || (s === "succeeded" && rollout.environment === "staging"));
      buttons.approve.textContent = s === "succeeded" ? "Sign off staging" : "Approve";
      buttons.pause.disabled = s !== "running";
      buttons.resume.disabled = s !== "paused";
      buttons.abort.disabled = !ACTIVE.includes(s) || s === "rolling_back";
    }

    function renderDevices() {
      if (!rollout) return;
      const counts = {};
      for (const d of rollout.devices) counts[d.progress] = (counts[d.progress] || 0) + 1;
      filter.replaceChildren(h("option", { value: "all" }, `all (${rollout.devices.length})`),
        ...Object.entries(counts).map(([p, n]) => h("option", { value: p, selected: p === progressFilter }, `${p} (${n})`)));
      const rows = rollout.devices.filter(d => progressFilter === "all" || d.progress === progressFilter);
      deviceNote.textContent = rows.length > DEVICE_ROWS ? `first ${DEVICE_ROWS} of ${rows.length} shown` : "";
      devices.replaceChildren(...rows.slice(0, DEVICE_ROWS).map(d => h("tr", { dataset: { device: d.device_id, progress: d.progress } },
        h("td", {}, h("a", { href: "#/devices/" + encodeURIComponent(d.device_id) }, d.device_id)),
        h("td", {}, rollout.stages[d.stage] ? rollout.stages[d.stage].name : d.stage),
        h("td", {}, badge(d.progress)),
        h("td", {}, text(d.reported_version)),
        h("td", {}, text(d.desired_version)),
        h("td", {}, text(d.previous_version)),
        h("td", {}, text(d.state)),
        h("td", { style: "white-space:normal" }, d.reason || ""))));
    }

    function render() {
      const r = rollout;
      const plan = r.plan || {};
      stateEl.replaceChildren(badge(r.state.replace("_", " "), r.state));
      root.dataset.state = r.state;
      root.dataset.stage = String(r.stage);
      summary.textContent = `${r.model} ${r.version} · ${r.environment} · ${plan.mode || "continuous"} · ` +
        `started ${when(r.created_at)} by ${r.created_by} · ${r.devices.length} device(s)`;
      reason.textContent = r.reason || "";
      reason.className = ["failed", "aborted"].includes(r.state) ? "error" : "";
      stages.replaceChildren(...r.stages.map(s => stageCard(s, s.index === r.stage)));
      renderDevices();
      log.replaceChildren(...[...r.log].reverse().map(e => h("tr", { dataset: { action: e.action } },
        h("td", {}, when(e.at)), h("td", {}, e.actor), h("td", {}, e.action), h("td", { class: "msg" }, e.message))));
      enable();
      root.dataset.ready = "1";
    }

    async function load() {
      try {
        const answer = await api.get(`/api/v1/rollouts/${id}`);
        if (!alive) return;
        rollout = answer;
        render();
      } catch (e) {
        if (alive) summary.textContent = e.status === 404 ? `No rollout #${id}.` : "Could not load the rollout: " + e.message;
      }
    }

    async function act(action) {
      for (const b of Object.values(buttons)) b.disabled = true;
      message.textContent = "…";
      try {
        rollout = await api.post(`/api/v1/rollouts/${id}/${action}`, { note: note.value.trim() });
        note.value = "";
        message.textContent = `${action} recorded`;
        message.className = "small";
        if (alive) render();
      } catch (e) {
        message.textContent = `${action} refused (${e.status || "network"}): ${e.message}`;
        message.className = "small error";
        enable();
      }
    }

    function abortClicked() {
      // Two clicks: abort sends every moved device back, so it must not be a slip.
      if (armedAbort) {
        clearTimeout(armedAbort);
        armedAbort = null;
        buttons.abort.textContent = "Abort";
        act("abort");
        return;
      }
      buttons.abort.textContent = "Click again to abort";
      armedAbort = setTimeout(() => {
        armedAbort = null;
        buttons.abort.textContent = "Abort";
      }, 5000);
    }

    const reload = throttled(load);
    const unsubscribe = store.subscribe(kind => {
      if (kind !== "rollouts") return;
      const digest = JSON.stringify(store.rollouts.get(id) || null);
      if (digest !== shown) {
        shown = digest;
        reload();
      }
    });
    shown = JSON.stringify(store.rollouts.get(id) || null);
    load();
    return () => {
      alive = false;
      unsubscribe();
      if (armedAbort) clearTimeout(armedAbort);
    };
  },
};
