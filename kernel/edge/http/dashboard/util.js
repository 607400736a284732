// Small helpers: an element builder, formatting, status labels, per-frame batching.

export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) element.addEventListener(key.slice(2), value);
    else if (key === "class") element.className = value;
    else if (key === "dataset") Object.assign(element.dataset, value);
    else element.setAttribute(key, value === true ? "" : value);
  }
  append(element, children);
  return element;
}

export function append(element, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : shown(String(child)));
  }
  return element;
}

// Text as shown: a direction override, embedding or isolate in recorded data (U+202A-202E,
// U+2066-2069) is written as its escape, so it cannot turn around the text after it (a change
// id ending in U+202E showed its revision and time reversed).
const DIRECTION_CONTROLS = /[\u202a-\u202e\u2066-\u2069]/g;
export function shown(text) {
  return text.replace(DIRECTION_CONTROLS, (c) => `\\u${c.charCodeAt(0).toString(16)}`);
}

const SVG_NS = "http://www.w3.org/2000/svg";
export function s(tag, attrs = {}, ...children) {
  const element = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null) continue;
    if (key.startsWith("on")) element.addEventListener(key.slice(2), value);
    else element.setAttribute(key, value);
  }
  for (const child of children.flat()) if (child != null) element.append(child instanceof Node ? child : shown(String(child)));
  return element;
}

export function time(value) {
  if (!value) return "";
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  return date.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

export function duration(ms) {
  if (ms === undefined || ms === null || Number.isNaN(ms)) return "";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  const minutes = Math.floor(ms / 60000);
  return `${minutes} min ${Math.round((ms % 60000) / 1000)} s`;
}

export function between(start, end) {
  if (!start) return "";
  const a = new Date(start).getTime();
  const b = end ? new Date(end).getTime() : Date.now();
  return duration(b - a);
}

// A status as a coloured badge that also says it in words (colour is never the only signal).
const TONES = {
  completed: "ok", succeeded: "ok", ok: "ok", passed: "ok", allow: "ok", reused: "ok", signed: "ok",
  running: "live", leased: "live", pending: "wait", waiting: "wait", retrying: "warn", paused: "warn",
  paused_at_step: "warn", follow_up: "warn", skipped: "muted", canceled: "muted", throttled: "warn",
  failed: "bad", error: "bad", deny: "bad", drift: "bad", unsigned: "bad",
};
export function badge(status) {
  const label = String(status || "unknown").toLowerCase().replace(/^(run_status_|change_decision_effect_)/, "");
  return h("span", { class: `badge tone-${TONES[label] || "muted"}`, "data-status": label }, label.replaceAll("_", " "));
}

export function json(value) {
  if (value === undefined) return "";
  return JSON.stringify(value, null, 2);
}

export function pre(value, cls = "") {
  return h("pre", { class: `code ${cls}` }, typeof value === "string" ? value : json(value));
}

// Collects items and hands them to `apply` once per animation frame, so a burst of stream
// messages costs one DOM update per frame. Keeps figures the performance test reads.
export function frameBatcher(apply, metrics = {}) {
  let queue = [];
  let oldest = 0;
  let scheduled = false;
  Object.assign(metrics, { received: 0, applied: 0, flushes: 0, maxQueueAgeMs: 0, maxFlushMs: 0 });
  const flush = () => {
    scheduled = false;
    const items = queue;
    queue = [];
    const started = performance.now();
    metrics.maxQueueAgeMs = Math.max(metrics.maxQueueAgeMs, started - oldest);
    apply(items);
    metrics.maxFlushMs = Math.max(metrics.maxFlushMs, performance.now() - started);
    metrics.applied += items.length;
    metrics.flushes += 1;
  };
  return (item) => {
    if (!queue.length) oldest = performance.now();
    queue.push(item);
    metrics.received += 1;
    if (!scheduled) {
      scheduled = true;
      requestAnimationFrame(flush);
    }
  };
}

export function errorBox(error) {
  return h("div", { class: "error-box", role: "alert" }, error.message || String(error));
}

// rows: <tr> elements, or one <tbody> the caller keeps to refill.
export function table(headers, rows, attrs = {}) {
  const body = rows.length === 1 && rows[0].tagName === "TBODY" ? rows[0] : h("tbody", {}, rows);
  return h("table", { class: "grid", ...attrs },
    h("thead", {}, h("tr", {}, headers.map((name) => h("th", {}, name)))), body);
}
