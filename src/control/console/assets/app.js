// gatehouse operator console: polls the admin listener's JSON and renders
// it with DOM calls only (no innerHTML: journal fields come from partners).
"use strict";

const POLL_MS = 5000;
const SVG = "http://www.w3.org/2000/svg";
let token = sessionStorage.getItem("gatehouse-admin-token") || "";
let selectedSeq = null;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

async function api(path) {
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const r = await fetch(path, { headers, cache: "no-store" });
  if (r.status === 401) {
    const body = await r.json().catch(() => ({}));
    showLogin(body.message || "a bearer token is required");
    throw new Error("unauthorized");
  }
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.message || ("HTTP " + r.status));
  return body;
}

function showLogin(message) {
  document.getElementById("login").hidden = false;
  document.getElementById("main").hidden = true;
  document.getElementById("login-error").textContent = token ? message : "";
}

function hideLogin() {
  document.getElementById("login").hidden = true;
  document.getElementById("main").hidden = false;
}

function fmtMs(v) {
  return v === null || v === undefined ? "–" : (v < 10 ? v.toFixed(1) : Math.round(v)) + " ms";
}

function limitsText(l) {
  if (!l || typeof l !== "object") return "–";
  const parts = [];
  const spec = l.limits || l;
  for (const [k, label] of [["requests_per_minute", "/min"], ["requests_per_day", "/day"], ["burst", " burst"], ["max_concurrent", " concurrent"]]) {
    if (spec[k] !== undefined && spec[k] !== null) parts.push(spec[k] + label);
  }
  if (l.throttle_per_minute) parts.push("throttled to " + l.throttle_per_minute + "/min");
  return parts.length ? parts.join(", ") : "none";
}

// ---- overview: health, alerts, partners, charts

function renderOverview(o) {
  document.getElementById("node").textContent = o.node ? "node " + o.node : "";
  const health = document.getElementById("health");
  health.replaceChildren(
    el("span", { class: "badge" + (o.health.ready ? "" : " bad"), text: o.health.ready ? "ready" : "not ready" }),
    el("span", { class: "badge" + (o.health.journal_writable ? "" : " bad"), text: o.health.journal_writable ? "journal writable" : "journal failing closed" }),
    ...((o.restart_pending || []).length
      ? [el("span", { class: "badge bad", id: "restart-pending", text: "restart pending: " + o.restart_pending.join(", ") })]
      : []),
  );
  document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();

  const alerts = o.alerts || [];
  document.getElementById("alert-count").textContent = alerts.length ? "(" + alerts.length + ")" : "";
  const list = document.getElementById("alerts");
  list.replaceChildren(...(alerts.length ? alerts.slice().reverse().map((a) => el("li", {},
    el("strong", { text: a.kind }), " ",
    a.partner ? el("span", { text: a.partner + " " }) : null,
    el("span", { class: "muted", text: new Date(a.time_ms).toLocaleString() }),
    a.detail ? el("div", { class: "muted mono", text: a.detail }) : null,
  )) : [el("li", { class: "muted", text: "none in the last hour" })]));

  const tbody = document.querySelector("#partners tbody");
  const ids = document.getElementById("partner-ids");
  ids.replaceChildren(...o.partners.map((p) => el("option", { value: p.id })));
  tbody.replaceChildren(...o.partners.map((p) => {
    const certs = (p.certificates || []).map((c) => el("span", {
      class: "cert mono" + (c.expiring ? " expiring" : ""),
      title: "not after " + c.not_after + (c.issuer ? " — from the partner's own CA " + c.issuer + ": only the partner can replace it" : "")
        + (c.expiring ? (c.issuer ? " — expiring, no later one presented: ask the partner" : " — expiring, no successor") : ""),
      "data-serial": c.serial,
      text: c.serial.slice(0, 12) + "… " + c.days_to_expiry + " d" + (c.state === "superseded" ? " (superseded)" : "") + (c.issuer ? " (their CA)" : ""),
    }));
    const own = p.own_ca ? el("div", {
      class: "own-ca muted",
      title: "certificates from " + p.own_ca.ca + " with " + p.own_ca.name + (p.own_ca.pinned_keys ? ", " + p.own_ca.pinned_keys + " pinned key(s)" : "") + (p.own_ca.crl ? ", CRL " + p.own_ca.crl : ""),
      text: "own CA: " + (p.own_ca.issuer || p.own_ca.ca) + " (" + p.own_ca.name + ")",
    }) : null;
    const w = p.last_hour || {};
    return el("tr", { "data-partner": p.id },
      el("td", {}, el("strong", { text: p.id }), el("div", { class: "muted", text: p.name }), own),
      el("td", { class: "status-" + p.status, text: p.status }),
      el("td", {}, ...routesCell(p)),
      el("td", {}, el("div", { text: limitsText(p.limits) }), ...(p.value_today || []).map((v) =>
        el("div", { class: "mono value-today", "data-currency": v.currency,
          text: v.currency + " today " + v.today + (v.per_day ? " of " + v.per_day : "") + (v.per_call ? ", per call " + v.per_call : "") }))),
      el("td", {}, ...(certs.length ? certs : [el("span", { class: "muted", text: "no usable certificate" })])),
      el("td", { text: (w.requests || 0) + " req, " + (w.denials || 0) + " denied" }),
      el("td", { text: fmtMs(w.p50_ms) + " / " + fmtMs(w.p99_ms) }),
    );
  }));

  const ups = document.querySelector("#upstreams tbody");
  const rows = [];
  for (const u of o.upstreams || []) {
    const eps = u.endpoints || [];
    const queued = u.queue_depth ? " (" + u.queue_depth + " queued)" : "";
    if (!eps.length) rows.push(el("tr", {}, el("td", {}, el("strong", { text: u.name })), el("td", { class: "muted", text: "no endpoint: every request gets 503" })));
    for (const e of eps) {
      rows.push(el("tr", { "data-upstream": u.name },
        el("td", {}, el("strong", { text: u.name + queued })),
        el("td", { class: "mono", text: e.address + (e.host !== e.address.replace(/:\d+$/, "") ? " (" + e.host + ")" : "") }),
        el("td", { class: "state-" + e.state + (e.healthy ? "" : " bad"), text: e.state }),
        el("td", { text: String(e.in_flight) }),
        el("td", { text: String(e.success) }),
        el("td", { text: String(e.failure) }),
        el("td", { text: String(e.ejections) }),
      ));
    }
  }
  ups.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { class: "muted", text: "no upstream configured" }))]));

  renderMirrors(o.mirrors || {});

  const charts = document.getElementById("charts");
  charts.replaceChildren(...o.partners.map(chart));
}

// Mirrors: per route the last hour's results and match rate, the noise
// learned from the baseline, and the latest mismatches, each a link to the
// journal filtered on its mirror_diff record.
function renderMirrors(m) {
  const rows = [];
  for (const u of m.upstreams || []) {
    const routes = u.routes || [];
    for (const r of routes) {
      const h = r.last_hour || {};
      const noise = ((r.noise || {}).pointers || []).concat(((r.noise || {}).headers || []).map((x) => "header " + x));
      rows.push(el("tr", { "data-mirror-route": r.route },
        el("td", {}, el("strong", { text: u.upstream }), " → " + u.candidate),
        el("td", { class: "mono", text: r.route }),
        el("td", { class: "match-rate" + (r.match_rate !== null && r.match_rate < 1 ? " bad" : ""),
          text: r.match_rate === null || r.match_rate === undefined ? "–" : (r.match_rate * 100).toFixed(1) + " %" }),
        el("td", { text: String(h.match || 0) }),
        el("td", { text: String(h.mismatch || 0) }),
        el("td", { text: String(h.error || 0) }),
        el("td", { text: String(h.dropped || 0) }),
        el("td", { class: "mono", text: noise.length ? noise.join(", ") : "–" }),
      ));
    }
  }
  document.querySelector("#mirrors tbody").replaceChildren(...(rows.length ? rows
    : [el("tr", {}, el("td", { class: "muted", text: "no mirror configured or nothing mirrored yet" }))]));
  const recent = m.recent_mismatches || [];
  document.getElementById("mismatches").replaceChildren(...(recent.length ? recent.slice(0, 10).map((x) => {
    const what = (x.pointers || []).concat((x.headers || []).map((h) => "header " + h));
    const q = new URLSearchParams({ kind: "mirror_diff", request_id: x.request_id });
    return el("li", { "data-request-id": x.request_id },
      el("a", { href: "#journal?" + q.toString(), class: "mono", text: x.request_id }), " ",
      el("strong", { text: x.route }), " ",
      el("span", { text: x.partner + ": " + x.live_status + " vs " + x.candidate_status + " (" + x.candidate + ")" }), " ",
      el("span", { class: "muted", text: new Date(x.time_ms).toLocaleString() }),
      what.length ? el("div", { class: "muted mono", text: what.join(", ") }) : null,
    );
  }) : [el("li", { class: "muted", text: "none" })]));
}

// Routes, with the high-risk ones listed apart.
function routesCell(p) {
  const high = p.high_risk_routes || [];
  const normal = (p.routes || []).filter((r) => !high.includes(r));
  if (!normal.length && !high.length) return [el("span", { class: "muted", text: "none (every call denied)" })];
  const out = normal.map((r) => el("div", { class: "mono", text: r }));
  if (high.length) {
    out.push(el("div", { class: "muted", text: "high risk:" }));
    out.push(...high.map((r) => el("div", { class: "mono high-risk", text: r })));
  }
  return out;
}

function chart(p) {
  const W = 360, H = 100, PAD = 14;
  const series = p.series || [];
  const max = Math.max(1, ...series.map((s) => s.requests));
  const maxP99 = Math.max(1, ...series.map((s) => s.p99_ms || 0));
  const bw = (W - 2) / Math.max(1, series.length);
  const g = svg("svg", { width: W, height: H + PAD, viewBox: "0 0 " + W + " " + (H + PAD), role: "img", "aria-label": "requests per minute for " + p.id, class: "traffic" });
  g.append(svg("line", { x1: 0, y1: H, x2: W, y2: H, class: "axis" }));
  const points = [];
  series.forEach((s, i) => {
    const x = 1 + i * bw;
    const h = (s.requests / max) * (H - 4);
    const hd = (s.denials / max) * (H - 4);
    if (s.requests > 0) {
      const bar = svg("rect", { x: x.toFixed(1), y: (H - h).toFixed(1), width: Math.max(1, bw - 1).toFixed(1), height: (h - hd).toFixed(1), class: "allowed" });
      const t = svg("title", {}); t.textContent = new Date(s.minute_ms).toLocaleTimeString() + ": " + s.requests + " requests, " + s.denials + " denied, p99 " + fmtMs(s.p99_ms);
      bar.append(t);
      g.append(bar);
      if (s.denials > 0) g.append(svg("rect", { x: x.toFixed(1), y: (H - hd).toFixed(1), width: Math.max(1, bw - 1).toFixed(1), height: hd.toFixed(1), class: "denied" }));
    }
    if (s.p99_ms !== null && s.p99_ms !== undefined) points.push((x + bw / 2).toFixed(1) + "," + (H - (s.p99_ms / maxP99) * (H - 4)).toFixed(1));
  });
  if (points.length > 1) g.append(svg("polyline", { points: points.join(" "), class: "p99" }));
  const label = (x, anchor, text) => { const t = svg("text", { x, y: H + 11, "text-anchor": anchor }); t.textContent = text; g.append(t); };
  label(1, "start", "60 min ago");
  label(W - 1, "end", "now");
  label(W / 2, "middle", "max " + max + "/min, p99 max " + fmtMs(maxP99));
  const reasons = Object.entries(p.denial_reasons || {});
  return el("div", { class: "chart", "data-partner": p.id },
    el("h3", { text: p.id }),
    g,
    el("p", { class: "reasons muted", text: reasons.length ? "denials by reason: " + reasons.map(([r, n]) => r + " " + n).join(", ") : "no denials" }),
  );
}

// ---- journal

function filtersFromHash() {
  const h = location.hash.replace(/^#/, "");
  const q = h.startsWith("journal?") ? h.slice("journal?".length) : "";
  return new URLSearchParams(q);
}

function formToParams(form) {
  const p = new URLSearchParams();
  for (const [k, v] of new FormData(form)) if (String(v).trim() !== "") p.set(k, String(v).trim());
  return p;
}

function paramsToForm(form, params) {
  for (const e of form.elements) if (e.name) e.value = params.get(e.name) || (e.tagName === "SELECT" ? e.options[0].value : "");
}

async function loadJournal() {
  const params = filtersFromHash();
  if (params.get("order") === "newest") params.delete("order");
  const note = document.getElementById("journal-note");
  let body;
  try {
    body = await api("/api/journal?" + params.toString());
  } catch (e) {
    if (e.message !== "unauthorized") note.textContent = "journal: " + e.message;
    return;
  }
  const recs = body.records || [];
  note.textContent = recs.length + " record(s)" + (body.truncated ? " (more may match: narrow the filters)" : "") +
    (params.toString() ? " for " + params.toString().replace(/&/g, ", ") : ", newest first");
  const tbody = document.querySelector("#journal tbody");
  tbody.replaceChildren(...recs.map((r) => {
    const tr = el("tr", { class: r.decision + (r.seq === selectedSeq ? " selected" : ""), "data-seq": r.seq, "data-request-id": r.request_id || "" },
      el("td", { class: "mono", text: r.seq }),
      el("td", { text: r.time }),
      el("td", { text: r.kind }),
      el("td", { text: r.partner || "–" }),
      el("td", { class: "mono", text: (r.method || "") + " " + (r.path || "") }),
      el("td", { class: "decision", text: r.decision }),
      el("td", { text: r.status === null || r.status === undefined ? "–" : r.status }),
      el("td", { text: r.reason || "" }),
      el("td", { class: "mono", text: r.request_id || "" }),
    );
    tr.addEventListener("click", () => showRecord(r.seq));
    return tr;
  }));
  if (selectedSeq === null && params.get("request_id") && recs.length === 1) showRecord(recs[0].seq);
}

async function showRecord(seq) {
  selectedSeq = seq;
  for (const tr of document.querySelectorAll("#journal tbody tr")) tr.classList.toggle("selected", Number(tr.dataset.seq) === seq);
  const box = document.getElementById("detail");
  box.hidden = false;
  let d;
  try {
    d = await api("/api/journal/record?seq=" + encodeURIComponent(seq));
  } catch (e) {
    box.replaceChildren(el("p", { class: "error", text: "record " + seq + ": " + e.message }));
    return;
  }
  const r = d.record, c = d.chain, cp = d.checkpoint;
  const dl = el("dl", {});
  const row = (k, v, cls) => dl.append(el("dt", { text: k }), el("dd", { class: cls || "", text: v === null || v === undefined || v === "" ? "–" : String(v) }));
  row("chain position", "record " + c.seq + (c.first_seq ? " of " + c.first_seq + "…" + c.last_seq : ""));
  row("prev_hash", c.prev_hash, "mono");
  row("hash", c.hash, "mono");
  if (cp) row("signed checkpoint", "covered: checkpoint at seq " + cp.seq + " (" + cp.kind + ", " + cp.time + ") signs the chain through this record", "covered");
  else row("signed checkpoint", "not yet covered: the next checkpoint will sign it", "uncovered");
  for (const k of ["time", "kind", "node", "partner", "cert_serial", "cert_fingerprint", "issuer", "client_addr", "tls_version", "method", "path", "route", "upstream", "decision", "reason", "status", "request_bytes", "response_bytes", "duration_us", "request_id", "detail"]) {
    row(k, r[k], ["cert_serial", "cert_fingerprint", "path", "request_id"].includes(k) ? "mono" : "");
  }
  box.replaceChildren(el("h3", { text: "Record " + r.seq }), dl);
}

// ---- start

async function refresh() {
  try {
    renderOverview(await api("/api/overview"));
    hideLogin();
  } catch (e) {
    if (e.message !== "unauthorized") document.getElementById("updated").textContent = "update failed: " + e.message;
    return;
  }
  await loadJournal();
}

function start() {
  const form = document.getElementById("filters");
  paramsToForm(form, filtersFromHash());
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    selectedSeq = null;
    document.getElementById("detail").hidden = true;
    location.hash = "journal?" + formToParams(form).toString();
  });
  form.addEventListener("reset", () => { setTimeout(() => { location.hash = ""; }, 0); });
  window.addEventListener("hashchange", () => { paramsToForm(form, filtersFromHash()); loadJournal(); });
  document.getElementById("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    token = document.getElementById("token").value.trim();
    sessionStorage.setItem("gatehouse-admin-token", token);
    refresh();
  });
  refresh();
  setInterval(refresh, POLL_MS);
}

document.addEventListener("DOMContentLoaded", start);
