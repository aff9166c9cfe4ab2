// The playground: plain JavaScript against the public API, no build step, no CDN.
"use strict";

const $ = (selector) => document.querySelector(selector);
const TOKEN_KEY = "rr-admin-token"; // sessionStorage only: never in the URL or localStorage
const API_KEY = "rr-api-key"; // the search key, where the gateway sets RR_API_KEYS
const UPLOAD_BATCH = 1000; // documents per PUT (the API takes up to 10,000)

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

// The API's error shape is {"error": {"code", "message"}}: show it as it came.
async function call(method, path, { json, form, admin } = {}) {
  const headers = {};
  let body;
  if (json !== undefined) {
    headers["content-type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form;
  }
  if (admin) headers.authorization = `Bearer ${sessionStorage.getItem(TOKEN_KEY) || ""}`;
  else if (sessionStorage.getItem(API_KEY)) headers.authorization = `Bearer ${sessionStorage.getItem(API_KEY)}`;
  const response = await fetch(path, { method, headers, body });
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!response.ok) {
    const error = data && data.error ? `${response.status} ${data.error.code}: ${data.error.message}` : `${response.status} ${text}`;
    throw new Error(error);
  }
  return data;
}

// -- views -------------------------------------------------------------------------------

function show(view) {
  for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.view === view);
  for (const section of document.querySelectorAll(".view")) section.hidden = section.id !== `view-${view}`;
  if (view === "experts") loadExperts();
  if (view === "admin") showTokenState();
}

let experts = [];

async function refreshExpertList() {
  experts = (await call("GET", "/v1/experts")).experts;
  for (const select of [$("#expert"), $("#upload-expert")]) {
    const keep = select.value;
    for (const option of [...select.options]) if (!["auto", "base"].includes(option.value)) option.remove();
    for (const expert of experts) select.append(el("option", { value: expert.name }, expert.name));
    if ([...select.options].some((o) => o.value === keep)) select.value = keep;
  }
  return experts;
}

async function loadExperts() {
  const body = $("#experts-table tbody");
  body.replaceChildren();
  for (const expert of await refreshExpertList()) {
    const progress = expert.indexing
      ? el("span", {}, el("progress", { max: expert.indexing.total, value: expert.indexing.indexed }),
          ` ${expert.indexing.indexed} / ${expert.indexing.total}`)
      : "indexed";
    body.append(el("tr", { "data-expert": expert.name },
      el("td", {}, expert.name), el("td", {}, expert.description || ""),
      el("td", { class: "documents" }, String(expert.documents)), el("td", {}, progress),
      el("td", {}, expert.resident ? "loaded" : "on disk")));
  }
}

// -- search ------------------------------------------------------------------------------

function drawRouting(routing) {
  const chart = $("#routing-chart");
  chart.replaceChildren();
  const scores = Object.entries(routing.scores);
  // The server's note says when an empty index changed the route (never a silent miss).
  const summary = routing.note
    ? `${routing.note.charAt(0).toUpperCase()}${routing.note.slice(1)}.`
    : routing.fallback
      ? `No expert close enough: fell back to the base encoder over every index.`
      : `Routed to ${routing.expert}.`;
  $("#routing-summary").textContent = summary;
  $("#routing-summary").dataset.expert = routing.expert;
  if (!scores.length) return;
  // Cosine scores: place 0..max on the track, the threshold as a red line.
  const top = Math.max(0.05, ...scores.map(([, s]) => s), routing.threshold ?? 0);
  const at = (value) => `${Math.max(0, Math.min(100, (value / top) * 100))}%`;
  scores.forEach(([name, score], i) => {
    const chosen = !routing.fallback && name === routing.expert;
    const track = el("div", { class: "track" }, el("div", { class: "fill", style: `width:${at(score)}` }));
    if (i === 0 && routing.threshold !== null && routing.threshold !== undefined) {
      track.append(el("div", { class: "threshold", style: `left:${at(routing.threshold)}`, title: `fallback threshold ${routing.threshold}` }));
    }
    chart.append(el("div", { class: `bar-row${chosen ? " chosen" : ""}`, "data-expert": name },
      el("span", { class: "name" }, chosen ? `▶ ${name}` : name), track, el("span", {}, score.toFixed(3))));
  });
  if (routing.threshold !== null && routing.threshold !== undefined) {
    chart.append(el("div", { class: "legend" }, `red line: the best expert's fallback threshold (${routing.threshold.toFixed(3)})`));
  }
}

function drawTiming(timing) {
  const box = $("#timing");
  box.replaceChildren();
  for (const key of ["route", "encode", "search", "total"]) {
    if (key in timing) box.append(el("span", {}, key), el("span", {}, `${timing[key].toFixed(1)} ms`));
  }
}

function drawHits(hits) {
  const list = $("#hits");
  list.replaceChildren();
  if (!hits.length) list.append(el("li", { class: "muted" }, "No hits."));
  for (const hit of hits) {
    const text = hit.text || "";
    list.append(el("li", { class: "hit", "data-expert": hit.expert },
      el("div", { class: "title" }, hit.title || hit.id),
      el("div", { class: "snippet" }, text.length > 240 ? `${text.slice(0, 240)}…` : text),
      el("div", { class: "meta" }, [
        `score ${hit.score.toFixed(4)}`,
        hit.dense_score != null ? `dense ${hit.dense_score.toFixed(4)}` : null,
        hit.lexical_score != null ? `BM25 ${hit.lexical_score.toFixed(2)}` : null,
        `index ${hit.index}`, `embedded by ${hit.expert}`, `id ${hit.id}`,
      ].filter(Boolean).join(" · "))));
  }
}

async function search(event) {
  event.preventDefault();
  const error = $("#search-error");
  error.hidden = true;
  const body = {
    query: $("#query").value, expert: $("#expert").value, mode: $("#mode").value,
    k: Number($("#k").value) || 10,
  };
  try {
    const filter = $("#filter").value.trim();
    if (filter) {
      try {
        body.filter = JSON.parse(filter);
      } catch {
        throw new Error(`filter: not JSON (e.g. {"lang": "en"}): ${filter}`);
      }
    }
    const result = await call("POST", "/v1/search", { json: body });
    drawRouting(result.routing);
    drawTiming(result.timing_ms);
    drawHits(result.hits);
    const note = $("#indexing-note");
    note.hidden = !result.indexing;
    if (result.indexing) {
      note.textContent = "Still indexing: " + Object.entries(result.indexing)
        .map(([name, p]) => `${name} ${p.indexed} / ${p.total}`).join(", ") + " (hits may be missing).";
    }
  } catch (failure) {
    error.textContent = failure.message;
    error.hidden = false;
  }
}

// -- admin -------------------------------------------------------------------------------

function showTokenState() {
  $("#token-state").textContent = sessionStorage.getItem(TOKEN_KEY) ? "token set for this tab" : "no token";
  $("#api-key-state").textContent = sessionStorage.getItem(API_KEY) ? "key set for this tab" : "no key (open search)";
}

function report(form, message, ok) {
  const result = form.querySelector(".result");
  result.textContent = message;
  result.className = `result ${ok ? "ok" : "bad"}`;
}

async function register(event) {
  event.preventDefault();
  const form = event.target;
  const fields = new FormData(form);
  const queries = String(fields.get("pilot_queries")).split("\n").map((q) => q.trim()).filter(Boolean);
  fields.set("pilot_queries", JSON.stringify(queries));
  try {
    const expert = await call("POST", "/admin/experts", { form: fields, admin: true });
    report(form, `Registered ${expert.name} (${expert.pilot_count} pilot, adapter ${expert.adapter_sha256.slice(0, 12)}…).`, true);
    await refreshExpertList();
  } catch (failure) {
    report(form, failure.message, false);
  }
}

function parseJsonl(text) {
  const documents = [];
  text.split("\n").forEach((line, i) => {
    if (!line.trim()) return;
    let row;
    try { row = JSON.parse(line); } catch { throw new Error(`line ${i + 1}: not valid JSON`); }
    const doc = { id: String(row.id ?? row._id ?? ""), title: row.title ?? "", text: row.text ?? "" };
    if (row.metadata) doc.metadata = row.metadata;
    documents.push(doc);
  });
  if (!documents.length) throw new Error("the file holds no documents");
  return documents;
}

async function upload(event) {
  event.preventDefault();
  const form = event.target;
  const expert = $("#upload-expert").value;
  try {
    const documents = parseJsonl(await form.elements.file.files[0].text());
    let inserted = 0, updated = 0;
    for (let start = 0; start < documents.length; start += UPLOAD_BATCH) {
      const batch = documents.slice(start, start + UPLOAD_BATCH);
      const result = await call("PUT", `/admin/experts/${encodeURIComponent(expert)}/documents`, { json: { documents: batch }, admin: true });
      inserted += result.inserted;
      updated += result.updated;
    }
    report(form, `Uploaded to ${expert}: ${inserted} inserted, ${updated} updated.`, true);
  } catch (failure) {
    report(form, failure.message, false);
  }
}

// -- start -------------------------------------------------------------------------------

for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => show(tab.dataset.view));
$("#search-form").addEventListener("submit", search);
$("#refresh-experts").addEventListener("click", loadExperts);
$("#save-token").addEventListener("click", () => {
  sessionStorage.setItem(TOKEN_KEY, $("#token").value);
  $("#token").value = "";
  showTokenState();
});
$("#save-api-key").addEventListener("click", () => {
  sessionStorage.setItem(API_KEY, $("#api-key").value);
  $("#api-key").value = "";
  showTokenState();
  refreshExpertList().then(() => { $("#search-error").hidden = true; }).catch(() => {});
});
$("#register-form").addEventListener("submit", register);
$("#upload-form").addEventListener("submit", upload);
refreshExpertList().catch((failure) => {
  $("#search-error").textContent = failure.message;
  $("#search-error").hidden = false;
});
