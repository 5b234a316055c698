// Alerts: what fires now (critical first), what resolved lately, the silences in
// force and what governance policies did about alerts. Operators acknowledge an
// alert with a note, silence a rule or a subject for some hours, end a silence
// and approve a pending action. The page reloads when the stream's alert counts
// change (one fired, resolved or was acknowledged, an action appeared or moved
// on), and every RELOAD_MS for what the counts do not show (a silence expiring).
"use strict";

import { DASH, ago, badge, h, text, throttled, when } from "./util.js";

const RULES = ["device_offline", "stale_data", "thermal", "fps_low", "accuracy_low", "bias", "drift", "rollout_failed"];
const SEVERITY = { critical: 0, warning: 1 };
const FIRING_ROWS = 300;
const RESOLVED = 50;
const ACTIONS = 50;
const RELOAD_MS = 10000;

/** A subject as a link where it has a page: "device:gate-3" opens the device. */
function subjectLink(subject) {
  const colon = subject.indexOf(":");
  const kind = subject.slice(0, colon);
  const id = subject.slice(colon + 1);
  if (kind === "device") return h("a", { href: "#/devices/" + encodeURIComponent(id) }, id);
  if (kind === "rollout") return h("a", { href: "#/rollouts/" + encodeURIComponent(id) }, "rollout #" + id);
  return text(subject);
}

/** "3 h" until an ISO time. */
function until(iso) {
  return ago(new Date().toISOString(), Date.parse(iso));
}

function acknowledged(a) {
  return a.acknowledged_by
    ? h("span", { class: "acked" }, a.acknowledged_by, h("span", { class: "muted" }, " · " + ago(a.acknowledged_at) + " ago"))
    : DASH;
}

function actionResult(a) {
  const r = a.result || {};
  if (r.error) return h("span", { class: "error" }, r.error);
  if (r.rollout) return h("a", { href: "#/rollouts/" + r.rollout }, `rollout #${r.rollout}`, r.version ? ` (${r.model} ${r.version})` : "");
  if (r.notified) return "notified";
  return Object.keys(r).length ? JSON.stringify(r) : DASH;
}

export function mount(root, session) {
  const { api, store, canOperate, user } = session;
  let alive = true;
  let data = null; // {firing, resolved, silences, actions}
  let loading = false;
  let again = false;
  let ackOpen = null; // the alert whose note form is open: the firing rows wait while it is
  let ackDrawn = null;
  let shown = JSON.stringify(store.alerts);

  const summary = h("span", { class: "muted", id: "alerts-summary" });
  const message = h("span", { id: "alerts-message", class: "small", role: "status" });
  const firing = h("tbody", { id: "alerts-firing" });
  const firingTitle = h("h2", {});
  const resolved = h("tbody", { id: "alerts-resolved" });
  const silences = h("tbody", { id: "alerts-silences" });
  const silencesTitle = h("h2", {});
  const actions = h("tbody", { id: "alerts-actions" });
  const actionsTitle = h("h2", {});

  const form = {
    rule: h("select", { id: "silence-rule" }, h("option", { value: "" }, "any rule"), RULES.map(r => h("option", { value: r }, r))),
    subject: h("input", { id: "silence-subject", type: "text", placeholder: "device:gate-3, or device:gate-* (empty: any)", maxlength: "200" }),
    hours: h("input", { id: "silence-hours", type: "number", min: "0.25", max: "720", step: "0.25", value: "4", required: true }),
    reason: h("input", { id: "silence-reason", type: "text", placeholder: "Reason (camera replaced, road works…)", maxlength: "500", required: true }),
  };
  const silenceForm = h("form", { class: "silence", id: "silence-form", hidden: true, onsubmit: e => { e.preventDefault(); silence(); } },
    h("label", {}, "Rule ", form.rule),
    h("label", {}, "Subject ", form.subject),
    h("label", {}, "Hours ", form.hours),
    h("label", { class: "wide" }, "Reason ", form.reason),
    h("button", { type: "submit", class: "primary", id: "silence-submit" }, "Silence"),
    h("button", { type: "button", onclick: () => { silenceForm.hidden = true; } }, "Cancel"));
  const operatorBar = canOperate
    ? h("div", { class: "actions", id: "alerts-operator" },
      h("button", { type: "button", id: "silence-open", onclick: () => openSilence("", "") }, "Silence…"), message)
    : h("p", { class: "readonly muted", id: "alerts-readonly" },
      `Read only: ${user.name} holds the ${user.role} role; acknowledging, silencing and approving need an operator token.`, message);

  const head = (columns, numeric = []) => h("thead", {}, h("tr", {}, columns.map(c => h("th", { class: numeric.includes(c) ? "num" : "" }, c))));
  root.append(
    h("div", { class: "title" }, h("h1", {}, "Alerts"), summary),
    operatorBar,
    canOperate ? silenceForm : null,
    firingTitle,
    h("table", { class: "alerts" }, head(["Severity", "Rule", "Subject", "Since", "Message", "Acknowledged by", ...(canOperate ? [""] : [])]), firing),
    h("h2", {}, `Resolved (newest ${RESOLVED})`),
    h("table", { class: "alerts" }, head(["Severity", "Rule", "Subject", "Started", "Lasted", "Message", "Acknowledged by"]), resolved),
    silencesTitle,
    h("table", { class: "alerts" }, head(["Rule", "Subject", "Reason", "By", "Since", "Expires", ...(canOperate ? [""] : [])]), silences),
    actionsTitle,
    h("table", { class: "alerts" }, head(["#", "Policy", "Action", "Rule", "Subject", "State", "Created", "Decided by", "Result", ...(canOperate ? [""] : [])], ["#"]), actions),
  );

  function say(words, error) {
    message.textContent = words;
    message.className = "small" + (error ? " error" : "");
  }

  function openSilence(rule, subject) {
    form.rule.value = rule;
    form.subject.value = subject;
    form.reason.value = "";
    silenceForm.hidden = false;
    form.reason.focus();
  }

  function empty(columns, what) {
    return [h("tr", {}, h("td", { colspan: columns, class: "empty" }, what))];
  }

  function firingRow(a) {
    const cells = [
      h("td", {}, badge(a.severity), a.silenced ? [" ", badge("silenced")] : null),
      h("td", {}, a.rule),
      h("td", {}, subjectLink(a.subject)),
      h("td", { title: when(a.started_at) }, ago(a.started_at) + " ago"),
      h("td", { class: "msg" }, a.message),
      h("td", { class: "ack" }, acknowledged(a)),
    ];
    if (canOperate) cells.push(h("td", { class: "buttons" }, ackOpen === a.id ? ackForm(a) : [
      a.acknowledged_by ? null : h("button", { type: "button", dataset: { ack: String(a.id) }, onclick: () => { ackOpen = a.id; render(); } }, "Acknowledge"),
      " ",
      h("button", { type: "button", dataset: { silence: String(a.id) }, onclick: () => openSilence(a.rule, a.subject) }, "Silence…"),
    ]));
    return h("tr", { class: a.severity, dataset: { alert: String(a.id), rule: a.rule, subject: a.subject } }, cells);
  }

  function ackForm(a) {
    const note = h("input", { type: "text", id: "ack-note", placeholder: "Note: what you are doing about it", maxlength: "500",
      onkeydown: e => { if (e.key === "Escape") closeAck(); } });
    requestAnimationFrame(() => note.focus());
    return h("form", { class: "ack-form", onsubmit: e => { e.preventDefault(); acknowledge(a.id, note.value.trim()); } },
      note, h("button", { type: "submit", class: "primary", id: "ack-submit" }, "Acknowledge"),
      h("button", { type: "button", onclick: closeAck }, "Cancel"));
  }

  function closeAck() {
    ackOpen = null;
    render();
  }

  function render() {
    if (!alive || !data) return;
    const open = data.firing.slice().sort((a, b) =>
      (a.silenced - b.silenced) || (SEVERITY[a.severity] ?? 2) - (SEVERITY[b.severity] ?? 2) || b.id - a.id);
    const loud = open.filter(a => !a.silenced);
    const critical = loud.filter(a => a.severity === "critical").length;
    const unacked = loud.filter(a => !a.acknowledged_by).length;
    summary.textContent = loud.length
      ? `${loud.length} firing · ${critical} critical · ${unacked} unacknowledged` + (open.length > loud.length ? ` · ${open.length - loud.length} silenced` : "")
      : "Nothing firing.";
    root.dataset.firing = String(loud.length);
    const columns = canOperate ? 7 : 6;
    firingTitle.textContent = `Firing (${open.length})` + (open.length > FIRING_ROWS ? `: the first ${FIRING_ROWS} shown` : "");
    if (ackOpen !== null && !open.some(a => a.id === ackOpen)) ackOpen = null; // it resolved
    if (ackOpen === null || ackOpen !== ackDrawn) {
      firing.replaceChildren(...(open.length ? open.slice(0, FIRING_ROWS).map(firingRow) : empty(columns, "Nothing is firing.")));
      ackDrawn = ackOpen;
    }

    resolved.replaceChildren(...(data.resolved.length ? data.resolved.map(a => h("tr", { dataset: { alert: String(a.id), rule: a.rule, subject: a.subject } },
      h("td", {}, badge(a.severity)),
      h("td", {}, a.rule),
      h("td", {}, subjectLink(a.subject)),
      h("td", {}, when(a.started_at)),
      h("td", { title: "resolved " + when(a.resolved_at) }, ago(a.started_at, Date.parse(a.resolved_at))),
      h("td", { class: "msg" }, a.message),
      h("td", { class: "ack" }, acknowledged(a)))) : empty(7, "No alert has resolved yet.")));

    silencesTitle.textContent = `Silences (${data.silences.length} active)`;
    silences.replaceChildren(...(data.silences.length ? data.silences.map(s => h("tr", { dataset: { silence: String(s.id) } },
      h("td", {}, s.rule || h("span", { class: "muted" }, "any")),
      h("td", {}, s.subject || h("span", { class: "muted" }, "any")),
      h("td", { class: "msg" }, s.reason),
      h("td", {}, s.created_by),
      h("td", {}, when(s.created_at)),
      h("td", { title: when(s.expires_at) }, "in " + until(s.expires_at)),
      canOperate ? h("td", { class: "buttons" }, h("button", { type: "button", class: "danger", dataset: { end: String(s.id) }, onclick: () => endSilence(s.id) }, "End silence")) : null,
    )) : empty(canOperate ? 7 : 6, "No silence is active.")));

    const pending = data.actions.filter(a => a.state === "pending").length;
    actionsTitle.textContent = `Governance actions (${pending} waiting for approval)`;
    actions.replaceChildren(...(data.actions.length ? data.actions.map(a => h("tr", { dataset: { action: String(a.id), state: a.state } },
      h("td", { class: "num" }, a.id),
      h("td", {}, a.policy),
      h("td", {}, a.action),
      h("td", {}, a.rule),
      h("td", {}, subjectLink(a.subject)),
      h("td", {}, badge(a.state)),
      h("td", {}, when(a.created_at)),
      h("td", {}, text(a.decided_by)),
      h("td", { class: "wrap" }, actionResult(a)),
      canOperate ? h("td", { class: "buttons" }, a.state === "pending"
        ? h("button", { type: "button", class: "primary", dataset: { approve: String(a.id) }, onclick: e => approve(a.id, e.currentTarget) }, "Approve")
        : null) : null,
    )) : empty(canOperate ? 10 : 9, "No policy has acted yet (policies: CORRAL_POLICIES_FILE, see docs/alerts.md).")));
    root.dataset.ready = "1";
  }

  async function load() {
    // One load at a time; a change meanwhile loads once more after it.
    if (loading) { again = true; return; }
    loading = true;
    try {
      const [firingNow, resolvedNow, silencesNow, actionsNow] = await Promise.all([
        api.get("/api/v1/alerts?state=firing&limit=1000"),
        api.get(`/api/v1/alerts?state=resolved&limit=${RESOLVED}`),
        api.get("/api/v1/silences"),
        api.get(`/api/v1/actions?limit=${ACTIONS}`),
      ]);
      if (!alive) return;
      data = { firing: firingNow, resolved: resolvedNow, silences: silencesNow, actions: actionsNow };
      render();
    } catch (e) {
      if (alive) say("Could not load the alerts: " + e.message, true);
    } finally {
      loading = false;
      if (again && alive) { again = false; load(); }
    }
  }

  /** Run one operator call; say how it went ("Alert 4 acknowledged.", or why not). */
  async function act(doing, done, call) {
    say(doing + "…");
    try {
      await call();
      say(done + ".");
    } catch (e) {
      say(`${doing} was refused (${e.status || "network"}): ${e.message}`, true);
    }
    load();
  }

  function acknowledge(id, note) {
    for (const b of firing.querySelectorAll("button")) b.disabled = true;
    act(`Acknowledging alert ${id}`, `Alert ${id} acknowledged`, async () => {
      try {
        await api.post(`/api/v1/alerts/${id}/ack`, { note });
      } finally {
        ackOpen = null;
      }
    });
  }

  function silence() {
    const rule = form.rule.value || null;
    const subject = form.subject.value.trim() || null;
    if (!rule && !subject) {
      say("A silence needs a rule, a subject or both.", true);
      return;
    }
    const hours = Number(form.hours.value);
    act("Silencing", `Silenced ${[rule, subject].filter(Boolean).join(" on ")} for ${hours} h`, async () => {
      await api.post("/api/v1/silences", { rule, subject, duration_s: hours * 3600, reason: form.reason.value.trim() });
      silenceForm.hidden = true;
    });
  }

  function endSilence(id) {
    act(`Ending silence ${id}`, `Silence ${id} ended`, () => api.delete(`/api/v1/silences/${id}`));
  }

  function approve(id, button) {
    button.disabled = true;
    act(`Approving action ${id}`, `Action ${id} approved`, () => api.post(`/api/v1/actions/${id}/approve`));
  }

  const reload = throttled(load);
  const unsubscribe = store.subscribe(kind => {
    if (kind !== "alerts") return;
    const now = JSON.stringify(store.alerts);
    if (now !== shown) {
      shown = now;
      reload();
    }
  });
  const clock = setInterval(() => { if (!loading) load(); }, RELOAD_MS);
  load();
  return () => {
    alive = false;
    unsubscribe();
    clearInterval(clock);
  };
}
