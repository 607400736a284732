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

// A WebSocket stream of JSON messages; onClose gets (code, reason). Returns a close function.
export function stream(path, onMessage, onClose = () => {}) {
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const bearer = token.get();
  const socket = new WebSocket(scheme + location.host + path, bearer ? ["foundry", bearerProtocol(bearer)] : ["foundry"]);
  let closedByUs = false;
  socket.onmessage = (message) => onMessage(JSON.parse(message.data));
  socket.onclose = (event) => { if (!closedByUs) onClose(event.code, event.reason); };
  return () => { closedByUs = true; socket.close(1000); };
}
