// The Tether dashboard's pages, drawn from the JSON under /api (no library, no inline code, no markup from
// strings: every value goes into the page through text nodes and attributes, so a tapped path such as
// "<script>" is shown as the text it is).
"use strict";

(() => {
  const SVG = "http://www.w3.org/2000/svg";
  const WINDOWS = ["10s", "1m", "10m", "1h"];
  const KINDS = ["deployment", "statefulset", "daemonset", "job", "pod"];
  const MAX_TAP_ROWS = 500;
  const FETCH_TIMEOUT_MS = 6000;
  const main = document.getElementById("main");
  const banner = document.getElementById("banner");
  const updated = document.getElementById("updated");

  // --- building the page -----------------------------------------------------------------------------

  function attrs(node, values) {
    for (const [key, value] of Object.entries(values || {})) {
      if (value !== null && value !== undefined && value !== false) {
        node.setAttribute(key, value === true ? "" : String(value));
      }
    }
    return node;
  }

  function fill(node, children) {
    for (const child of children.flat(Infinity)) {
      if (child !== null && child !== undefined && child !== false) {
        node.append(child instanceof Node ? child : document.createTextNode(String(child)));
      }
    }
    return node;
  }

  const h = (tag, values, ...children) => fill(attrs(document.createElement(tag), values), children);
  const svg = (tag, values, ...children) => fill(attrs(document.createElementNS(SVG, tag), values), children);
  const path = (...parts) => "/" + parts.map(encodeURIComponent).join("/");
  let ids = 0;
  const uid = (prefix) => `${prefix}-${++ids}`;

  // Replaces a region's content, keeping keyboard focus on the same link or button across a refresh.
  function replace(region, ...children) {
    const focused = document.activeElement;
    const key = focused && region.contains(focused) ? focused.getAttribute("data-focus") : null;
    region.replaceChildren();
    fill(region, children);
    if (key) {
      const again = [...region.querySelectorAll("[data-focus]")].find((n) => n.getAttribute("data-focus") === key);
      if (again) again.focus();
    }
  }

  function table(caption, columns, rows, empty) {
    const id = uid("caption");
    const body = rows.length
      ? rows
      : [h("tr", {}, h("td", { colspan: columns.length, class: "empty" }, empty))];
    return h(
      "div",
      { class: "table-wrap", role: "region", "aria-labelledby": id, tabindex: "0" },
      h(
        "table",
        {},
        h("caption", { id }, caption),
        h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, body),
      ),
    );
  }

  const link = (href, text) => h("a", { href, "data-focus": href }, text);
  const workloadHref = (w) => path("workloads", w.namespace, w.kind, w.name);

  // --- numbers, as the CLI prints them (tether.cli.output.stat_cells) ---------------------------------

  const MISSING = "-";
  // Python's round(), which the CLI's latencies go through: a tie goes to the even neighbour.
  function roundHalfEven(v) {
    const floor = Math.floor(v), rest = v - floor;
    if (rest !== 0.5) return Math.round(v);
    return floor % 2 === 0 ? floor : floor + 1;
  }
  const responses = (r) => r.success + r.failure;
  const traffic = (r) => r.requests > 0 || responses(r) > 0;
  const fmt = {
    meshed: (r) => `${r.meshed}/${r.total}`,
    success: (r) => (r.success_rate === null ? MISSING : `${(100 * r.success_rate).toFixed(2)}%`),
    rps: (r) => (traffic(r) ? `${r.rps.toFixed(1)}rps` : MISSING),
    latency: (v) => (v === null || v === undefined ? MISSING : `${roundHalfEven(v)}ms`),
    tcp: (r) => (traffic(r) || r.tcp_open_connections ? String(r.tcp_open_connections) : MISSING),
    mtls: (r) => (r.tls_share === null ? MISSING : `${(100 * r.tls_share).toFixed(2)}%`),
  };
  const time = (seconds) => (seconds ? new Date(seconds * 1000).toLocaleString() : MISSING);
  const or = (value) => (value === "" || value === null || value === undefined ? MISSING : value);

  function statCells(r) {
    return [
      h("td", { "data-col": "meshed" }, fmt.meshed(r)),
      h("td", { "data-col": "success" }, fmt.success(r)),
      h("td", { "data-col": "rps" }, fmt.rps(r)),
      h("td", { "data-col": "p50" }, fmt.latency(r.latency_ms_p50)),
      h("td", { "data-col": "p95" }, fmt.latency(r.latency_ms_p95)),
      h("td", { "data-col": "p99" }, fmt.latency(r.latency_ms_p99)),
      h("td", { "data-col": "mtls" }, fmt.mtls(r)),
      h("td", { "data-col": "tcp" }, fmt.tcp(r)),
    ];
  }
  const STAT_COLUMNS = ["Meshed", "Success", "RPS", "P50", "P95", "P99", "mTLS", "TCP"];

  // The status is a shape and a word, not a colour alone; its accessible name is the word.
  const HEALTH = {
    healthy: ["\u2713 healthy", "healthy", "every response in the window succeeded"],
    failing: ["\u2717 failing", "failing", "success rate below 100%"],
    "no-traffic": ["\u2013 no traffic", "no traffic", "no responses in the window"],
  };
  function healthBadge(health) {
    const [shown, name, why] = HEALTH[health] || HEALTH["no-traffic"];
    return h("span", { class: `badge health-${health}`, role: "img", "aria-label": name, title: why }, shown);
  }
  const CHECK = { ok: "\u2713 ok", warning: "\u203c warning", error: "\u2717 error" };
  const checkBadge = (status) =>
    h("span", { class: `badge check-${status}`, role: "img", "aria-label": status }, CHECK[status] || status);

  // --- refresh, "last updated" and the banner ----------------------------------------------------------

  const TITLES = {
    dashboard: "The dashboard does not answer",
    api: "The public API is unreachable",
    telemetry: "Telemetry is unreachable",
  };

  function showProblems(problems) {
    const kinds = [...new Set(problems.map((p) => p.kind))];
    banner.setAttribute("data-problems", kinds.join(" "));
    if (!problems.length) {
      banner.hidden = true;
      banner.replaceChildren();
      return;
    }
    replace(
      banner,
      h("p", { class: "banner-title" }, kinds.map((k) => TITLES[k] || k).join("; ")),
      h("ul", {}, problems.map((p) => h("li", {}, p.message))),
      h("p", {}, "The page keeps the last numbers it got and retries on its own."),
    );
    banner.hidden = false;
  }

  function setUpdated(seconds, stale) {
    const when = new Date(seconds * 1000);
    updated.setAttribute("datetime", when.toISOString());
    updated.textContent = when.toLocaleTimeString() + (stale ? " (stale)" : "");
    updated.classList.toggle("stale", Boolean(stale));
  }

  // Polls url() every refresh_seconds; render(body) draws a successful answer, failed(status, body) may take
  // an error answer as a page of its own (a 404). Only the request may fail quietly: a bug in drawing the
  // page is thrown, not shown as an outage.
  function poll(url, render, failed) {
    let timer = null;
    let busy = false;
    let last = 0;
    let every = 3;
    async function get() {
      try {
        // A stopped server may accept the connection and never answer: give up after a while.
        const answer = await fetch(url(), {
          headers: { Accept: "application/json" }, cache: "no-store", signal: AbortSignal.timeout(FETCH_TIMEOUT_MS),
        });
        return [answer, await answer.json().catch(() => null)];
      } catch (error) {
        showProblems([{ kind: "dashboard", message: `no answer from ${location.host} (${error.message}): is the public API running?` }]);
        if (last) setUpdated(last, true);
        return [null, null];
      }
    }
    async function tick() {
      clearTimeout(timer);
      if (busy) return;
      busy = true;
      try {
        const [answer, body] = await get();
        if (answer === null) return;
        if (answer.ok && body) {
          every = body.refresh_seconds || every;
          render(body);
          showProblems(body.problems || []);
          last = body.generated_at;
          setUpdated(last, false);
        } else if (failed && failed(answer.status, body)) {
          showProblems([]);
        } else {
          const message = (body && body.error) || `the dashboard answered ${answer.status}`;
          showProblems([{ kind: "api", message }]);
        }
      } finally {
        busy = false;
        timer = setTimeout(tick, every * 1000);
      }
    }
    tick();
    return tick;
  }

  function windowPicker(current, onChange) {
    const id = uid("window");
    const select = h("select", { id, "data-focus": "window" }, WINDOWS.map((w) => h("option", { value: w, selected: w === current }, w)));
    select.addEventListener("change", () => onChange(select.value));
    return h("p", { class: "control" }, h("label", { for: id }, "Time window "), select);
  }

  function currentWindow() {
    const w = new URLSearchParams(location.search).get("window");
    return WINDOWS.includes(w) ? w : "1m";
  }

  function setWindow(w) {
    const params = new URLSearchParams(location.search);
    params.set("window", w);
    history.replaceState(null, "", `${location.pathname}?${params}`);
  }

  // --- overview ----------------------------------------------------------------------------------------

  function overviewPage() {
    let span = currentWindow();
    const workloads = h("section", { "aria-labelledby": "workloads-title" });
    const namespaces = h("section", { "aria-labelledby": "namespaces-title" });
    const plane = h("section", { "aria-labelledby": "plane-title" });
    const refresh = h("button", { type: "button" }, "Refresh now");
    document.title = "Overview · Tether";
    replace(
      main,
      h("h1", {}, "Overview"),
      h("div", { class: "controls" }, windowPicker(span, (w) => { span = w; setWindow(w); now(); }), refresh),
      h("h2", { id: "workloads-title" }, "Workloads"), workloads,
      h("h2", { id: "namespaces-title" }, "Namespaces"), namespaces,
      h("h2", { id: "plane-title" }, "Control plane"), plane,
    );
    const now = poll(() => `/api/overview?window=${span}`, (data) => {
      replace(workloads, table(
        `Workloads, ${data.window} window`,
        ["Workload", "Status", "Namespace", "Kind", ...STAT_COLUMNS],
        data.workloads.map((w) => h("tr", { "data-workload": `${w.namespace}/${w.kind}/${w.name}` },
          h("th", { scope: "row" }, link(workloadHref(w), w.name)),
          h("td", { "data-col": "status" }, healthBadge(w.health)),
          h("td", {}, w.namespace), h("td", {}, w.kind),
          statCells(w))),
        "No meshed workload has reported yet.",
      ));
      replace(namespaces, table(
        `Namespaces, ${data.window} window`,
        ["Namespace", ...STAT_COLUMNS],
        data.namespaces.map((n) => h("tr", { "data-namespace": n.name }, h("th", { scope: "row" }, n.name), statCells(n))),
        "No traffic in this window.",
      ));
      const check = data.check || { results: [] };
      replace(plane,
        table("Checks (tether check)", ["Status", "Check", "Category", "Hint"],
          check.results.map((r) => h("tr", {}, h("td", {}, checkBadge(r.status)), h("th", { scope: "row", class: "wrap" }, r.description),
            h("td", {}, r.category), h("td", { class: "wrap" }, or(r.hint)))),
          "The checks did not answer."),
        table("Components (tether version)", ["Component", "Instance", "Version", "Ready"],
          data.components.map((c) => h("tr", {}, h("th", { scope: "row" }, c.service), h("td", {}, c.instance),
            h("td", {}, c.version), h("td", {}, c.ready ? "ready" : "not ready"))),
          "No component sent a heartbeat."));
      document.body.setAttribute("data-snapshot", String(data.generated_at));
    });
    refresh.addEventListener("click", () => now());
  }

  // --- workload ----------------------------------------------------------------------------------------

  function chart(samples, interval) {
    const W = 640, H = 220, L = 52, R = 52, T = 14, B = 30, SLOTS = 60;
    const plotW = W - L - R, plotH = H - T - B, slot = plotW / SLOTS;
    const titleId = uid("chart-title"), descId = uid("chart-desc");
    const latest = samples.length ? samples[samples.length - 1] : null;
    const top = Math.max(1, ...samples.map((s) => s.rps));
    const scale = top <= 1 ? 1 : top <= 5 ? 5 : Math.ceil(top / 10) * 10;
    const x = (s) => L + plotW - slot * (1 + Math.round((latest.at - s.at) / interval));
    const describe = latest
      ? `Latest 10-second window: ${latest.rps.toFixed(1)} requests per second, ` +
        (latest.success_rate === null ? "no responses." : `${(100 * latest.success_rate).toFixed(2)}% success.`)
      : "No samples yet: the dashboard takes one every 10 seconds.";
    const bars = samples.filter((s) => x(s) >= L).map((s) => svg("rect", {
      class: "bar", x: x(s) + 1, width: Math.max(1, slot - 2),
      y: T + plotH * (1 - s.rps / scale), height: plotH * (s.rps / scale),
    }));
    const rated = samples.filter((s) => s.success_rate !== null && x(s) >= L);
    const points = rated.map((s) => `${x(s) + slot / 2},${T + plotH * (1 - s.success_rate)}`).join(" ");
    const dots = rated.map((s) => svg("circle", { class: "dot", cx: x(s) + slot / 2, cy: T + plotH * (1 - s.success_rate), r: 2.5 }));
    return h("figure", { class: "chart" },
      svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-labelledby": `${titleId} ${descId}` },
        svg("title", { id: titleId }, "Requests per second (bars) and success rate (line), last 10 minutes"),
        svg("desc", { id: descId }, describe),
        svg("line", { class: "axis", x1: L, y1: T + plotH, x2: L + plotW, y2: T + plotH }),
        svg("line", { class: "grid", x1: L, y1: T, x2: L + plotW, y2: T }),
        svg("text", { class: "label", x: L - 6, y: T + 4, "text-anchor": "end" }, `${scale} rps`),
        svg("text", { class: "label", x: L - 6, y: T + plotH, "text-anchor": "end" }, "0"),
        svg("text", { class: "label success", x: L + plotW + 6, y: T + 4 }, "100%"),
        svg("text", { class: "label success", x: L + plotW + 6, y: T + plotH }, "0%"),
        svg("text", { class: "label", x: L, y: H - 8 }, "10 min ago"),
        svg("text", { class: "label", x: L + plotW, y: H - 8, "text-anchor": "end" }, "now"),
        bars,
        points ? svg("polyline", { class: "line", points }) : null,
        dots),
      h("figcaption", {}, describe));
  }

  function edgesTable(caption, edges, peer, empty) {
    return table(caption, [peer === "src" ? "From" : "To", "Namespace", "Client identity", "Server identity", "Secured", "Requests"],
      edges.map((e) => h("tr", { "data-edge": `${e.src.name}->${e.dst.name}`, "data-secured": String(e.secured) },
        h("th", { scope: "row" }, link(workloadHref(e[peer]), `${e[peer].kind}/${e[peer].name}`)),
        h("td", {}, e[peer].namespace), h("td", {}, or(e.client_id)), h("td", {}, or(e.server_id)),
        h("td", { "data-col": "secured" }, e.secured ? "\u2713 secured" : `\u2717 not secured${e.no_tls_reason ? ` (${e.no_tls_reason})` : ""}`),
        h("td", {}, String(e.requests)))),
      empty);
  }

  function workloadPage(namespace, kind, name) {
    let span = currentWindow();
    const body = h("div", {});
    document.title = `${kind}/${name} · Tether`;
    const tap = `/tap?${new URLSearchParams({ namespace, kind, name })}`;
    replace(main,
      h("nav", { "aria-label": "Breadcrumb", class: "crumbs" }, link("/", "Overview"), ` \u203a ${namespace} \u203a ${kind}/${name}`),
      h("h1", {}, `${kind}/${name}`, h("span", { class: "sub" }, ` in namespace ${namespace}`)),
      h("div", { class: "controls" }, windowPicker(span, (w) => { span = w; setWindow(w); now(); }), link(tap, "Tap this workload")),
      body);
    const now = poll(() => `${path("api", "workloads", namespace, kind, name)}?window=${span}`, (data) => {
      const w = data.workload;
      replace(body,
        h("p", { class: "status-line" }, "Status: ", healthBadge(data.health)),
        h("dl", { class: "facts" },
          h("dt", {}, "Identity"), h("dd", {}, or(w.identity)),
          h("dt", {}, "Meshed pods"), h("dd", {}, `${w.meshed}/${w.total}`),
          h("dt", {}, "Proxy version"), h("dd", {}, or(w.proxy_version)),
          h("dt", {}, "Certificate expiry"), h("dd", {}, time(w.certificate_expiry)),
          h("dt", {}, "Last report"), h("dd", {}, time(w.last_report))),
        h("h2", {}, "Golden metrics over time"),
        chart(data.history.samples, data.history.interval_seconds),
        table("Golden metrics by time window", ["Window", ...STAT_COLUMNS],
          data.windows.map((x) => h("tr", { "data-window": x.window }, h("th", { scope: "row" }, x.window),
            x.stat ? statCells(x.stat) : h("td", { colspan: STAT_COLUMNS.length }, "no traffic"))), ""),
        h("h2", {}, "Edges"),
        edgesTable(`Inbound: who calls ${name} (${data.window} window)`, data.inbound, "src", "No inbound traffic from meshed workloads in this window."),
        edgesTable(`Outbound: whom ${name} calls (${data.window} window)`, data.outbound, "dst", "No outbound traffic to meshed workloads in this window."),
        h("h2", {}, "Pods"),
        table("Pods and their proxies", ["Pod", "Identity", "Proxy version", "Certificate expiry", "Last report", "Reporting"],
          w.pods.map((p) => h("tr", { "data-pod": p.name }, h("th", { scope: "row" }, p.name), h("td", {}, or(p.identity)),
            h("td", {}, or(p.proxy_version)), h("td", {}, time(p.certificate_expiry)), h("td", {}, time(p.last_report)),
            h("td", {}, p.reporting ? "yes" : "no"))),
          "No pod of it reported in the last hour."));
      document.body.setAttribute("data-snapshot", String(data.generated_at));
    }, (status, answer) => {
      if (status !== 404) return false;
      replace(body, h("p", { class: "notice" }, (answer && answer.error) || "No such workload."));
      return true;
    });
  }

  // --- live tap ----------------------------------------------------------------------------------------

  function field(label, input, hint) {
    const id = uid("field");
    attrs(input, { id, "aria-describedby": hint ? `${id}-hint` : null });
    return h("p", { class: "field" }, h("label", { for: id }, label), input, hint ? h("span", { class: "hint", id: `${id}-hint` }, hint) : null);
  }

  function tapDetails(e) {
    if (e.phase === "request") return `${e.method} ${e.authority}${e.path}`;
    if (e.phase === "response") return `:status=${e.status} latency=${e.latency_us}\u00b5s`;
    if (e.phase === "end") {
      const status = e.reset_error_code ? `reset-error=${e.reset_error_code}` : e.grpc_status ? `grpc-status=${e.grpc_status}` : "";
      return `${status} duration=${e.duration_us}\u00b5s response-length=${e.bytes}B`.trim();
    }
    return "";
  }

  function tapPage() {
    const q = new URLSearchParams(location.search);
    const input = (name, values) => h("input", { name, ...values });
    const form = h("form", { id: "tap-form", novalidate: true });
    const kind = h("select", { name: "kind" }, KINDS.map((k) => h("option", { value: k, selected: k === (q.get("kind") || "deployment") }, k)));
    const start = h("button", { type: "submit" }, "Start");
    const stop = h("button", { type: "button", disabled: true }, "Stop");
    const state = h("p", { id: "tap-state", role: "status", "data-state": "idle" }, "Not running.");
    const rows = h("tbody", {});
    fill(form, [
      h("fieldset", {}, h("legend", {}, "Resource"),
        field("Namespace", input("namespace", { value: q.get("namespace") || "default", required: true, autocomplete: "off" })),
        field("Kind", kind),
        field("Name", input("name", { value: q.get("name") || "", required: true, autocomplete: "off" }))),
      h("fieldset", {}, h("legend", {}, "Filters (as tether tap)"),
        field("Method", input("method", { placeholder: "any", autocomplete: "off" })),
        field("Path prefix", input("path", { placeholder: "any", autocomplete: "off" })),
        field("Authority", input("authority", { placeholder: "any", autocomplete: "off" })),
        field("Max events per second", input("max_rps", { type: "number", min: "0.1", step: "any", value: "100" })),
        field("Max requests", input("max_requests", { type: "number", min: "0", step: "1", value: "0" }), "0: until stopped")),
      h("fieldset", {}, h("legend", {}, "Authorisation"),
        field("Bearer token", input("token", { type: "password", autocomplete: "off" }),
          "Only in a cluster whose public API checks taps: a token allowed to tap (kubectl create token NAME). Sent to the public API for this tap, never stored.")),
      h("p", { class: "buttons" }, start, " ", stop)]);
    document.title = "Live tap · Tether";
    replace(main, h("h1", {}, "Live tap"), form, state,
      h("div", { class: "table-wrap", role: "region", "aria-labelledby": "tap-caption", tabindex: "0" },
        h("table", { id: "tap-events" },
          h("caption", { id: "tap-caption" }, `Events, newest first (at most ${MAX_TAP_ROWS})`),
          h("thead", {}, h("tr", {}, ["Time", "Direction", "Stream", "Phase", "Source", "Destination", "TLS", "Details"].map((c) => h("th", { scope: "col" }, c)))),
          rows)));
    let source = null, stopUrl = null;
    const setState = (name, text) => { state.setAttribute("data-state", name); state.textContent = text; };
    function finish(name, text) {
      if (source) source.close();
      source = null; stopUrl = null;
      start.disabled = false; stop.disabled = true;
      setState(name, text);
    }
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      if (source) return;
      const data = new FormData(form);
      const body = {
        namespace: data.get("namespace").trim(), kind: data.get("kind"), name: data.get("name").trim(),
        method: data.get("method").trim(), path: data.get("path"), authority: data.get("authority").trim(),
        max_rps: Number(data.get("max_rps")), max_requests: Number(data.get("max_requests")),
      };
      const headers = { "Content-Type": "application/json", Accept: "application/json" };
      const token = data.get("token").trim();
      if (token) headers.Authorization = `Bearer ${token}`;
      start.disabled = true;
      setState("starting", "Starting\u2026");
      try {
        const answer = await fetch("/api/taps", { method: "POST", headers, body: JSON.stringify(body) });
        const created = await answer.json().catch(() => ({}));
        if (!answer.ok) return finish("failed", `Not started: ${created.error || answer.status}`);
        rows.replaceChildren();
        stopUrl = created.stop;
        source = new EventSource(created.events);
        source.addEventListener("started", (e) => {
          const s = JSON.parse(e.data);
          stop.disabled = false;
          setState("running", `Running: tapping ${s.target} in namespace ${s.namespace}.`);
        });
        source.addEventListener("tap", (e) => {
          const t = JSON.parse(e.data);
          rows.prepend(h("tr", { "data-phase": t.phase },
            h("td", {}, t.at ? new Date(t.at).toLocaleTimeString() : MISSING), h("td", {}, or(t.direction)),
            h("td", {}, t.id), h("td", {}, t.phase), h("td", {}, or(t.source_pod || t.source)),
            h("td", {}, or(t.destination_pod || t.destination)), h("td", {}, or(t.tls)),
            h("td", { class: "details" }, tapDetails(t),
              Object.entries(t.headers).map(([k, v]) => h("span", { class: "header" }, ` ${k}: ${v}`)))));
          while (rows.children.length > MAX_TAP_ROWS) rows.lastElementChild.remove();
        });
        source.addEventListener("end", (e) => {
          const s = JSON.parse(e.data);
          finish("stopped", `Stopped (${s.reason}${s.dropped ? `, ${s.dropped} events dropped` : ""}).`);
        });
        source.addEventListener("failed", (e) => finish("failed", `Failed: ${JSON.parse(e.data).message}`));
        source.onerror = () => { if (source) finish("failed", "Stopped: the connection to the dashboard was lost."); };
      } catch (error) {
        finish("failed", `Not started: ${error.message}`);
      }
    });
    stop.addEventListener("click", async () => {
      if (!stopUrl) return;
      stop.disabled = true;
      setState("stopping", "Stopping\u2026");
      try {
        await fetch(stopUrl, { method: "POST", headers: { Accept: "application/json" } });
      } catch (error) {
        finish("failed", `Stop failed: ${error.message}`);
      }
    });
    // The banner on this page too: the API's and telemetry's state.
    poll(() => "/api/status", () => {});
  }

  // --- routing -----------------------------------------------------------------------------------------

  function route() {
    const where = location.pathname;
    for (const a of document.querySelectorAll("nav [data-nav]")) {
      const current = (a.getAttribute("data-nav") === "tap") === (where === "/tap");
      if (current) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
    }
    if (where === "/") return overviewPage();
    if (where === "/tap") return tapPage();
    const m = where.match(/^\/workloads\/([^/]+)\/([^/]+)\/([^/]+)$/);
    if (m) return workloadPage(...m.slice(1).map(decodeURIComponent));
    replace(main, h("h1", {}, "Not found"), h("p", {}, link("/", "Back to the overview")));
  }

  route();
})();
