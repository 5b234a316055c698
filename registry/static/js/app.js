// The console's shell: sign-in, the live stream, and routing by the URL fragment.
//
//   #/                 fleet overview        #/models            model versions
//   #/devices/ID       one device            #/models/NAME/VER   one version's model card
//                                            #/rollouts          every rollout
//   #/alerts           alerts, silences,     #/rollouts/ID       one rollout
//                      governance actions
//
// The navigation bar counts the firing alerts, from the stream's alert counts.
//
// The token comes from the sign-in form (or once from #token=..., the address
// `corral registry serve` prints) and is kept in sessionStorage: this tab only.
"use strict";

import { Api, ApiError } from "./util.js";
import { Live, Store } from "./live.js";
import * as fleet from "./fleet.js";
import * as device from "./device.js";
import * as models from "./models.js";
import * as modelcard from "./modelcard.js";
import * as rollouts from "./rollouts.js";
import * as alerts from "./alerts.js";

const KEY = "corral-token";
const $ = id => document.getElementById(id);

const routes = [
  [/^#?\/?$/, fleet, "fleet"],
  [/^#\/devices\/([^/]+)$/, device, "fleet"],
  [/^#\/models$/, models, "models"],
  [/^#\/models\/([^/]+)\/([^/]+)$/, modelcard, "models"],
  [/^#\/rollouts$/, rollouts.list, "rollouts"],
  [/^#\/rollouts\/(\d+)$/, rollouts.detail, "rollouts"],
  [/^#\/alerts$/, alerts, "alerts"],
];

let session = null; // {api, store, live, user, canOperate}
let unmount = null;

function takeTokenFromAddress() {
  const fragment = new URLSearchParams(location.hash.startsWith("#token=") ? location.hash.slice(1) : "");
  const query = new URLSearchParams(location.search);
  const given = fragment.get("token") || query.get("token");
  if (!given) return;
  sessionStorage.setItem(KEY, given);
  query.delete("token");
  history.replaceState(null, "", location.pathname + (query.toString() ? "?" + query : "") + "#/");
}

/** The firing alerts (silenced ones left out) on the navigation bar; red when one is critical. */
function showAlertCount(digest) {
  const n = digest ? digest.firing : 0;
  const count = $("alert-count");
  count.textContent = String(n);
  count.hidden = !n;
  count.className = "count" + (digest && digest.critical ? " critical" : "");
  $("nav-alerts").dataset.firing = String(n);
  $("nav-alerts").title = digest
    ? `${n} firing (${digest.critical} critical, ${digest.unacknowledged} unacknowledged), ` +
      `${digest.silenced} silenced; ${digest.pending_actions} action(s) waiting for approval`
    : "";
}

function showLogin(message) {
  if (unmount) unmount();
  unmount = null;
  if (session) session.live.stop();
  session = null;
  document.body.dataset.role = "";
  showAlertCount(null);
  $("page").hidden = true;
  $("page").replaceChildren();
  for (const id of ["nav", "live", "user", "signout"]) $(id).hidden = true;
  $("login").hidden = false;
  const error = $("login-error");
  error.textContent = message || "";
  error.hidden = !message;
  $("token").value = "";
  $("token").focus();
}

async function signIn(token) {
  const api = new Api(token);
  const user = await api.get("/api/v1/console/me");
  sessionStorage.setItem(KEY, token);
  const store = new Store();
  const live = new Live(api, store, {
    onStatus(state, label) {
      $("live").className = "live " + state;
      $("live-text").textContent = label;
    },
    onDenied(detail) {
      sessionStorage.removeItem(KEY);
      showLogin("Signed out: " + detail);
    },
  });
  session = { api, store, live, user, canOperate: user.role === "operator" || user.role === "admin" };
  showAlertCount(null);
  store.subscribe(kind => { if (kind === "alerts") showAlertCount(store.alerts); });
  document.body.dataset.role = user.role;
  $("login").hidden = true;
  $("page").hidden = false;
  for (const id of ["nav", "live", "user", "signout"]) $(id).hidden = false;
  $("user").replaceChildren(user.name, Object.assign(document.createElement("span"), {
    className: "role", textContent: user.role,
  }));
  live.start();
  route();
}

function route() {
  if (!session) return;
  const hash = location.hash || "#/";
  for (const [pattern, page, nav] of routes) {
    const match = hash.match(pattern);
    if (!match) continue;
    if (unmount) unmount();
    for (const a of document.querySelectorAll("[data-nav]")) {
      a.classList.toggle("active", a.dataset.nav === nav);
    }
    const root = $("page");
    root.replaceChildren();
    for (const key of Object.keys(root.dataset)) delete root.dataset[key];
    window.scrollTo(0, 0);
    unmount = page.mount(root, session, ...match.slice(1).map(decodeURIComponent)) || null;
    return;
  }
  location.hash = "#/";
}

$("login-form").addEventListener("submit", async event => {
  event.preventDefault();
  const token = $("token").value.trim();
  $("login-error").hidden = true;
  $("login-submit").disabled = true;
  try {
    await signIn(token);
  } catch (e) {
    showLogin(e instanceof ApiError && e.status === 403
      ? "That token was refused: " + e.message
      : String(e.message || e));
  } finally {
    $("login-submit").disabled = false;
  }
});

$("signout").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  showLogin("");
});

function start() {
  takeTokenFromAddress();
  const saved = sessionStorage.getItem(KEY);
  if (!saved) {
    showLogin("");
    return;
  }
  signIn(saved).catch(e => {
    if (e instanceof ApiError && e.status === 403) sessionStorage.removeItem(KEY);
    showLogin(e instanceof ApiError && e.status === 403
      ? "Your token was refused: " + e.message
      : String(e.message || e));
  });
}

window.addEventListener("hashchange", () => {
  // A #token= address pasted into a tab that is already open signs in with it.
  if (location.hash.startsWith("#token=")) {
    if (session) session.live.stop();
    session = null;
    start();
  } else {
    route();
  }
});

start();
