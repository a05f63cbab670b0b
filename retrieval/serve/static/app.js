// The search page: upload a query, show ranked patients with their best slices, and the QC list.
// Plain JavaScript, no libraries; every text from the server goes in through textContent.
"use strict";

const RED_FROM = 0.6; // predicted α above this is shown red; between TAU and this amber; up to TAU green
let TAU = 0.3;
let queryFiles = [];
const excluded = [];
const $ = (id) => document.getElementById(id);

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

async function api(path, options) {
  const response = await fetch(path, options);
  if (response.status === 401) {
    location.reload(); // the server shows its token form
    throw new Error("the session ended; sign in again");
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

function badge(alpha) {
  const level = alpha <= TAU ? "ok" : alpha <= RED_FROM ? "warn" : "bad";
  const meaning = { ok: "benign", warn: "distorted", bad: "badly distorted" }[level];
  return element("span", { class: `badge ${level}`, title: `predicted distortion α = ${alpha.toFixed(3)} (${meaning})`, text: `α ${alpha.toFixed(2)}` });
}

function sliceFigure(slice, caption, lazy = false) {
  const image = slice.thumbnail
    ? element("img", { src: slice.thumbnail, alt: `slice ${slice.slice_index} of series ${slice.series_id ?? ""}`, ...(lazy ? { loading: "lazy" } : {}) })
    : element("div", { class: "missing", text: "no image" });
  return element("figure", { class: "slice" }, image, badge(slice.alpha), element("figcaption", { text: caption }));
}

async function refreshSummary() {
  try {
    const info = await api("/api/info");
    TAU = info.server.tau;
    const modalities = Object.entries(info.by_modality).map(([m, n]) => `${m} ${n}`).join(" · ");
    $("summary").textContent = `${info.searched_slices} slices of ${info.patients} patients (${modalities})${info.server.pseudonymised ? " · pseudonymised" : ""}`;
    const by = $("by");
    if (!by.options.length) for (const value of info.server.by) by.append(element("option", { value, text: value }));
  } catch (error) {
    showError(error.message);
  }
}

function renderExcluded() {
  $("excluded").replaceChildren(...excluded.map((id, i) =>
    element("li", {}, id, element("button", { type: "button", "aria-label": `include ${id} again`, text: "×", onclick: () => { excluded.splice(i, 1); renderExcluded(); search(); } }))));
}

function exclude(id) {
  if (id && !excluded.includes(id)) excluded.push(id);
  renderExcluded();
  search();
}

function setFiles(list) {
  queryFiles = [...list];
  $("run").disabled = !queryFiles.length;
  search();
}

async function search() {
  if (!queryFiles.length) return;
  const form = new FormData();
  for (const file of queryFiles) form.append("files", file, file.name);
  form.append("k", $("k").value || "10");
  form.append("by", $("by").value || "patient");
  if ($("modality").value) form.append("modality", $("modality").value);
  if ($("use-alpha").checked) form.append("max_alpha", $("max-alpha").value);
  for (const id of excluded) form.append("exclude_patient", id);
  form.append("thumbnail", "1");
  $("status").textContent = `Searching with ${queryFiles.length === 1 ? queryFiles[0].name : `${queryFiles.length} files`}…`;
  showError("");
  const started = performance.now();
  try {
    const body = await api("/api/search", { method: "POST", body: form });
    renderQuery(body.query);
    renderResults(body.results, performance.now() - started);
  } catch (error) {
    $("status").textContent = "";
    $("results").replaceChildren();
    showError(error.message);
  }
}

function renderQuery(query) {
  $("query").hidden = false;
  $("query-image").src = query.thumbnail || "";
  const caption = $("query-caption");
  caption.replaceChildren(element("span", {}, `${query.path}: ${query.n_slices} slice${query.n_slices === 1 ? "" : "s"}, predicted `, badge(query.alpha),
    query.distorted ? element("p", { class: "error", text: `The query looks distorted (α above τ = ${query.tau}): matches may be unreliable.` }) : null));
}

function groupLabel(match) {
  // series and study results (--by series|study) name their group under the patient
  const group = match.series_id ? `series ${match.series_id}` : match.study_id ? `study ${match.study_id}` : "";
  return group ? element("span", { class: "group", title: group, text: [match.modality, group].filter(Boolean).join(" · ") }) : null;
}

function renderResults(results, milliseconds) {
  $("status").textContent = results.length
    ? `${results.length} result${results.length === 1 ? "" : "s"}, best first (${Math.round(milliseconds)} ms). Distance 0 = same anatomy.`
    : "No eligible slices in the index (check the filters).";
  $("results").replaceChildren(...results.map((match, i) => element("li", { class: "result" },
    element("span", { class: "rank", text: String(i + 1) }),
    element("div", { class: "who" },
      element("a", { href: "#", text: match.patient_id, title: "all series of this patient", onclick: (event) => { event.preventDefault(); openPatient(match.patient_id); } }),
      groupLabel(match),
      element("span", { class: "distance", text: `distance ${match.distance.toFixed(4)}` }),
      element("div", { class: "bar" }, element("span", { style: `width: ${Math.max(3, 100 * (1 - 2 * match.distance)).toFixed(0)}%` })),
      element("div", { class: "actions" }, element("button", { type: "button", text: "leave this patient out", onclick: () => exclude(match.patient_id) }))),
    element("div", { class: "slices" }, ...match.slices.map((s) => sliceFigure(s, `d ${s.distance.toFixed(3)} · ${s.modality} #${s.slice_index}`))))));
}

async function openPatient(id) {
  try {
    const patient = await api(`/api/patients/${encodeURIComponent(id)}`);
    $("patient-title").textContent = `${patient.patient_id}: ${patient.n_slices} slices in ${patient.series.length} series`;
    $("patient-body").replaceChildren(...patient.series.map((series) => element("section", {},
      element("h3", {}, `${series.modality} · ${series.series_id ?? "series"} · ${series.n_slices} slices · worst `, badge(series.max_alpha)),
      element("div", { class: "slices" }, ...series.slices.map((s) => sliceFigure(s, `#${s.slice_index}`, true))))));
    $("patient").showModal();
  } catch (error) {
    showError(error.message);
  }
}

async function loadQc() {
  const above = $("qc-above").value || String(TAU);
  $("qc-status").textContent = "loading…";
  try {
    const report = await api(`/api/qc?above=${encodeURIComponent(above)}`);
    $("qc-status").textContent = `${report.slices} slices in ${report.series.length} series, worst first`;
    $("qc-table").tBodies[0].replaceChildren(...report.series.map((series, i) => element("tr", {},
      element("td", { text: String(i + 1) }),
      element("td", {}, element("a", { href: "#", text: series.patient_id, onclick: (event) => { event.preventDefault(); openPatient(series.patient_id); } })),
      element("td", { text: series.modality }),
      element("td", { class: "series", text: series.series_id ?? "" }),
      element("td", { text: `${series.n_above} / ${series.n_slices}` }),
      element("td", {}, badge(series.max_alpha)),
      element("td", {}, element("div", { class: "slices" }, ...[...series.slices].sort((a, b) => b.alpha - a.alpha).slice(0, 4)
        .map((s) => sliceFigure(s, `#${s.slice_index}`, true)))))));
  } catch (error) {
    $("qc-status").textContent = "";
    showError(error.message);
  }
}

function showTab(button) {
  for (const tab of document.querySelectorAll("nav [role=tab]")) {
    const selected = tab === button;
    tab.setAttribute("aria-selected", String(selected));
    $(tab.dataset.panel).hidden = !selected;
  }
  if (button.dataset.panel === "qc") loadQc();
}

function setUp() {
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => { event.preventDefault(); drop.classList.remove("over"); setFiles(event.dataTransfer.files); });
  drop.addEventListener("keydown", (event) => { if (event.key === "Enter" || event.key === " ") $("files").click(); });
  $("files").addEventListener("change", (event) => setFiles(event.target.files));
  $("filters").addEventListener("submit", (event) => { event.preventDefault(); search(); });
  for (const id of ["k", "by", "modality", "use-alpha"]) $(id).addEventListener("change", search);
  $("use-alpha").addEventListener("change", () => { $("max-alpha").disabled = !$("use-alpha").checked; });
  $("max-alpha").addEventListener("input", () => { $("alpha-value").textContent = Number($("max-alpha").value).toFixed(2); });
  $("max-alpha").addEventListener("change", search);
  $("exclude-input").addEventListener("keydown", (event) => {
    if (event.key !== "Enter") return;
    event.preventDefault();
    exclude(event.target.value.trim());
    event.target.value = "";
  });
  for (const tab of document.querySelectorAll("nav [role=tab]")) tab.addEventListener("click", () => showTab(tab));
  $("qc-form").addEventListener("submit", (event) => { event.preventDefault(); loadQc(); });
  $("patient-close").addEventListener("click", () => $("patient").close());
  refreshSummary().then(() => { $("qc-above").value = String(TAU); $("alpha-value").textContent = TAU.toFixed(2); $("max-alpha").value = String(TAU); });
  setInterval(refreshSummary, 15000);
}

document.addEventListener("DOMContentLoaded", setUp);
