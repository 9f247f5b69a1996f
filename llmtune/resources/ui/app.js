// llmtune ui: one page, routes in the hash (#/runs, #/run/ID, #/compare/ID,ID, #/launch, #/try).
// Plain JavaScript, no library: curves are SVG drawn here. Text from runs is always set as text.
"use strict";

const POLL_MS = 2000;
const COLORS = ["#1f6feb", "#d9480f", "#2b8a3e", "#9c36b5", "#c2255c", "#0b7285", "#e67700", "#495057"];
let timer = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

async function api(path, body) {
  const opts = body === undefined ? {} : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const res = await fetch(path, opts);
  let data = null;
  try { data = await res.json(); } catch (e) { data = { error: res.statusText }; }
  if (!res.ok && !(data && "ok" in data)) throw new Error((data && (data.error && (data.error.message || data.error))) || res.statusText);
  return data;
}

function toast(text) {
  const t = document.getElementById("toast");
  t.textContent = text;
  t.classList.remove("hidden");
  clearTimeout(t._h);
  t._h = setTimeout(() => t.classList.add("hidden"), 5000);
}

function fmt(v) {
  if (v === null || v === undefined) return "-";
  if (typeof v === "number") {
    if (Number.isInteger(v)) return String(v);
    if (v !== 0 && (Math.abs(v) < 1e-3 || Math.abs(v) >= 1e5)) return v.toExponential(3);
    return v.toFixed(4);
  }
  return String(v);
}

function badge(status) {
  const cls = String(status || "").split(/[ ?]/)[0];
  return el("span", { class: "badge status " + cls, text: status || "-" });
}

function runHref(id) { return "#/run/" + encodeURIComponent(id); }
function runUrl(id, suffix) { return "/api/run/" + id.split("/").map(encodeURIComponent).join("/") + (suffix || ""); }

// ---------------------------------------------------------------------------------------------
// SVG line charts

function niceTicks(lo, hi, n) {
  if (!(hi > lo)) { hi = lo + 1; }
  const span = hi - lo, step0 = span / n, mag = Math.pow(10, Math.floor(Math.log10(step0)));
  const step = [1, 2, 5, 10].map(m => m * mag).find(s => span / s <= n) || 10 * mag;
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + 1e-12; t += step) ticks.push(+t.toPrecision(12));
  return ticks;
}

// lines: [{name, xs, ys, color, dash}] -> a chart card with an <svg> of one <path> per line
function chart(title, lines, opts) {
  opts = opts || {};
  const W = 460, H = 230, L = 54, R = 12, T = 10, B = 30;
  const box = el("div", { class: "chart", "data-title": title });
  box.append(el("div", { class: "title", text: title }));
  const pts = lines.flatMap(l => l.xs.map((x, i) => [x, l.ys[i]])).filter(p => p[1] !== null && isFinite(p[1]));
  const NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const mk = (tag, attrs) => { const n = document.createElementNS(NS, tag); for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v); return n; };
  if (!pts.length) {
    const t = mk("text", { x: W / 2, y: H / 2, "text-anchor": "middle", fill: "#8a93a3", "font-size": 13 });
    t.textContent = opts.empty || "nothing logged yet";
    svg.append(t);
    box.append(svg);
    return box;
  }
  let x0 = Math.min(...pts.map(p => p[0])), x1 = Math.max(...pts.map(p => p[0]));
  let y0 = Math.min(...pts.map(p => p[1])), y1 = Math.max(...pts.map(p => p[1]));
  if (x1 === x0) { x1 = x0 + 1; }
  if (y1 === y0) { y0 -= Math.abs(y0) * 0.05 || 0.5; y1 += Math.abs(y1) * 0.05 || 0.5; }
  const pad = (y1 - y0) * 0.06; y0 -= pad; y1 += pad;
  const sx = x => L + (x - x0) / (x1 - x0) * (W - L - R);
  const sy = y => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  for (const t of niceTicks(y0, y1, 5)) {
    svg.append(mk("line", { x1: L, x2: W - R, y1: sy(t), y2: sy(t), stroke: "#eef0f3" }));
    const lab = mk("text", { x: L - 6, y: sy(t) + 4, "text-anchor": "end", "font-size": 10.5, fill: "#6b7280" });
    lab.textContent = fmt(t).replace(/\.?0+$/, m => m.startsWith(".") ? "" : m) || "0";
    svg.append(lab);
  }
  for (const t of niceTicks(x0, x1, 6).filter(Number.isInteger)) {  // steps are whole numbers
    const lab = mk("text", { x: sx(t), y: H - B + 16, "text-anchor": "middle", "font-size": 10.5, fill: "#6b7280" });
    lab.textContent = String(t);
    svg.append(lab);
  }
  svg.append(mk("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, stroke: "#9aa3b2" }));
  svg.append(mk("line", { x1: L, x2: L, y1: T, y2: H - B, stroke: "#9aa3b2" }));
  const xl = mk("text", { x: W - R, y: H - 3, "text-anchor": "end", "font-size": 10.5, fill: "#6b7280" });
  xl.textContent = "step";
  svg.append(xl);
  lines.forEach((l, i) => {
    const color = l.color || COLORS[i % COLORS.length];
    const p = l.xs.map((x, j) => [x, l.ys[j]]).filter(q => q[1] !== null && isFinite(q[1]));
    if (!p.length) return;
    const d = p.map((q, j) => (j ? "L" : "M") + sx(q[0]).toFixed(1) + "," + sy(q[1]).toFixed(1)).join("");
    svg.append(mk("path", { d, fill: "none", stroke: color, "stroke-width": l.width || 1.8, "stroke-dasharray": l.dash || "", class: "curve", "data-name": l.name }));
    if (p.length <= 30 || l.dots) for (const q of p) svg.append(mk("circle", { cx: sx(q[0]), cy: sy(q[1]), r: 2.4, fill: color }));
  });
  box.append(svg);
  box.append(el("div", { class: "legend" }, lines.map((l, i) => el("span", {}, el("i", { style: `background:${l.color || COLORS[i % COLORS.length]}` }), l.name))));
  return box;
}

function smooth(ys, w) {
  // exponential moving average with bias correction (as TensorBoard's smoothing)
  w = w === undefined ? Math.min(0.9, Math.max(0, 1 - 10 / Math.max(ys.length, 1))) : w;
  const out = []; let acc = 0, n = 0;
  for (const y of ys) { n += 1; acc = acc * w + y * (1 - w); out.push(acc / (1 - Math.pow(w, n))); }
  return out;
}

function runCharts(s) {
  const main = s.main_metric;
  const charts = [];
  const loss = [{ name: "train loss", xs: s.train_step, ys: s.train_loss, color: "#9fb9e8", width: 1.2 }];
  if (s.train_loss.length > 12) loss.push({ name: "train loss (smoothed)", xs: s.train_step, ys: smooth(s.train_loss), color: "#1f6feb" });
  if (s.eval.loss) loss.push({ name: "eval loss", xs: s.eval_step, ys: s.eval.loss, color: "#d9480f", dots: true });
  charts.push(chart("loss", loss));
  if (main !== "loss") {
    const ys = s.eval[main] || [];
    charts.push(chart(`eval ${main} (${s.greater_is_better ? "higher" : "lower"} is better)`, [{ name: main, xs: s.eval_step, ys, color: "#2b8a3e", dots: true }], { empty: "no evaluation yet" }));
  }
  charts.push(chart("learning rate", [{ name: "lr", xs: s.lr_step, ys: s.lr, color: "#9c36b5" }]));
  return charts;
}

// ---------------------------------------------------------------------------------------------
// Runs

const picked = new Set();

async function viewRuns(view) {
  const table = el("table", { id: "runs-table" });
  const addInput = el("input", { type: "text", id: "add-path", placeholder: "folder inside the runs dir, e.g. sweeps/lr-3e-4", size: 42 });
  const addMsg = el("span", { id: "add-msg", class: "msg" });
  const compareBtn = el("button", { id: "compare-btn", class: "primary", onclick: () => { location.hash = "#/compare/" + [...picked].map(encodeURIComponent).join(","); } }, "Compare selected");
  const addBtn = el("button", {
    id: "add-btn", onclick: async () => {
      try {
        const r = await api("/api/runs/add", { path: addInput.value });
        addMsg.className = "msg ok"; addMsg.textContent = "added " + r.id; refresh();
      } catch (e) { addMsg.className = "msg error"; addMsg.textContent = e.message; }
    }
  }, "Add folder");
  view.append(el("h2", {}, "Runs"), el("div", { class: "toolbar" }, compareBtn, el("span", { class: "muted", id: "picked-count" }), el("span", { style: "flex:1" }), addInput, addBtn, addMsg), el("div", { class: "card" }, table));
  const count = document.getElementById("picked-count");
  function updatePicked() { compareBtn.disabled = picked.size < 1; count.textContent = picked.size ? `${picked.size} selected` : "tick runs to compare them"; }
  let lastKey = null;
  async function refresh() {
    let data;
    try { data = await api("/api/runs"); } catch (e) { toast(e.message); return; }
    const key = JSON.stringify(data);
    if (key === lastKey) return;  // unchanged: leave the table (and a click in progress) alone
    lastKey = key;
    document.getElementById("root").textContent = data.root;
    const rows = data.runs.slice().sort((a, b) => (b.updated || 0) - (a.updated || 0));
    table.replaceChildren(el("thead", {}, el("tr", {}, ["", "run", "status", "task", "model", "data", "best metric", "step", "wall time"].map(h => el("th", {}, h)))));
    const body = el("tbody");
    for (const r of rows) {
      const box = el("input", { type: "checkbox", class: "pick", "data-run": r.id, onclick: ev => { ev.stopPropagation(); ev.target.checked ? picked.add(r.id) : picked.delete(r.id); updatePicked(); } });
      box.checked = picked.has(r.id);
      const tr = el("tr", { class: "clickable", "data-run": r.id, onclick: () => { location.hash = runHref(r.id); } },
        el("td", {}, box), el("td", {}, el("a", { href: runHref(r.id), onclick: e => e.stopPropagation() }, r.id)), el("td", {}, badge(r.status)),
        el("td", {}, r.task), el("td", { class: "small" }, r.model), el("td", { class: "small" }, r.data),
        el("td", { class: "nowrap" }, r.best === null || r.best === undefined ? "-" : `${r.metric} ${fmt(r.best)} @ ${r.best_step}`),
        el("td", { class: "num" }, r.step || "-"), el("td", { class: "num" }, r.wall || "-"));
      body.append(tr);
    }
    if (!rows.length) body.append(el("tr", {}, el("td", { colspan: 9, class: "muted" }, "No runs yet: start one on the Launch page, or run llmtune with --output-dir inside this folder.")));
    table.append(body);
    updatePicked();
  }
  await refresh();
  timer = setInterval(refresh, POLL_MS);
}

// ---------------------------------------------------------------------------------------------
// One run

async function viewRun(view, id) {
  const head = el("div", { class: "toolbar" });
  const body = el("div");
  view.append(head, body);
  let tab = "overview", last = null, predsLoaded = false, lastKey = null;
  const panes = {};
  const tabs = el("div", { class: "tabs" });
  for (const [name, label] of [["overview", "Overview"], ["predictions", "Predictions"], ["config", "Config"], ["card", "Model card"], ["log", "Launch log"]]) {
    tabs.append(el("button", { id: "tab-" + name, onclick: () => show(name) }, label));
    panes[name] = el("div", { id: "pane-" + name, class: "hidden" });
  }
  function show(name) {
    tab = name;
    for (const [k, p] of Object.entries(panes)) p.classList.toggle("hidden", k !== name);
    for (const b of tabs.children) b.classList.toggle("active", b.id === "tab-" + name);
    if (name === "predictions" && last && !predsLoaded) loadPredictions();
  }
  body.append(tabs, ...Object.values(panes));
  show("overview");

  async function action(path) {
    try {
      const r = await api(path, { run: id });
      if (r.ok === false) toast(r.error || "refused"); else toast(path.endsWith("stop") ? "SIGTERM sent: the run saves a checkpoint and stops" : "resumed (pid " + r.pid + ")");
    } catch (e) { toast(e.message); }
    refresh();
  }
  async function loadPredictions() {
    predsLoaded = true;
    panes.predictions.replaceChildren(el("p", { class: "muted" }, "loading..."));
    try { renderPredictions(panes.predictions, await api(runUrl(id, "/predictions")), last); }
    catch (e) { panes.predictions.replaceChildren(el("p", { class: "msg error" }, e.message)); }
  }
  async function refresh() {
    let d = null, err = null;
    try { d = await api(runUrl(id)); } catch (e) { err = e.message; }
    const logData = await api(runUrl(id, "/log")).catch(() => null);
    const key = JSON.stringify([d, err, logData]);
    if (key === lastKey) return;  // nothing changed: keep the page as it is (no flicker, no lost scroll)
    lastKey = key;
    const launched = (d && d.launched) || (logData && logData.launched);
    const status = d ? d.status : (launched ? (launched.running ? "starting" : "failed") : "unknown");
    // a run's process still saves and exits after its status says "stopped" or "finished": not resumable yet
    const active = status === "running" || status === "starting";
    const running = active || !!(launched && launched.running);
    head.replaceChildren(
      el("h2", { id: "run-title", style: "margin:0" }, id), el("span", { id: "run-status" }, badge(status)),
      d ? el("span", { class: "muted" }, d.task + " · " + (d.summary.model || "")) : null,
      el("span", { style: "flex:1" }),
      el("button", { id: "stop-btn", class: "danger", disabled: !active, onclick: () => action("/api/stop") }, "Stop (SIGTERM)"),
      el("button", { id: "resume-btn", disabled: running || status === "finished" || !d, onclick: () => action("/api/resume") }, "Resume"),
      el("a", { href: "#/try/" + encodeURIComponent(id) }, "Try it"));
    panes.log.replaceChildren(el("pre", { id: "launch-log" }, (logData && logData.log) || "(not launched from this page)"));
    if (!d) {
      panes.overview.replaceChildren(el("p", { class: "muted" }, running ? "starting: loading model and data..." : err), el("pre", {}, (logData && logData.log) || ""));
      return running || !!launched;
    }
    const wasRunning = last && last.status !== d.status;
    last = d;
    const sumTable = el("table", { id: "summary-table" }, Object.entries(d.summary).map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, v))));
    const metrics = el("div", { id: "metrics" });
    for (const [split, vals] of Object.entries(d.metrics || {})) {
      if (!vals || typeof vals !== "object") continue;
      metrics.append(el("h3", {}, split), el("table", { class: "metrics-table" }, Object.entries(vals).map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", { class: "num" }, typeof v === "object" ? JSON.stringify(v) : fmt(v))))));
    }
    if (!metrics.children.length) metrics.append(el("p", { class: "muted" }, "no metrics.json yet (written when the run finishes)"));
    panes.overview.replaceChildren(el("div", { class: "grid2", id: "curves" }, runCharts(d.series)),
      el("div", { class: "grid2", style: "margin-top:12px" }, el("div", { class: "card" }, el("h3", {}, "Summary"), sumTable), el("div", { class: "card" }, el("h3", {}, "Metrics"), metrics)));
    panes.config.replaceChildren(el("pre", { id: "config-yaml" }, d.config_yaml || ""));
    panes.card.replaceChildren(el("pre", { id: "card" }, d.card || "(no model card yet: README.md is written when the run finishes)"));
    if (wasRunning) predsLoaded = false;
    if (tab === "predictions" && !predsLoaded) loadPredictions();
    if (!d.has_predictions && !predsLoaded) panes.predictions.replaceChildren(el("p", { class: "muted" }, "no predictions.jsonl (written after the final evaluation)"));
    return running;
  }
  await refresh();
  timer = setInterval(refresh, POLL_MS);
}

// ---------------------------------------------------------------------------------------------
// Predictions browser

function predictionKind(row) {
  if (Array.isArray(row.tokens)) return "ner";
  if ("context" in row && "question" in row) return "qa";
  if ("hypothesis" in row) return "asr";
  if ("chosen_reward" in row || "chosen_score" in row) return "pairs";
  if ("completion" in row && "reward" in row) return "rewarded";
  if ("text" in row && "label" in row) return "classification";
  if ("reference" in row && "prediction" in row) return "generation";
  return "generic";
}

function entitySpans(tags) {
  const ents = []; let cur = null;
  tags.forEach((t, i) => {
    const tag = String(t);
    if (tag === "O" || tag === "") { cur = null; return; }
    const type = tag.replace(/^[BIES]-/, "");
    if (cur && cur.type === type && !tag.startsWith("B-")) { cur.end = i; return; }
    cur = { type, start: i, end: i }; ents.push(cur);
  });
  return ents;
}

function nerLine(tokens, tags, other) {
  const spans = entitySpans(tags), at = new Map(spans.map(s => [s.start, s]));
  const line = el("div", {});
  for (let i = 0; i < tokens.length;) {
    const s = at.get(i);
    if (s) {
      const diff = tags.slice(s.start, s.end + 1).some((t, j) => t !== other[s.start + j]);
      const words = tokens.slice(s.start, s.end + 1).join(" ");
      line.append(el("span", { class: "tok ent" + (diff ? " diff" : ""), "data-text": words, "data-type": s.type }, words, el("span", { class: "tag" }, s.type)));
      i = s.end + 1;
    } else { line.append(el("span", { class: "tok" + (tags[i] !== other[i] ? " diff" : ""), "data-text": tokens[i] }, tokens[i])); i += 1; }
  }
  return line;
}

function markSpans(text, spans) {
  // spans: [{start, end, cls}] non-overlapping after merge; overlapping pred/ref -> "both"
  const out = el("span");
  const marks = new Array(text.length).fill("");
  for (const s of spans) for (let i = s.start; i < s.end && i < text.length; i++) marks[i] = marks[i] && marks[i] !== s.cls ? "both" : s.cls;
  let i = 0;
  while (i < text.length) {
    let j = i; while (j < text.length && marks[j] === marks[i]) j++;
    out.append(marks[i] ? el("mark", { class: marks[i] }, text.slice(i, j)) : text.slice(i, j));
    i = j;
  }
  return out;
}

function find(text, needle) {
  if (!needle) return null;
  const i = String(text).toLowerCase().indexOf(String(needle).toLowerCase());
  return i < 0 ? null : { start: i, end: i + String(needle).length };
}

function renderCells(kind, r, metric) {
  const short = v => (typeof v === "object" ? JSON.stringify(v) : String(v ?? ""));
  switch (kind) {
    case "classification": return [el("td", {}, short(r.text) + (r.text_pair ? " ‖ " + short(r.text_pair) : "")), el("td", {}, short(r.label)), el("td", {}, short(r.prediction)), el("td", { class: "num" }, fmt(r.score))];
    case "ner": return [el("td", {}, el("div", { class: "small muted" }, "reference"), nerLine(r.tokens, r.reference || [], r.prediction || []), el("div", { class: "small muted" }, "predicted"), nerLine(r.tokens, r.prediction || [], r.reference || []))];
    case "qa": {
      const answers = Array.isArray(r.answers) ? r.answers : [r.answers];
      const spans = [];
      const ref = answers.map(a => find(r.context, a)).find(x => x); if (ref) spans.push({ ...ref, cls: "ref" });
      const pred = find(r.context, r.prediction); if (pred) spans.push({ ...pred, cls: "pred" });
      return [el("td", {}, el("div", {}, el("b", {}, short(r.question))), el("div", { class: "small" }, markSpans(String(r.context || ""), spans))), el("td", {}, el("mark", { class: "ref" }, answers.join(" | "))), el("td", {}, el("mark", { class: "pred" }, short(r.prediction) || "(no answer)")), el("td", { class: "num" }, fmt(r.score))];
    }
    case "asr": return [el("td", {}, r._audio ? el("audio", { controls: true, preload: "none", src: "/api/file/" + r._audio.split("/").map(encodeURIComponent).join("/") }) : el("span", { class: "muted small" }, short(r.audio))), el("td", {}, short(r.reference)), el("td", {}, short(r.hypothesis)), el("td", { class: "num" }, fmt(r.wer))];
    case "pairs": return [el("td", { class: "num" }, fmt(r.row)), el("td", { class: "num" }, fmt(r.chosen_reward ?? r.chosen_score)), el("td", { class: "num" }, fmt(r.rejected_reward ?? r.rejected_score)), el("td", {}, short(r.correct))];
    case "rewarded": return [el("td", {}, short(r.prompt)), el("td", {}, short(r.completion)), el("td", { class: "num" }, fmt(r.reward))];
    case "generation": return [el("td", { class: "small" }, short(r.input)), el("td", {}, short(r.reference)), el("td", {}, short(r.prediction)), el("td", { class: "num" }, fmt(r[metric]))];
    default: return Object.entries(r).filter(([k]) => !k.startsWith("_")).map(([, v]) => el("td", { class: "small" }, short(v)));
  }
}

const HEADERS = {
  classification: ["text", "label", "predicted", "score"], ner: ["sentence: entities by reference and by prediction (red outline: they differ)"],
  qa: ["question and context (green: reference, yellow: predicted)", "reference", "predicted", "score"], asr: ["audio", "reference", "transcript", "WER"],
  pairs: ["row", "chosen reward", "rejected reward", "chosen ranked first"], rewarded: ["prompt", "completion", "reward"], generation: ["input", "reference", "generated", "metric"],
};

function renderPredictions(pane, data, detail) {
  pane.replaceChildren();
  if (!data.rows.length) { pane.append(el("p", { class: "muted" }, "no predictions.jsonl in this run")); return; }
  const kind = predictionKind(data.rows[0]);
  const numeric = Object.keys(data.rows[0]).filter(k => !k.startsWith("_") && typeof data.rows[0][k] === "number");
  const filter = el("input", { type: "text", id: "pred-filter", placeholder: "filter rows (any text)", size: 30 });
  const sort = el("select", { id: "pred-sort" }, el("option", { value: "" }, "file order"), numeric.flatMap(k => [el("option", { value: k + ":desc" }, k + " (high first)"), el("option", { value: k + ":asc" }, k + " (low first)")]));
  const errorsFirst = el("input", { type: "checkbox", id: "pred-errors" });
  const hasErrors = data.rows.some(r => r._error !== null && r._error !== undefined);
  errorsFirst.checked = hasErrors;
  const nErr = data.rows.filter(r => r._error).length;
  const info = el("span", { class: "muted", id: "pred-info" });
  const table = el("table", { id: "pred-table" });
  pane.append(el("div", { class: "toolbar" }, filter, sort, hasErrors ? el("label", {}, errorsFirst, " errors first") : null, info,
    el("span", { class: "muted small" }, hasErrors ? `${nErr} of ${data.rows.length} wrong` : ""), data.total > data.rows.length ? el("span", { class: "muted small" }, `(first ${data.rows.length} of ${data.total})`) : null), table);
  let headers = HEADERS[kind] || Object.keys(data.rows[0]).filter(k => !k.startsWith("_"));
  if (kind === "generation") headers = headers.slice(0, 3).concat([data.metric || "metric"]);
  function draw() {
    const q = filter.value.trim().toLowerCase();
    let rows = data.rows.filter(r => !q || JSON.stringify(r).toLowerCase().includes(q));
    const [key, dir] = sort.value.split(":");
    if (key) rows = rows.slice().sort((a, b) => ((a[key] ?? -Infinity) - (b[key] ?? -Infinity)) * (dir === "asc" ? 1 : -1));
    if (errorsFirst.checked) rows = rows.slice().sort((a, b) => (b._error ? 1 : 0) - (a._error ? 1 : 0));
    const shown = rows.slice(0, 500);
    info.textContent = `${rows.length} rows` + (rows.length > shown.length ? ", first 500 shown" : "");
    table.replaceChildren(el("thead", {}, el("tr", {}, el("th", {}, "#"), headers.map(h => el("th", {}, h)))),
      el("tbody", {}, shown.map(r => el("tr", { class: r._error ? "err" : "", "data-error": r._error ? "1" : "0" }, el("td", { class: "num muted" }, r._i), renderCells(kind, r, data.metric)))));
  }
  filter.addEventListener("input", draw); sort.addEventListener("change", draw); errorsFirst.addEventListener("change", draw);
  draw();
}

// ---------------------------------------------------------------------------------------------
// Compare

async function viewCompare(view, ids) {
  view.append(el("h2", {}, "Compare runs"));
  const box = el("div");
  view.append(box);
  let lastKey = null;
  async function refresh() {
    let d;
    try { d = await api("/api/compare?ids=" + ids.map(encodeURIComponent).join(",")); } catch (e) { box.replaceChildren(el("p", { class: "msg error" }, e.message)); return; }
    const key = JSON.stringify(d);
    if (key === lastKey) return;
    lastKey = key;
    const table = el("table", { id: "compare-table" }, el("thead", {}, el("tr", {}, el("th", {}, ""), d.runs.map(r => el("th", {}, el("a", { href: runHref(r.id) }, r.label))))),
      el("tbody", {}, d.fields.map(f => el("tr", {}, el("th", {}, f), d.runs.map(r => el("td", {}, r.summary[f] || "-"))))));
    const loss = d.runs.map((r, i) => ({ name: r.label, xs: r.series.train_step, ys: r.series.train_loss, color: COLORS[i % COLORS.length] }));
    const evl = d.runs.filter(r => r.series.eval.loss).map((r, i) => ({ name: r.label, xs: r.series.eval_step, ys: r.series.eval.loss, color: COLORS[i % COLORS.length], dots: true }));
    const metrics = [...new Set(d.runs.map(r => r.series.main_metric))].filter(m => m !== "loss");
    const charts = [chart("train loss", loss), chart("eval loss", evl, { empty: "no evaluation logged" })];
    for (const m of metrics) charts.push(chart("eval " + m, d.runs.map((r, i) => ({ name: r.label, xs: r.series.eval_step, ys: r.series.eval[m] || [], color: COLORS[i % COLORS.length], dots: true }))));
    box.replaceChildren(el("div", { class: "grid2", id: "compare-curves" }, charts), el("div", { class: "card", style: "margin-top:12px" }, table));
  }
  await refresh();
  timer = setInterval(refresh, POLL_MS * 2);
}

// ---------------------------------------------------------------------------------------------
// Launch

async function viewLaunch(view) {
  const recipes = (await api("/api/recipes")).recipes;
  const select = el("select", { id: "recipe-select" }, recipes.map(r => el("option", { value: r.name }, r.name)));
  const desc = el("div", { class: "muted", id: "recipe-desc" });
  const form = el("form", { id: "launch-form", onsubmit: e => e.preventDefault() });
  const name = el("input", { type: "text", id: "run-name", size: 28 });
  const nameErr = el("div", { class: "error", id: "err-name" });
  const msg = el("div", { id: "launch-msg", class: "msg" });
  const preview = el("pre", { id: "preview", class: "hidden" });
  const checkBtn = el("button", { id: "check-btn", type: "button", onclick: () => check(true) }, "Check and preview");
  const startBtn = el("button", { id: "start-btn", class: "primary", type: "button", onclick: start }, "Start run");
  view.append(el("h2", {}, "Launch a run"), el("div", { class: "card" }, el("div", { class: "toolbar" }, el("label", {}, "recipe ", select), desc),
    el("div", { class: "toolbar" }, el("label", {}, "run name ", name), el("span", { class: "muted small" }, "the run folder inside the runs directory"), nameErr), form,
    el("div", { class: "toolbar" }, checkBtn, startBtn, msg), preview));
  let initial = {};
  async function load() {
    const f = await api("/api/recipe/" + encodeURIComponent(select.value));
    desc.textContent = f.description;
    name.value = f.default_name + "-" + new Date().toISOString().slice(5, 16).replace(/[-:T]/g, "");
    form.replaceChildren(); initial = {};
    for (const [section, fields] of Object.entries(f.sections)) {
      if (!fields.length) continue;
      const grid = el("div", { class: "fields" });
      for (const fd of fields) {
        const text = fd.value === null || fd.value === undefined ? "" : (typeof fd.value === "object" ? JSON.stringify(fd.value) : String(fd.value));
        initial[fd.key] = text;
        let input;
        if (fd.choices || fd.type === "bool") {
          const opts = fd.type === "bool" ? ["true", "false"] : fd.choices;
          input = el("select", {}, (fd.optional ? [""] : []).concat(opts).map(o => el("option", { value: o }, o === "" ? "(default)" : o)));
          if (!opts.includes(text) && text !== "") input.append(el("option", { value: text }, text));
          input.value = text;
        } else {
          input = el("input", { type: "text", placeholder: fd.optional ? "(default)" : "" });
          input.value = text;
        }
        input.id = "f-" + fd.key; input.name = fd.key;
        const wrap = el("div", { class: "field", id: "field-" + fd.key }, el("label", { for: input.id }, fd.key), input,
          fd.bounds_text ? el("div", { class: "hint" }, fd.bounds_text) : null, el("div", { class: "error", id: "err-" + fd.key }));
        input.addEventListener("change", () => { wrap.classList.toggle("changed", input.value !== initial[fd.key]); check(false); });
        grid.append(wrap);
      }
      form.append(el("details", { class: "form-section", open: ["train", "data", "model", "options"].includes(section) || null }, el("summary", {}, section), grid));
    }
    clearErrors(); preview.classList.add("hidden"); msg.textContent = "";
    form.dataset.recipe = f.recipe;  // loaded (tests wait for it)
  }
  function values() {
    const out = {};
    for (const input of form.querySelectorAll("input, select")) if (input.value !== initial[input.name]) out[input.name] = input.value === "" ? null : input.value;
    return out;
  }
  function clearErrors() {
    for (const e of form.querySelectorAll(".error")) e.textContent = "";
    for (const e of form.querySelectorAll(".field.bad")) e.classList.remove("bad");
    nameErr.textContent = "";
  }
  function showProblems(problems) {
    clearErrors();
    const loose = [];
    for (const p of problems) {
      const slot = p.key === "name" ? nameErr : document.getElementById("err-" + p.key);
      if (slot) {
        slot.textContent = p.message;
        const f = document.getElementById("field-" + p.key);
        if (f) { f.classList.add("bad"); f.closest("details").open = true; }
      } else loose.push(p.message);
    }
    msg.className = "msg error";
    msg.textContent = loose.length ? loose.join("; ") : `${problems.length} problem${problems.length > 1 ? "s" : ""}: see the marked field${problems.length > 1 ? "s" : ""}`;
  }
  async function check(showPreview) {
    const r = await api("/api/check", { recipe: select.value, values: values() });
    if (!r.ok) { showProblems(r.problems); preview.classList.add("hidden"); return false; }
    clearErrors(); msg.className = "msg ok"; msg.textContent = "config OK" + (r.notes.length ? " · " + r.notes.join(" · ") : "");
    if (showPreview) { preview.textContent = r.yaml; preview.classList.remove("hidden"); }
    return true;
  }
  async function start() {
    startBtn.disabled = true;
    try {
      const r = await api("/api/launch", { recipe: select.value, name: name.value.trim(), values: values() });
      if (!r.ok) { showProblems(r.problems || [{ key: null, message: r.error }]); return; }
      location.hash = runHref(r.id);
    } catch (e) { msg.className = "msg error"; msg.textContent = e.message; } finally { startBtn.disabled = false; }
  }
  select.addEventListener("change", load);
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  select.value = params.get("recipe") || (recipes.some(r => r.name === "sentiment-demo") ? "sentiment-demo" : recipes[0].name);
  await load();
}

// ---------------------------------------------------------------------------------------------
// Try: chat (streamed through serve's /v1/chat/completions) or predict (/v1/predict)

async function viewTry(view, preset) {
  const runs = (await api("/api/runs")).runs.filter(r => r.status === "finished");
  const select = el("select", { id: "try-run" }, runs.map(r => el("option", { value: r.id }, `${r.id} (${r.task})`)));
  if (preset) select.value = preset;
  const status = el("span", { id: "try-status", class: "muted" });
  const pane = el("div", { id: "try-pane" });
  const loadBtn = el("button", { id: "try-load", class: "primary", onclick: load }, "Load model");
  view.append(el("h2", {}, "Try a model"), el("div", { class: "card" }, el("div", { class: "toolbar" }, el("label", {}, "finished run ", select), loadBtn, status), pane));
  const current = await api("/api/try");
  if (current.run) ready(current);
  async function load() {
    loadBtn.disabled = true; status.textContent = "loading " + select.value + "..."; pane.replaceChildren();
    try { ready(await api("/api/try/load", { run: select.value })); } catch (e) { status.textContent = ""; pane.replaceChildren(el("p", { class: "msg error" }, e.message)); }
    loadBtn.disabled = false;
  }
  function ready(info) {
    status.textContent = `loaded ${info.run} (${info.task})`;
    pane.replaceChildren(info.generative ? chatPane() : predictPane(info));
  }
}

function chatPane() {
  const log = el("div", { class: "chat", id: "chat-log" });
  const input = el("textarea", { id: "chat-input", rows: 2, style: "width:100%", placeholder: "Say something (Enter sends, Shift+Enter new line)" });
  const maxTok = el("input", { type: "text", id: "chat-max-tokens", value: "64", size: 4 });
  const temp = el("input", { type: "text", id: "chat-temperature", value: "0.7", size: 4 });
  const send = el("button", { id: "chat-send", class: "primary", onclick: go }, "Send");
  const messages = [];
  input.addEventListener("keydown", e => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); go(); } });
  async function go() {
    const text = input.value.trim(); if (!text) return;
    input.value = ""; send.disabled = true;
    messages.push({ role: "user", content: text });
    log.append(el("div", { class: "bubble user" }, text));
    const bubble = el("div", { class: "bubble assistant streaming" });
    log.append(bubble);
    let answer = "";
    try {
      const res = await fetch("/api/try/model/v1/chat/completions", { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ messages, stream: true, max_tokens: +maxTok.value, temperature: +temp.value }) });
      if (!res.ok) { const d = await res.json(); throw new Error((d.error && d.error.message) || res.statusText); }
      const reader = res.body.getReader(), dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let k;
        while ((k = buf.indexOf("\n\n")) >= 0) {
          const ev = buf.slice(0, k); buf = buf.slice(k + 2);
          const line = ev.split("\n").find(l => l.startsWith("data: "));
          if (!line || line === "data: [DONE]") continue;
          const delta = JSON.parse(line.slice(6)).choices[0].delta || {};
          if (delta.content) { answer += delta.content; bubble.textContent = answer; log.scrollTop = log.scrollHeight; }
        }
      }
      if (!answer) bubble.append(el("span", { class: "muted" }, "(the model ended its answer at once)"));
      messages.push({ role: "assistant", content: answer });
    } catch (e) { bubble.append(el("span", { class: "msg error" }, e.message)); }
    bubble.classList.remove("streaming"); bubble.classList.add("done");
    send.disabled = false;
  }
  return el("div", {}, log, input, el("div", { class: "toolbar" }, send, el("label", {}, "max tokens ", maxTok), el("label", {}, "temperature ", temp)));
}

function predictPane(info) {
  const input = el("textarea", { id: "predict-input", rows: 4, style: "width:100%", placeholder: 'One input per line: plain text, or a JSON row such as {"question": "...", "context": "..."}' });
  const out = el("div", { id: "predict-out" });
  const btn = el("button", { id: "predict-btn", class: "primary", onclick: async () => {
    const inputs = input.value.split("\n").map(s => s.trim()).filter(Boolean).map(s => { if (s.startsWith("{")) { try { return JSON.parse(s); } catch (e) { return s; } } return s; });
    if (!inputs.length) return;
    btn.disabled = true;
    try {
      const res = await fetch("/api/try/model/v1/predict", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ inputs }) });
      const d = await res.json();
      if (!res.ok) throw new Error((d.error && d.error.message) || res.statusText);
      const keys = [...new Set(d.predictions.flatMap(p => Object.keys(p)))];
      out.replaceChildren(el("table", {}, el("thead", {}, el("tr", {}, keys.map(k => el("th", {}, k)))), el("tbody", {}, d.predictions.map(p => el("tr", {}, keys.map(k => el("td", {}, typeof p[k] === "object" ? JSON.stringify(p[k]) : fmt(p[k]))))))));
    } catch (e) { out.replaceChildren(el("p", { class: "msg error" }, e.message)); }
    btn.disabled = false;
  } }, "Predict");
  return el("div", {}, el("p", { class: "muted" }, `${info.task}: predictions as \`llmtune predict\` writes them`), input, el("div", { class: "toolbar" }, btn), out);
}

// ---------------------------------------------------------------------------------------------
// router

async function route() {
  clearInterval(timer); timer = null;
  const view = document.getElementById("view");
  view.replaceChildren();
  const hash = location.hash.replace(/^#\/?/, "");
  const [page, ...rest] = hash.split("?")[0].split("/");
  const arg = decodeURIComponent(rest.join("/"));
  for (const a of document.querySelectorAll("header nav a")) a.classList.toggle("active", a.id === "nav-" + (page === "run" || page === "compare" ? "runs" : page || "runs"));
  try {
    if (page === "run") await viewRun(view, arg);
    else if (page === "compare") await viewCompare(view, rest.join("/").split(",").map(decodeURIComponent).filter(Boolean));
    else if (page === "launch") await viewLaunch(view);
    else if (page === "try") await viewTry(view, arg);
    else await viewRuns(view);
  } catch (e) { view.append(el("p", { class: "msg error" }, e.message)); }
}

window.addEventListener("hashchange", route);
route();
