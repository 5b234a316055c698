// Small helpers shared by the pages: DOM building, formatting, the API client.
"use strict";

/** Build an element: h("td", {class: "num"}, "3.5"). Strings become text, never HTML. */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export const DASH = "–";

export function fixed(v, digits) {
  return v === null || v === undefined || Number.isNaN(v) ? DASH : Number(v).toFixed(digits);
}

export function percent(v, digits = 1) {
  return v === null || v === undefined ? DASH : (100 * v).toFixed(digits) + " %";
}

export function text(v) {
  return v === null || v === undefined || v === "" ? DASH : String(v);
}

/** "4 s", "3 min", "2 h", or a date: how long ago an ISO time was. */
export function ago(iso, now = Date.now()) {
  if (!iso) return "never";
  const s = Math.max(0, (now - Date.parse(iso)) / 1000);
  if (s < 60) return Math.floor(s) + " s";
  if (s < 3600) return Math.floor(s / 60) + " min";
  if (s < 86400) return Math.floor(s / 3600) + " h";
  return Math.floor(s / 86400) + " d";
}

export function when(iso) {
  return iso ? new Date(iso).toLocaleString() : DASH;
}

/** Seconds after which an online device whose data stopped is called stale. */
export const STALE_S = 120;

/** online, stale, offline, never (no data yet) or revoked. */
export function deviceStatus(d, now = Date.now()) {
  if (d.revoked_at) return "revoked";
  if (!d.last_seen) return "never";
  if (d.state === "offline") return "offline";
  return (now - Date.parse(d.last_seen)) / 1000 > STALE_S ? "stale" : "online";
}

/** Whether a device has been told to run another version than it reports. */
export function updating(d) {
  return Boolean(d.desired_version) &&
    (d.desired_version !== d.version || d.desired_model !== d.model);
}

export function badge(value, cls) {
  return h("span", { class: "badge " + (cls || String(value).replace(/\s+/g, "_")) }, value);
}

/** An HTTP error from the registry, with its status and the registry's message. */
export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

/** The registry's JSON API with the signed-in token. */
export class Api {
  constructor(token) {
    this.token = token;
  }

  headers(extra) {
    return { Authorization: "Bearer " + this.token, ...extra };
  }

  async request(method, path, body, signal) {
    let response;
    try {
      response = await fetch(path, {
        method,
        signal,
        headers: this.headers(body === undefined ? {} : { "Content-Type": "application/json" }),
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      if (e.name === "AbortError") throw e;
      throw new ApiError(0, "cannot reach the registry: " + e.message);
    }
    if (!response.ok) {
      const answer = await response.json().catch(() => ({}));
      throw new ApiError(response.status, answer.detail || response.statusText);
    }
    return response.status === 204 ? null : response.json();
  }

  get(path, signal) {
    return this.request("GET", path, undefined, signal);
  }

  post(path, body) {
    return this.request("POST", path, body);
  }

  delete(path) {
    return this.request("DELETE", path);
  }
}

/** Run fn at most once per animation frame, however often it is asked for. */
export function throttled(fn) {
  let queued = false;
  return () => {
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => {
      queued = false;
      fn();
    });
  };
}
