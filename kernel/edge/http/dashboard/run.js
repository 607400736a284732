// One run: the DAG (live over the TapRun WebSocket), a timeline of step attempts, the step panel,
// and time travel — breakpoints, patch, resume, branch, replay with its drift view.

import { call, liveStream, RUNTIME, ANALYTICS } from "./api.js";
import { h, append, badge, time, duration, pre, errorBox, frameBatcher, table, shown } from "./util.js";
import { drawDag, setNodeState } from "./dag.js";
import { notice } from "./app.js";

const FINAL = new Set(["RUN_STATUS_SUCCEEDED", "RUN_STATUS_FAILED", "RUN_STATUS_CANCELED"]);
const STEP_STATE = {
  step_leased: "running", step_retrying: "retrying", step_completed: "succeeded",
  step_failed: "failed", step_reused: "reused", step_canceled: "canceled",
  step_interrupted: "pending", // a stopped daemon's attempt: leased again (or failed) next
};
const ENDS = new Set(["run_succeeded", "run_failed", "run_canceled"]); // a run's terminal events
const ATTESTATIONS_PER_CALL = 1000; // GetAttestations' most ids
const RUN_STATE = {
  run_started: "RUN_STATUS_RUNNING", run_paused: "RUN_STATUS_PAUSED_AT_STEP", run_resumed: "RUN_STATUS_RUNNING",
  run_succeeded: "RUN_STATUS_SUCCEEDED", run_failed: "RUN_STATUS_FAILED", run_canceled: "RUN_STATUS_CANCELED",
};

export function mount(root, runId) {
  const view = new RunView(root, runId);
  view.start();
  return () => view.stop();
}

class RunView {
  constructor(root, runId) {
    this.root = root;
    this.runId = runId;
    this.steps = [];
    this.state = new Map(); // step id → {status, attempts[], patches[], reused}
    this.breakpoints = new Set();
    this.attested = [];
    this.selected = "";
    this.foldedSeq = 0; // the last run event folded in (TapRun sends them in seq order)
    this.alive = true;
    this.metrics = window.foundryDashboard.metrics.run = {};
    this.ingest = frameBatcher((events) => this.applyBatch(events), this.metrics);
    window.foundryDashboard.ingestRunEvent = this.ingest;
  }

  // The page draws from a snapshot (two small SQL queries: the DAG, the run's status and each
  // step's latest event) and only then replays TapRun, which streams every event from the
  // first: a finished 1,000-step run is ~3,000 events, seconds of stream, while the snapshot
  // answers in tens of milliseconds. GetRun is the fallback.
  async start() {
    this.root.append(h("p", {}, h("a", { href: "#/runs" }, "← Runs")));
    const asked = performance.now();
    try {
      // GetRun of a large run holds the daemon for a while: asked only when SQL cannot answer.
      const run = (await snapshot(this.runId)) || (await call(RUNTIME, "GetRun", { runId: this.runId })).run;
      if (!this.alive) return;
      const built = performance.now();
      this.metrics.snapshotMs = built - asked;
      this.build(run);
      this.metrics.buildMs = performance.now() - built;
    } catch (error) {
      this.root.append(errorBox(error));
      return;
    }
    this.metrics.readyMs = performance.now();
    this.root.dataset.ready = "1";
    // Back after a restart, TapRun replays the run from its first event: applyBatch skips the
    // ones folded already (by seq), so only what happened meanwhile changes the page.
    let lost = "";
    this.stopTap = liveStream(`/ws/runs/${encodeURIComponent(this.runId)}/tap`, this.ingest, {
      onLost: (code, reason, seconds) => {
        lost = `live updates stopped (${code} ${reason}); trying again in ${seconds} s`;
        if (this.alive) notice(lost, "warn");
      },
      onBack: () => { if (this.alive && document.getElementById("notice").textContent === lost) notice(""); },
      onEnd: (code, reason) => {
        if (code === 1000) this.metrics.tapEnded = true; // after the run's terminal event
        else if (this.alive) notice(`live updates stopped (${code} ${reason})`, "warn");
      },
    });
  }

  stop() {
    this.alive = false;
    if (this.stopTap) this.stopTap();
    clearTimeout(this.timelineTimer);
  }

  build(run) {
    this.run = run;
    this.status = run.status;
    this.pausedStep = run.pausedStep || "";
    let dag = { steps: [] };
    try { dag = JSON.parse(run.spec?.dagJson || "{}"); } catch { /* shown as no steps */ }
    this.steps = dag.steps || [];
    this.stepById = new Map(this.steps.map((step) => [step.id, step]));
    for (const step of this.steps) this.state.set(step.id, { status: "pending", attempts: [], patches: [] });
    this.snapshotSeq = run.snapshotSeq || 0;
    for (const summary of run.steps || []) {
      const st = this.state.get(summary.stepId);
      if (st && summary.status) { st.status = st.snapshotStatus = summary.status; st.output = summary.output; st.error = summary.error; }
    }
    for (const id of run.spec?.breakpoints || []) this.breakpoints.add(id);

    this.header = h("div", { class: "page-head" });
    this.actions = h("div", { class: "actions", id: "run-actions" });
    const { svg, nodes } = drawDag(this.steps, (id) => this.select(id));
    this.nodes = nodes;
    this.panel = h("aside", { class: "step-panel", id: "step-panel" }, h("p", { class: "muted" }, "Select a step to see its inputs, output and attempts."));
    this.panel.addEventListener("focusout", () => setTimeout(() => {
      if (this.panelStale && !this.panel.contains(document.activeElement)) this.renderPanel();
    }));
    this.timeline = h("div", { class: "timeline", id: "timeline" });
    this.drift = h("section", { id: "drift" });
    this.attestations = h("section", { id: "attestations" });
    this.root.append(this.header, this.actions,
      h("div", { class: "run-body" }, h("div", { class: "dag-box", id: "dag" }, svg), this.panel),
      h("h2", {}, "Timeline"), this.timeline, this.drift, this.attestations);
    this.renderHeader();
    this.renderNodes(this.steps.map((step) => step.id));
    this.renderTimeline();
  }

  // --- live updates: fold events into the state, then touch only the nodes that changed ------
  applyBatch(events) {
    const touched = new Set();
    let runChanged = false, ended = false;
    for (const event of events) {
      const seq = event.payload?.seq || 0;
      if (seq && seq <= this.foldedSeq) continue; // replayed by a tap opened again
      if (seq) this.foldedSeq = seq;
      if (ENDS.has(event.kind)) ended = true;
      const changed = this.fold(event);
      if (changed === "run") runChanged = true;
      else if (changed) touched.add(changed);
    }
    if (runChanged) {
      for (const id of this.stepById.keys()) touched.add(id);
      this.renderHeader();
    }
    this.renderNodes(touched);
    if (this.selected && touched.has(this.selected)) this.renderPanel();
    this.scheduleTimeline();
    // Its terminal event, not any run event of a finished run's history replayed by the tap:
    // then only its first attestations were announced, and the run showed as unsigned.
    if (ended) this.finished();
  }

  fold(event) {
    const kind = event.kind;
    const payload = event.payload || {};
    const st = this.state.get(event.stepId);
    const counted = (payload.seq || 0) <= this.snapshotSeq; // already in the snapshot's states
    // a step's attestation is announced by its completion; the other kinds by an `attested` event
    if (kind === "step_completed" && payload.attestation_id) this.attested.push({ id: payload.attestation_id, kind: "step", stepId: event.stepId });
    if (kind in STEP_STATE && st) {
      st.status = counted && st.snapshotStatus ? st.snapshotStatus : STEP_STATE[kind];
      const outcome = kind === "step_interrupted" ? "canceled" : STEP_STATE[kind]; // its bar ends
      const attempt = this.attempt(st, payload.attempt || 1);
      if (kind === "step_leased") Object.assign(attempt, { start: event.occurredAt, inputs: payload.inputs, seed: payload.seed, model: payload.model, env: payload.env });
      else if (kind === "step_reused") Object.assign(attempt, { start: event.occurredAt, end: event.occurredAt, outcome: "reused", inputs: payload.inputs, seed: payload.seed, model: payload.model, output: payload.output, usage: payload.usage, source: payload.source_run_id });
      else Object.assign(attempt, { end: event.occurredAt, outcome, error: payload.error, output: payload.output, usage: payload.usage, rawOutput: payload.raw_output, exitCode: payload.exit_code, artifacts: payload.artifacts, durationMs: payload.duration_ms });
      if ("output" in payload) st.output = payload.output;
      if (payload.error) st.error = payload.error;
      return event.stepId;
    }
    if (kind === "step_patched" && st) { st.patches.push(payload); return event.stepId; }
    if (kind === "breakpoints_updated") {
      const before = [...this.breakpoints];
      this.breakpoints = new Set(payload.breakpoints || []);
      for (const id of before) this.renderNodes([id]);
      for (const id of this.breakpoints) this.renderNodes([id]);
      if (this.selected) this.renderPanel();
      return "";
    }
    if (kind === "attested") { this.attested.push({ id: payload.attestation_id, kind: payload.kind, stepId: event.stepId }); return ""; }
    if (kind in RUN_STATE) {
      if (!counted) this.status = RUN_STATE[kind];
      this.pausedStep = kind === "run_paused" ? event.stepId : "";
      if (kind === "run_failed") this.runError = payload.error;
      return "run";
    }
    return "";
  }

  attempt(st, number) {
    let found = st.attempts.find((a) => a.attempt === number);
    if (!found) { found = { attempt: number }; st.attempts.push(found); }
    return found;
  }

  displayState(id) {
    const st = this.state.get(id);
    if (this.pausedStep === id) return "paused";
    if (st.status === "pending" && FINAL.has(this.status)) return "skipped";
    return st.status;
  }

  renderNodes(ids) {
    for (const id of ids) {
      const node = this.nodes.get(id);
      if (node) setNodeState(node, this.displayState(id), { breakpoint: this.breakpoints.has(id), selected: id === this.selected });
    }
  }

  renderHeader() {
    const run = this.run;
    const labels = Object.entries(run.spec?.labels || {}).map(([k, v]) => h("span", { class: "tag" }, `${k}=${v}`));
    this.header.replaceChildren();
    append(this.header, [
      h("h1", {}, "Run ", h("code", {}, this.runId)),
      h("span", { id: "run-status" }, badge(this.status)),
      this.pausedStep ? h("span", { class: "warn-text" }, ` paused before ${this.pausedStep}`) : null,
      h("dl", { class: "facts" },
        h("dt", {}, "Created"), h("dd", {}, time(run.createdAt)),
        h("dt", {}, "Steps"), h("dd", {}, String(this.steps.length)),
        h("dt", {}, "Seed"), h("dd", {}, String(run.spec?.seed ?? 0)),
        labels.length ? [h("dt", {}, "Labels"), h("dd", {}, labels)] : null,
        run.parentRunId ? [h("dt", {}, "Branched from"), h("dd", {}, h("a", { href: `#/runs/${run.parentRunId}` }, run.parentRunId), ` at ${run.branchStep}`)] : null,
        this.runError || run.error ? [h("dt", {}, "Error"), h("dd", { class: "bad-text" }, String(this.runError?.message || this.runError || run.error))] : null)]);
    this.renderActions();
  }

  renderActions() {
    const buttons = [];
    if (this.status === "RUN_STATUS_PAUSED_AT_STEP") buttons.push(h("button", { id: "resume", class: "primary", onclick: () => this.act("ResumeRun", { runId: this.runId }) }, `Resume (runs ${this.pausedStep})`));
    if (!FINAL.has(this.status)) buttons.push(h("button", { id: "cancel", onclick: () => this.act("CancelRun", { runId: this.runId, reason: "cancelled from the dashboard" }) }, "Cancel run"));
    if (FINAL.has(this.status)) {
      const mode = h("select", { id: "replay-mode" }, ["FULL", "STEP_ONLY", "DIFF"].map((m) => h("option", { value: m }, m.toLowerCase().replace("_", " "))));
      buttons.push(h("span", { class: "inline" }, h("button", { id: "replay", onclick: () => this.replay(mode.value) }, "Replay"), mode));
    }
    this.actions.replaceChildren(...buttons);
  }

  async act(method, request) {
    try {
      await call(RUNTIME, method, request);
      notice("");
    } catch (error) {
      notice(error.message);
    }
  }

  // --- the step panel ----------------------------------------------------------------------
  select(id) {
    const previous = this.selected;
    this.selected = id;
    const clicked = performance.now();
    this.renderNodes([previous, id].filter(Boolean));
    this.renderPanel();
    this.metrics.selectMs = performance.now() - clicked;
  }

  renderPanel() {
    // Never redraw under someone typing a patch or a branch: redraw when they leave the form.
    const editing = document.activeElement;
    if (editing && this.panel.contains(editing) && editing.matches("input, textarea, select")) {
      this.panelStale = true;
      return;
    }
    this.panelStale = false;
    const id = this.selected;
    const step = this.stepById.get(id);
    const st = this.state.get(id);
    const last = st.attempts[st.attempts.length - 1] || {};
    const usage = last.usage;
    const content = [
      h("h2", {}, h("code", {}, id), " ", badge(this.displayState(id))),
      h("dl", { class: "facts" },
        h("dt", {}, "Type"), h("dd", {}, step.type),
        h("dt", {}, "Attempts"), h("dd", {}, String(st.attempts.filter((a) => a.outcome !== "reused").length)),
        h("dt", {}, "Model"), h("dd", {}, last.model || step.model || (step.type === "llm" ? "the default ([llm] model)" : "—")),
        h("dt", {}, "Seed"), h("dd", {}, last.seed !== undefined ? String(last.seed) : ""),
        usage ? [h("dt", {}, "Usage"), h("dd", { id: "step-usage" }, `${usage.tokens_in ?? 0} tokens in, ${usage.tokens_out ?? 0} out, cost ${Number(usage.cost ?? 0).toPrecision(3)}`)] : null,
        last.rawOutput || last.exitCode ? [h("dt", {}, "Exit code"), h("dd", {}, String(last.exitCode ?? 0))] : null,
        last.source ? [h("dt", {}, "Reused from"), h("dd", {}, last.source)] : null),
      this.breakpointButton(id, st),
      section("Resolved inputs", last.inputs !== undefined ? pre(last.inputs) : h("p", { class: "muted" }, "Not leased yet. Declared: "), last.inputs === undefined ? pre(step.inputs ?? {}) : null),
      last.env && Object.keys(last.env).length ? section("Environment", pre(last.env)) : null,
      st.output !== undefined ? section("Output", pre(st.output, "output")) : null,
      st.error ? section("Error", pre(st.error, "bad-text")) : null,
      st.patches.length ? section("Patches", st.patches.map((p) => pre({ inputs_patch: p.inputs_patch, env: p.env, model: p.model, note: p.note }))) : null,
      this.canPatch(id, st) ? this.patchForm(id, step) : null,
      FINAL.has(this.status) ? this.branchForm(id) : null,
    ];
    this.panel.replaceChildren(...content.filter(Boolean));
  }

  breakpointButton(id, st) {
    if (FINAL.has(this.status) || st.status !== "pending") return null;
    const has = this.breakpoints.has(id);
    const request = { runId: this.runId, [has ? "remove" : "add"]: [id] };
    return h("button", { id: "toggle-breakpoint", onclick: () => this.act("UpdateBreakpoints", request) }, has ? "Remove breakpoint" : "Add breakpoint");
  }

  canPatch(id, st) {
    return this.status === "RUN_STATUS_PAUSED_AT_STEP" && (st.status === "pending" || this.pausedStep === id);
  }

  patchForm(id, step) {
    const inputs = jsonField("patch-inputs", "Inputs patch (JSON merge patch)", "{}");
    const env = jsonField("patch-env", "Environment (JSON object of strings)", "{}", (v) => Object.values(v).every((x) => typeof x === "string") || "every value must be a string");
    const model = h("input", { id: "patch-model", placeholder: step.model || "(unchanged)" });
    const note = h("input", { id: "patch-note", placeholder: "why" });
    const submit = h("button", { id: "patch-submit", class: "primary", type: "submit" }, "Patch step");
    const form = h("form", { class: "panel-form", id: "patch-form" }, h("h3", {}, "Patch this step"), inputs.box, env.box,
      h("label", {}, "Model ", model), h("label", {}, "Note ", note), submit);
    const check = () => { submit.disabled = !(inputs.valid() && env.valid()); };
    inputs.field.addEventListener("input", check);
    env.field.addEventListener("input", check);
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const request = { runId: this.runId, stepId: id, inputsPatch: inputs.value(), env: env.value(), note: note.value };
      if (model.value.trim()) request.model = model.value.trim();
      await this.act("PatchStep", request);
    });
    return form;
  }

  branchForm(id) {
    const mode = h("select", { id: "branch-seed-mode" }, ["SAME", "NEW", "CUSTOM"].map((m) => h("option", { value: m }, m.toLowerCase())));
    const seed = h("input", { id: "branch-seed", type: "text", inputmode: "numeric", placeholder: "seed (custom)" });
    const inputs = jsonField("branch-inputs", "Run inputs patch (JSON)", "{}");
    const note = h("input", { id: "branch-note", placeholder: "why" });
    const submit = h("button", { id: "branch-submit", class: "primary", type: "submit" }, `Branch from ${id}`);
    inputs.field.addEventListener("input", () => { submit.disabled = !inputs.valid(); });
    const form = h("form", { class: "panel-form", id: "branch-form" }, h("h3", {}, "Branch a new run from this step"),
      h("label", {}, "Seed ", mode, seed), inputs.box, h("label", {}, "Note ", note), submit);
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const request = { runId: this.runId, fromStep: id, seedMode: `BRANCH_SEED_MODE_${mode.value}`, inputsPatch: inputs.value(), note: note.value };
      // The seed as its digits (proto3 JSON's int64 string): a number past 2^53 was rounded,
      // and a run's own seed can be any int64.
      if (mode.value === "CUSTOM") {
        const digits = seed.value.trim();
        if (!/^-?[0-9]+$/.test(digits)) { notice("seed: a custom seed is a whole number"); return; }
        request.seed = digits;
      }
      try {
        const reply = await call(RUNTIME, "CreateBranchRun", request);
        location.hash = `#/runs/${reply.runId}`;
      } catch (error) {
        notice(error.message);
      }
    });
    return form;
  }

  // --- the timeline of attempts: one row per step, a bar per attempt -------------------------
  scheduleTimeline() {
    if (this.timelineTimer) return;
    this.timelineTimer = setTimeout(() => { this.timelineTimer = 0; this.renderTimeline(); }, 400);
  }

  // Drawn on a canvas the size of the visible window, rows outside it skipped: a run of 1,000
  // steps redraws in a millisecond or two, where an SVG element per bar (or one canvas the
  // height of every row) would cost the main thread far more on each live update.
  renderTimeline() {
    const rows = this.steps.filter((step) => this.state.get(step.id).attempts.length);
    if (!rows.length) { this.timeline.replaceChildren(h("p", { class: "muted" }, "No attempts yet.")); return; }
    let t0 = Infinity, t1 = -Infinity;
    for (const step of rows) for (const a of this.state.get(step.id).attempts) {
      for (const t of [a.start, a.end]) if (t) { const v = Date.parse(t); if (v < t0) t0 = v; if (v > t1) t1 = v; }
    }
    const now = FINAL.has(this.status) ? t1 : Math.max(t1, Date.now());
    t1 = Math.max(now, t0 + 1);
    if (!this.canvas) this.makeTimeline();
    this.timelineRows = rows;
    this.timelineScale = { t0, t1, now, LEFT: 170, WIDTH: 700, ROW: 16 };
    this.timelineSpacer.style.height = `${rows.length * 16 + 4}px`;
    this.timelineNote.replaceChildren(`${rows.length} steps over ${duration(t1 - t0)} from the first lease; a bar per attempt (lease → end), hover for details. `,
      ...["succeeded", "retrying", "failed", "reused", "running"].map((o) => h("span", { class: `legend tl-${o}` }, o)));
    const attempts = rows.flatMap((step) => this.state.get(step.id).attempts);
    this.timeline.dataset.attempts = String(attempts.length);
    this.timeline.dataset.outcomes = [...new Set(attempts.map((a) => a.outcome || "running"))].sort().join(" ");
    this.drawTimeline();
  }

  makeTimeline() {
    this.canvas = h("canvas", { id: "timeline-canvas", role: "img", "aria-label": "step attempts over time" });
    this.canvas.addEventListener("mousemove", (e) => this.timelineHover(e));
    this.timelineNote = h("p", { class: "muted small" });
    this.timelineSpacer = h("div", { class: "tl-spacer" });
    this.timelineWindow = h("div", { class: "tl-window" }, this.canvas, this.timelineSpacer);
    this.timelineWindow.addEventListener("scroll", () => requestAnimationFrame(() => this.drawTimeline()));
    this.timeline.replaceChildren(this.timelineNote, this.timelineWindow);
    const css = getComputedStyle(document.documentElement);
    this.colours = Object.fromEntries(["label", "succeeded", "retrying", "failed", "canceled", "reused", "running"]
      .map((name) => [name, css.getPropertyValue(`--tl-${name}`).trim() || "#667085"]));
  }

  drawTimeline() {
    const { t0, t1, now, LEFT, WIDTH, ROW } = this.timelineScale;
    const rows = this.timelineRows;
    const ratio = window.devicePixelRatio || 1;
    const top = this.timelineWindow.scrollTop;
    const height = Math.min(this.timelineWindow.clientHeight || 320, rows.length * ROW + 4);
    const width = LEFT + WIDTH + 10;
    const canvas = this.canvas;
    canvas.width = width * ratio;
    canvas.height = height * ratio;
    canvas.style.width = `${width}px`;
    canvas.style.height = `${height}px`;
    canvas.style.top = `${top}px`;
    const g = canvas.getContext("2d");
    g.scale(ratio, ratio);
    g.translate(0, -top);
    g.font = "11px system-ui, sans-serif";
    g.textBaseline = "middle";
    const x = (t) => LEFT + ((t - t0) / (t1 - t0)) * WIDTH;
    const first = Math.floor(top / ROW), last = Math.min(rows.length, Math.ceil((top + height) / ROW));
    for (let i = first; i < last; i++) {
      const step = rows[i], y = i * ROW;
      g.fillStyle = this.colours.label;
      g.fillText(step.id.length > 24 ? `${step.id.slice(0, 23)}…` : step.id, 4, y + ROW / 2);
      for (const a of this.state.get(step.id).attempts) {
        const start = Date.parse(a.start), end = a.end ? Date.parse(a.end) : now;
        g.fillStyle = this.colours[a.outcome || "running"] || this.colours.label;
        g.fillRect(x(start), y + 3, Math.max(3, x(end) - x(start)), ROW - 6);
      }
    }
  }

  timelineHover(event) {
    const { t0, t1, LEFT, WIDTH, ROW } = this.timelineScale;
    const rect = this.canvas.getBoundingClientRect();
    const step = this.timelineRows[Math.floor((event.clientY - rect.top + this.timelineWindow.scrollTop) / ROW)];
    if (!step) { this.canvas.title = ""; return; }
    const at = t0 + ((event.clientX - rect.left - LEFT) / WIDTH) * (t1 - t0);
    const attempts = this.state.get(step.id).attempts;
    const a = attempts.find((x) => Date.parse(x.start) <= at && (!x.end || Date.parse(x.end) >= at)) || attempts[attempts.length - 1];
    const end = a.end ? Date.parse(a.end) : Date.now();
    this.canvas.title = shown(`${step.id} attempt ${a.attempt}: ${a.outcome || "running"}${a.error ? ` — ${a.error.message || ""}` : ""} (${duration(end - Date.parse(a.start))})`);
  }

  // --- replay and drift ---------------------------------------------------------------------
  async replay(mode) {
    this.drift.replaceChildren(h("p", { class: "muted" }, "Replaying…"));
    try {
      const reply = await call(RUNTIME, "ReplayRun", { runId: this.runId, mode: `REPLAY_MODE_${mode}` });
      this.drift.replaceChildren(driftView(reply));
    } catch (error) {
      this.drift.replaceChildren(errorBox(error));
    }
  }

  // --- when the run ends: final states and its attestations ---------------------------------
  async finished() {
    this.renderTimeline();
    if (this.selected) this.renderPanel();
    const ids = this.attested.map((a) => a.id).filter(Boolean);
    if (!ids.length) {
      this.attestations.replaceChildren(h("h2", {}, "Attestations"), h("p", { class: "muted" }, "None recorded for this run ([attest] enabled = false, or nothing attested)."));
      return;
    }
    const announced = [...this.attested];
    try {
      const found = [];
      for (let start = 0; start < ids.length; start += ATTESTATIONS_PER_CALL) {
        const part = ids.slice(start, start + ATTESTATIONS_PER_CALL);
        const reply = await call(RUNTIME, "GetAttestations", { attestationIds: part });
        found.push(...(reply.attestations || []));
      }
      this.attestations.replaceChildren(attestationView(found, announced));
    } catch (error) {
      this.attestations.replaceChildren(h("h2", {}, "Attestations"), errorBox(error));
    }
  }
}

function section(title, ...body) {
  return h("section", { class: "panel-section" }, h("h3", {}, title), ...body);
}

// A JSON object editor: parses on every keystroke and says what is wrong.
function jsonField(id, label, initial, extraCheck = () => true) {
  const field = h("textarea", { id, rows: 4, spellcheck: "false" }, initial);
  const message = h("div", { class: "field-error", id: `${id}-error`, "aria-live": "polite" });
  let parsed = JSON.parse(initial);
  const validate = () => {
    try {
      const value = JSON.parse(field.value || "{}");
      if (value === null || typeof value !== "object" || Array.isArray(value)) throw new Error("must be a JSON object");
      const extra = extraCheck(value);
      if (extra !== true) throw new Error(extra);
      parsed = value;
      message.textContent = "";
      field.removeAttribute("aria-invalid");
      return true;
    } catch (error) {
      message.textContent = shown(`${label.split(" (")[0]}: ${error.message}`);
      field.setAttribute("aria-invalid", "true");
      parsed = undefined;
      return false;
    }
  };
  field.addEventListener("input", validate);
  return { field, box: h("label", { class: "block" }, label, field, message), valid: validate, value: () => parsed };
}

const SNAPSHOT_RUN = `SELECT r.dag_json, r.labels, r.seed, r.breakpoints, r.created_at, r.parent_run_id,
  r.branch_step, s.status, (SELECT max(seq) FROM run_events e WHERE e.run_id = r.run_id) AS seq
FROM runs r LEFT JOIN run_status s USING (run_id) WHERE r.run_id = $run_id`;
const SNAPSHOT_STEPS = "SELECT step_id, last_event FROM steps WHERE run_id = $run_id";

// The run as GetRun would shape it (the fields this page reads), from the SQL views; null when
// the query is refused or finds nothing, so GetRun answers instead.
async function snapshot(runId) {
  try {
    const params = { run_id: runId };
    const [head, steps] = await Promise.all([
      call(ANALYTICS, "Query", { sql: SNAPSHOT_RUN, params, maxRows: 1 }),
      call(ANALYTICS, "Query", { sql: SNAPSHOT_STEPS, params }),
    ]);
    if (!head.rowsJson?.length) return null;
    const [dagJson, labels, seed, breakpoints, createdAt, parentRunId, branchStep, status, seq] = JSON.parse(head.rowsJson[0]);
    return {
      runId, status: `RUN_STATUS_${status || "PENDING"}`, createdAt, parentRunId, branchStep, snapshotSeq: Number(seq || 0),
      spec: { dagJson, labels: labels || {}, seed: String(seed ?? 0), breakpoints: breakpoints || [] },
      steps: (steps.rowsJson || []).map((row) => {
        const [stepId, last] = JSON.parse(row);
        // A kind that says nothing of the step's state (e.g. step_patched) leaves it to TapRun.
        return { stepId, status: STEP_STATE[last] || (last === "capability_granted" ? "running" : "") };
      }),
    };
  } catch {
    return null;
  }
}

export function driftView(reply) {
  const steps = reply.steps || [];
  const outside = steps.filter((step) => step.drift && !step.drift.withinTolerance);
  const rows = steps.map((step) => {
    const drift = step.drift || {};
    const within = drift.withinTolerance === true;
    return h("tr", { class: within ? "" : "drift-row", "data-step": step.stepId },
      h("td", {}, h("code", {}, step.stepId)),
      h("td", {}, badge(within ? "ok" : "drift")),
      h("td", {}, pre(drift.recorded ?? step.snapshot?.output ?? null)),
      h("td", {}, pre(drift.current ?? null)),
      h("td", { class: "num" }, delta(drift.tokenDelta)),
      h("td", { class: "num" }, delta(drift.costDelta, 6)));
  });
  return h("div", { class: "drift-view" },
    h("h2", {}, "Replay drift"),
    h("p", {}, reply.allWithinTolerance ? badge("ok") : badge("drift"), ` ${steps.length} steps, ${outside.length} outside tolerance, strategy ${(reply.strategy || "").replace("REPLAY_STRATEGY_", "").toLowerCase()}`),
    table(["Step", "Tolerance", "Recorded", "Current", "Δ tokens", "Δ cost"], rows, { id: "drift-table" }));
}

function delta(value, digits = 0) {
  if (value === undefined || value === null) return "0";
  const n = Number(value);
  return `${n > 0 ? "+" : ""}${n.toFixed(digits)}`;
}

function attestationView(attestations, announced) {
  const byId = new Map(attestations.map((a) => [a.attestationId, a]));
  const signed = attestations.filter((a) => a.signature).length;
  const runAttested = announced.some((a) => a.kind === "run" && byId.get(a.id)?.signature);
  return h("div", {},
    h("h2", {}, "Attestations"),
    h("p", { id: "attestation-status" }, badge(signed === announced.length ? "signed" : "unsigned"),
      ` ${signed} of ${announced.length} signed; the run itself ${runAttested ? "is" : "is not"} attested`),
    h("details", {}, h("summary", {}, "Each attestation"),
      table(["Kind", "Step", "Issued", "Signature", "Id"], announced.map((a) => {
        const found = byId.get(a.id);
        return h("tr", {}, h("td", {}, a.kind), h("td", {}, a.stepId || ""), h("td", {}, time(found?.issuedAt)),
          h("td", {}, badge(found?.signature ? "signed" : "unsigned")), h("td", {}, h("code", {}, a.id)));
      }))));
}
