// The rsp dashboard (issue 22): plain JavaScript, no framework, no build step.
// Every piece of API data is inserted as text (textContent), never as markup, and the
// page's Content-Security-Policy allows no inline script. The token lives in this tab's
// sessionStorage and goes out only as the Authorization header of calls to this origin.
"use strict";

const TOKEN_KEY = "rsp.token";
const CERT_KEY = "rsp.certificate";
// The audit page shows at most this many records (the first page and the live tail).
const AUDIT_ROWS = 200;
// How often the health strip scrapes /metrics (its rates come from two scrapes).
const HEALTH_EVERY_MS = 5000;

let pageAbort = null; // aborts the current page's streams when the page changes
let healthTimer = null;

// ---- small helpers ----
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}
const $ = (id) => document.getElementById(id);
function say(text, error) {
  const s = $("status");
  s.textContent = text || "";
  s.className = error ? "error" : "";
}
function when(ms) {
  return ms ? new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z") : "–";
}
function ago(ms) {
  if (!ms) return "–";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  return s < 120 ? `${s} s` : s < 7200 ? `${Math.round(s / 60)} min` : `${Math.round(s / 3600)} h`;
}
function table(caption, headers, rows, attrs) {
  return el("table", attrs || {},
    el("caption", { text: caption }),
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col", text: h })))),
    el("tbody", {}, rows));
}
function row(cells, attrs) {
  return el("tr", attrs || {}, cells.map((c) => el("td", {}, c === null || c === undefined ? "–" : c)));
}

// ---- the API ----
function signedIn() {
  return sessionStorage.getItem(TOKEN_KEY) !== null || sessionStorage.getItem(CERT_KEY) !== null;
}
function headers(extra) {
  const h = Object.assign({ Accept: "application/json" }, extra || {});
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) h.Authorization = "Bearer " + token;
  return h;
}
class ApiError extends Error {
  constructor(status, detail) {
    super(`${status}: ${detail}`);
    this.status = status;
  }
}
async function api(method, path, body, signal) {
  const init = { method, headers: headers(), signal, credentials: "same-origin", cache: "no-store" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  const text = await r.text();
  if (!r.ok) {
    let detail = text;
    try { detail = JSON.parse(text).detail || text; } catch (_) { /* not a problem document */ }
    if (r.status === 401) signOut(`Signed out: ${detail}`);
    throw new ApiError(r.status, detail);
  }
  return path === "/metrics" ? text : text ? JSON.parse(text) : null;
}

// Server-Sent Events over fetch (EventSource cannot send the Authorization header).
// Reconnects with Last-Event-ID after the stream ends (the server ends it every
// 10 minutes so that the caller is authenticated again), until `signal` aborts.
async function watch(path, signal, onEvent, after) {
  let lastId = after === undefined ? null : after;
  while (!signal.aborted) {
    let failed = false;
    try {
      const h = headers({ Accept: "text/event-stream" });
      if (lastId !== null) h["Last-Event-ID"] = lastId;
      const r = await fetch(path, { headers: h, signal, cache: "no-store" });
      if (!r.ok) {
        const text = await r.text();
        if (r.status === 401) { signOut("Signed out: the stream was refused (401)"); return; }
        // Any other refusal stands (a role that may not watch, a namespace gone): do not
        // retry it, each refused request is an audit record.
        if (r.status < 500) { say(`Live updates refused: ${r.status}: ${text}`, true); return; }
        throw new Error(`${r.status}: ${text}`);
      }
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value.replace(/\r\n?/g, "\n");
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          let event = "message", data = [], id = null;
          for (const line of block.split("\n")) {
            if (line.startsWith(":")) continue;
            const i = line.indexOf(":");
            const field = i < 0 ? line : line.slice(0, i);
            const val = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
            if (field === "event") event = val;
            else if (field === "data") data.push(val);
            else if (field === "id") id = val;
          }
          if (id !== null) lastId = id;
          if (data.length) onEvent(event, JSON.parse(data.join("\n")));
        }
      }
    } catch (e) {
      if (signal.aborted) return;
      failed = true;
      say(`Live updates interrupted (${e.message}); reconnecting`, true);
    }
    // A stream the server ended (after 10 minutes) resumes at once; after a failure
    // (503: too many streams, or the network) wait a little.
    await new Promise((res) => setTimeout(res, failed ? 5000 : 200));
  }
}

// ---- sign in and out ----
function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(CERT_KEY);
  if (pageAbort) pageAbort.abort();
  clearInterval(healthTimer);
  healthTimer = null;
  healthRefused = false;
  lastScrape = null;
  $("nav").hidden = true;
  $("sign-out").hidden = true;
  $("health").hidden = true;
  const main = $("main");
  main.replaceChildren(signInForm);
  say(message || "", Boolean(message));
  $("token").focus();
}
let signInForm = null;
async function signIn(token) {
  sessionStorage.removeItem(CERT_KEY);
  sessionStorage.removeItem(TOKEN_KEY);
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.setItem(CERT_KEY, "1");
  try {
    await api("GET", "/v1/namespaces");
  } catch (e) {
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(CERT_KEY);
    say(`Sign-in refused: ${e.message}`, true);
    return;
  }
  $("token").value = "";
  say("");
  if (!location.hash || location.hash === "#/") location.hash = "#/pools";
  else route();
}

// ---- the health strip ----
function metricSum(text, name) {
  let sum = 0, found = false;
  for (const line of text.split("\n")) {
    if (line.startsWith("#")) continue;
    if (line.startsWith(name + " ") || line.startsWith(name + "{")) {
      const v = Number(line.slice(line.lastIndexOf(" ") + 1));
      if (Number.isFinite(v)) { sum += v; found = true; }
    }
  }
  // A counter with no series yet (nothing counted since the start) is zero.
  return found ? sum : 0;
}
let lastScrape = null;
let healthRefused = false; // this caller's role may not read /metrics
async function scrape() {
  if (healthRefused) return;
  let text;
  try {
    text = await api("GET", "/metrics");
  } catch (e) {
    // An operator may not read metrics: stop asking (each refusal is an audit record).
    if (e.status === 403) {
      healthRefused = true;
      clearInterval(healthTimer);
      $("health").hidden = true;
    }
    return;
  }
  const now = Date.now();
  const m = {
    registrations: metricSum(text, "rsp_registrations_total"),
    resolutions: metricSum(text, "rsp_resolutions_total"),
    refusals: metricSum(text, "rsp_rejections_total"),
  };
  const conns = metricSum(text, "rsp_connections");
  $("h-connections").textContent = conns === null ? "–" : String(conns);
  for (const k of Object.keys(m)) {
    const cell = $("h-" + k);
    if (lastScrape && m[k] !== null && lastScrape.m[k] !== null) {
      const rate = Math.max(0, m[k] - lastScrape.m[k]) / ((now - lastScrape.at) / 1000);
      cell.textContent = rate.toFixed(1);
    }
  }
  lastScrape = { at: now, m };
}
function startHealth() {
  if (healthRefused) return;
  $("health").hidden = false;
  if (healthTimer) return;
  scrape();
  setTimeout(scrape, 1000); // a first rate soon after signing in
  healthTimer = setInterval(scrape, HEALTH_EVERY_MS);
}

// ---- pages ----
const pages = { pools: poolsPage, registrars: registrarsPage, trust: trustPage, audit: auditPage };

async function route() {
  if (!signedIn()) { signOut(); return; }
  if (pageAbort) pageAbort.abort();
  // This page's own controller: when the next route() aborts it, the error that ends this
  // page is not news (pageAbort is the next page's by then).
  const abort = new AbortController();
  pageAbort = abort;
  $("nav").hidden = false;
  $("sign-out").hidden = false;
  startHealth();
  const [, name, arg] = location.hash.match(/^#\/([a-z]+)(?:\/(.*))?$/) || [];
  const page = pages[name] ? name : "pools";
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.getAttribute("href") === "#/" + page) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const main = $("main");
  main.replaceChildren(el("p", { text: "Loading…" }));
  try {
    await pages[page](main, abort.signal, arg ? decodeURIComponent(arg) : null);
  } catch (e) {
    if (!abort.signal.aborted) say(e.message, true);
  }
}

// Pools: one namespace's pools and their PEs, live from /v1/watch/pools.
async function poolsPage(main, signal, namespace) {
  const namespaces = (await api("GET", "/v1/namespaces", undefined, signal)).map((n) => n.name);
  namespace = namespace || (namespaces.includes("default") ? "default" : namespaces[0]);
  const picker = el("select", {
    id: "namespace",
    onchange: (e) => { location.hash = "#/pools/" + encodeURIComponent(e.target.value); },
  }, namespaces.map((n) => el("option", { value: n, selected: n === namespace, text: n })));
  // Not a live region: it is redrawn every few seconds; #status announces the changes.
  const body = el("div", { id: "pools" });
  main.replaceChildren(
    el("h2", { text: "Namespaces and pools" }),
    el("div", { class: "row" }, el("label", { for: "namespace", text: "Namespace" }), picker),
    body);
  if (!namespace) { body.textContent = "No namespaces."; return; }
  // pool handle -> { pool, pes: Map(pe_id -> pe) }
  const pools = new Map();
  const draw = () => {
    const list = [...pools.values()].sort((a, b) => a.pool.handle.localeCompare(b.pool.handle));
    body.replaceChildren(
      table(`Pools in ${namespace}`, ["Pool", "PEs", "Policy", "Declared limits"],
        list.map(({ pool, pes }) => row([
          pool.handle,
          String(pes.size),
          pool.policy,
          pool.declared
            ? [pool.declared.policy ? `policy ${pool.declared.policy}` : null,
               pool.declared.max_pes != null ? `at most ${pool.declared.max_pes} PEs` : null]
                .filter(Boolean).join(", ") || "declared"
            : "none",
        ], { "data-pool": pool.handle }))),
      ...list.map(({ pool, pes }) => el("section", { id: "pool-" + pool.handle, class: "pool" },
        table(`Pool ${pool.handle}: ${pes.size} PE${pes.size === 1 ? "" : "s"}`,
          ["PE ID", "Address", "Registrant", "Home registrar", "Load / policy", "Health", "Age"],
          [...pes.values()].map((pe) => row([
            pe.pe_id, pe.transport, pe.registrant, pe.home_registrar, pe.policy || "–",
            (pe.draining ? "draining" : pe.check ? `${pe.check.kind} ${pe.check.state}` : "registered")
              + (pe.rtt_us != null ? `, rtt ${pe.rtt_us} µs` : ""),
            // Since its first registration here; a peer's PE registered elsewhere: "–".
            ago(pe.registered_ms),
          ], { "data-pe": pe.pe_id, "data-registrant": pe.registrant || "" }))))));
  };
  const upsert = (handle, pe) => {
    if (!pools.has(handle)) pools.set(handle, { pool: { handle, policy: null, declared: null }, pes: new Map() });
    pools.get(handle).pes.set(pe.pe_id, pe);
  };
  const ticker = setInterval(draw, 5000); // the "age" column
  signal.addEventListener("abort", () => clearInterval(ticker));
  await watch(`/v1/watch/pools?namespace=${encodeURIComponent(namespace)}`, signal, (event, data) => {
    if (event === "snapshot") {
      pools.clear();
      for (const p of data) {
        pools.set(p.handle, { pool: p, pes: new Map() });
        for (const pe of p.pool_elements) upsert(p.handle, pe);
      }
    } else if (event === "added" || event === "updated") {
      upsert(data.pool, data.pool_element);
    } else if (event === "removed") {
      const p = pools.get(data.pool);
      if (p) p.pes.delete(data.pe_id);
      say(`PE ${data.pe_id} left ${data.pool}: ${data.reason || "removed"}`);
    } else if (event === "error") {
      say(`The stream ended: ${data.detail || JSON.stringify(data)}`, true);
    }
    draw();
  });
}

// Registrars: this one (readiness) and its ENRP peers.
async function registrarsPage(main, signal) {
  const [ready, peers] = await Promise.all([
    api("GET", "/readyz", undefined, signal).catch((e) => ({ status: `not ready (${e.message})` })),
    api("GET", "/v1/peers", undefined, signal),
  ]);
  main.replaceChildren(
    el("h2", { text: "Registrars" }),
    table("This registrar", ["State", "Store", "Control plane"],
      [row([ready.status, ready.store || "–", peers.control_plane])]),
    table("Peers", ["Identity", "Server ID", "State", "Last heard", "Checksum", "Refused claimant"],
      peers.peers.length
        ? peers.peers.map((p) => row([
          p.identity, p.server_id, p.state,
          p.last_heard_ms ? `${ago(p.last_heard_ms)} ago` : "never",
          p.checksum_match === null ? "–" : p.checksum_match ? "agrees" : "differs",
          p.conflict,
        ]))
        : [el("tr", {}, el("td", { colspan: 6, text: "No peers." }))]));
}

// Trust: trust domains, grants, revocations, and a form to revoke (with a confirm step).
async function trustPage(main, signal) {
  const [domains, grants, revocations] = await Promise.all([
    api("GET", "/v1/trust-domains", undefined, signal),
    api("GET", "/v1/grants", undefined, signal),
    api("GET", "/v1/revocations", undefined, signal),
  ]);
  const local = (domains.find((d) => d.local) || {}).name || "";
  const kind = el("select", { id: "revoke-kind", name: "kind" },
    el("option", { value: "spiffe_id", text: "an identity (SPIFFE ID)" }),
    el("option", { value: "serial", text: "a certificate (serial)" }));
  const subject = el("input", { id: "revoke-subject", name: "subject", required: true, spellcheck: "false", size: 48 });
  const domain = el("input", { id: "revoke-domain", name: "trust_domain", value: local, spellcheck: "false" });
  const reason = el("input", { id: "revoke-reason", name: "reason", maxlength: 4096 });
  const confirmBox = el("div", { id: "revoke-confirm", class: "confirm", role: "alertdialog", "aria-labelledby": "revoke-question", hidden: true });
  const form = el("form", { id: "revoke-form", class: "card" },
    el("h3", { text: "Revoke" }),
    el("p", { text: "Revoking closes the subject's connections at once and removes its PEs. It cannot be undone." }),
    el("label", { for: "revoke-kind", text: "What" }), kind,
    el("label", { for: "revoke-subject", text: "SPIFFE ID or serial (hex)" }), subject,
    el("label", { for: "revoke-domain", text: "Trust domain (for a serial)" }), domain,
    el("label", { for: "revoke-reason", text: "Reason (for the record)" }), reason,
    el("div", { class: "row" }, el("button", { type: "submit", id: "revoke-submit", text: "Revoke…" })),
    confirmBox);
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const body = kind.value === "serial"
      ? { kind: "serial", trust_domain: domain.value.trim(), serial: subject.value.trim() }
      : { kind: "spiffe_id", spiffe_id: subject.value.trim() };
    if (reason.value.trim()) body.reason = reason.value.trim();
    const what = kind.value === "serial" ? `serial ${body.serial} of ${body.trust_domain}` : body.spiffe_id;
    const yes = el("button", { type: "button", id: "revoke-yes", class: "danger", text: `Yes, revoke ${what}` });
    const no = el("button", { type: "button", id: "revoke-no", text: "Cancel" });
    confirmBox.replaceChildren(el("p", { id: "revoke-question", text: `Revoke ${what}?` }), yes, no);
    confirmBox.hidden = false;
    no.addEventListener("click", () => { confirmBox.hidden = true; subject.focus(); });
    yes.addEventListener("click", async () => {
      yes.disabled = true;
      try {
        await api("POST", "/v1/revocations", body);
        say(`Revoked ${what}`);
        route();
      } catch (err) {
        say(`Not revoked: ${err.message}`, true);
        confirmBox.hidden = true;
      }
    });
    yes.focus();
  });
  main.replaceChildren(
    el("h2", { text: "Trust" }),
    table("Trust domains", ["Name", "Local", "Roots", "CRLs", "Added"],
      domains.map((d) => row([d.name, d.local ? "yes" : "federated", String(d.roots), String(d.crls), when(d.created_ms)]))),
    table("Grants", ["ID", "Identity", "Namespace", "Pools", "Actions", "Labels"],
      grants.map((g) => row([String(g.id), g.identity, g.namespace, g.pools, g.actions.join(", "), (g.labels || []).join(", ") || "–"]))),
    table("Revocations", ["ID", "Kind", "Trust domain", "Subject", "Reason", "When"],
      revocations.map((r) => row([String(r.id), r.kind, r.trust_domain, r.spiffe_id || r.serial || r.trust_domain, r.reason, when(r.created_ms)])),
      { id: "revocations" }),
    form);
}

// Audit: the log with the API's filters, newest first, a live tail, the chain's status.
const AUDIT_FILTERS = ["identity", "namespace", "pool", "action", "outcome"];
async function auditPage(main, signal, query) {
  const params = new URLSearchParams(query || "");
  const inputs = AUDIT_FILTERS.map((f) =>
    [el("label", { for: "audit-" + f, text: f[0].toUpperCase() + f.slice(1) }),
     el("input", { id: "audit-" + f, name: f, value: params.get(f) || "", spellcheck: "false" })]);
  const filters = el("form", { id: "audit-filters", class: "filters" }, inputs,
    el("button", { type: "submit", id: "audit-apply", text: "Filter" }));
  filters.addEventListener("submit", (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    for (const f of AUDIT_FILTERS) {
      const v = $("audit-" + f).value.trim();
      if (v) q.set(f, v);
    }
    location.hash = "#/audit/" + encodeURIComponent(q.toString());
  });
  const verify = el("p", { id: "audit-verify", text: "Checking the chain…" });
  const rows = el("tbody", {});
  const records = el("table", { id: "audit-records" },
    el("caption", { text: "Records, newest first (live)" }),
    el("thead", {}, el("tr", {}, ["ID", "Time", "Actor", "Action", "Outcome", "Namespace", "Pool", "PE", "Detail"]
      .map((h) => el("th", { scope: "col", text: h })))),
    rows);
  main.replaceChildren(el("h2", { text: "Audit log" }), verify, filters, records);
  const shown = new Set();
  const put = (r, top) => {
    if (shown.has(r.id)) return;
    shown.add(r.id);
    const tr = row([String(r.id), when(r.time_ms), r.actor, r.action, r.outcome, r.namespace, r.pool, r.pe_id, r.detail],
      { "data-id": String(r.id), "data-action": r.action });
    if (top) rows.prepend(tr); else rows.append(tr);
    while (rows.children.length > AUDIT_ROWS) rows.lastElementChild.remove();
  };
  api("GET", "/v1/audit/verify", undefined, signal).then((v) => {
    verify.textContent = v.intact
      ? `Chain intact: ${v.checked} records checked, head ${v.head.slice(0, 16)}…`
      : `Chain BROKEN at record ${v.broken.id}: ${v.broken.reason}`;
    verify.className = v.intact ? "ok" : "error";
  }).catch((e) => { verify.textContent = `Chain not checked: ${e.message}`; });
  const q = new URLSearchParams();
  for (const f of AUDIT_FILTERS) if (params.get(f)) q.set(f, params.get(f));
  const page = await api("GET", `/v1/audit?${q}&limit=${AUDIT_ROWS}`, undefined, signal);
  for (const r of page.events) put(r, false);
  // Resume after the newest record shown, so that none committed meanwhile is missed.
  const newest = page.events.length ? String(page.events[0].id) : undefined;
  await watch(`/v1/watch/audit?${q}`, signal, (event, data) => {
    if (event === "audit") put(data, true);
  }, newest);
}

// ---- start ----
document.addEventListener("DOMContentLoaded", () => {
  signInForm = $("sign-in");
  signInForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const token = $("token").value.trim();
    if (!token) { say("Enter a token, or sign in with your certificate", true); return; }
    signIn(token);
  });
  $("sign-in-cert").addEventListener("click", () => signIn(null));
  $("sign-out").addEventListener("click", () => { signOut(); say("Signed out"); });
  window.addEventListener("hashchange", route);
  if (signedIn()) route(); else $("token").focus();
});
