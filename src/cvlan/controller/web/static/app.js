// CVLAN UI: live node status, copy buttons, confirmations. No dependencies.
"use strict";

(function () {
  const POLL_MS = 3000;

  function ago(iso) {
    if (!iso) return "never";
    const s = Math.floor((Date.now() - Date.parse(iso)) / 1000);
    if (s < 5) return "just now";
    for (const [u, n] of [["d", 86400], ["h", 3600], ["m", 60]]) if (s >= n) return Math.floor(s / n) + u + " ago";
    return s + "s ago";
  }

  function until(iso) {
    if (!iso) return "not issued";
    const s = Math.floor((Date.parse(iso) - Date.now()) / 1000);
    if (s <= 0) return "expired";
    for (const [u, n] of [["d", 86400], ["h", 3600], ["m", 60]]) if (s >= n) return "in " + Math.floor(s / n) + u;
    return "in " + s + "s";
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // Same wording as the server's node_path(): "2 direct · 1 relay", "no peers", "" before a report.
  function pathOf(n) {
    const h = n.health || {};
    if (typeof h.peers_total !== "number") return "";
    if (h.peers_total === 0) return "no peers";
    const d = h.peers_direct || 0, r = h.peers_relay || 0, w = h.peers_total - d - r;
    const parts = [];
    if (d) parts.push(d + " direct");
    if (r) parts.push(r + " relay");
    if (w > 0) parts.push(w + " connecting");
    return parts.join(" · ");
  }

  function nodeRow(table, n) {
    const base = table.dataset.nodeBase;
    const tr = el("tr");
    tr.dataset.node = n.id;
    const name = el("td");
    const dot = el("span", "dot " + (n.online ? "on" : "off"));
    dot.title = n.online ? "online" : "offline";
    const a = el("a", "node-name", n.name);
    a.href = base + encodeURIComponent(n.name);
    name.append(dot, a);
    if (n.disabled) name.append(" ", el("span", "status status-revoked", "disabled"));
    for (const t of n.tags || []) name.append(el("span", "tag", t));
    tr.append(name, el("td", "mono", n.address));
    if (table.dataset.showCvlan) {
      const c = el("td");
      const ca = el("a", "", n.cvlan);
      ca.href = base.replace(/nodes\/$/, "cvlans/") + encodeURIComponent(n.cvlan);
      c.append(ca);
      tr.append(c);
    }
    tr.append(el("td", "mono small", (n.endpoints || []).length ? n.endpoints.join(", ") : "—"));
    const p = el("td");
    const path = n.online ? pathOf(n) : "";
    p.append(path ? el("span", "pill", path) : el("span", "muted", "—"));
    tr.append(p);
    const seen = el("td", "muted", ago(n.last_seen));
    seen.dataset.time = n.last_seen || "";
    tr.append(seen, el("td", "muted", until(n.cert_not_after) + (n.key_expiry_disabled ? " (expiry off)" : "")));
    return tr;
  }

  async function refreshNodes(table) {
    try {
      const r = await fetch(table.dataset.live, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (r.status === 401) { location.reload(); return; }
      if (!r.ok) return;
      const body = await r.json();
      const tbody = table.tBodies[0];
      tbody.replaceChildren(...body.items.map((n) => nodeRow(table, n)));
      const empty = document.getElementById("members-empty");
      if (empty) empty.hidden = body.items.length > 0;
      const count = document.getElementById("node-count");
      if (count) count.textContent = body.total + (body.total === 1 ? " node" : " nodes");
      table.dataset.updated = String(Date.now());
    } catch (e) {
      /* network blip: keep the last view, try again next tick */
    }
  }

  async function refreshHealth(box) {
    try {
      const r = await fetch(box.dataset.liveHealth, { credentials: "same-origin" });
      if (!r.ok) return;
      const h = await r.json();
      for (const span of document.querySelectorAll("[data-h]")) {
        let v = h;
        for (const k of span.dataset.h.split(".")) v = v == null ? v : v[k];
        span.textContent = v == null ? "…" : String(v);
      }
    } catch (e) { /* try again next tick */ }
  }

  document.addEventListener("DOMContentLoaded", () => {
    for (const table of document.querySelectorAll("table[data-live]")) {
      setInterval(() => { if (!document.hidden) refreshNodes(table); }, POLL_MS);
    }
    const health = document.querySelector("[data-live-health]");
    if (health) {
      refreshHealth(health);
      setInterval(() => { if (!document.hidden) refreshHealth(health); }, 5000);
    }
    for (const btn of document.querySelectorAll("[data-copy]")) {
      btn.addEventListener("click", async () => {
        const src = document.querySelector(btn.dataset.copy);
        const text = src ? src.textContent : "";
        try { await navigator.clipboard.writeText(text); } catch (e) {
          const range = document.createRange(); range.selectNodeContents(src);
          const sel = window.getSelection(); sel.removeAllRanges(); sel.addRange(range);
        }
        btn.textContent = "Copied";
        setTimeout(() => { btn.textContent = "Copy"; }, 1500);
      });
    }
    for (const form of document.querySelectorAll("form[data-confirm]")) {
      form.addEventListener("submit", (ev) => { if (!confirm(form.dataset.confirm)) ev.preventDefault(); });
    }
  });
})();
