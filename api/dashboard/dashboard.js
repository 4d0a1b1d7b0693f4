/* marsad dashboard: reads the service's JSON API and draws it. Plain JavaScript, no
   libraries; every request goes to the origin that served the page. */
"use strict";

(function () {
  const VERDICTS = ["ok", "degraded", "throttled", "blocked", "failed", "unknown"];
  const INTERFERED = ["blocked", "throttled", "degraded"];
  const VERDICT_COLOURS = {
    ok: "#2e8b57", degraded: "#d8a31a", throttled: "#e0702b",
    blocked: "#c8333b", failed: "#7a5ab8", unknown: "#8a94a3",
  };
  const PALETTE = ["#0f6e6e", "#3b82c4", "#e0702b", "#7a5ab8", "#2e8b57", "#c8333b",
                   "#d8a31a", "#b5487f"];
  const GREY = "#9aa4b2";
  const DARK_GREY = "#6b7480";
  const LATEST = 10;        // rows in the latest-calls table
  const TOP_APPS = 7;       // apps drawn on their own; the rest are summed
  const BUCKET_S = 1;       // finest bucket asked; the service widens it to fit 360 buckets
  const REFRESH_MS = 30000;
  const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800,
                      21600, 43200, 86400, 172800, 604800];
  const TOKEN_KEY = "marsad-token";

  const state = { lang: "en", dict: {}, strings: null, data: {}, errors: [], loadedAt: null };

  const $ = (id) => document.getElementById(id);

  // -- text ---------------------------------------------------------------------------

  function t(key, vars) {
    let s = state.dict[key];
    if (s === undefined && state.strings) s = state.strings.en[key];
    if (s === undefined) s = key;
    for (const [k, v] of Object.entries(vars || {})) s = s.split("{" + k + "}").join(String(v));
    return s;
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ESCAPES[c]);

  // Numbers keep Latin digits in both languages.
  const fmtInt = (n) => Number(n).toLocaleString("en-US");

  function scaled(n, units, base) {
    let i = 0;
    while (Math.abs(n) >= base && i < units.length - 1) { n /= base; i += 1; }
    const digits = i === 0 || n >= 100 ? 0 : n >= 10 ? 1 : 2;
    return n.toFixed(digits) + " " + units[i];
  }
  const fmtBytes = (n) => scaled(n, ["B", "kB", "MB", "GB", "TB"], 1000);
  const fmtRate = (n) => scaled(n, ["bit/s", "kbit/s", "Mbit/s", "Gbit/s"], 1000);
  const iso = (ts) => new Date(ts * 1000).toISOString();
  const fmtTime = (ts) => iso(ts).slice(0, 19).replace("T", " ");

  function appName(app) {
    if (app === null || app === undefined) return t("unrecognised");
    if (app === "\u0000others") return t("others");
    return app;
  }

  // -- data ---------------------------------------------------------------------------

  function token() {
    try { return sessionStorage.getItem(TOKEN_KEY) || ""; } catch (e) { return ""; }
  }

  function authHeaders() {
    const tok = token();
    return tok ? { Authorization: "Bearer " + tok } : {};
  }

  async function getJSON(path) {
    const r = await fetch(path, {
      headers: { Accept: "application/json", ...authHeaders() },
      cache: "no-store", credentials: "same-origin",
    });
    if (!r.ok) throw new Error(path + ": HTTP " + r.status);
    return r.json();
  }

  async function load() {
    document.body.dataset.state = "loading";
    const wanted = {
      health: "/healthz",
      probe: "/v1/probe",
      traffic: "/v1/stats/apps?bucket=" + BUCKET_S,
      flows: "/v1/flows?limit=1",
      captures: "/v1/captures?limit=20",
    };
    for (const v of VERDICTS) {
      wanted["calls." + v] = "/v1/calls?verdict=" + v + "&limit=" +
        (INTERFERED.includes(v) ? LATEST : 1);
    }
    const keys = Object.keys(wanted);
    const settled = await Promise.allSettled(keys.map((k) => getJSON(wanted[k])));
    const data = {};
    const errors = [];
    settled.forEach((res, i) => {
      if (res.status === "fulfilled") data[keys[i]] = res.value;
      else errors.push(res.reason && res.reason.message ? res.reason.message : keys[i]);
    });
    state.data = data;
    state.errors = errors;
    state.loadedAt = Date.now() / 1000;
    render();
    document.body.dataset.state = errors.length ? "error" : "ready";
  }

  // -- language -----------------------------------------------------------------------

  function setLang(lang) {
    state.lang = lang === "ar" ? "ar" : "en";
    state.dict = state.strings ? state.strings[state.lang] : {};
    const root = document.documentElement;
    root.lang = state.lang;
    root.dir = state.lang === "ar" ? "rtl" : "ltr";
    if (state.strings) { // else the English the page was written in stays
      for (const node of document.querySelectorAll("[data-i18n]")) {
        node.textContent = t(node.dataset.i18n);
      }
    }
    const other = state.lang === "ar" ? "en" : "ar";
    const sw = $("lang-switch");
    sw.href = "?lang=" + other;
    sw.hreflang = other;
    sw.lang = other;
    document.title = t("title");
  }

  const rtl = () => state.lang === "ar";

  // -- drawing helpers ----------------------------------------------------------------

  // Charts are laid out left to right and mirrored for Arabic.
  function mirror(width) {
    return {
      x: (x) => (rtl() ? width - x : x),
      anchor: (a) => (!rtl() || a === "middle" ? a : a === "start" ? "end" : "start"),
    };
  }

  function niceCeil(v) {
    if (v <= 0) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function svg(width, height, label, body) {
    return '<svg viewBox="0 0 ' + width + " " + height + '" role="img" direction="ltr" ' +
      'aria-label="' + esc(label) + '">' + body + "</svg>";
  }

  function text(x, y, s, anchor, cls) {
    return '<text x="' + x.toFixed(1) + '" y="' + y.toFixed(1) + '" text-anchor="' + anchor +
      '"' + (cls ? ' class="' + cls + '"' : "") + ">" + esc(s) + "</text>";
  }

  // -- sections -----------------------------------------------------------------------

  function verdictTotal(v) {
    const page = state.data["calls." + v];
    return page ? page.total : null;
  }

  function renderCards() {
    const d = state.data;
    const put = (id, v) => { $(id).textContent = v === null || v === undefined ? "—" : fmtInt(v); };
    put("n-captures", d.health ? d.health.jobs.done : null);
    put("n-flows", d.flows ? d.flows.total : null);
    const totals = VERDICTS.map(verdictTotal);
    put("n-calls", totals.includes(null) ? null : totals.reduce((a, b) => a + b, 0));
    const bad = INTERFERED.map(verdictTotal);
    put("n-interfered", bad.includes(null) ? null : bad.reduce((a, b) => a + b, 0));
  }

  function trafficGroups(traffic) {
    const apps = traffic.apps.slice(0, TOP_APPS);
    const rest = traffic.apps.slice(TOP_APPS);
    if (rest.length) {
      const series = new Array(traffic.buckets).fill(0);
      for (const a of rest) a.series.forEach((v, i) => { series[i] += v; });
      apps.push({ app: "\u0000others", bytes: rest.reduce((s, a) => s + a.bytes, 0), series });
    }
    return apps;
  }

  function renderTraffic() {
    const box = $("traffic-chart");
    const legend = $("traffic-legend");
    const traffic = state.data.traffic;
    legend.replaceChildren();
    if (!traffic) { box.replaceChildren(el("p", { class: "empty", text: "—" })); return; }
    $("traffic-note").textContent = t("traffic_note", { bucket: fmtInt(traffic.bucket_s) }) +
      (traffic.complete ? "" : " " + t("traffic_partial"));
    if (!traffic.apps.length) {
      box.replaceChildren(el("p", { class: "empty", text: t("traffic_empty") }));
      return;
    }
    const groups = trafficGroups(traffic);
    const n = traffic.buckets;
    const toRate = (bytes) => (bytes * 8) / traffic.bucket_s;
    const W = 760, H = 300, L = 78, R = 14, T = 12, B = 30;
    const m = mirror(W);
    const pw = W - L - R, ph = H - T - B;
    const totals = new Array(n).fill(0);
    for (const g of groups) g.series.forEach((v, i) => { totals[i] += toRate(v); });
    const step = niceCeil(Math.max(...totals) / 4);
    const rows = Math.max(1, Math.ceil(Math.max(...totals) / step));
    const top = step * rows;
    const xAt = (i) => m.x(L + (pw * i) / n);
    const yAt = (v) => T + ph - (ph * v) / top;
    let body = "";
    for (let k = 0; k <= rows; k += 1) {
      const v = step * k;
      const y = yAt(v);
      body += '<line class="axis" x1="' + m.x(L) + '" x2="' + m.x(W - R) + '" y1="' + y +
        '" y2="' + y + '"/>';
      body += text(m.x(L - 6), y + 4, fmtRate(v), m.anchor("end"));
    }
    const span = n * traffic.bucket_s;
    const every = TIME_STEPS.find((st) => span / st <= 6) || niceCeil(span / 6);
    const fmtTick = (ts) => (span > 86400 ? fmtTime(ts).slice(5, 16)
      : every < 60 ? fmtTime(ts).slice(11, 19) : fmtTime(ts).slice(11, 16));
    const end = traffic.start_ts + span;
    for (let ts = Math.ceil(traffic.start_ts / every) * every; ts <= end; ts += every) {
      const x = L + (pw * (ts - traffic.start_ts)) / span;
      const anchor = x - L < 28 ? "start" : W - R - x < 28 ? "end" : "middle";
      body += '<line class="axis" x1="' + m.x(x) + '" x2="' + m.x(x) + '" y1="' + (T + ph) +
        '" y2="' + (T + ph + 4) + '"/>';
      body += text(m.x(x), H - 10, fmtTick(ts), m.anchor(anchor));
    }
    const base = new Array(n).fill(0);
    let next = 0;
    groups.forEach((g) => {
      // Named apps take the palette in turn; unrecognised traffic and the rest are grey.
      const colour = g.app === null ? GREY : g.app === "\u0000others" ? DARK_GREY
        : PALETTE[(next++) % PALETTE.length];
      const lower = base.slice();
      g.series.forEach((v, i) => { base[i] += toRate(v); });
      let d = "";
      for (let i = 0; i < n; i += 1) {
        d += (i === 0 ? "M" : "L") + xAt(i).toFixed(1) + "," + yAt(base[i]).toFixed(1) +
          "L" + xAt(i + 1).toFixed(1) + "," + yAt(base[i]).toFixed(1);
      }
      for (let i = n - 1; i >= 0; i -= 1) {
        d += "L" + xAt(i + 1).toFixed(1) + "," + yAt(lower[i]).toFixed(1) +
          "L" + xAt(i).toFixed(1) + "," + yAt(lower[i]).toFixed(1);
      }
      body += '<path d="' + d + 'Z" fill="' + colour + '" fill-opacity="0.85" stroke="' +
        colour + '" stroke-width="0.5"><title>' + esc(appName(g.app)) + "</title></path>";
      const swatch = el("span", { class: "swatch" });
      swatch.style.background = colour; // through the CSSOM, which the page's CSP allows
      legend.append(el("li", { "data-app": g.app === null ? "" : g.app }, swatch,
        el("bdi", { class: "app", text: appName(g.app) }),
        el("span", { class: "bytes", dir: "ltr", text: fmtBytes(g.bytes) })));
    });
    body += '<line class="axis" x1="' + m.x(L) + '" x2="' + m.x(L) + '" y1="' + T + '" y2="' +
      (T + ph) + '"/>';
    box.innerHTML = svg(W, H, t("traffic_title"), body);
  }

  function renderVerdicts() {
    const box = $("verdict-chart");
    const totals = VERDICTS.map(verdictTotal);
    if (totals.includes(null)) { box.replaceChildren(el("p", { class: "empty", text: "—" })); return; }
    if (!totals.some((v) => v > 0)) {
      box.replaceChildren(el("p", { class: "empty", text: t("verdicts_empty") }));
      return;
    }
    const W = 380, row = 32, L = 96, R = 44, T = 6;
    const H = T * 2 + row * VERDICTS.length;
    const m = mirror(W);
    const top = Math.max(...totals);
    let body = "";
    VERDICTS.forEach((v, i) => {
      const y = T + i * row;
      const len = ((W - L - R) * totals[i]) / top;
      const x0 = Math.min(m.x(L), m.x(L + len));
      body += '<g class="verdict" data-verdict="' + v + '">';
      body += text(m.x(L - 8), y + row / 2 + 4, t("verdict." + v), m.anchor("end"), "label");
      body += '<rect x="' + x0.toFixed(1) + '" y="' + (y + 6) + '" width="' +
        Math.max(len, totals[i] ? 2 : 0).toFixed(1) + '" height="' + (row - 12) +
        '" rx="2" fill="' + VERDICT_COLOURS[v] + '"/>';
      body += text(m.x(L + len + 6), y + row / 2 + 4, fmtInt(totals[i]), m.anchor("start"),
        "count");
      body += "</g>";
    });
    box.innerHTML = svg(W, H, t("verdicts_title"), body);
  }

  function evidenceLink(call) {
    const uid = encodeURIComponent(call.uid);
    const capture = encodeURIComponent(call.capture_id);
    const a = el("a", {
      class: "evidence-link", href: "/v1/calls/" + uid + "/evidence?capture=" + capture,
      title: t("evidence_hint"), text: t("evidence_bundle"),
    });
    a.addEventListener("click", (ev) => {
      if (!token()) return; // the service answers 401 and says why
      ev.preventDefault();
      download(a.getAttribute("href"), "evidence-" + call.uid + ".zip");
    });
    return a;
  }

  async function download(path, name) {
    try {
      const r = await fetch(path, { headers: authHeaders(), cache: "no-store" });
      if (!r.ok) throw new Error(path + ": HTTP " + r.status);
      const url = URL.createObjectURL(await r.blob());
      const a = el("a", { href: url, download: name });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (e) {
      showErrors([e.message]);
    }
  }

  function renderLatest() {
    const rows = $("latest-rows");
    const calls = [];
    for (const v of INTERFERED) {
      const page = state.data["calls." + v];
      if (page) calls.push(...page.items);
    }
    calls.sort((a, b) => b.start_ts - a.start_ts || (a.uid < b.uid ? -1 : 1));
    rows.replaceChildren();
    for (const call of calls.slice(0, LATEST)) {
      const reasons = el("ul", { class: "reasons" });
      for (const r of call.reasons) {
        reasons.append(el("li", { "data-reason": r }, t("reason." + r), " ",
          el("code", { dir: "ltr", text: r })));
      }
      const evidence = el("ul", { class: "evidence" });
      for (const e of call.evidence) {
        evidence.append(el("li", { class: "evidence-text", dir: "auto", text: e.text }));
      }
      const details = el("a", {
        href: "/v1/calls/" + encodeURIComponent(call.uid) + "?capture=" +
          encodeURIComponent(call.capture_id), text: t("call_details"),
      });
      rows.append(el("tr", { "data-uid": call.uid, "data-verdict": call.verdict },
        el("td", { class: "time", dir: "ltr", text: fmtTime(call.start_ts) }),
        el("td", {}, el("bdi", { class: "app", text: appName(call.app) })),
        el("td", {}, el("span", { class: "badge " + call.verdict,
          text: t("verdict." + call.verdict) })),
        el("td", { class: "num", text: t("seconds", { n: call.duration_s.toFixed(1) }) }),
        el("td", {}, reasons),
        el("td", {}, evidence, el("div", { class: "links" }, evidenceLink(call), details))));
    }
    $("latest-empty").hidden = calls.length > 0 || !INTERFERED.every((v) => state.data["calls." + v]);
  }

  function fact(dl, label, value, ltr) {
    dl.append(el("dt", { text: label }), el("dd", { dir: ltr ? "ltr" : null, text: value }));
  }

  function renderProbe() {
    const probe = state.data.probe;
    const dot = $("probe-dot");
    const facts = $("probe-facts");
    facts.replaceChildren();
    if (probe) {
      const s = probe.state;
      dot.className = "dot " + (probe.running ? "good"
        : ["stale", "error", "unreadable"].includes(s) ? "bad"
          : ["starting", "stopping"].includes(s) ? "warn" : "");
      $("probe-state").textContent = t("state." + s);
      $("probe-state").dataset.state = s;
      // The service's own sentence, except for the common case said in the page's language.
      if (s === "absent") {
        $("probe-detail").replaceChildren(t("probe_hint_absent"), " ",
          el("code", { dir: "ltr", text: "marsad probe -i IFACE --data-dir DATA_DIR" }));
      } else {
        $("probe-detail").textContent = probe.detail || "";
      }
      const st = probe.status;
      if (st) {
        fact(facts, t("probe_interface"), st.interface, true);
        if (probe.age_s !== null) {
          fact(facts, t("probe_last_report"), t("probe_ago", { n: fmtInt(Math.round(probe.age_s)) }));
        }
        fact(facts, t("probe_packets"), fmtInt(st.packets));
        fact(facts, t("probe_dropped"), fmtInt(st.dropped));
        fact(facts, t("probe_active"), fmtInt(st.flows_active));
        fact(facts, t("probe_finished"), fmtInt(st.flows_finished));
        fact(facts, t("probe_calls"), fmtInt(st.calls));
      }
    } else {
      dot.className = "dot";
      $("probe-state").textContent = "—";
      $("probe-detail").textContent = "";
    }
    const service = $("service-facts");
    service.replaceChildren();
    const health = state.data.health;
    if (health) {
      fact(service, t("service_version"), health.version, true);
      const jobs = Object.entries(health.jobs).filter(([, n]) => n > 0)
        .map(([k, n]) => t("job." + k) + " " + fmtInt(n));
      fact(service, t("service_jobs"), jobs.length ? jobs.join(" · ") : "0");
    }
  }

  function renderCaptures() {
    const rows = $("capture-rows");
    const page = state.data.captures;
    rows.replaceChildren();
    if (!page) return;
    for (const c of page.items) {
      const s = c.summary;
      let label = t("job." + c.state);
      if (c.state === "running") label += " " + Math.round(c.progress * 100) + "%";
      const num = (v) => el("td", { class: "num", text: s ? fmtInt(v) : "—" });
      rows.append(el("tr", { "data-capture": c.id },
        el("td", {}, el("bdi", { text: c.filename })),
        el("td", { title: c.error || null, text: label }),
        el("td", { class: "time", dir: "ltr", text: c.created_at.slice(0, 19).replace("T", " ") }),
        num(s && s.packets), num(s && s.flows), num(s && s.calls)));
    }
    $("captures-empty").hidden = page.items.length > 0;
  }

  function showErrors(errors) {
    const box = $("errors");
    box.hidden = errors.length === 0;
    box.textContent = errors.length ? t("load_error") + ": " + errors.join("; ") : "";
  }

  function render() {
    const sections = [renderCards, renderTraffic, renderVerdicts, renderLatest, renderProbe,
                      renderCaptures];
    const errors = state.errors.slice();
    for (const draw of sections) {
      try { draw(); } catch (e) { errors.push(draw.name + ": " + e.message); }
    }
    showErrors(errors);
    if (state.loadedAt !== null) {
      $("updated").textContent = fmtTime(state.loadedAt).slice(11) + " UTC";
      $("updated").setAttribute("datetime", iso(state.loadedAt));
    }
  }

  // -- start --------------------------------------------------------------------------

  function wire() {
    $("lang-switch").addEventListener("click", (ev) => {
      ev.preventDefault();
      setLang(rtl() ? "en" : "ar");
      history.replaceState(null, "", "?lang=" + state.lang);
      render();
    });
    const form = $("token-form");
    form.classList.toggle("set", token() !== "");
    $("token").placeholder = token() ? t("token_set") : "";
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const value = $("token").value.trim();
      try {
        if (value) sessionStorage.setItem(TOKEN_KEY, value);
        else sessionStorage.removeItem(TOKEN_KEY);
      } catch (e) { /* storage refused: the token lasts until the page is left */ }
      $("token").value = "";
      $("token").placeholder = value ? t("token_set") : "";
      form.classList.toggle("set", value !== "");
      load();
    });
    $("refresh").addEventListener("click", () => load());
  }

  async function boot() {
    try {
      state.strings = await getJSON("/static/i18n.json");
    } catch (e) {
      state.errors.push(e.message);
    }
    const asked = new URLSearchParams(location.search).get("lang");
    setLang(asked || document.documentElement.lang);
    wire();
    await load();
    setInterval(() => { if (!document.hidden) load(); }, REFRESH_MS);
  }

  boot();
})();
