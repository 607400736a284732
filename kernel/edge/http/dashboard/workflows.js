// Workflows: the live list (Status, refreshed on every Watch event and every few seconds) and one
// workflow's chain as a tree of events and block executions (Trace; Status while it runs).

import { call, liveStream, FOUNDRY, ANALYTICS } from "./api.js";
import { h, badge, time, between, duration, pre, errorBox, table } from "./util.js";
import { notice } from "./app.js";

const STATES = ["", "pending", "running", "completed", "failed"];
const THROTTLES = { THROTTLE_FULL: "full", THROTTLE_AUDIT_ONLY: "audit_only", THROTTLE_DRY_RUN: "dry_run" };
const POLL_MS = 3000;
const SHOWN = 200; // the newest workflows the list shows (the filters find the others)

export function mountList(root) {
  const params = new URLSearchParams(sessionStorage.getItem("foundry.workflowFilter") || "");
  const project = h("input", { id: "wf-project", placeholder: "any project", value: params.get("project") || "" });
  const state = h("select", { id: "wf-state" }, STATES.map((s) => h("option", { value: s }, s || "any state")));
  state.value = params.get("state") || "";
  const body = h("tbody", { id: "workflow-rows" });
  const count = h("span", { class: "muted" });
  const throttles = new Map();
  let timer = 0;
  let stopWatch = () => {};
  let alive = true;

  let failed = ""; // this list's last error: the next good answer clears it, if still shown
  let lost = ""; // while the Watch stream is away: what the notice says of it (else "")
  async function refresh() {
    clearTimeout(timer);
    try {
      const request = { project: project.value.trim(), state: state.value, limit: SHOWN };
      const reply = await call(FOUNDRY, "Status", request);
      if (!alive) return;
      await learnThrottles(throttles, (reply.workflows || []).map((w) => w.workflowId));
      if (!alive) return;
      render(reply.workflows || []);
      // (not another part's notice, such as "live updates stopped", shown since)
      // (the Watch's own notice again if it is still away: the list is polled, not live)
      if (failed && document.getElementById("notice").textContent === failed) notice(lost, "warn");
      failed = "";
    } catch (error) {
      // An answer to a page left behind (e.g. asked before the token was set) says nothing of
      // this one.
      if (!alive) return;
      notice(error.message);
      failed = error.message;
    }
    if (alive) timer = setTimeout(refresh, POLL_MS);
  }

  function render(list) {
    list.sort((a, b) => (b.startedAt || "").localeCompare(a.startedAt || ""));
    count.textContent = list.length >= SHOWN
      ? `the newest ${list.length} workflows (filter by project or state for others)`
      : `${list.length} workflow${list.length === 1 ? "" : "s"}`;
    body.replaceChildren(...list.map((w) => h("tr", { "data-workflow": w.workflowId },
      h("td", {}, h("a", { href: `#/workflows/${w.workflowId}` }, w.workflowId)),
      h("td", {}, badge(w.state)),
      h("td", {}, w.workflowType),
      h("td", {}, w.project),
      h("td", {}, throttles.get(w.workflowId) || ""),
      h("td", { class: "time" }, time(w.startedAt)),
      h("td", { class: "num" }, between(w.startedAt, w.completedAt)),
    )));
  }

  let pending = 0;
  function watch() {
    stopWatch();
    const query = project.value.trim() ? `?project=${encodeURIComponent(project.value.trim())}` : "";
    // a stream opened anew (a filter changed) starts live: the old one's warning goes with it
    if (lost && document.getElementById("notice").textContent === lost) notice("");
    lost = "";
    stopWatch = liveStream(`/ws/watch${query}`, (event) => {
      if (event.workflowId === event.eventId) throttles.set(event.workflowId, THROTTLES[event.throttle] || "full");
      // Many events arrive in bursts: refresh once after the burst, not once per event.
      clearTimeout(pending);
      pending = setTimeout(refresh, 150);
    }, {
      onLost: (code, reason, seconds) => {
        lost = `live updates stopped (${code} ${reason}); the list still refreshes every ${POLL_MS / 1000} s, and the stream is tried again in ${seconds} s`;
        if (alive) notice(lost, "warn");
      },
      onBack: () => {
        if (!alive) return;
        if (document.getElementById("notice").textContent === lost) notice("");
        lost = "";
        const metrics = window.foundryDashboard.metrics;
        metrics.watchReopened = (metrics.watchReopened || 0) + 1;
        refresh(); // what happened while it was away
      },
      onEnd: (code, reason) => alive && notice(`live updates stopped (${code} ${reason}); the list still refreshes every ${POLL_MS / 1000} s`, "warn"),
    });
  }

  function filtersChanged() {
    sessionStorage.setItem("foundry.workflowFilter", new URLSearchParams({ project: project.value.trim(), state: state.value }).toString());
    watch();
    refresh();
  }
  project.addEventListener("change", filtersChanged);
  state.addEventListener("change", filtersChanged);

  root.append(
    h("div", { class: "page-head" }, h("h1", {}, "Workflows"), count),
    h("div", { class: "filters" }, h("label", {}, "Project ", project), h("label", {}, "State ", state)),
    table(["Workflow", "State", "Type", "Project", "Throttle", "Started", "Duration"], [body], { id: "workflows" }),
  );
  watch();
  refresh();
  return () => { alive = false; clearTimeout(timer); clearTimeout(pending); stopWatch(); };
}

// The root events' throttles, which Status does not carry: from Watch for new workflows, else
// from the events table — once per workflow (a throttle never changes), by id.
async function learnThrottles(throttles, ids) {
  const unknown = ids.filter((id) => !throttles.has(id));
  if (!unknown.length) return;
  try {
    const reply = await call(ANALYTICS, "Query", {
      sql: "SELECT event_id, throttle FROM events WHERE event_id IN (SELECT unnest(string_split($ids, ',')))",
      params: { ids: unknown.join(",") },
    });
    for (const row of reply.rowsJson || []) {
      const [id, throttle] = JSON.parse(row);
      throttles.set(id, throttle);
    }
  } catch {
    // The list stands without throttles (e.g. SQL refused); Watch still fills them in live.
  }
}

export function mountWorkflow(root, workflowId) {
  const head = h("div", { class: "page-head" }, h("h1", {}, "Workflow ", h("code", {}, workflowId)));
  const summary = h("div", { class: "summary" });
  const tree = h("div", { class: "tree", id: "workflow-tree" });
  root.append(h("p", {}, h("a", { href: "#/workflows" }, "← Workflows")), head, summary, tree);
  let alive = true;
  let timer = 0;

  async function refresh() {
    try {
      const [status, trace] = await Promise.all([
        call(FOUNDRY, "Status", { workflowId }).catch((error) => ({ workflows: [], error })),
        call(FOUNDRY, "Trace", { eventId: workflowId }),
      ]);
      if (!alive) return;
      const workflow = (status.workflows || [])[0];
      if (!workflow && !trace.found && status.error?.code === "not_found") {
        // unknown, or archived by retention: said as the run page says it, and not polled
        tree.replaceChildren(errorBox(status.error));
        root.dataset.loaded = "final";
        return;
      }
      renderSummary(summary, workflow, trace);
      if (trace.found) tree.replaceChildren(renderTree(workflowId, trace));
      else if (workflow) tree.replaceChildren(renderInFlight(workflow));
      else tree.replaceChildren(h("p", { class: "muted" }, "No such workflow (yet)."));
      const finished = workflow ? ["completed", "failed"].includes(workflow.state) : trace.found;
      if (!finished || !trace.found) timer = setTimeout(refresh, 700);
      root.dataset.loaded = finished && trace.found ? "final" : "live";
    } catch (error) {
      if (!alive) return;
      // (one failed call — the daemon restarting, a 429 — stopped the page for good)
      tree.replaceChildren(errorBox(error));
      timer = setTimeout(refresh, 2000);
    }
  }
  refresh();
  return () => { alive = false; clearTimeout(timer); };
}

function renderSummary(box, workflow, trace) {
  const events = trace.events || [];
  const root = events[0] || {};
  const blocks = trace.blockExecutions || [];
  box.replaceChildren(h("dl", { class: "facts" },
    fact("State", workflow ? badge(workflow.state) : trace.found ? badge("completed") : badge("pending")),
    fact("Type", workflow?.workflowType || root.eventType),
    fact("Project", workflow?.project || root.project),
    fact("Throttle", h("span", { id: "workflow-throttle" }, THROTTLES[root.throttle] || (trace.found ? "full" : ""))),
    fact("Started", time(workflow?.startedAt || root.occurredAt)),
    fact("Duration", trace.found ? duration(Number(trace.totalDurationMs || 0)) : between(workflow?.startedAt)),
    fact("Events", String(events.length)),
    fact("Block executions", String(blocks.length)),
    workflow?.error ? fact("Error", h("span", { class: "bad-text" }, workflow.error)) : null,
  ));
}

function fact(name, value) {
  return [h("dt", {}, name), h("dd", {}, value ?? "")];
}

// Events own the block executions they triggered; a block owns the events it emitted.
function renderTree(rootId, trace) {
  const events = new Map((trace.events || []).map((e) => [e.eventId, e]));
  const byTrigger = new Map();
  for (const block of trace.blockExecutions || []) {
    if (!byTrigger.has(block.triggerEventId)) byTrigger.set(block.triggerEventId, []);
    byTrigger.get(block.triggerEventId).push(block);
  }
  const placed = new Set();
  const eventNode = (event) => {
    placed.add(event.eventId);
    const blocks = byTrigger.get(event.eventId) || [];
    return h("li", { class: "node event", "data-event": event.eventType },
      h("div", { class: "line" },
        h("span", { class: "kind" }, "event"), h("strong", {}, event.eventType),
        event.throttled ? h("span", { class: "badge tone-warn", title: "recorded, not delivered" }, "throttled: not delivered") : null,
        THROTTLES[event.throttle] && event.throttle !== "THROTTLE_FULL" ? h("span", { class: "tag" }, THROTTLES[event.throttle]) : null,
        h("span", { class: "muted" }, time(event.occurredAt)), h("code", { class: "muted" }, event.eventId)),
      event.payloadJson ? h("details", {}, h("summary", {}, "payload"), pre(safeJson(event.payloadJson))) : null,
      blocks.length ? h("ul", {}, blocks.map(blockNode)) : null);
  };
  const blockNode = (block) => {
    const state = block.state || (block.success ? "ok" : "failed");
    const children = (block.emittedEventIds || []).map((id) => events.get(id)).filter((e) => e && !placed.has(e.eventId));
    return h("li", { class: "node block", "data-block": block.blockName, "data-state": state, "data-throttled": block.throttled ? "yes" : "no" },
      h("div", { class: "line" },
        h("span", { class: "kind" }, "block"), h("strong", {}, block.blockName), badge(state),
        block.throttled ? h("span", { class: "badge tone-warn", title: "a mutator under a throttle: audited or simulated, not acted" }, "throttled") : null,
        h("span", { class: "num" }, duration(Number(block.durationMs || 0))),
        block.rawOutput || block.exitCode ? h("span", { class: "tag" }, `exit ${block.exitCode || 0}`) : null,
        block.attempts > 1 ? h("span", { class: "tag" }, `${block.attempts} attempts`) : null),
      block.summary ? h("div", { class: "muted summary-line" }, block.summary) : null,
      (block.auditArtifacts || []).length ? h("div", { class: "artifacts" }, "artifacts: ", block.auditArtifacts.map((a) => h("code", {}, a))) : null,
      block.rawOutput ? h("details", {}, h("summary", {}, "raw output"), pre(block.rawOutput)) : null,
      children.length ? h("ul", {}, children.map(eventNode)) : null);
  };
  const root = events.get(rootId) || (trace.events || [])[0];
  const list = h("ul", { class: "root" }, root ? eventNode(root) : []);
  const orphans = (trace.events || []).filter((e) => !placed.has(e.eventId));
  if (orphans.length) list.append(...orphans.map(eventNode));
  return list;
}

function renderInFlight(workflow) {
  return h("div", {},
    h("p", { class: "muted" }, "The chain is still running; its full tree appears when it ends."),
    table(["Block", "State", "Throttled", "Started", "Duration"], (workflow.taskBlocks || []).map((b) => h("tr", {},
      h("td", {}, b.name), h("td", {}, badge(b.state)), h("td", {}, b.throttled ? "yes" : ""),
      h("td", {}, time(b.startedAt)), h("td", { class: "num" }, between(b.startedAt, b.completedAt))))));
}

function safeJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}
