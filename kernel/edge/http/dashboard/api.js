// The daemon's public API, as any client calls it: Connect unary JSON over POST and the
// WebSocket streams, with the bearer token from sessionStorage (header, or subprotocol).

export const FOUNDRY = "foundry.Foundry";
export const RUNTIME = "fleetforge.runtime.v1.RuntimeService";
export const ANALYTICS = "foundry.analytics.v1.Analytics";

const TOKEN_KEY = "foundry.token";

export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY) || "",
  set: (value) => (value ? sessionStorage.setItem(TOKEN_KEY, value) : sessionStorage.removeItem(TOKEN_KEY)),
};

export class RpcError extends Error {
  constructor(code, message) {
    super(`${code}: ${message}`);
    this.code = code;
    this.detail = message;
  }
}

export async function call(service, method, request = {}) {
  const headers = { "Content-Type": "application/json" };
  const bearer = token.get();
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  let reply;
  try {
    reply = await fetch(`/${service}/${method}`, { method: "POST", headers, body: JSON.stringify(request) });
  } catch (error) {
    throw new RpcError("unavailable", `the daemon did not answer (${error.message})`);
  }
  const text = await reply.text();
  let document = {};
  try {
    document = text ? JSON.parse(text) : {};
  } catch {
    document = { message: text };
  }
  if (!reply.ok) throw new RpcError(document.code || `http_${reply.status}`, document.message || reply.statusText);
  return document;
}

// A subprotocol is an HTTP token: a bearer token with other characters (a base64 one's "/", "+"
// or "=") goes as base64url of its UTF-8 bytes, "bearer64.…" (the browser refuses it otherwise).
const TOKEN_CHARS = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

function bearerProtocol(bearer) {
  if (TOKEN_CHARS.test(bearer)) return `bearer.${bearer}`;
  let binary = "";
  for (const byte of new TextEncoder().encode(bearer)) binary += String.fromCharCode(byte);
  return "bearer64." + btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

// A WebSocket stream of JSON messages; onClose gets (code, reason), onOpen nothing. Returns a
// close function.
export function stream(path, onMessage, onClose = () => {}, onOpen = () => {}) {
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const bearer = token.get();
  const socket = new WebSocket(scheme + location.host + path, bearer ? ["foundry", bearerProtocol(bearer)] : ["foundry"]);
  let closedByUs = false;
  socket.onopen = () => onOpen();
  socket.onmessage = (message) => onMessage(JSON.parse(message.data));
  socket.onclose = (event) => { if (!closedByUs) onClose(event.code, event.reason); };
  return () => { closedByUs = true; socket.close(1000); };
}

const RETRY_FIRST_MS = 1000, RETRY_LAST_MS = 10000;
const REFUSED = 1008; // the daemon's close for a bad request, an unknown run, a wrong token

// A stream that opens again after a close nobody asked for (the daemon stopped or restarted,
// the network dropped): after 1 s, then twice as long each time, up to 10 s. onLost(code,
// reason, seconds) says it is away, onBack() that it is open again after that; onEnd(code,
// reason) ends it: a normal close (1000: a run's tap after its last event) or a refusal.
export function liveStream(path, onMessage, { onLost = () => {}, onBack = () => {}, onEnd = () => {} } = {}) {
  let close = () => {}, timer = 0, delay = RETRY_FIRST_MS, away = false, stopped = false;
  const open = () => {
    close = stream(path, onMessage, (code, reason) => {
      if (stopped) return;
      if (code === 1000 || code === REFUSED) { onEnd(code, reason); return; }
      away = true;
      onLost(code, reason, delay / 1000);
      timer = setTimeout(open, delay);
      delay = Math.min(delay * 2, RETRY_LAST_MS);
    }, () => {
      if (!away) return;
      away = false;
      delay = RETRY_FIRST_MS;
      onBack();
    });
  };
  open();
  return () => { stopped = true; clearTimeout(timer); close(); };
}
