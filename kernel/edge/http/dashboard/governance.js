// Evals and gates: each scenario's pass rate per commit as a chart, and the change-gate
// decisions with their scorecards, reasons, follow-ups and acknowledgements.

import { call, ANALYTICS, RUNTIME } from "./api.js";
import { h, s, badge, time, pre, errorBox } from "./util.js";

const HISTORY = 100; // the newest results ListEvalScenarios gives of a scenario (README)
const GATES = 50; // the newest decisions the page asks for

export function mount(root) {
  const evals = h("section", { id: "evals" }, h("h2", {}, "Eval scenarios"), h("p", { class: "muted" }, "Loading…"));
  const gates = h("section", { id: "gates" }, h("h2", {}, "Change-gate decisions"), h("p", { class: "muted" }, "Loading…"));
  root.append(h("div", { class: "page-head" }, h("h1", {}, "Evals & gates")), evals, gates);
  Promise.all([call(RUNTIME, "ListEvalScenarios", {}), passCounts()]).then(
    ([reply, counts]) => evals.replaceChildren(h("h2", {}, "Eval scenarios"), ...scenarios(reply.scenarios || [], counts)),
    (error) => evals.replaceChildren(h("h2", {}, "Eval scenarios"), errorBox(error)));
  call(RUNTIME, "ListChangeGates", { limit: GATES }).then(
    (reply) => gates.replaceChildren(h("h2", {}, "Change-gate decisions"), ...decisions(reply.decisions || [])),
    (error) => gates.replaceChildren(h("h2", {}, "Change-gate decisions"), errorBox(error)));
}

// Every result's outcome counted per scenario and commit, through the Analytics service: a
// scenario's history (its newest 100 results) can hold part of a commit's alone, and a rate of
// those was shown as the commit's (2/2 where it had 2/3). Null when the service cannot answer
// (the page then counts the history, saying which commits it may have cut).
const COUNTS_SQL = `SELECT s.pack, s.slug, r.commit, count(*) FILTER (WHERE r.outcome = 'passed'),
  count(*), min(r.executed_at) AS first FROM eval_results r JOIN eval_scenarios s USING (scenario_id)
  GROUP BY ALL ORDER BY first, r.commit`;

async function passCounts() {
  try {
    // (briefly: analysts' queries may hold the store's query slots; the history is the fallback)
    const reply = await call(ANALYTICS, "Query", { sql: COUNTS_SQL, maxRows: 10000, timeoutMs: 3000 });
    if (reply.truncated) return null;
    const counts = new Map();
    for (const text of reply.rowsJson || []) {
      const [pack, slug, commit, passed, total] = JSON.parse(text);
      const key = JSON.stringify([pack, slug]); // ("a/b" + "c" and "a" + "b/c" are two)
      if (!counts.has(key)) counts.set(key, []);
      counts.get(key).push({ commit: commit || "(none)", passed: Number(passed), total: Number(total) });
    }
    return counts;
  } catch {
    return null;
  }
}

function scenarios(list, counts) {
  if (!list.length) return [h("p", { class: "muted" }, "No scenarios yet (foundry eval sync PACK_FILE).")];
  return list.map((scenario) => {
    const history = scenario.history || [];
    const exact = counts ? counts.get(JSON.stringify([scenario.pack, scenario.slug])) || [] : null;
    const perCommit = exact ? exact.slice(-20) : passRates(history);
    return h("article", { class: "card", "data-scenario": `${scenario.pack}/${scenario.slug}` },
      h("h3", {}, `${scenario.pack} / ${scenario.slug}`, " ", h("span", { class: "muted" }, scenario.title || "")),
      perCommit.length ? chart(perCommit) : h("p", { class: "muted" }, "No results recorded."),
      perCommit.length ? h("p", { class: "small" }, perCommit.map((c) => h("span", { class: "tag" }, `${c.commit.slice(0, 10)}: ${c.passed}/${c.total} passed${c.partial ? ` (its newest ${c.total})` : ""}`))) : null,
      !exact && history.length >= HISTORY ? h("p", { class: "muted small", "data-cut": "" }, `From the newest ${HISTORY} results: the oldest commit among them, whose earlier results are not in them, is left out, or (the only one) counted from these alone (the SQL page has every result: eval_results).`) : null);
  });
}

// Without the Analytics service: the history's results grouped by commit, commits in the order
// of their first result (the history comes newest first). A full window of results (the newest
// HISTORY) may hold only the last of its oldest commit's: that commit's rate would be of those
// alone, so it is left out (or, the only one, marked partial).
function passRates(history) {
  const commits = new Map();
  for (const result of [...history].reverse()) {
    const entry = commits.get(result.commit) || { commit: result.commit || "(none)", passed: 0, total: 0 };
    entry.total += 1;
    if (result.outcome === "passed") entry.passed += 1;
    commits.set(result.commit, entry);
  }
  const all = [...commits.values()];
  if (history.length < HISTORY) return all.slice(-20);
  // the window is full: its oldest commit may have results before it
  return all.length > 1 ? all.slice(1).slice(-20) : [{ ...all[0], partial: true }];
}

// Pass rate per commit: bars with the rate written above each (readable without colour).
function chart(points) {
  const W = 48, H = 90, TOP = 16, BOTTOM = 18;
  const width = points.length * W + 40;
  const parts = [s("line", { x1: 30, y1: TOP + H, x2: width, y2: TOP + H, class: "axis" }),
    s("text", { x: 2, y: TOP + 4, class: "axis-label" }, "100%"), s("text", { x: 10, y: TOP + H, class: "axis-label" }, "0%")];
  points.forEach((p, i) => {
    const rate = p.total ? p.passed / p.total : 0;
    const x = 36 + i * W, height = Math.max(1, rate * H);
    parts.push(s("rect", { x, y: TOP + H - height, width: W - 12, height, class: rate === 1 ? "bar-ok" : rate === 0 ? "bar-bad" : "bar-warn" },
      s("title", {}, `${p.commit}: ${p.passed}/${p.total} passed`)));
    parts.push(s("text", { x: x + (W - 12) / 2, y: TOP + H - height - 3, "text-anchor": "middle", class: "bar-label" }, `${Math.round(rate * 100)}%`));
    parts.push(s("text", { x: x + (W - 12) / 2, y: TOP + H + 13, "text-anchor": "middle", class: "axis-label" }, p.commit.slice(0, 7)));
  });
  return s("svg", { class: "chart", width, height: TOP + H + BOTTOM, role: "img", "aria-label": "pass rate per commit" }, parts);
}

function decisions(list) {
  if (!list.length) return [h("p", { class: "muted" }, "No decisions yet (foundry gate check REQUEST_FILE).")];
  const shown = h("p", { class: "muted small", "data-shown": "" }, list.length >= GATES
    ? `The newest ${list.length} decisions (foundry gate list --limit N for more).`
    : `${list.length} decision${list.length === 1 ? "" : "s"}, newest first.`);
  return [shown, ...list.map((d) => h("article", { class: "card", "data-gate": d.gateId },
    h("h3", {}, badge((d.effect || "").replace("CHANGE_DECISION_EFFECT_", "")), " ", d.changeId, " ", h("span", { class: "muted" }, d.revision || ""), " ", h("span", { class: "muted small" }, time(d.decidedAt))),
    (d.reasons || []).length ? h("ul", { class: "reasons" }, d.reasons.map((r) => h("li", {}, r))) : null,
    (d.followups || []).length ? h("div", {}, h("h4", {}, "Follow-ups"), h("ul", {}, d.followups.map((f) => h("li", {}, h("code", {}, f.slug), ` ${f.description} `, f.recommended ? h("span", { class: "tag" }, "recommended") : null)))) : null,
    (d.acknowledgements || []).length ? h("div", {}, h("h4", {}, "Acknowledged"), h("ul", {}, d.acknowledgements.map((a) => h("li", {}, badge((a.outcome || "").replace("FOLLOWUP_OUTCOME_", "")), ` by ${a.actor} ${time(a.recordedAt)} ${a.note || ""}`)))) : null,
    scorecard(d.scorecard || {}),
    h("details", {}, h("summary", {}, "Scorecard as recorded (JSON)"), pre(d.scorecard || {}))))];
}

// The scorecard's four parts in words; an empty part says so.
function scorecard(card) {
  const list = (items) => (items && items.length ? items.join(", ") : "none");
  const number = (value, digits = 2) => (value === undefined || value === null ? "—" : Number(value).toFixed(digits));
  const rows = [
    ["Novelty", `max ${number(card.novelty?.maxNovelty)}, mean ${number(card.novelty?.avgNovelty)}; high-risk paths: ${list(card.novelty?.highRiskPaths)}`],
    ["Coverage", `overall ${number(card.coverage?.overallRatio)}; below threshold: ${list(card.coverage?.componentsBelowThreshold)}`],
    ["Evals", `failing: ${list(card.evals?.failingMetrics)}; attention: ${list(card.evals?.attentionMetrics)}; score per token ${number(card.evals?.scorePerToken, 4)}`],
    ["Budgets", `breaches: ${list(card.budgets?.breaches)}; near limits: ${list(card.budgets?.nearLimits)}`],
  ];
  return h("dl", { class: "facts scorecard" }, rows.flatMap(([name, text]) => [h("dt", {}, name), h("dd", {}, text)]));
}
