// The DAG as an SVG graph: steps ranked by longest path from a root (layers left to right),
// ordered within a layer by their parents' mean position (one sweep: cheap and mostly
// untangled), edges as curves. Node states change by attribute only, so live updates are cheap.

import { s } from "./util.js";

// Two lines a node: its id (cut to the node's width), its state below (an id of 15 letters
// ran under the state word when they shared a line).
const W = 150, H = 40, GAP_X = 60, GAP_Y = 14;

// The dependencies of each step: depends_on plus ${steps.ID...} references in its inputs.
export function dependencies(steps) {
  const ids = new Set(steps.map((step) => step.id));
  const deps = new Map();
  for (const step of steps) {
    const found = new Set(step.depends_on || []);
    for (const text of strings(step.inputs)) {
      // as the daemon reads one (core/dag.py): what is between ${ and }, trimmed, split on dots
      for (const match of text.matchAll(/\$\{([^}]*)\}/g)) {
        const path = match[1].trim().split(".");
        if (path[0] === "steps" && path[2] === "output" && ids.has(path[1])) found.add(path[1]);
      }
    }
    deps.set(step.id, [...found].filter((id) => ids.has(id)));
  }
  return deps;
}

// Every string in a JSON value (a walk with a stack: inputs can nest deeply).
function strings(value) {
  const found = [];
  const todo = [value];
  while (todo.length) {
    const item = todo.pop();
    if (typeof item === "string") found.push(item);
    else if (item && typeof item === "object") for (const child of Object.values(item)) todo.push(child);
  }
  return found;
}

// Each step's rank: the longest path to it from a root, in topological order (Kahn's). A
// recursive walk up the parents went as deep as the longest chain: a run of 6,000 steps listed
// child-first overflowed the browser's stack and its page showed only an error.
export function ranks(steps, deps) {
  const children = new Map(steps.map((step) => [step.id, []]));
  const waiting = new Map();
  for (const step of steps) {
    const parents = deps.get(step.id) || [];
    waiting.set(step.id, parents.length);
    for (const parent of parents) children.get(parent).push(step.id);
  }
  const rank = new Map();
  const ready = steps.filter((step) => waiting.get(step.id) === 0).map((step) => step.id);
  for (const id of ready) rank.set(id, 0);
  for (let next = 0; next < ready.length; next++) {
    const id = ready[next];
    for (const child of children.get(id)) {
      rank.set(child, Math.max(rank.get(child) ?? 0, rank.get(id) + 1));
      waiting.set(child, waiting.get(child) - 1);
      if (waiting.get(child) === 0) ready.push(child);
    }
  }
  for (const step of steps) if (!rank.has(step.id)) rank.set(step.id, 0); // a cycle: not drawn apart
  return rank;
}

export function layout(steps) {
  const deps = dependencies(steps);
  const rank = ranks(steps, deps);
  const layers = [];
  for (const step of steps) (layers[rank.get(step.id)] ||= []).push(step.id);
  const position = new Map();
  layers.forEach((layer, x) => {
    if (x > 0) {
      const weight = (id) => {
        const ps = deps.get(id).map((p) => position.get(p)?.row ?? 0);
        return ps.length ? ps.reduce((a, b) => a + b, 0) / ps.length : 0;
      };
      layer.sort((a, b) => weight(a) - weight(b));
    }
    layer.forEach((id, row) => position.set(id, { layer: x, row }));
  });
  const rows = layers.reduce((most, layer) => Math.max(most, layer.length), 1);
  return { deps, position, width: layers.length * (W + GAP_X) + 20, height: rows * (H + GAP_Y) + 20 };
}

export function drawDag(steps, onSelect) {
  const { deps, position, width, height } = layout(steps);
  const at = (id) => {
    const p = position.get(id);
    return { x: 10 + p.layer * (W + GAP_X), y: 10 + p.row * (H + GAP_Y) };
  };
  const edges = s("g", { class: "edges" });
  const nodes = s("g", { class: "nodes" });
  const byId = new Map();
  for (const step of steps) {
    const a = at(step.id);
    for (const parent of deps.get(step.id)) {
      const b = at(parent);
      const x1 = b.x + W, y1 = b.y + H / 2, x2 = a.x, y2 = a.y + H / 2, mid = (x1 + x2) / 2;
      edges.append(s("path", { d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}` }));
    }
    const label = step.id.length > 18 ? `${step.id.slice(0, 17)}…` : step.id;
    const node = s("g", { class: "node", transform: `translate(${a.x},${a.y})`, "data-step": step.id, "data-state": "pending", tabindex: "0", role: "button", "aria-label": `step ${step.id}` },
      s("title", {}, `${step.id} (${step.type})`),
      s("rect", { width: W, height: H, rx: 6 }),
      s("text", { x: 10, y: 17, class: "label", "clip-path": "url(#dag-node-clip)" }, label),
      s("text", { x: 10, y: 32, class: "state" }, "pending"));
    node.addEventListener("click", () => onSelect(step.id));
    node.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") onSelect(step.id); });
    nodes.append(node);
    byId.set(step.id, node);
  }
  // wide letters (an id of 18 W's) are clipped at the node's edge, not drawn into the next one
  const clip = s("defs", {}, s("clipPath", { id: "dag-node-clip" }, s("rect", { width: W - 8, height: H })));
  const svg = s("svg", { class: "dag", width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "the run's steps and their dependencies" }, clip, edges, nodes);
  return { svg, nodes: byId };
}

// Show a step's state: the colour comes from CSS on data-state, the word from the text.
export function setNodeState(node, state, extra = {}) {
  if (node.dataset.state !== state) {
    node.dataset.state = state;
    node.querySelector(".state").textContent = state.replaceAll("_", " ");
  }
  node.classList.toggle("breakpoint", Boolean(extra.breakpoint));
  node.classList.toggle("selected", Boolean(extra.selected));
}
