// SQL: one read-only statement over the Analytics Query RPC, the result as a table.

import { call, ANALYTICS } from "./api.js";
import { h, errorBox, table } from "./util.js";

export function mount(root) {
  const editor = h("textarea", { id: "sql-text", rows: 6, spellcheck: "false" }, sessionStorage.getItem("foundry.sql") || "SELECT status, count(*) AS runs FROM run_status GROUP BY status ORDER BY runs DESC");
  const saved = h("select", { id: "sql-saved" }, h("option", { value: "" }, "saved questions…"));
  const result = h("div", { id: "sql-result" });
  const run = h("button", { id: "sql-run", class: "primary", type: "submit" }, "Run");
  const form = h("form", { class: "sql-form" }, editor, h("div", { class: "inline" }, run, saved, h("span", { class: "muted small" }, "read-only; Ctrl+Enter runs")));
  const questions = new Map();
  call(ANALYTICS, "ListSavedQuestions", {}).then((reply) => {
    for (const q of reply.questions || []) {
      questions.set(q.name, q);
      saved.append(h("option", { value: q.name }, q.title || q.name));
    }
  }, () => {});
  saved.addEventListener("change", () => { const q = questions.get(saved.value); if (q) editor.value = q.sql; });
  // A saved question left as it is runs as itself: its parameters take their defaults (sent
  // as SQL, it named $since with no value, and 5 of the 6 failed).
  const asked = () => {
    const q = questions.get(saved.value);
    return q && editor.value === q.sql ? { question: q.name } : { sql: editor.value };
  };
  editor.addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) form.requestSubmit(); });
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    sessionStorage.setItem("foundry.sql", editor.value);
    run.disabled = true;
    try {
      const reply = await call(ANALYTICS, "Query", { ...asked(), maxRows: 1000 });
      result.replaceChildren(resultTable(reply));
    } catch (error) {
      result.replaceChildren(errorBox(error));
    } finally {
      run.disabled = false;
    }
  });
  root.append(h("div", { class: "page-head" }, h("h1", {}, "SQL")), form, result);
}

function resultTable(reply) {
  const rows = (reply.rowsJson || []).map((text) => JSON.parse(text));
  const cell = (v) => h("td", { class: typeof v === "number" ? "num" : "" }, v === null ? h("span", { class: "muted" }, "NULL") : typeof v === "object" ? JSON.stringify(v) : String(v));
  return h("div", {},
    h("p", { class: "muted small", id: "sql-summary" }, `${rows.length} row${rows.length === 1 ? "" : "s"}${reply.truncated ? " (truncated)" : ""} in ${Number(reply.elapsedMs || 0).toFixed(1)} ms`),
    table((reply.columns || []).map((c) => h("span", { title: c.type }, c.name)), rows.map((r) => h("tr", {}, r.map(cell))), { id: "sql-table" }));
}
