// memplan's page: the form is the state; the URL carries it; every change re-estimates through the JSON API.
"use strict";

const RL = ["ppo", "grpo", "reinforce", "rloo"];
const SCRIPT_METHOD = {train_sft: "sft", train_rm: "rm", train_dpo: "dpo", train_kto: "kto", train_prm: "prm",
                       train_kd: "kd"};
const ESTIMATOR_METHOD = {gae: "ppo", group_norm: "grpo", reinforce: "reinforce", rloo: "rloo"};
// verl's algorithm.adv_estimator → the method (frameworks/verl/run.py METHOD_ESTIMATORS).
const VERL_METHOD = {gae: "ppo", grpo: "grpo", reinforce_plus_plus: "reinforce", rloo: "rloo"};
const GIB = 2 ** 30;
// Inputs that are not OpenRLHF flags, but do belong in the URL.
const STATE_FIELDS = ["framework", "model", "method", "gpu", "host_ram", "gpus", "nodes", "extra", "verl_options",
                      "command", "plan_gpu", "max_gpus", "allow_lora"];
// Flags the planner keeps as given (the rest it chooses).
const PLAN_FLAGS = ["--max_len", "--generate_max_len", "--reward_pretrain", "--remote_rm_url"];

const $ = (sel) => document.querySelector(sel);
const form = $("#form");
let mode = "form";          // "form": estimate the form; "command": check the pasted command
let tab = "estimate";
let configs = {};           // uploaded config.json objects by name
let pinned = null;          // {verdict, spec, data}
let lastResult = null;      // {data, spec}
let timer = null;
let seq = 0;

const gib = (b) => (b / GIB).toFixed(2) + " GiB";
const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
const hostName = (h) => (h.count > 1 ? `${h.count} × ${h.ids}` : h.id);
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;",
                                                         "'": "&#39;"}[c]));
const isVerl = () => form.framework.value === "verl";
const isRL = () => RL.includes(form.method.value) && !isVerl();
const flagInputs = () => [...form.querySelectorAll("[data-flag]")];
const keyInputs = () => [...form.querySelectorAll("[data-key]")];
const inputByFlag = (flag) => form.querySelector(`[data-flag="${flag}"]`);

// ---- words and commands ----------------------------------------------------------------------------------
function words(text) {
  const joined = text.replace(/\\\r?\n/g, " ");
  return [...joined.matchAll(/"([^"]*)"|'([^']*)'|(\S+)/g)].map((m) => m[1] ?? m[2] ?? m[3]);
}

// --flag [value...] pairs of a word list (a value is every following word that is not a flag).
function flagPairs(list) {
  const pairs = [];
  for (let i = 0; i < list.length; i++) {
    if (!list[i].startsWith("--")) continue;
    const values = [];
    while (i + 1 < list.length && !list[i + 1].startsWith("--")) values.push(list[++i]);
    pairs.push([list[i - values.length], values]);
  }
  return pairs;
}

// A pasted verl command → form values (keys without an input go to "verl options").
function parseVerl(list, at) {
  const keys = {}; const extra = [];
  let model = null, method = null;
  for (const word of list.slice(at + 1)) {
    const eq = word.indexOf("=");
    const key = eq < 0 ? word : word.slice(0, eq), value = eq < 0 ? "" : word.slice(eq + 1);
    if (key === "actor_rollout_ref.model.path") { model = value; continue; }
    if (key === "algorithm.adv_estimator") { method = VERL_METHOD[value] || null; continue; }
    if (form.querySelector(`[data-key="${key}"]`)) keys[key] = value;
    else if (key.includes(".") || key.startsWith("+") || key.startsWith("~")) extra.push(/\s/.test(word) ? JSON.stringify(word) : word);
  }
  return {framework: "verl", method, values: {model}, keys, extra: extra.join(" ")};
}

// A pasted OpenRLHF or verl command → form values (unknown flags go to "More OpenRLHF flags").
function parseCommand(text) {
  const list = words(text);
  const verl = list.indexOf("verl.trainer.main_ppo");
  if (verl >= 0) return parseVerl(list, verl);
  const at = list.findIndex((w) => /openrlhf\.cli\.train_\w+/.test(w));
  if (at < 0) return null;
  const script = list[at].match(/openrlhf\.cli\.(train_\w+)/)[1];
  const values = {gpus: "", nodes: ""};
  for (const [flag, v] of flagPairs(list.slice(0, at))) {
    if (flag === "--num_gpus" || flag === "--nproc_per_node") values.gpus = v[0];
    if (flag === "--num_nodes" || flag === "--nnodes") values.nodes = v[0];
  }
  const flags = {}; const extra = [];
  let method = SCRIPT_METHOD[script] || (script === "train_ppo_ray" ? "ppo" : null);
  for (const [flag, v] of flagPairs(list.slice(at + 1))) {
    const key = flag.slice(2).split(".").pop();
    if (flag === "--pretrain" || key === "pretrain") { values.model = v[0]; continue; }
    if (flag.endsWith("advantage_estimator")) { method = ESTIMATOR_METHOD[v[0]] || method; continue; }
    if (inputByFlag("--" + key) && v.length <= 1) flags["--" + key] = v.length ? v[0] : true;
    else extra.push(flag, ...v.map((x) => (/\s/.test(x) ? JSON.stringify(x) : x)));
  }
  return {framework: "openrlhf", method, values, flags, extra: extra.join(" ")};
}

// ---- form state <-> request, URL --------------------------------------------------------------------------
function formFlags(only) {
  const out = [];
  for (const el of flagInputs()) {
    const flag = el.dataset.flag;
    if (only && !only.includes(flag)) continue;
    if (el.closest(".rl-only") && !isRL()) continue;
    if (el.type === "checkbox") { if (el.checked) out.push(flag); }
    else if (el.value.trim() !== "") out.push(flag, el.value.trim());
  }
  if (isRL() && !out.includes("--reward_pretrain") && !out.includes("--remote_rm_url")) {
    out.push("--reward_pretrain", form.model.value.trim());
  }
  if (!only) out.push(...words(form.extra.value));
  return out;
}

function numberOrNull(value) { return value.trim() === "" ? null : Number(value); }

function capacity() {
  const body = {gpu: form.gpu.value || null};
  if (form.host_ram.value.trim()) body.host_ram = form.host_ram.value.trim();
  if (Object.keys(configs).length) body.configs = configs;
  return body;
}

// verl's key=value words of the form (the inputs, then the free options).
function verlWords(withInputs) {
  const out = [];
  if (withInputs) for (const el of keyInputs()) if (el.value.trim() !== "") out.push(`${el.dataset.key}=${el.value.trim()}`);
  return [...out, ...words(form.verl_options.value)];
}

function estimateBody() {
  if (isVerl()) {
    return {framework: "verl", model: form.model.value.trim(), method: form.method.value, flags: verlWords(true),
            ...capacity()};
  }
  const body = {model: form.model.value.trim(), method: form.method.value, flags: formFlags(), ...capacity()};
  if (!isRL()) {
    const nodes = numberOrNull(form.nodes.value), gpus = numberOrNull(form.gpus.value);
    if (nodes !== null) { body.nodes = nodes; if (gpus !== null) body.gpus_per_node = gpus; }
    else if (gpus !== null) body.gpus = gpus;
  }
  return body;
}

function planBody() {
  const body = {model: form.model.value.trim(), method: form.method.value,
                gpu: form.plan_gpu.value.trim() || form.gpu.value, flags: formFlags(PLAN_FLAGS),
                allow_lora: form.allow_lora.checked};
  if (isVerl()) {  // the options are kept; the layout inputs are the planner's to choose
    body.framework = "verl"; body.flags = verlWords(false); delete body.allow_lora;
  }
  if (form.host_ram.value.trim()) body.host_ram = form.host_ram.value.trim();
  if (form.max_gpus.value.trim()) body.max_gpus = Number(form.max_gpus.value);
  if (Object.keys(configs).length) body.configs = configs;
  return body;
}

function writeUrl() {
  const params = new URLSearchParams();
  for (const name of STATE_FIELDS) {
    const el = form.elements[name];
    if (!el || (name === "command" && mode !== "command")) continue;
    const value = el.type === "checkbox" ? (el.checked ? "1" : "") : el.value.trim();
    if (value) params.set(name, value);
  }
  for (const el of [...flagInputs(), ...keyInputs()]) {
    const value = el.type === "checkbox" ? (el.checked ? "1" : "") : el.value.trim();
    if (value) params.set(el.name, value);
  }
  if (tab !== "estimate") params.set("tab", tab);
  history.replaceState(null, "", "?" + params.toString());
}

function readUrl() {
  const params = new URLSearchParams(location.search);
  if (![...params.keys()].length) return false;
  for (const el of [...flagInputs(), ...keyInputs(), ...STATE_FIELDS.map((n) => form.elements[n])]) {
    if (!el) continue;
    const value = params.get(el.name);
    if (el.type === "checkbox") el.checked = value === "1";
    else if (value !== null) el.value = value;
    else if (el.name === "framework") el.value = "openrlhf";
    else if (el.name !== "gpus") el.value = "";
  }
  if (params.get("gpus") === null) form.gpus.value = "";
  mode = params.get("command") ? "command" : "form";
  tab = params.get("tab") || "estimate";
  return true;
}

function fillFromCommand(parsed) {
  form.framework.value = parsed.framework;
  if (parsed.method) form.method.value = parsed.method;
  if (parsed.framework === "verl") {
    if (parsed.values.model) form.model.value = parsed.values.model;
    for (const el of keyInputs()) el.value = parsed.keys[el.dataset.key] ?? "";
    form.verl_options.value = parsed.extra;
    showRoles();
    return;
  }
  if (parsed.values.model) form.model.value = parsed.values.model;
  form.gpus.value = parsed.values.gpus; form.nodes.value = parsed.values.nodes;
  for (const el of flagInputs()) {
    const v = parsed.flags[el.dataset.flag];
    if (el.type === "checkbox") el.checked = v === true || v === "true" || v === "True";
    else el.value = v === undefined || v === true ? "" : v;
  }
  form.extra.value = parsed.extra;
  showRoles();
}

// ---- calling the API ---------------------------------------------------------------------------------------
async function post(path, body) {
  const response = await fetch(path, {method: "POST", headers: {"content-type": "application/json"},
                                      body: JSON.stringify(body)});
  const data = await response.json();
  if (!response.ok) {
    const e = data.error || {location: "", message: response.statusText};
    throw new Error(e.location ? `${e.location}: ${e.message}` : e.message);
  }
  return data;
}

// body[data-state]: "busy" from a change until its answer is drawn, then "ready" (tests and scripts wait on it).
function setState(state) { document.body.dataset.state = state; }

function schedule() {
  setState("busy");
  clearTimeout(timer);
  writeUrl();
  timer = setTimeout(tab === "plan" ? runPlan : runEstimate, 250);
}

async function runEstimate() {
  const mine = ++seq;
  const [path, body] = mode === "command" ? ["/api/check", {command: form.command.value, ...capacity()}]
                                          : ["/api/estimate", estimateBody()];
  try {
    const [data, spec] = await Promise.all([post(path, body), post(path + "/chart", body)]);
    if (mine !== seq) return;
    $("#error").hidden = true;
    if (mode === "form") form.command.value = data.command;
    lastResult = {data, spec};
    await showEstimate(data, spec);
  } catch (err) {
    if (mine !== seq) return;
    $("#error").textContent = err.message; $("#error").hidden = false;
    $("#verdict").className = "verdict"; $("#verdict").textContent = "no estimate: see the error below";
  }
  if (mine === seq) setState("ready");
}

// ---- showing an estimate -----------------------------------------------------------------------------------
function roleSet(d) { return `${d.count} × GPU {${d.roles.join(", ")}}`; }

// The entry that decides the verdict: the fullest GPU role set or node (reserved / capacity).
function worstEntry(data) {
  const entries = [
    ...data.devices.map((d) => ({name: roleSet(d), need: d.reserved_bytes, cap: d.capacity_bytes, v: d.verdict,
                                 phase: d.peak_phase, entry: d})),
    ...data.hosts.map((h) => ({name: `host RAM ${hostName(h)}`, need: h.peak_bytes, cap: h.judged_against_bytes ?? h.capacity_bytes, v: h.verdict,
                               phase: h.peak_phase, entry: h}))];
  const rank = {oom: 3, tight: 2, fits: 1};
  entries.sort((a, b) => (rank[b.v] || 0) - (rank[a.v] || 0) || (b.cap ? b.need / b.cap : 0) - (a.cap ? a.need / a.cap : 0));
  return entries[0];
}

function verdictHtml(data) {
  const w = worstEntry(data);
  const verdict = data.summary.verdict;
  if (!verdict || !w.cap) {
    return {cls: "", html: `${data.summary.num_gpus} GPUs: largest per-GPU peak ${gib(data.summary.max_gpu_reserved_bytes)} reserved (choose a GPU for a verdict)`};
  }
  const margin = w.cap - w.need;
  const by = margin >= 0 ? `${gib(margin)} free` : `short by ${gib(-margin)}`;
  return {cls: verdict, html: `<span class="word">${esc(verdict)}</span> — ${esc(w.name)}: ${gib(w.need)} of ${gib(w.cap)} in ${esc(w.phase)} (${by}) · ${plural(data.summary.num_gpus, "GPU")}, ${plural(data.summary.num_nodes, "node")}`};
}

async function showEstimate(data, spec) {
  const v = verdictHtml(data);
  $("#verdict").className = "verdict " + v.cls; $("#verdict").innerHTML = v.html;
  await vegaEmbed("#chart", spec, {renderer: "svg", actions: false});
  $("#devices").innerHTML = "<tr><th>where</th><th>peak</th><th>in phase</th><th>reserved</th><th>capacity</th><th>verdict</th></tr>" +
    data.devices.map((d) => `<tr><td>${esc(roleSet(d))}</td><td class="num">${gib(d.peak_bytes)}</td><td>${esc(d.peak_phase)}</td><td class="num">${gib(d.reserved_bytes)}</td><td class="num">${d.capacity_bytes ? gib(d.capacity_bytes) : "–"}</td><td>${esc(d.verdict || "–")}</td></tr>`).join("") +
    data.hosts.map((h) => `<tr><td>host RAM ${esc(hostName(h))}</td><td class="num">${gib(h.peak_bytes)}</td><td>${esc(h.peak_phase)}</td><td class="num">–</td><td class="num">${h.judged_against_bytes ? gib(h.judged_against_bytes) : "–"}${h.judged_against && h.judged_against.rule ? ` <span class="muted" title="${esc(h.judged_against.rule)}">(Ray)</span>` : ""}</td><td>${esc(h.verdict || "–")}</td></tr>`).join("");
  const w = worstEntry(data);
  const terms = [...w.entry.breakdown].sort((a, b) => b.bytes - a.bytes).slice(0, 8);
  $("#terms-where").textContent = `on ${w.name} at ${w.phase}`;
  $("#terms").innerHTML = "<tr><th>term</th><th>holds</th><th>bytes</th><th>source</th></tr>" +
    terms.map((t) => `<tr><td>${esc(t.path)}</td><td>${esc(t.category)}</td><td class="num">${gib(t.bytes)}</td><td class="src">${esc(t.source)}</td></tr>`).join("");
  showSuggestions(data.suggestions || []);
  $("#notes").innerHTML = (data.notes || []).map((n) => `<li>${esc(n)}</li>`).join("");
  showPinned();
}

// A suggestion's text → form edits; null when it is not a plain flag change (then it stays advice).
function suggestionEdits(change) {
  const edits = [];
  for (const part of change.split(" + ")) {
    let m;
    if ((m = part.match(/^drop (--\w+)/))) edits.push([m[1], null]);
    else if ((m = part.match(/^(\d+) GPUs \((\d+) nodes?\)$/))) edits.push(["nodes", m[2]], ["gpus", String(m[1] / m[2])]);
    else if (part.startsWith("--")) {
      const w = part.replace(/\(.*\)/, "").trim().split(/\s+/);
      if (w.length > 2) return null;
      edits.push([w[0], w.length > 1 ? w[1] : true]);
    } else return null;
  }
  return edits;
}

function applyEdits(edits) {
  let extra = words(form.extra.value);
  for (const [flag, value] of edits) {
    if (flag === "nodes" || flag === "gpus") { form.elements[flag].value = value; continue; }
    const el = inputByFlag(flag);
    const at = extra.indexOf(flag);
    if (at >= 0) extra.splice(at, 1 + (at + 1 < extra.length && !extra[at + 1].startsWith("--") ? 1 : 0));
    if (el) {
      if (el.type === "checkbox") el.checked = value !== null;
      else el.value = value === null || value === true ? "" : value;
    } else if (value !== null) extra.push(flag, ...(value === true ? [] : [value]));
  }
  form.extra.value = extra.join(" ");
  mode = "form";
  schedule();
}

function showSuggestions(list) {
  const ul = $("#suggestions");
  if (!list.length) { ul.innerHTML = '<li class="small">nothing to change: it fits (suggestions appear when a run is tight or does not fit)</li>'; return; }
  ul.innerHTML = "";
  for (const s of list) {
    const li = document.createElement("li");
    const edits = suggestionEdits(s.change);
    const button = document.createElement("button");
    button.type = "button"; button.textContent = "Apply"; button.className = "apply";
    if (edits) button.onclick = () => applyEdits(edits);
    else { button.disabled = true; button.title = "change the layout by hand"; }
    li.append(button);
    li.insertAdjacentHTML("beforeend", `<code>${esc(s.change)}</code> → largest per-GPU reserved ${gib(s.max_reserved_bytes)} (${esc(s.verdict || "?")}, −${gib(s.saving_bytes)})`);
    ul.append(li);
  }
}

// ---- compare -----------------------------------------------------------------------------------------------
async function showPinned() {
  const box = $("#pinned");
  box.hidden = !pinned; $("#unpin").hidden = !pinned; $("#current-title").hidden = !pinned;
  if (!pinned || !lastResult) return;
  const v = verdictHtml(pinned.data);
  $("#pinned-verdict").className = "verdict small " + v.cls; $("#pinned-verdict").innerHTML = v.html;
  const before = pinned.data.summary.max_gpu_reserved_bytes, now = lastResult.data.summary.max_gpu_reserved_bytes;
  const delta = now - before;
  $("#pinned-delta").textContent = `largest per-GPU reserved: pinned ${gib(before)}, now ${gib(now)} (${delta >= 0 ? "+" : "−"}${gib(Math.abs(delta))}); GPUs ${pinned.data.summary.num_gpus} → ${lastResult.data.summary.num_gpus}`;
  if (!box.dataset.drawn) { await vegaEmbed("#pinned-chart", pinned.spec, {renderer: "svg", actions: false}); box.dataset.drawn = "1"; }
}

// ---- plan --------------------------------------------------------------------------------------------------
function planCard(kind, p, binding) {
  if (!p) return `<div><h3>${kind}</h3><p>no layout fits: ${esc(binding || "")}</p></div>`;
  const rows = p.devices.map((d) => `<tr><td>${esc(roleSet(d))}</td><td class="num">${gib(d.reserved_bytes)}</td><td>${esc(d.verdict || "–")}</td></tr>`).join("");
  return `<div class="plan-${kind}"><h3>${kind}: ${p.summary.num_gpus} GPUs, ${esc(p.summary.verdict || "")}</h3>
    <table class="data"><tr><th>GPU role set</th><th>reserved</th><th>verdict</th></tr>${rows}</table>
    <pre class="plan-command">${esc(p.command)}</pre>
    <button type="button" class="copy" data-command="${esc(p.command)}">Copy command</button> <span class="small copied"></span></div>`;
}

async function copyText(text, status) {
  try { await navigator.clipboard.writeText(text); }
  catch (err) {
    const area = document.createElement("textarea");
    area.value = text; document.body.append(area); area.select(); document.execCommand("copy"); area.remove();
  }
  if (status) status.textContent = "copied";
}

async function runPlan() {
  const mine = ++seq;
  setState("busy");
  const body = planBody();
  $("#plan-results").innerHTML = '<p class="small">planning…</p>';
  try {
    const [data, spec] = await Promise.all([post("/api/plan", body), post("/api/plan/chart", body)]);
    if (mine !== seq) return;
    $("#plan-error").hidden = true;
    const results = data.plans || [data];
    $("#plan-results").innerHTML = results.map((r) => `<div class="plan-gpu"><h2>${esc(r.gpu)}</h2>
      <div class="plan-pair">${planCard("minimum", r.minimum, r.binding_limit)}${planCard("recommended", r.recommended, r.binding_limit)}</div>
      <p class="small">${r.candidates_evaluated} candidates evaluated</p></div>`).join("");
    for (const b of document.querySelectorAll("#plan-results .copy")) {
      b.onclick = () => copyText(b.dataset.command, b.nextElementSibling);
    }
    await vegaEmbed("#plan-chart", spec, {renderer: "svg", actions: false});
  } catch (err) {
    if (mine !== seq) return;
    $("#plan-results").innerHTML = "";
    $("#plan-error").textContent = err.message; $("#plan-error").hidden = false;
  }
  if (mine === seq) setState("ready");
}

// ---- wiring ------------------------------------------------------------------------------------------------
function showRoles() {
  // verl trains RL only: its methods are the RL ones (frameworks/verl/run.py METHOD_ESTIMATORS)
  for (const option of form.method.options) option.disabled = isVerl() && !RL.includes(option.value);
  if (form.method.selectedOptions[0] && form.method.selectedOptions[0].disabled) form.method.value = "grpo";
  for (const el of document.querySelectorAll(".openrlhf-only")) el.hidden = isVerl();
  for (const el of document.querySelectorAll(".rl-only")) el.hidden = !isRL();
  for (const el of document.querySelectorAll(".single-only")) el.hidden = isRL() || isVerl();
  for (const el of document.querySelectorAll(".verl-only")) el.hidden = !isVerl();
}

function showTab(name) {
  tab = name;
  $("#estimate-view").hidden = name !== "estimate"; $("#plan-view").hidden = name !== "plan";
  for (const b of document.querySelectorAll(".tab")) b.classList.toggle("active", b.dataset.tab === name);
}

async function loadCatalogues() {
  const [models, gpus] = await Promise.all([fetch("/api/models").then((r) => r.json()),
                                            fetch("/api/gpus").then((r) => r.json())]);
  $("#model-list").innerHTML = models.models.map((m) => `<option value="${esc(m.name)}">${esc(m.hub_id || "")} · ${(m.num_params / 1e9).toFixed(2)}B</option>`).join("");
  const current = form.gpu.value;
  form.gpu.innerHTML = '<option value="">no GPU (no verdict)</option>' +
    gpus.gpus.map((g) => `<option value="${esc(g.name)}">${esc(g.name)} — ${esc(g.display_name)}</option>`).join("");
  form.gpu.value = current;
}

form.addEventListener("input", (event) => {
  if (event.target === form.command) {
    const parsed = parseCommand(form.command.value);
    if (parsed) fillFromCommand(parsed);
    mode = "command";
  } else if (event.target.id !== "config-file" && !["plan_gpu", "max_gpus", "allow_lora"].includes(event.target.name)) {
    mode = "form";
  }
  if (event.target === form.method || event.target === form.framework) showRoles();
  if (event.target.id !== "config-file") schedule();
});

$("#config-file").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  if (!file) return;
  if (file.size > 64 * 1024) { $("#error").textContent = "config.json: larger than 64 KiB"; $("#error").hidden = false; return; }
  try { configs = {[file.name]: JSON.parse(await file.text())}; }
  catch (err) { $("#error").textContent = `${file.name}: not JSON (${err.message})`; $("#error").hidden = false; return; }
  form.model.value = file.name; mode = "form"; schedule();
});

for (const b of document.querySelectorAll(".tab")) b.onclick = () => { showTab(b.dataset.tab); schedule(); };
$("#plan-view").addEventListener("input", () => writeUrl());
$("#run-plan").onclick = () => { writeUrl(); runPlan(); };
$("#share").onclick = () => { writeUrl(); copyText(location.href, null); $("#share").textContent = "Link copied"; };
$("#pin").onclick = () => { if (lastResult) { pinned = lastResult; delete $("#pinned").dataset.drawn; showPinned(); } };
$("#unpin").onclick = () => { pinned = null; showPinned(); };

(async function start() {
  const fromUrl = readUrl();
  await loadCatalogues();
  if (fromUrl) readUrl();  // the GPU list now exists: set the GPU again
  else form.gpu.value = "a100-80g";
  showRoles(); showTab(tab);
  if (mode === "command") { const parsed = parseCommand(form.command.value); if (parsed) fillFromCommand(parsed); }
  writeUrl();
  if (tab === "plan") runPlan(); else runEstimate();
})();
