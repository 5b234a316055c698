// The live stream (GET /api/v1/console/stream): server-sent events read with fetch,
// because EventSource cannot send the Authorization header. The store keeps the
// fleet, the rollouts and the alert counts as the stream tells them; pages
// subscribe to changes.
"use strict";

/** Parse a text/event-stream body into {event, data} objects as chunks arrive. */
export class SseParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buffer = "";
  }

  push(chunk) {
    this.buffer += chunk;
    let end;
    while ((end = this.buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = this.buffer.slice(0, end);
      this.buffer = this.buffer.slice(end).replace(/^\r?\n\r?\n/, "");
      let event = "message";
      const data = [];
      for (const line of block.split(/\r?\n/)) {
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") event = value;
        else if (field === "data") data.push(value);
      }
      if (data.length) this.onEvent({ event, data: JSON.parse(data.join("\n")) });
    }
  }
}

/** The fleet, the rollouts and the alert counts, kept current by the stream. */
export class Store {
  constructor() {
    this.devices = new Map();
    this.rollouts = new Map();
    this.alerts = null; // {firing, critical, unacknowledged, silenced, latest, pending_actions, ...}
    this.loaded = { devices: false, rollouts: false, alerts: false };
    this.listeners = new Set();
  }

  /** fn(kind, changedIds) on every change; returns the unsubscribe function. */
  subscribe(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  apply(kind, body) {
    const map = kind === "devices" ? this.devices : this.rollouts;
    const key = kind === "devices" ? "device_id" : "id";
    if (body.full) map.clear();
    const changed = [];
    for (const item of body.changed) {
      map.set(item[key], item);
      changed.push(item[key]);
    }
    for (const id of body.removed) map.delete(id);
    this.loaded[kind] = true;
    for (const fn of this.listeners) fn(kind, changed.concat(body.removed), body.full);
  }

  /** The stream sends the alert counts whole, first and whenever they change. */
  setAlerts(digest) {
    this.alerts = digest;
    this.loaded.alerts = true;
    for (const fn of this.listeners) fn("alerts", [], true);
  }
}

/** Keeps one stream open, reconnecting when the server ends it or the network drops. */
export class Live {
  constructor(api, store, { onStatus, onDenied }) {
    this.api = api;
    this.store = store;
    this.onStatus = onStatus;
    this.onDenied = onDenied;
    this.running = false;
    this.controller = null;
    this.failures = 0;
    this.lastTick = null;
  }

  start() {
    if (this.running) return;
    this.running = true;
    this.loop();
  }

  stop() {
    this.running = false;
    if (this.controller) this.controller.abort();
  }

  async loop() {
    while (this.running) {
      const ended = await this.once();
      if (!this.running) return;
      if (ended === "denied") return;
      // A stream that ended on purpose comes back at once; a broken one backs off.
      const wait = ended === "bye" ? 100 : Math.min(10000, 1000 * 2 ** Math.min(this.failures, 4));
      if (ended !== "bye") this.onStatus("off", "reconnecting…");
      await new Promise(resolve => setTimeout(resolve, wait));
    }
  }

  async once() {
    this.controller = new AbortController();
    let ended = "error";
    try {
      const response = await fetch("/api/v1/console/stream", {
        headers: this.api.headers({ Accept: "text/event-stream" }),
        signal: this.controller.signal,
        cache: "no-store",
      });
      if (response.status === 403) {
        const body = await response.json().catch(() => ({}));
        this.onDenied(body.detail || "the registry refused the token");
        return "denied";
      }
      if (!response.ok || !response.body) throw new Error("stream answered " + response.status);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      const parser = new SseParser(({ event, data }) => {
        if (event === "devices" || event === "rollouts") this.store.apply(event, data);
        else if (event === "alerts") this.store.setAlerts(data);
        else if (event === "tick") {
          this.failures = 0;
          this.lastTick = data.at;
          this.onStatus("on", "live · " + new Date(data.at).toLocaleTimeString());
        } else if (event === "bye") ended = "bye";
        else if (event === "denied") {
          ended = "denied";
          this.onDenied(data.detail);
        }
      });
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        parser.push(value);
      }
    } catch (e) {
      if (e.name === "AbortError") return "stopped";
    }
    if (ended === "error") this.failures += 1;
    return ended;
  }
}
