// Runs: the live list from ListRuns, refreshed every two seconds (runs have no list stream).

import { call, RUNTIME } from "./api.js";
import { h, badge, time, between, table } from "./util.js";
import { notice } from "./app.js";

const STATUSES = ["", "PENDING", "RUNNING", "PAUSED_AT_STEP", "SUCCEEDED", "FAILED", "CANCELED"];
const POLL_MS = 2000;
const SHOWN = 200; // the newest runs the list shows (the filters find the others)

export function mount(root) {
  const status = h("select", { id: "run-status" }, STATUSES.map((s) => h("option", { value: s }, s ? s.toLowerCase().replaceAll("_", " ") : "any status")));
  const label = h("input", { id: "run-label", placeholder: "key=value" });
  const body = h("tbody", { id: "run-rows" });
  const count = h("span", { class: "muted", id: "run-count" });
  let alive = true;
  let timer = 0;

  async function refresh() {
    clearTimeout(timer);
    const request = { pageSize: SHOWN };
    if (status.value) request.statuses = [`RUN_STATUS_${status.value}`];
    const [key, ...rest] = label.value.trim().split("=");
    if (key) request.labels = { [key]: rest.join("=") };
    try {
      const reply = await call(RUNTIME, "ListRuns", request);
      if (!alive) return;
      body.replaceChildren(...(reply.runs || []).map(row));
      count.textContent = reply.nextPageToken
        ? `the newest ${SHOWN} runs (filter by status or label for others)`
        : `${(reply.runs || []).length} run${(reply.runs || []).length === 1 ? "" : "s"}`;
      notice("");
    } catch (error) {
      if (alive) notice(error.code === "unimplemented" ? "This daemon has no ListRuns RPC: open a run by its id (#/runs/RUN_ID)." : error.message);
    }
    if (alive) timer = setTimeout(refresh, POLL_MS);
  }
  status.addEventListener("change", refresh);
  label.addEventListener("change", refresh);

  const open = h("form", { class: "inline", onsubmit: (e) => { e.preventDefault(); location.hash = `#/runs/${e.target.elements.runid.value.trim()}`; } },
    h("input", { name: "runid", placeholder: "run id", required: true }), h("button", {}, "Open"));
  root.append(
    h("div", { class: "page-head" }, h("h1", {}, "Runs"), open),
    h("div", { class: "filters" }, h("label", {}, "Status ", status), h("label", {}, "Label ", label), count),
    table(["Run", "Status", "Labels", "Parent", "Steps", "Created", "Duration"], [body], { id: "runs" }),
  );
  refresh();
  return () => { alive = false; clearTimeout(timer); };
}

function row(run) {
  const finished = ["RUN_STATUS_SUCCEEDED", "RUN_STATUS_FAILED", "RUN_STATUS_CANCELED"].includes(run.status);
  return h("tr", { "data-run": run.runId },
    h("td", {}, h("a", { href: `#/runs/${run.runId}` }, run.runId)),
    h("td", {}, badge(run.status), run.pausedStep ? h("span", { class: "muted" }, ` at ${run.pausedStep}`) : null,
      run.error ? h("div", { class: "bad-text small" }, run.error) : null),
    h("td", {}, Object.entries(run.labels || {}).map(([k, v]) => h("span", { class: "tag" }, `${k}=${v}`))),
    h("td", {}, run.parentRunId ? h("a", { href: `#/runs/${run.parentRunId}` }, run.parentRunId) : "", run.branchStep ? h("span", { class: "muted" }, ` @ ${run.branchStep}`) : null),
    h("td", { class: "num" }, String(run.stepCount || 0)),
    h("td", { class: "time" }, time(run.createdAt)),
    h("td", { class: "num" }, between(run.createdAt, finished ? run.updatedAt : null)),
  );
}
