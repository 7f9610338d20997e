// edgecollab dashboard: renders /dashboard/state snapshots pushed by /dashboard/events.
// Plain browser JavaScript, no build step, no library. Every value from the bus is
// inserted as text (never as HTML): node ids and metadata come from devices.
"use strict";

const $ = (id) => document.getElementById(id);
let skew = 0; // server clock minus browser clock, in seconds
window.__dashboard = { renders: 0, state: null };

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "style") el.style.cssText = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const num = (v, digits = 0) =>
  v === null || v === undefined ? "–" : Number(v).toLocaleString("en-US", {
    minimumFractionDigits: digits, maximumFractionDigits: digits });

function usd(v) {
  if (v === null || v === undefined) return "–";
  if (v === 0) return "$0.00";
  if (Math.abs(v) >= 100) return "$" + num(v, 0);
  if (Math.abs(v) >= 1) return "$" + num(v, 2);
  return "$" + Number(v).toFixed(4);
}

function ago(ts) {
  const s = Math.max(0, Date.now() / 1000 + skew - ts);
  if (s < 1.5) return "just now";
  if (s < 90) return Math.round(s) + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  return Math.round(s / 3600) + " h ago";
}

function clock(ts) {
  return new Date(ts * 1000).toLocaleTimeString("en-GB", { hour12: false });
}

function setText(id, text) { $(id).textContent = text; }

// --- sections ------------------------------------------------------------------------

function renderHeader(state) {
  const gw = state.gateway || {};
  const parts = [h("b", {}, gw.id || "gateway")];
  if (gw.policy) parts.push(" · policy ", h("b", {}, gw.policy));
  if (gw.capability) parts.push(" · pool ", h("b", {}, gw.capability));
  parts.push(" · cloud ", h("b", {}, gw.cloud_model || "off"));
  $("gateway").replaceChildren(...parts);
  const problems = [];
  if (gw.broker_connected === false) problems.push("The gateway has lost its broker connection; figures may be stale.");
  if (state.ledger_error) problems.push("Ledger unavailable: " + state.ledger_error);
  $("banner").hidden = problems.length === 0;
  $("banner").textContent = problems.join(" ");
}

function renderKpis(state) {
  const nodes = state.nodes || [];
  const online = nodes.filter((n) => n.online).length;
  setText("kpi-nodes", nodes.length ? `${online} / ${nodes.length}` : "0");
  const offline = nodes.length - online;
  setText("kpi-nodes-hint", offline ? `${offline} offline` : nodes.length ? "all online" : "none announced");

  const t = state.traffic.totals;
  setText("kpi-requests", num(t.requests));
  setText("kpi-requests-hint", `${num(t.last_minute)} in the last minute · ${num(t.tokens)} tokens`);
  setText("kpi-share", t.edge_share === null ? "–" : Math.round(100 * t.edge_share) + " %");
  const answered = t.edge + t.cache + t.cloud + t.errors;
  $("kpi-split").replaceChildren(
    ...["edge", "cache", "cloud", "errors"].map((k) =>
      h("span", { class: `bar-${k}`, style: `width:${answered ? (100 * t[k]) / answered : 0}%;background:var(--${k === "errors" ? "error" : k})` })),
  );
  setText("kpi-share-hint", `${t.edge} edge · ${t.cache} cache · ${t.cloud} cloud` + (t.errors ? ` · ${t.errors} failed` : ""));
  setText("kpi-cost", usd(t.cost_usd));
  setText("kpi-cost-hint", `${t.cloud} request${t.cloud === 1 ? "" : "s"} sent to the cloud`);
  setText("kpi-saved", usd(t.saved_usd));
  setText("kpi-saved-hint", `all-cloud would have cost ${usd(t.all_cloud_usd)}`);
}

function nodeCard(n) {
  const model = n.models[0] || {};
  const extra = [model.parameters, model.quantization].filter((v) => v && v !== "n/a").join(" · ");
  const served = n.served_total || 0;
  const known = n.online && n.load_known && n.slots;
  const used = known ? n.in_flight || 0 : 0;
  const share = known ? Math.min(1, n.utilisation || 0) : 0;
  const stat = (k, v) => h("div", { class: "stat" }, h("div", { class: "k" }, k), h("div", { class: "v" }, v));
  return h("article", { class: "node", "data-node": n.id, "data-status": n.status },
    h("div", { class: "title" },
      h("span", { class: "name", title: n.id }, n.id),
      h("span", { class: `pill ${n.status}`, "data-role": "status" }, n.status)),
    h("div", { class: "device" }, n.device || "unknown device", n.simulated ? h("span", { class: "badge" }, "simulated") : null),
    h("div", { class: "model" }, h("b", {}, model.id || "no model"), extra ? h("span", { class: "sub" }, "  " + extra) : null),
    h("div", { class: "meter-label" },
      h("span", {}, known ? `${used} / ${n.slots} slot${n.slots === 1 ? "" : "s"} busy` : n.online ? "load not reported" : "—"),
      h("span", {}, known ? `${num(n.tokens_in_flight)} / ${num(n.max_inflight_tokens)} tokens` : "")),
    h("div", { class: "meter" + (share > 0.8 ? " hot" : "") }, h("span", { style: `width:${Math.round(100 * share)}%` })),
    h("div", { class: "stats" },
      stat("tokens/s", n.online ? num(n.tokens_per_s, 1) : "–"),
      stat("served", num(n.served_total)),
      stat("avg time", served && n.inference_ms_avg !== null ? num(n.inference_ms_avg, 0) + " ms" : "–")),
    h("div", { class: "chips" },
      n.capabilities.map((c) => h("span", { class: "chip" }, c)),
      n.expertise.map((e) => h("span", { class: "chip expert", title: "expertise" }, e))),
  );
}

function renderNodes(state) {
  const nodes = state.nodes || [];
  $("nodes").replaceChildren(...(nodes.length ? nodes.map(nodeCard)
    : [h("p", { class: "empty" }, "No node has announced itself in the CMS yet.")]));
  const sims = nodes.filter((n) => n.simulated).length;
  setText("nodes-note", nodes.length ? `${nodes.length} known` + (sims ? `, ${sims} simulated` : "") : "");
}

function renderPolicies(state) {
  const rows = state.traffic.by_policy;
  $("policies").replaceChildren(...(rows.length ? rows.map((p) =>
    h("div", { class: "policy", "data-policy": p.policy },
      h("div", { class: "row" }, h("b", {}, p.policy),
        h("span", {}, `${p.requests} requests · ${p.edge} edge · ${p.cache} cache · ${p.cloud} cloud` + (p.error ? ` · ${p.error} error` : ""))),
      h("div", { class: "bar" }, ...["edge", "cache", "cloud", "error"].map((k) =>
        h("span", { class: k, style: `width:${p.requests ? (100 * p[k]) / p.requests : 0}%`, title: `${k}: ${p[k]}` })))))
    : [h("p", { class: "empty" }, "No requests yet.")]));
  const reasons = [...state.traffic.escalations, ...state.traffic.errors];
  $("reasons").replaceChildren(...(reasons.length ? reasons.map((r) =>
    h("li", {}, h("span", { class: `pill ${r.route}` }, r.route === "error" ? "error" : "→ " + r.route),
      h("span", { class: "why" }, r.reason), h("span", { class: "count" }, `× ${r.count}`)))
    : [h("li", { class: "empty" }, "None so far.")]));
}

function fresh(s) {
  const rate = s.rate_hz || s.declared_rate_hz;
  const limit = Math.max(5, rate ? 3 / rate : 0);
  return Date.now() / 1000 + skew - s.last_seen <= limit;
}

function renderStreams(state) {
  const devices = state.devices || {};
  const seen = new Set((state.streams || []).map((s) => s.agent_id));
  const waiting = Object.entries(devices).filter(([id]) => !seen.has(id)).map(([id, d]) => ({
    agent_id: id, domain: "", stream: d.streams.join(", ") || "–", kind: "", type: "waiting for data",
    model: null, shape: [], rate_hz: null, declared_rate_hz: null, source: null, place: d.place,
    simulated: d.simulated, last_seen: null }));
  const streams = [...(state.streams || []), ...waiting];
  const body = $("streams").tBodies[0];
  let previous = null;
  body.replaceChildren(...(streams.length ? streams.map((s) => {
    const first = s.agent_id !== previous;
    previous = s.agent_id;
    const ok = s.last_seen !== null && fresh(s);
    const info = devices[s.agent_id] || {};
    const where = [(info.device || "").replaceAll("_", " "), info.place || s.place].filter(Boolean).join(" · ");
    const rate = s.rate_hz ?? s.declared_rate_hz;
    return h("tr", { class: ok ? "" : "stale", "data-agent": s.agent_id, "data-stream": s.stream },
      h("td", { class: "dev" }, first ? [s.agent_id, s.simulated || info.simulated ? h("span", { class: "badge" }, "simulated")
        : (s.source || "").startsWith("replay:") ? h("span", { class: "badge", title: s.source }, "replayed") : null,
        where ? h("div", { class: "sub small" }, where) : null] : ""),
      h("td", {}, h("div", {}, s.stream), h("div", { class: "sub small" }, s.domain)),
      h("td", {}, h("div", {}, s.type || s.kind), s.source ? h("div", { class: "sub small" }, s.source) : null),
      h("td", { class: "sub" }, s.model || "–"),
      h("td", { class: "num" }, s.shape.length ? s.shape.join("×") : "–"),
      h("td", { class: "num" }, rate === null || rate === undefined ? "–" : num(rate, rate < 10 ? 1 : 0) + " Hz"),
      h("td", { class: "num" }, s.last_seen === null ? "–" : [h("span", { class: "fresh" + (ok ? "" : " stale") }),
        h("span", { "data-ts": s.last_seen }, ago(s.last_seen))]));
  }) : [h("tr", { class: "empty-row" }, h("td", { colspan: 7 }, "Nothing published on data/ yet."))]));
  const agents = new Set(streams.map((s) => s.agent_id)).size;
  const bad = (state.data_stats || {}).malformed || 0;
  setText("streams-note", streams.length ? `${agents} device${agents === 1 ? "" : "s"}, ${streams.length} stream${streams.length === 1 ? "" : "s"}` +
    (bad ? ` · ${bad} malformed message${bad === 1 ? "" : "s"} ignored` : "") : "");
}

function renderEvents(state) {
  const events = state.events || [];
  $("events").replaceChildren(...(events.length ? events.slice(0, 5).map((e) =>
    h("li", { "data-event": e.type },
      h("span", { class: `pill sev-${e.severity}` }, e.phase),
      h("span", { class: "why" }, h("b", {}, e.type.replaceAll("_", " ")), h("span", { class: "sub" }, ` · ${e.agent_id} / ${e.stream}`)),
      h("span", { class: "count sub", "data-ts": e.received }, ago(e.received))))
    : [h("li", { class: "empty" }, "No detector has reported anything.")]));
}

function renderRecent(state) {
  const rows = state.traffic.recent;
  $("recent").tBodies[0].replaceChildren(...(rows.length ? rows.map((r) =>
    h("tr", { "data-route": r.route },
      h("td", { class: "sub", title: new Date(r.ts * 1000).toISOString() }, clock(r.ts)),
      h("td", {}, r.tenant),
      h("td", {}, h("span", { class: `pill ${r.route}` }, r.route)),
      h("td", {}, r.node || r.model || (r.route === "error" ? r.status : "–")),
      h("td", { class: "sub" }, r.policy),
      h("td", { class: "num" }, num(r.tokens)),
      h("td", { class: "num" }, num(r.latency_ms, 0) + " ms"),
      h("td", { class: "num" }, usd(r.cost_usd)),
      h("td", { class: "reason" }, r.escalation || "")))
    : [h("tr", { class: "empty-row" }, h("td", { colspan: 9 }, "No requests yet."))]));
}

function render(state) {
  skew = state.generated_at - Date.now() / 1000;
  renderHeader(state);
  renderKpis(state);
  renderNodes(state);
  renderPolicies(state);
  renderStreams(state);
  renderEvents(state);
  renderRecent(state);
  window.__dashboard.renders += 1;
  window.__dashboard.state = state;
  document.body.dataset.rendered = String(window.__dashboard.renders);
}

// --- live updates --------------------------------------------------------------------

function setLive(mode, text) {
  $("live").dataset.state = mode;
  setText("live-text", text);
}

function connect() {
  const events = new EventSource("/dashboard/events");
  events.addEventListener("open", () => setLive("live", "live"));
  events.addEventListener("state", (event) => {
    setLive("live", "live");
    render(JSON.parse(event.data));
  });
  events.addEventListener("error", () => setLive("lost", "reconnecting…"));
}

setInterval(() => {
  for (const el of document.querySelectorAll("[data-ts]")) el.textContent = ago(Number(el.dataset.ts));
}, 1000);

connect();
