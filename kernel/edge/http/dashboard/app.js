// The dashboard's shell: hash routing, the token field, a notice line. Each page module exports
// mount(root, ...params) and returns a function that stops its streams and timers.

import { token } from "./api.js";
import { shown } from "./util.js";
import * as workflows from "./workflows.js";
import * as runs from "./runs.js";
import * as run from "./run.js";
import * as governance from "./governance.js";
import * as sql from "./sql.js";

const ROUTES = [
  [/^#\/workflows\/([\w-]+)$/, "workflows", workflows.mountWorkflow],
  [/^#\/workflows\/?$/, "workflows", workflows.mountList],
  [/^#\/runs\/([\w-]+)$/, "runs", run.mount],
  [/^#\/runs\/?$/, "runs", runs.mount],
  [/^#\/governance\/?$/, "governance", governance.mount],
  [/^#\/sql\/?$/, "sql", sql.mount],
];

// Figures read by the browser tests (and handy in the console).
window.foundryDashboard = { metrics: {} };

let stop = () => {};

function route() {
  stop();
  const hash = location.hash || "#/workflows";
  const main = document.getElementById("main");
  main.replaceChildren();
  for (const key of Object.keys(main.dataset)) delete main.dataset[key];
  notice("");
  for (const [pattern, section, mountPage] of ROUTES) {
    const match = hash.match(pattern);
    if (!match) continue;
    for (const link of document.querySelectorAll("[data-nav]")) {
      link.classList.toggle("current", link.dataset.nav === section);
      if (link.dataset.nav === section) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    stop = mountPage(main, ...match.slice(1)) || (() => {});
    return;
  }
  main.textContent = "No such page.";
  stop = () => {};
}

export function notice(text, tone = "bad") {
  const box = document.getElementById("notice");
  box.textContent = shown(text);
  box.className = `notice tone-${tone}`;
  box.hidden = !text;
}

function setUpToken() {
  const field = document.getElementById("token");
  field.value = token.get();
  document.getElementById("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    token.set(field.value.trim());
    route();
  });
}

setUpToken();
window.addEventListener("hashchange", route);
route();
