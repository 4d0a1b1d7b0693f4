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
  // App colours: one per app, the same in every view and on every load, never a
  // verdict's colour. Each app of the output contract (classifier.records.APPS) has its
  // own; another name (a newer classifier's) gets a palette entry by a hash of the name.
  const APP_COLOURS = {
    whatsapp: "#0f6e6e", messenger: "#3b82c4", facebook: "#1d3f8f", teams: "#5a4fcf",
    zoom: "#1f9bb0", facetime: "#6d8a1f", viber: "#9c3fa8", signal: "#2f6f9f",
    telegram: "#4f9fd8", meet: "#4b7d3a", discord: "#7b68c8", webex: "#c06a12",
    wechat: "#2f8f4f", line: "#8fa31a", imo: "#b5487f", snapchat: "#b8a000",
    sip: "#a0522d", youtube: "#8c2b4a", netflix: "#5c3a1e",
  };
  const PALETTE = ["#0f6e6e", "#3b82c4", "#b5487f", "#6d8a1f", "#8c5a2b", "#1f9bb0",
                   "#5a4fcf", "#a0522d", "#2f6f9f", "#9c3fa8", "#4b7d3a", "#c06a12"];
  const GREY = "#9aa4b2";
  const DARK_GREY = "#6b7480";
  const LATEST = 10;        // rows in the latest-calls table
  const TOP_APPS = 7;       // apps drawn on their own; the rest are summed
  const BUCKET_S = 1;       // finest bucket asked; the service widens it to fit 360 buckets
  const REFRESH_MS = 30000;
  const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800,
                      21600, 43200, 86400, 172800, 604800];
  const TOKEN_KEY = "marsad-token";
  const FILTERS = ["range", "since", "until", "app", "verdict", "source", "capture", "period"];
  const CAPACITY_ROWS = 40;
  const RANGES = { "1h": 3600, "24h": 86400, "7d": 604800, "30d": 2592000 };

  const state = { lang: "en", dict: {}, strings: null, data: {}, errors: [], loadedAt: null,
                  filters: {}, call: null };

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
  // A left-to-right value inside a sentence (dates in Arabic text keep their order).
  const ltr = (s) => "\u2066" + s + "\u2069";

  function appColour(app) {
    if (app === null || app === undefined || app === "") return GREY;
    if (app === "\u0000others") return DARK_GREY;
    if (Object.prototype.hasOwnProperty.call(APP_COLOURS, app)) return APP_COLOURS[app];
    let h = 0x811c9dc5; // FNV-1a
    for (const ch of String(app)) {
      h ^= ch.codePointAt(0);
      h = Math.imul(h, 0x01000193) >>> 0;
    }
    return PALETTE[h % PALETTE.length];
  }

  function appName(app) {
    if (app === null || app === undefined) return t("unrecognised");
    if (app === "\u0000others") return t("others");
    return app;
  }

  // -- filters, kept in the URL -------------------------------------------------------

  function readFilters() {
    const q = new URLSearchParams(location.search);
    const f = {};
    for (const k of FILTERS) f[k] = q.get(k) || "";
    if (f.range && f.range !== "custom" && !RANGES[f.range]) f.range = "";
    if (!VERDICTS.includes(f.verdict)) f.verdict = "";
    if (!["live", "capture"].includes(f.source)) f.source = "";
    if (f.period !== "day") f.period = "";
    return f;
  }

  // The window in seconds since the epoch: [since, until], either end null when open.
  function windowOf(f) {
    if (RANGES[f.range]) return [Date.now() / 1000 - RANGES[f.range], null];
    if (f.range === "custom") {
      const at = (v) => (v ? Date.parse(v + (v.length <= 16 ? ":00" : "") + "Z") / 1000 : NaN);
      const a = at(f.since), b = at(f.until);
      return [Number.isFinite(a) ? a : null, Number.isFinite(b) ? b : null];
    }
    return [null, null];
  }

  function pageURL(f, extra) {
    const q = new URLSearchParams();
    if (state.lang !== "en") q.set("lang", state.lang);
    for (const k of FILTERS) {
      if (!f[k]) continue;
      if ((k === "since" || k === "until") && f.range !== "custom") continue;
      q.set(k, f[k]);
    }
    for (const [k, v] of Object.entries(extra || {})) if (v) q.set(k, v);
    const s = q.toString();
    return location.pathname + (s ? "?" + s : "");
  }

  function setFilters(changes) {
    const f = { ...readFilters(), ...changes };
    history.pushState(null, "", pageURL(f));
    route();
  }

  // The query string of API reads for the filters (the verdict is added where it applies).
  function apiParams(f, withApp) {
    const q = new URLSearchParams();
    const [since, until] = windowOf(f);
    if (since !== null) q.set("since", since.toFixed(3));
    if (until !== null) q.set("until", until.toFixed(3));
    if (withApp && f.app) q.set("app", f.app);
    if (f.source) q.set("source", f.source);
    if (f.capture) q.set("capture", f.capture);
    return q;
  }

  const withParams = (path, q) => (q.toString() === "" ? path
    : path + (path.includes("?") ? "&" : "?") + q.toString());

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
    const f = readFilters();
    state.filters = f;
    const q = apiParams(f, true);
    const wanted = {
      health: "/healthz",
      probe: "/v1/probe",
      // every app in the window (the app filter is applied when drawing, and the app menu
      // lists them all)
      traffic: withParams("/v1/stats/apps?bucket=" + BUCKET_S, apiParams(f, false)),
      flows: withParams("/v1/flows?limit=1", q),
      captures: "/v1/captures?limit=50",
      tests: withParams("/v1/tests?limit=" + LATEST,
        new URLSearchParams(f.app ? { app: f.app } : {})),
      capacity: withParams("/v1/stats/capacity?period=" + (f.period || "hour"), q),
    };
    const listed = f.verdict ? [f.verdict] : INTERFERED;
    for (const v of VERDICTS) {
      wanted["calls." + v] = withParams("/v1/calls?verdict=" + v + "&limit=" +
        (listed.includes(v) ? LATEST : 1), q);
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

  // What a chart covers: the window of the filters, or everything stored, and the filters.
  function coverText(f) {
    const [since, until] = windowOf(f);
    let s = since === null && until === null ? t("cover_all")
      : t("cover_range", { from: since === null ? "…" : ltr(fmtTime(since)),
                           to: until === null ? "…" : ltr(fmtTime(until)) });
    const list = [];
    if (f.app) list.push(t("app_label") + " " + f.app);
    if (f.source) list.push(f.source === "live" ? t("source_live") : t("source_capture"));
    if (f.capture) list.push(t("call_capture") + " " + captureName(f.capture));
    if (list.length) s += " " + t("cover_filters", { list: list.join(" · ") });
    return s;
  }

  function captureName(id) {
    const page = state.data.captures;
    const c = page ? page.items.find((x) => x.id === id) : null;
    return c ? c.filename : id;
  }

  function trafficGroups(traffic, app) {
    const all = app ? traffic.apps.filter((a) => (a.app || "") === app) : traffic.apps;
    const apps = all.slice(0, TOP_APPS);
    const rest = all.slice(TOP_APPS);
    if (rest.length) {
      const series = new Array(traffic.buckets).fill(0);
      for (const a of rest) a.series.forEach((v, i) => { series[i] += v; });
      apps.push({ app: "\u0000others", bytes: rest.reduce((s, a) => s + a.bytes, 0), series });
    }
    return apps;
  }

  // Chart width: the box's own width in CSS pixels, so text is drawn at its real size.
  const chartWidth = (box, min) => Math.max(min, Math.floor(box.clientWidth || 760));

  function renderTraffic() {
    const box = $("traffic-chart");
    const legend = $("traffic-legend");
    const traffic = state.data.traffic;
    const f = state.filters;
    legend.replaceChildren();
    $("traffic-cover").textContent = coverText(f);
    if (!traffic) { box.replaceChildren(el("p", { class: "empty", text: "—" })); return; }
    const groups = trafficGroups(traffic, f.app);
    if (!groups.length) {
      $("traffic-note").textContent = "";
      box.replaceChildren(el("p", { class: "empty", text: t("traffic_empty") }));
      return;
    }
    const n = traffic.buckets;
    const span = n * traffic.bucket_s;
    const end = traffic.start_ts + span;
    $("traffic-note").textContent = t("traffic_window", {
      from: ltr(fmtTime(traffic.start_ts)), to: ltr(fmtTime(end)),
      bucket: fmtInt(traffic.bucket_s),
    }) + " " + t("traffic_hint") + (traffic.complete ? "" : " " + t("traffic_partial"));
    const toRate = (bytes) => (bytes * 8) / traffic.bucket_s;
    const W = chartWidth(box, 300);
    const narrow = W < 520;
    const H = narrow ? 220 : 300, L = narrow ? 64 : 78, R = 14, T = 12, B = 30;
    const m = mirror(W);
    const pw = W - L - R, ph = H - T - B;
    const totals = new Array(n).fill(0);
    for (const g of groups) g.series.forEach((v, i) => { totals[i] += toRate(v); });
    const step = niceCeil(Math.max(...totals) / (narrow ? 3 : 4));
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
    const ticks = Math.max(3, Math.floor(pw / 110));
    const every = TIME_STEPS.find((st) => span / st <= ticks) || niceCeil(span / ticks);
    const fmtTick = (ts) => (span > 86400 ? fmtTime(ts).slice(5, 16)
      : every < 60 ? fmtTime(ts).slice(11, 19) : fmtTime(ts).slice(11, 16));
    for (let ts = Math.ceil(traffic.start_ts / every) * every; ts <= end; ts += every) {
      const x = L + (pw * (ts - traffic.start_ts)) / span;
      const anchor = x - L < 28 ? "start" : W - R - x < 28 ? "end" : "middle";
      body += '<line class="axis" x1="' + m.x(x) + '" x2="' + m.x(x) + '" y1="' + (T + ph) +
        '" y2="' + (T + ph + 4) + '"/>';
      body += text(m.x(x), H - 10, fmtTick(ts), m.anchor(anchor));
    }
    const base = new Array(n).fill(0);
    groups.forEach((g) => {
      const colour = appColour(g.app);
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
      body += '<path class="area" data-app="' + esc(g.app === null ? "" : g.app) + '" d="' + d +
        'Z" fill="' + colour + '" fill-opacity="0.85" stroke="' + colour +
        '" stroke-width="0.5"><title>' + esc(appName(g.app)) + "</title></path>";
      const swatch = el("span", { class: "swatch" });
      swatch.style.background = colour; // through the CSSOM, which the page's CSP allows
      const item = el("li", { "data-app": g.app === null ? "" : g.app,
                              "data-colour": colour, tabindex: "0", role: "button" }, swatch,
        el("bdi", { class: "app", text: appName(g.app) }),
        el("span", { class: "bytes", dir: "ltr", text: fmtBytes(g.bytes) }));
      if (g.app !== "\u0000others") {
        const pick = () => setFilters({ app: f.app === (g.app || "") ? "" : (g.app || "") });
        item.addEventListener("click", pick);
        item.addEventListener("keydown", (ev) => { if (ev.key === "Enter") pick(); });
      }
      legend.append(item);
    });
    // One invisible column per bucket: its values on hover, its time range on click.
    for (let i = 0; i < n; i += 1) {
      if (!totals[i]) continue;
      const a = traffic.start_ts + i * traffic.bucket_s;
      const lines = [fmtTime(a) + " – " + fmtTime(a + traffic.bucket_s).slice(11) + " UTC"];
      for (const g of groups) {
        if (g.series[i]) lines.push(appName(g.app) + ": " + fmtRate(toRate(g.series[i])));
      }
      lines.push(t("hover_total") + ": " + fmtRate(totals[i]));
      const x0 = Math.min(xAt(i), xAt(i + 1));
      body += '<rect class="bucket" data-since="' + a + '" data-until="' +
        (a + traffic.bucket_s) + '" x="' + x0.toFixed(1) + '" y="' + T + '" width="' +
        Math.max(Math.abs(xAt(i + 1) - xAt(i)), 1).toFixed(1) + '" height="' + ph +
        '"><title>' + esc(lines.join("\n")) + "</title></rect>";
    }
    body += '<line class="axis" x1="' + m.x(L) + '" x2="' + m.x(L) + '" y1="' + T + '" y2="' +
      (T + ph) + '"/>';
    box.innerHTML = svg(W, H, t("traffic_title"), body);
    const local = (ts) => new Date(ts * 1000).toISOString().slice(0, 19);
    for (const r of box.querySelectorAll("rect.bucket")) {
      r.addEventListener("click", () => setFilters({
        range: "custom", since: local(Number(r.dataset.since)),
        until: local(Number(r.dataset.until)),
      }));
    }
  }

  function renderVerdicts() {
    const box = $("verdict-chart");
    const f = state.filters;
    $("verdict-cover").textContent = coverText(f) + " " + t("verdicts_hint");
    const totals = VERDICTS.map(verdictTotal);
    if (totals.includes(null)) { box.replaceChildren(el("p", { class: "empty", text: "—" })); return; }
    if (!totals.some((v) => v > 0)) {
      box.replaceChildren(el("p", { class: "empty", text: t("verdicts_empty") }));
      return;
    }
    const W = chartWidth(box, 280), row = 32, L = W < 360 ? 84 : 96, R = 44, T = 6;
    const H = T * 2 + row * VERDICTS.length;
    const m = mirror(W);
    const top = Math.max(...totals);
    let body = "";
    VERDICTS.forEach((v, i) => {
      const y = T + i * row;
      const len = ((W - L - R) * totals[i]) / top;
      const x0 = Math.min(m.x(L), m.x(L + len));
      body += '<g class="verdict' + (f.verdict === v ? " chosen" : "") + '" data-verdict="' +
        v + '" tabindex="0" role="button">';
      body += "<title>" + esc(t("verdict." + v) + ": " + t("verdict_calls",
        { n: fmtInt(totals[i]) })) + "</title>";
      body += '<rect class="hit" x="0" y="' + y + '" width="' + W + '" height="' + row + '"/>';
      body += text(m.x(L - 8), y + row / 2 + 4, t("verdict." + v), m.anchor("end"), "label");
      body += '<rect x="' + x0.toFixed(1) + '" y="' + (y + 6) + '" width="' +
        Math.max(len, totals[i] ? 2 : 0).toFixed(1) + '" height="' + (row - 12) +
        '" rx="2" fill="' + VERDICT_COLOURS[v] + '"/>';
      body += text(m.x(L + len + 6), y + row / 2 + 4, fmtInt(totals[i]), m.anchor("start"),
        "count");
      body += "</g>";
    });
    box.innerHTML = svg(W, H, t("verdicts_title"), body);
    for (const g of box.querySelectorAll("g.verdict")) {
      const pick = () => {
        setFilters({ verdict: f.verdict === g.dataset.verdict ? "" : g.dataset.verdict });
        const latest = $("latest");
        if (latest.scrollIntoView) latest.scrollIntoView();
      };
      g.addEventListener("click", pick);
      g.addEventListener("keydown", (ev) => { if (ev.key === "Enter") pick(); });
    }
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

  const callURL = (call) => pageURL(state.filters, { call: call.uid, capture_of: call.capture_id });

  function reasonList(call) {
    const reasons = el("ul", { class: "reasons" });
    for (const r of call.reasons) {
      reasons.append(el("li", { "data-reason": r }, t("reason." + r), " ",
        el("code", { dir: "ltr", text: r })));
    }
    return reasons;
  }

  function evidenceList(call, list) {
    const evidence = list || el("ul", { class: "evidence" });
    for (const e of call.evidence) {
      evidence.append(el("li", { class: "evidence-text", dir: "auto", text: e.text }));
    }
    return evidence;
  }

  function renderLatest() {
    const rows = $("latest-rows");
    const f = state.filters;
    const listed = f.verdict ? [f.verdict] : INTERFERED;
    $("latest-title").textContent = f.verdict
      ? t("calls_title_verdict", { verdict: t("verdict." + f.verdict) }) : t("latest_title");
    $("latest-cover").textContent = coverText(f);
    const calls = [];
    for (const v of listed) {
      const page = state.data["calls." + v];
      if (page) calls.push(...page.items);
    }
    calls.sort((a, b) => b.start_ts - a.start_ts || (a.uid < b.uid ? -1 : 1));
    rows.replaceChildren();
    for (const call of calls.slice(0, LATEST)) {
      const details = el("a", { class: "call-link", href: callURL(call), text: t("call_details") });
      rows.append(el("tr", { "data-uid": call.uid, "data-verdict": call.verdict },
        el("td", { class: "time", dir: "ltr", text: fmtTime(call.start_ts) }),
        el("td", {}, el("bdi", { class: "app", text: appName(call.app) })),
        el("td", {}, el("a", { class: "badge " + call.verdict, href: callURL(call),
          text: t("verdict." + call.verdict) })),
        el("td", { class: "num", text: t("seconds", { n: call.duration_s.toFixed(1) }) }),
        el("td", {}, reasonList(call)),
        el("td", {}, evidenceList(call), el("div", { class: "links" }, evidenceLink(call),
          details))));
    }
    labelCells(rows);
    $("latest-empty").hidden = calls.length > 0 || !listed.every((v) => state.data["calls." + v]);
  }

  // A test's bundle: its own capture, measurement, ledger entry and report.
  function testBundleLink(test) {
    const a = el("a", {
      class: "evidence-link", href: "/v1/tests/" + encodeURIComponent(test.uid) + "/evidence",
      title: t("test_bundle_hint"), text: t("evidence_bundle"),
    });
    a.addEventListener("click", (ev) => {
      if (!token()) return; // the service answers 401 and says why
      ev.preventDefault();
      download(a.getAttribute("href"), "test-" + test.uid + ".zip");
    });
    return a;
  }

  // The figures each piece of evidence rests on, as measured (name: value).
  function figureList(test) {
    const list = el("ul", { class: "figures" });
    for (const e of test.evidence) {
      for (const [name, value] of Object.entries(e.figures || {})) {
        list.append(el("li", { dir: "ltr" }, el("code", { text: name }), " " +
          (typeof value === "number" && !Number.isInteger(value)
            ? String(Math.round(value * 1000) / 1000) : JSON.stringify(value))));
      }
    }
    return list;
  }

  function renderTests() {
    const rows = $("test-rows");
    const page = state.data.tests;
    rows.replaceChildren();
    if (!page) return;
    for (const test of page.items) {
      rows.append(el("tr", { "data-uid": test.uid, "data-verdict": test.verdict },
        el("td", { class: "time", dir: "ltr", text: fmtTime(test.started_ts) }),
        el("td", { text: t("test_kind." + test.kind) }),
        el("td", {}, el("bdi", { class: "app", text: appName(test.app) })),
        el("td", {}, el("span", { class: "badge " + test.verdict,
          text: t("verdict." + test.verdict) })),
        el("td", {}, reasonList(test)),
        el("td", {}, evidenceList(test), figureList(test)),
        el("td", {}, el("div", { class: "links" }, test.capture_kept || !test.capture_sha256
          ? testBundleLink(test) : el("span", { text: "—" }),
        el("a", { class: "report-link", text: t("test_report"),
          href: "/v1/tests/" + encodeURIComponent(test.uid) + "/report?lang=" + state.lang })))));
    }
    labelCells(rows);
    $("tests-empty").hidden = page.items.length > 0;
  }

  // Each cell gets its column's heading, which the narrow layout shows beside the value.
  function labelCells(tbody) {
    const heads = [...tbody.closest("table").querySelectorAll("thead th")]
      .map((th) => th.textContent);
    for (const tr of tbody.rows) {
      [...tr.cells].forEach((td, i) => { td.dataset.label = heads[i] || ""; });
    }
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
    const f = state.filters;
    for (const c of page.items) {
      const s = c.summary;
      let label = t("job." + c.state);
      if (c.state === "running") label += " " + Math.round(c.progress * 100) + "%";
      // A capture read only up to a cut is listed with a warning, never as plainly done.
      const cut = s && s.complete === false;
      const state = el("td", { title: (cut ? s.message : null) || c.error || null });
      if (cut) {
        state.append(el("span", { class: "warning", text: "⚠ " + label + ", " +
          t("truncated", { at: s.stopped_at === null ? "?" : fmtInt(s.stopped_at) }) }));
      } else {
        state.textContent = label;
      }
      const num = (v) => el("td", { class: "num", text: s ? fmtInt(v) : "—" });
      const pick = el("a", { href: pageURL({ ...f, capture: c.id }) },
        el("bdi", { text: c.filename }));
      rows.append(el("tr", { "data-capture": c.id, "data-complete": cut ? "false" : "true",
                             class: f.capture === c.id ? "chosen" : null },
        el("td", {}, pick), state,
        el("td", { class: "time", dir: "ltr", text: c.created_at.slice(0, 19).replace("T", " ") }),
        num(s && s.packets), num(s && s.flows), num(s && s.calls)));
    }
    labelCells(rows);
    $("captures-empty").hidden = page.items.length > 0;
  }

  function renderCapacity() {
    const f = state.filters;
    const rows = $("capacity-rows");
    const cap = state.data.capacity;
    $("capacity-note").textContent = t("capacity_note", { period: t("period." + (f.period || "hour")) });
    $("capacity-cover").textContent = coverText(f);
    $("f-period").value = f.period || "hour";
    rows.replaceChildren();
    if (!cap) return;
    // One row per period, source and app: the app's traffic (all categories) beside its calls.
    const key = (r) => r.start_ts + "|" + r.source + "|" + (r.app || "");
    const calls = new Map(cap.calls.map((c) => [key(c), c]));
    const lines = cap.traffic.filter((r) => r.category === null)
      .map((r) => ({ traffic: r, calls: calls.get(key(r)) || null }));
    const seen = new Set(lines.map((l) => key(l.traffic)));
    for (const c of cap.calls) if (!seen.has(key(c))) lines.push({ traffic: null, calls: c });
    const fmtPeriod = (ts) => (cap.period === "day" ? fmtTime(ts).slice(0, 10)
      : fmtTime(ts).slice(0, 16));
    const dash = "—";
    for (const line of lines.slice(0, CAPACITY_ROWS)) {
      const head = line.traffic || line.calls;
      const tr = line.traffic;
      const c = line.calls;
      const num = (v, fmt) => el("td", { class: "num", dir: "ltr",
        text: v === null || v === undefined ? dash : fmt(v) });
      const row = el("tr", { "data-app": head.app || "", "data-source": head.source,
                             "data-start": head.start_ts },
        el("td", { class: "time", dir: "ltr", text: fmtPeriod(head.start_ts) }),
        el("td", { text: t("source." + head.source) }),
        el("td", {}, el("bdi", { class: "app", text: appName(head.app) })),
        num(tr && tr.mean_bps, fmtRate), num(tr && tr.peak_bps, fmtRate),
        num(tr && tr.p95_bps, fmtRate), num(c && c.calls, fmtInt),
        num(c && c.peak_concurrent, fmtInt), num(c && c.p95_concurrent, fmtInt),
        num(c && c.interfered_share, (v) => (v * 100).toFixed(0) + " %"),
        num(c && c.mos_mean, (v) => v.toFixed(2)), num(c && c.loss_mean, pct));
      const swatch = el("span", { class: "swatch" });
      swatch.style.background = appColour(head.app);
      row.cells[2].prepend(swatch, " ");
      rows.append(row);
    }
    labelCells(rows);
    $("capacity-empty").hidden = lines.length > 0;
  }

  function renderFilters() {
    const f = state.filters;
    const set = (id, options, value) => {
      const sel = $(id);
      const first = sel.options[0];
      sel.replaceChildren(first);
      for (const [v, label] of options) sel.append(el("option", { value: v, text: label }));
      if (value && !options.some(([v]) => v === value)) {
        sel.append(el("option", { value, text: value }));
      }
      sel.value = value;
    };
    const traffic = state.data.traffic;
    const apps = traffic ? traffic.apps.filter((a) => a.app !== null).map((a) => a.app) : [];
    set("f-app", apps.sort().map((a) => [a, a]), f.app);
    set("f-verdict", VERDICTS.map((v) => [v, t("verdict." + v)]), f.verdict);
    const page = state.data.captures;
    set("f-capture", page ? page.items.map((c) => [c.id, c.filename]) : [], f.capture);
    $("f-range").value = f.range;
    $("f-source").value = f.source;
    $("f-since").value = f.since;
    $("f-until").value = f.until;
    $("filters").dataset.range = f.range || "all";
    for (const node of document.querySelectorAll("#filters .custom")) {
      node.hidden = f.range !== "custom";
    }
  }

  // -- the call page ------------------------------------------------------------------

  async function loadCall(uid, capture) {
    document.body.dataset.state = "loading";
    const q = capture ? "?capture=" + encodeURIComponent(capture) : "";
    const base = "/v1/calls/" + encodeURIComponent(uid);
    const [call, flows] = await Promise.allSettled([getJSON(base + q),
                                                    getJSON(base + "/flows" + q)]);
    state.data = {
      call: call.status === "fulfilled" ? call.value : null,
      callFlows: flows.status === "fulfilled" ? flows.value : null,
    };
    state.errors = [call, flows].filter((r) => r.status === "rejected")
      .map((r) => r.reason.message);
    state.loadedAt = Date.now() / 1000;
    render();
    document.body.dataset.state = state.errors.length ? "error" : "ready";
  }

  const pct = (v) => (v === null || v === undefined ? "—" : (v * 100).toFixed(v < 0.1 ? 2 : 1) + " %");
  const ms = (v) => (v === null || v === undefined ? "—" : (v * 1000).toFixed(1) + " ms");

  function renderCall() {
    const call = state.data.call;
    $("call-back").href = pageURL(state.filters);
    const facts = $("call-facts");
    facts.replaceChildren();
    $("call-reasons").replaceChildren();
    $("call-evidence-list").replaceChildren();
    $("leg-rows").replaceChildren();
    $("flow-rows").replaceChildren();
    $("call-links").replaceChildren();
    if (!call) {
      $("call-app").textContent = "";
      $("call-verdict").replaceChildren(el("span", { class: "empty", text: t("call_missing") }));
      $("call-quality").replaceChildren();
      $("call-timeline").replaceChildren();
      return;
    }
    document.title = t("call_title") + " " + (call.app || "") + " — marsad";
    $("call-app").textContent = appName(call.app);
    $("call-verdict").replaceChildren(el("span", { class: "badge " + call.verdict,
      text: t("verdict." + call.verdict) }));
    fact(facts, t("col_start"), fmtTime(call.start_ts) + " UTC", true);
    fact(facts, t("col_duration"), t("seconds", { n: call.duration_s.toFixed(1) }));
    if (call.local) fact(facts, t("call_local"), call.local, true);
    fact(facts, t("call_capture"), captureName(call.capture_id), true);
    fact(facts, "uid", call.uid, true);
    $("call-links").append(evidenceLink(call));
    for (const li of reasonList(call).children) $("call-reasons").append(li.cloneNode(true));
    evidenceList(call, $("call-evidence-list"));
    renderLegs(call);
    renderCallFlows(call);
  }

  function renderLegs(call) {
    const rows = $("leg-rows");
    const legs = call.legs || [];
    for (const leg of legs) {
      const jitter = leg.mean_jitter_s !== null && leg.mean_jitter_s !== undefined
        ? leg.mean_jitter_s : leg.jitter_s;
      rows.append(el("tr", { "data-flow": leg.flow_uid },
        el("td", { text: t("dir." + leg.direction) }),
        el("td", { text: leg.media || "—" }),
        el("td", { class: "num", text: fmtInt(leg.packets) }),
        el("td", { class: "num", dir: "ltr", text: pct(leg.loss_ratio) }),
        el("td", { class: "num", dir: "ltr", text: ms(jitter) }),
        el("td", { class: "num", text: leg.mos === null ? "—" : leg.mos.toFixed(2) }),
        el("td", { class: "num", dir: "ltr", text: leg.mean_bps ? fmtRate(leg.mean_bps) : "—" })));
    }
    labelCells(rows);
    const box = $("call-quality");
    if (!legs.length) { box.replaceChildren(el("p", { class: "empty", text: t("no_legs") })); return; }
    // One bar chart per measure, a bar per leg; the scale is the measure's own.
    const measures = [
      ["leg_mos", (l) => l.mos, 4.5, (v) => v.toFixed(2)],
      ["leg_loss", (l) => l.loss_ratio, 0.1, pct],
      ["leg_jitter", (l) => (l.mean_jitter_s !== null && l.mean_jitter_s !== undefined
        ? l.mean_jitter_s : l.jitter_s), 0.05, ms],
    ];
    const W = chartWidth(box, 280), row = 22, L = W < 360 ? 90 : 120, R = 70;
    const m = mirror(W);
    let body = "";
    let y = 4;
    for (const [key, get, scale, fmt] of measures) {
      body += text(m.x(4), y + 12, t(key), m.anchor("start"), "label");
      y += 18;
      legs.forEach((leg, i) => {
        const v = get(leg);
        const label = t("dir." + leg.direction) + " " + (i + 1);
        const len = v === null || v === undefined ? 0
          : ((W - L - R) * Math.min(v, scale)) / scale;
        body += '<g class="quality" data-measure="' + key + '"><title>' + esc(label + ": " +
          (v === null || v === undefined ? "—" : fmt(v))) + "</title>";
        body += text(m.x(L - 8), y + row / 2 + 4, label, m.anchor("end"));
        body += '<rect x="' + Math.min(m.x(L), m.x(L + len)).toFixed(1) + '" y="' + (y + 4) +
          '" width="' + Math.max(len, 1).toFixed(1) + '" height="' + (row - 8) + '" fill="' +
          appColour(call.app) + '"/>';
        body += text(m.x(L + len + 6), y + row / 2 + 4,
          v === null || v === undefined ? "—" : fmt(v), m.anchor("start"), "count");
        body += "</g>";
        y += row;
      });
      y += 6;
    }
    box.innerHTML = svg(W, y, t("call_quality"), body);
  }

  function renderCallFlows(call) {
    const page = state.data.callFlows;
    const rows = $("flow-rows");
    const box = $("call-timeline");
    const flows = page ? page.items : [];
    for (const fl of flows) {
      const bytes = (fl.orig_wire_bytes || 0) + (fl.resp_wire_bytes || 0);
      rows.append(el("tr", { "data-flow": fl.uid },
        el("td", { class: "time", dir: "ltr", text: fmtTime(fl.first_ts).slice(11) }),
        el("td", { dir: "ltr", text: fl.proto + (fl.l7 ? " / " + fl.l7 : "") }),
        el("td", { dir: "ltr", text: fl.orig_h + ":" + fl.orig_p + " → " + fl.resp_h + ":" + fl.resp_p }),
        el("td", {}, el("bdi", { class: "app", text: appName(fl.app) })),
        el("td", { class: "num", dir: "ltr", text: fmtBytes(bytes) }),
        el("td", { class: "num", text: fmtInt((fl.orig_pkts || 0) + (fl.resp_pkts || 0)) }),
        el("td", { dir: "ltr", text: fl.conn_state || "—" }),
        el("td", {}, fl.verdict ? el("span", { class: "badge " + fl.verdict,
          text: t("verdict." + fl.verdict) }) : "—")));
    }
    labelCells(rows);
    if (!flows.length) { box.replaceChildren(); return; }
    // A bar per flow from its first to its last packet, on the call's clock.
    const t0 = Math.min(call.start_ts, ...flows.map((x) => x.first_ts));
    const t1 = Math.max(call.end_ts, ...flows.map((x) => x.last_ts), t0 + 1);
    const W = chartWidth(box, 280), row = 18, L = 10, R = 10, T = 4, B = 24;
    const H = T + B + row * flows.length;
    const m = mirror(W);
    const xAt = (ts) => L + ((W - L - R) * (ts - t0)) / (t1 - t0);
    let body = "";
    flows.forEach((fl, i) => {
      const a = xAt(fl.first_ts), b = Math.max(xAt(fl.last_ts), a + 2);
      const y = T + i * row;
      const bytes = (fl.orig_wire_bytes || 0) + (fl.resp_wire_bytes || 0);
      body += '<rect class="flow" data-flow="' + esc(fl.uid) + '" x="' +
        Math.min(m.x(a), m.x(b)).toFixed(1) + '" y="' + (y + 3) + '" width="' +
        (b - a).toFixed(1) + '" height="' + (row - 6) + '" fill="' +
        (fl.verdict && fl.verdict !== "ok" ? VERDICT_COLOURS[fl.verdict] : appColour(fl.app)) +
        '"><title>' + esc(fl.proto + " " + fl.resp_h + ":" + fl.resp_p + " · " +
        appName(fl.app) + " · " + fmtBytes(bytes) + " · " + fmtTime(fl.first_ts).slice(11) +
        "–" + fmtTime(fl.last_ts).slice(11)) + "</title></rect>";
    });
    const yAxis = T + row * flows.length;
    body += '<line class="axis" x1="' + m.x(L) + '" x2="' + m.x(W - R) + '" y1="' + yAxis +
      '" y2="' + yAxis + '"/>';
    body += text(m.x(L), yAxis + 16, fmtTime(t0).slice(11), m.anchor("start"));
    body += text(m.x(W - R), yAxis + 16, "+" + (t1 - t0).toFixed(1) + " s", m.anchor("end"));
    box.innerHTML = svg(W, H, t("call_timeline"), body);
  }

  function showErrors(errors) {
    const box = $("errors");
    box.hidden = errors.length === 0;
    box.textContent = errors.length ? t("load_error") + ": " + errors.join("; ") : "";
  }

  function render() {
    const sections = state.call
      ? [renderCall]
      : [renderFilters, renderCards, renderTraffic, renderVerdicts, renderLatest, renderProbe,
         renderTests, renderCapacity, renderCaptures];
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

  // Shows the overview or a call's page, as the URL says.
  function route() {
    const q = new URLSearchParams(location.search);
    state.filters = readFilters();
    state.call = q.get("call");
    $("overview").hidden = Boolean(state.call);
    $("filters").hidden = Boolean(state.call);
    $("call-view").hidden = !state.call;
    document.body.dataset.view = state.call ? "call" : "overview";
    if (!state.call) document.title = t("title");
    return state.call ? loadCall(state.call, q.get("capture_of")) : load();
  }

  function wire() {
    $("lang-switch").addEventListener("click", (ev) => {
      ev.preventDefault();
      setLang(rtl() ? "en" : "ar");
      const q = new URLSearchParams(location.search);
      if (state.lang === "en") q.delete("lang"); else q.set("lang", state.lang);
      history.replaceState(null, "", location.pathname + (q.toString() ? "?" + q : ""));
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
      route();
    });
    $("refresh").addEventListener("click", () => route());
    const filters = $("filters");
    filters.addEventListener("submit", (ev) => ev.preventDefault());
    filters.addEventListener("change", (ev) => {
      const name = ev.target.name;
      const changes = { [name]: ev.target.value };
      if (name === "range" && ev.target.value === "custom" && !state.filters.since) {
        const traffic = state.data.traffic;
        if (traffic && traffic.start_ts !== null) { // start from what the chart shows
          changes.since = new Date(traffic.start_ts * 1000).toISOString().slice(0, 19);
          changes.until = new Date(traffic.end_ts * 1000).toISOString().slice(0, 19);
        }
      }
      setFilters(changes);
    });
    $("f-period").addEventListener("change", (ev) => {
      setFilters({ period: ev.target.value === "day" ? "day" : "" });
    });
    $("f-clear").addEventListener("click", () => {
      const cleared = {};
      for (const k of FILTERS) cleared[k] = "";
      setFilters(cleared);
    });
    window.addEventListener("popstate", () => route());
    let width = window.innerWidth;
    window.addEventListener("resize", () => {
      if (Math.abs(window.innerWidth - width) < 40) return;
      width = window.innerWidth;
      render();
    });
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
    await route();
    setInterval(() => { if (!document.hidden && !state.call) load(); }, REFRESH_MS);
  }

  boot();
})();
