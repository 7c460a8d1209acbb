// edgefleet dashboard: plain JavaScript, no library, nothing loaded from elsewhere.
// Everything from the API is put into the page as text (textContent, attributes), never as
// markup; the token lives in this tab's sessionStorage and travels only in a header.

const TOKEN_KEY = "edgefleet-token";
const PAGE = 50;
const COHORT_SHOWN = 6; // devices named per stage on a rollout's page
const LIVE_MS = 2000; // pages that change while you look are polled: see README ("Dashboard")
const ACTIONS = {
  running: ["pause", "promote", "abort", "rollback"],
  paused: ["resume", "promote", "abort", "rollback"],
};
const CONFIRM = { abort: true, rollback: true };

const main = document.getElementById("main");
let caller = null;
let timer = null;
const fleet = { selector: "", offset: 0 };
const driftView = { model: null, selector: null, version: "" }; // what the drift page shows
const LINEAGE = ["drift", "accuracy_drop", "retrain_started", "challenger_registered", "challenger_refused", "release"];
class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function link(hash, text) {
  return el("a", { href: hash }, text);
}

function table(head, rows) {
  return el(
    "table",
    {},
    el("thead", {}, el("tr", {}, head.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((cells) => el("tr", {}, cells.map((c) => el("td", {}, c))))),
  );
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

function status(text) {
  return el("span", { class: String(text) }, text);
}

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY)}` };
  if (options.body) headers["Content-Type"] = "application/json";
  const response = await fetch(`/api/v1${path}`, { ...options, headers, cache: "no-store" });
  const body = await response.json().catch(() => null);
  if (response.status === 401) {
    logout("The control plane refused this token: give another.");
    throw new ApiError(401, "unauthorized");
  }
  if (!response.ok) {
    const detail = body && body.detail && body.detail[0];
    throw new ApiError(response.status, detail ? detail.msg : response.statusText);
  }
  return { body, headers: response.headers };
}

async function get(path) {
  return (await api(path)).body;
}

function canAct() {
  return caller && (caller.role === "operator" || caller.role === "admin");
}

// --- log in -------------------------------------------------------------------------------

function logout(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  caller = null;
  loginPage(message);
}

function loginPage(message) {
  clearInterval(timer);
  document.getElementById("nav").hidden = true;
  document.getElementById("who").textContent = "";
  const input = el("input", {
    type: "password",
    name: "token",
    id: "token",
    autocomplete: "off",
    placeholder: "ef_…",
  });
  const form = el(
    "form",
    { class: "login card", id: "login" },
    el("h1", {}, "Log in"),
    el("p", {}, "An API token: a viewer sees the fleet, an operator also acts on rollouts."),
    input,
    message ? el("p", { class: "error" }, message) : null,
    el("button", { type: "submit" }, "Log in"),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    route();
  });
  main.replaceChildren(form);
  input.focus();
}

// --- fleet --------------------------------------------------------------------------------

async function fleetPage() {
  const query = new URLSearchParams({ limit: PAGE, offset: fleet.offset });
  if (fleet.selector) query.set("selector", fleet.selector);
  const summaryQuery = fleet.selector ? `?selector=${encodeURIComponent(fleet.selector)}` : "";
  const [{ body: devices, headers }, summary] = await Promise.all([
    api(`/devices?${query}`),
    get(`/devices/summary${summaryQuery}`),
  ]);
  const total = Number(headers.get("X-Total-Count"));
  const selector = el("input", { id: "selector", value: fleet.selector, placeholder: "site=berlin" });
  const filter = el("form", { class: "pager" }, "Selector", selector, el("button", {}, "Filter"));
  filter.addEventListener("submit", (event) => {
    event.preventDefault();
    fleet.selector = selector.value.trim();
    fleet.offset = 0;
    route();
  });
  const move = (offset) => () => {
    fleet.offset = offset;
    route();
  };
  const last = Math.min(total, fleet.offset + devices.length);
  return el(
    "section",
    { id: "fleet" },
    el("h1", {}, "Fleet"),
    el(
      "div",
      { class: "row" },
      el("div", { class: "stat" }, el("b", {}, summary.devices), "devices"),
      el("div", { class: "stat" }, el("b", {}, summary.online), "online"),
      summary.serving.map((s) =>
        el(
          "div",
          { class: "stat version-count" },
          el("b", {}, s.devices),
          `${s.model} v${s.version ?? "–"} `,
          status(s.phase),
        ),
      ),
    ),
    filter,
    table(
      ["device", "online", "labels", "models", "last error"],
      devices.map((d) => {
        const models = d.state ? d.state.models : [];
        const errors = [d.state && d.state.last_error, ...models.map((m) => m.last_error)];
        const error = errors.filter(Boolean).pop();
        return [
          link(`#/devices/${encodeURIComponent(d.id)}`, d.id),
          status(d.online ? "online" : "offline"),
          Object.entries(d.labels).map(([k, v]) => `${k}=${v}`).join(", "),
          models.map((m) => [`${m.name} v${m.active ? m.active.version : "–"} `, status(m.phase), " "]),
          error ? `${error.reason}: ${error.message}` : "",
        ];
      }),
    ),
    el(
      "div",
      { class: "pager" },
      el("button", { disabled: fleet.offset === 0, onclick: move(Math.max(0, fleet.offset - PAGE)) }, "‹ previous"),
      `${total ? fleet.offset + 1 : 0}–${last} of ${total}`,
      el("button", { disabled: last >= total, onclick: move(fleet.offset + PAGE) }, "next ›"),
    ),
  );
}
fleetPage.live = LIVE_MS;

async function devicePage(id) {
  const path = encodeURIComponent(id);
  const [device, windows, events] = await Promise.all([
    get(`/devices/${path}`),
    get(`/devices/${path}/telemetry?limit=20`),
    get(`/events?device_id=${path}&limit=20`),
  ]);
  const models = device.state ? device.state.models : [];
  return el(
    "section",
    { id: "device" },
    el("h1", {}, `Device ${device.id}`),
    el(
      "p",
      {},
      status(device.online ? "online" : "offline"),
      ` · ${device.admission} · last seen ${when(device.last_seen)} · labels `,
      Object.entries(device.labels).map(([k, v]) => `${k}=${v}`).join(", "),
    ),
    el("h2", {}, "Models"),
    table(
      ["model", "active", "previous", "phase", "rollout", "last error"],
      models.map((m) => [
        m.name,
        m.active ? `v${m.active.version}` : "",
        m.previous ? `v${m.previous.version}` : "",
        status(m.phase),
        m.rollout_id || "",
        m.last_error ? `${m.last_error.reason}: ${m.last_error.message}` : "",
      ]),
    ),
    el("h2", {}, "Recent telemetry"),
    table(
      ["window end", "model", "requests", "errors", "p95"],
      windows
        .slice()
        .reverse()
        .flatMap((w) =>
          w.window.models.map((m) => {
            const p95 = w.p95_latency_us[`${m.name}:${m.version}`];
            return [when(w.window.window_end), `${m.name} v${m.version}`, m.requests, m.errors, p95 == null ? "" : `${(p95 / 1000).toFixed(2)} ms`];
          }),
        ),
    ),
    el("h2", {}, "State history"),
    eventList(events),
  );
}
devicePage.live = LIVE_MS;

function eventList(events) {
  return table(
    ["when", "type", "what"],
    events.map((e) => [when(e.at), e.type, e.message]),
  );
}

// --- rollouts -----------------------------------------------------------------------------

async function rolloutsPage() {
  const rollouts = await get("/rollouts");
  return el(
    "section",
    { id: "rollouts" },
    el("h1", {}, "Rollouts"),
    table(
      ["rollout", "version", "selector", "status", "stage", "assigned", "started"],
      rollouts.map((r) => [
        link(`#/rollouts/${encodeURIComponent(r.id)}`, r.id),
        `${r.model} v${r.version}`,
        r.selector || "all",
        status(r.status),
        r.stage < 0 ? "–" : `${r.stage + 1}/${r.stages.length}`,
        `${r.assigned}/${r.devices}`,
        when(r.created_at),
      ]),
    ),
  );
}
rolloutsPage.live = LIVE_MS;

async function act(rollout, command) {
  if (CONFIRM[command] && !window.confirm(`${command} rollout ${rollout.id}?`)) return;
  try {
    await api(`/rollouts/${encodeURIComponent(rollout.id)}/${command}`, { method: "POST" });
  } catch (error) {
    window.alert(`${command}: ${error.message}`);
  }
  route();
}

async function rolloutPage(id) {
  const path = encodeURIComponent(id);
  const [rollout, events, overTime] = await Promise.all([
    get(`/rollouts/${path}`),
    get(`/rollouts/${path}/events`),
    get(`/rollouts/${path}/versions?points=60`),
  ]);
  const [summary, cohorts] = await Promise.all([
    get(`/devices/summary?selector=${encodeURIComponent(rollout.selector)}`),
    Promise.all(rollout.stages.map((s) => api(`/rollouts/${path}/devices?stage=${s.index}&limit=${COHORT_SHOWN}`))),
  ]);
  const serving = summary.serving.filter((s) => s.model === rollout.model);
  const cohort = ({ body: members, headers }) => {
    const more = Number(headers.get("X-Total-Count")) - members.length;
    return [
      members.map((m, i) => [i ? ", " : "", link(`#/devices/${encodeURIComponent(m.device_id)}`, m.device_id), m.reverted ? " (reverted)" : ""]),
      more > 0 ? ` and ${more} more` : "",
    ];
  };
  const actions = canAct() ? ACTIONS[rollout.status] || [] : [];
  return el(
    "section",
    { id: "rollout" },
    el("h1", {}, `Rollout ${rollout.id}: ${rollout.model} v${rollout.version}`),
    el(
      "p",
      {},
      "Status ",
      el("b", { id: "rollout-status", class: rollout.status }, rollout.status),
      ` · stage ${rollout.stage < 0 ? "–" : rollout.stage + 1} of ${rollout.stages.length}`,
      ` · ${rollout.assigned} of ${rollout.devices} devices given the version`,
      rollout.reason ? ` · ${rollout.reason}` : "",
    ),
    actions.length
      ? el(
          "div",
          { class: "actions", id: "actions" },
          actions.map((command) =>
            el(
              "button",
              {
                id: `action-${command}`,
                class: CONFIRM[command] ? "danger" : "",
                onclick: () => act(rollout, command),
              },
              command,
            ),
          ),
        )
      : null,
    el("h2", {}, "Devices per version"),
    el(
      "div",
      { class: "row", id: "versions" },
      serving.map((s) =>
        el(
          "div",
          { class: "stat version-count" },
          el("b", {}, s.devices),
          `v${s.version ?? "–"} `,
          status(s.phase),
        ),
      ),
    ),
    lineChart(
      "Devices per version since the rollout began",
      overTime.times.map((t) => new Date(t)),
      overTime.series.map((s) => ({ name: `v${s.version ?? "–"}`, values: s.devices })),
      { id: "versions-chart" },
    ),
    el("h2", {}, "Stages"),
    table(
      ["stage", "plan", "devices with the version", "soak", "cohort"],
      rollout.stages.map((s) => [
        s.index + 1 === rollout.stage + 1 ? el("b", {}, `${s.index + 1} (current)`) : `${s.index + 1}`,
        s.label,
        s.target,
        `${s.soak_seconds} s`,
        el("span", { class: "cohort" }, cohort(cohorts[s.index])),
      ]),
    ),
    el("h2", {}, "Gates (current stage)"),
    el("div", { id: "gates" }, table(
      ["gate", "status", "value", "threshold", "evidence"],
      rollout.gates.map((g) => [
        g.name,
        status(g.status),
        g.value == null ? "" : Number(g.value).toPrecision(4),
        Number(g.threshold).toPrecision(4),
        [g.detail, g.devices != null ? ` · ${g.devices} devices` : "", g.requests != null ? ` · ${g.requests} requests` : ""],
      ]),
    )),
    el("h2", {}, "Events"),
    eventList(events),
  );
}
rolloutPage.live = LIVE_MS;

// --- models and drift ---------------------------------------------------------------------

async function modelsPage() {
  const models = await get("/models");
  return el(
    "section",
    { id: "models" },
    el("h1", {}, "Models"),
    table(
      ["model", "task", "latest", "aliases", "drift"],
      models.map((m) => [
        link(`#/models/${encodeURIComponent(m.name)}`, m.name),
        m.task,
        m.latest_version,
        Object.entries(m.aliases).map(([a, v]) => `${a} → v${v}`).join(", "),
        link(`#/drift/${encodeURIComponent(m.name)}`, "drift"),
      ]),
    ),
  );
}

function lineageEvents(name, limit) {
  const types = LINEAGE.map((t) => `&type=${t}`).join("");
  return get(`/events?model=${encodeURIComponent(name)}${types}&limit=${limit}`);
}

async function modelPage(name) {
  const path = encodeURIComponent(name);
  const [versions, rollouts, events] = await Promise.all([
    get(`/models/${path}/versions`),
    get("/rollouts"),
    lineageEvents(name, 200),
  ]);
  // The signed manifests of the newest versions (one request each).
  const newest = versions.slice(-10);
  const manifests = await Promise.all(newest.map((v) => get(`/models/${path}/versions/${v.version}`)));
  const byVersion = (v) => rollouts.filter((r) => r.model === name && r.version === v);
  // Lineage past the version: what drifted on it, and the challenger retrained from that.
  const followers = (v) =>
    events
      .filter((e) => ["drift", "accuracy_drop"].includes(e.type) && e.version === v)
      .reverse()
      .map((cause) => {
        const challengers = events.filter((e) => e.cause_id === cause.id && e.type.startsWith("challenger_"));
        return [
          " → ",
          el("span", { class: `lineage-${cause.type}` }, `${cause.type.replace("_", " ")} ${when(cause.at)}`),
          challengers.map((c) =>
            c.type === "challenger_registered"
              ? [" → challenger ", link(`#/models/${path}`, `v${c.version}`)]
              : [" → challenger refused"],
          ),
        ];
      });
  return el(
    "section",
    { id: "model" },
    el("h1", {}, `Model ${name}`),
    el("p", {}, link(`#/drift/${path}`, "Drift over time")),
    table(
      ["version", "algorithm", "metrics", "aliases", "release", "artifact", "lineage"],
      versions.map((v) => [
        `v${v.version}`,
        v.algorithm,
        Object.entries(v.metrics).map(([k, x]) => `${k} ${x.toFixed(3)}`).join(", "),
        v.aliases.join(", "),
        v.release || "",
        el("code", {}, `sha256 ${v.sha256.slice(0, 16)}… · ${v.size} bytes · parity ${v.parity_max_abs_diff.toExponential(1)}`),
        el(
          "span",
          { class: "lineage", id: `lineage-v${v.version}` },
          `dataset ${v.dataset_id}`,
          v.job_id ? ` → job ${v.job_id}` : "",
          ` → v${v.version}`,
          byVersion(v.version).map((r) => [" → ", link(`#/rollouts/${encodeURIComponent(r.id)}`, `rollout ${r.id}`), ` (${r.status})`]),
          followers(v.version),
        ),
      ]),
    ),
    el("h2", {}, "Signed manifests"),
    table(
      ["version", "signing key", "signature", "opset", "inputs", "outputs"],
      manifests.map((v) => {
        const m = v.manifest;
        return [
          `v${v.version}`,
          el("code", { class: "key-id" }, m.key_id),
          el("code", { title: m.signature }, `${m.signature.slice(0, 24)}…`),
          Object.entries(m.opset).map(([d, n]) => `${d || "ai.onnx"} ${n}`).join(", "),
          `${m.input.features.length} features: ${m.input.features.join(", ")}`,
          m.output.classes.length ? `${m.output.task}: ${m.output.classes.join(", ")}` : m.output.task,
        ];
      }),
    ),
    el("h2", {}, "Drift, retraining and releases"),
    eventList(events),
  );
}

const SERIES_COLOURS = ["#0969da", "#8250df", "#bf8700", "#1a7f37", "#cf222e", "#57606a"];

function lineChart(title, times, series, options = {}) {
  // times: [Date]; series: [{name, values: [number|null]}] aligned with times;
  // options: {threshold: number, marks: [{t: Date, label, kind}], id}
  const { threshold = null, marks = [], id } = options;
  const width = 640;
  const height = 180;
  const pad = 30;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "chart");
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", title);
  const all = series.flatMap((s) => s.values).filter((v) => v != null);
  const top = Math.max(threshold ?? 0, ...all, 1e-9) * 1.1;
  const first = times.length ? times[0].getTime() : 0;
  const span = times.length > 1 ? times[times.length - 1].getTime() - first : 0;
  const x = (t) => pad + (span ? ((t.getTime() - first) * (width - 2 * pad)) / span : 0);
  const y = (v) => height - pad - (v / top) * (height - 2 * pad);
  const add = (tag, attrs, text) => {
    const node = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    svg.append(node);
    return node;
  };
  add("text", { x: pad, y: 14 }, title);
  add("line", { x1: pad, y1: height - pad, x2: width - pad, y2: height - pad, stroke: "#d0d7de" });
  if (threshold != null) {
    add("line", { x1: pad, y1: y(threshold), x2: width - pad, y2: y(threshold), stroke: "#cf222e", "stroke-dasharray": "4 3", class: "threshold", "data-value": threshold });
    add("text", { x: width - pad - 80, y: y(threshold) - 3 }, `threshold ${Number(threshold).toPrecision(3)}`);
  }
  for (const mark of marks) {
    if (!span || mark.t.getTime() < first || mark.t.getTime() > first + span) continue;
    const node = add("line", { x1: x(mark.t), y1: 20, x2: x(mark.t), y2: height - pad, stroke: "#57606a", "stroke-dasharray": "2 2", class: `mark ${mark.kind}` });
    const tip = document.createElementNS(ns, "title");
    tip.textContent = mark.label;
    node.append(tip);
  }
  series.forEach((s, k) => {
    const coords = s.values.map((v, i) => (v == null ? null : `${x(times[i])},${y(v)}`)).filter(Boolean);
    if (coords.length) {
      add("polyline", {
        points: coords.join(" "),
        fill: "none",
        stroke: SERIES_COLOURS[k % SERIES_COLOURS.length],
        "stroke-width": 2,
        "data-series": s.name,
        "data-values": JSON.stringify(s.values),
      });
    }
  });
  if (times.length) {
    add("text", { x: pad, y: height - 10 }, times[0].toLocaleTimeString());
    add("text", { x: width - pad - 50, y: height - 10 }, times[times.length - 1].toLocaleTimeString());
  }
  // Classes, not style attributes: the page's CSP allows no inline style.
  const legend = el("p", { class: "legend" }, series.map((s, k) => el("span", { class: `series-${k % SERIES_COLOURS.length}` }, `■ ${s.name}`)));
  return el("div", { class: "card", id }, svg, legend, marks.length ? el("p", { class: "muted" }, "Dashed verticals: drift and retraining events (hover for which).") : null);
}

async function driftPage(name) {
  const path = encodeURIComponent(name);
  if (driftView.model !== name) Object.assign(driftView, { model: name, selector: null, version: "" });
  const recent = await get(`/models/${path}/drift?limit=200`);
  const selectors = [...new Set(recent.map((r) => r.selector))].sort();
  if (driftView.selector === null || !selectors.includes(driftView.selector)) {
    driftView.selector = recent.length ? recent[recent.length - 1].selector : "";
  }
  const query = new URLSearchParams({ selector: driftView.selector, limit: 2000 });
  const [readings, events] = await Promise.all([get(`/models/${path}/drift?${query}`), lineageEvents(name, 200)]);
  const versions = [...new Set(readings.map((r) => r.version))].sort((a, b) => a - b);
  const shown = driftView.version === "" ? readings : readings.filter((r) => r.version === Number(driftView.version));
  // One moment per bucket; where versions overlap (during a rollout), the features follow
  // the version that answered most requests in the bucket.
  const buckets = [...new Set(shown.map((r) => r.bucket_end))].sort();
  const busiest = buckets.map((b) =>
    shown.filter((r) => r.bucket_end === b).reduce((best, r) => (r.requests > best.requests ? r : best)),
  );
  const times = buckets.map((b) => new Date(b));
  const features = busiest.length ? busiest[busiest.length - 1].features.map((f) => f.name) : [];
  const feature = (r, name) => r.features.find((f) => f.name === name) || {};
  const psi = features.map((f) => ({ name: f, values: busiest.map((r) => feature(r, f).psi ?? null) }));
  const thresholds = busiest.flatMap((r) => r.features.map((f) => f.psi_threshold)).filter((v) => v != null);
  const threshold = thresholds.length ? Math.min(...thresholds) : null;
  const perVersion = (pick) =>
    [...new Set(shown.map((r) => r.version))].map((v) => ({
      name: `v${v}`,
      values: buckets.map((b) => {
        const r = shown.find((x) => x.version === v && x.bucket_end === b);
        return r ? pick(r) : null;
      }),
    }));
  const marked = events.filter((e) => LINEAGE.includes(e.type) && (!e.data || e.data.selector === undefined || e.data.selector === driftView.selector));
  const marks = marked.map((e) => ({ t: new Date(e.at), label: `${e.type}: ${e.message}`, kind: e.type }));
  const choose = (key) => (event) => {
    driftView[key] = event.target.value;
    route();
  };
  const option = (value, text, current) => el("option", { value, selected: value === current }, text);
  const latest = busiest[busiest.length - 1];
  return el(
    "section",
    { id: "drift" },
    el("h1", {}, `Drift: ${name}`),
    el(
      "form",
      { class: "pager" },
      "Devices",
      el("select", { id: "drift-selector", onchange: choose("selector") }, selectors.map((x) => option(x, x || "all devices", driftView.selector))),
      "Version",
      el("select", { id: "drift-version", onchange: choose("version") }, option("", "all", driftView.version), versions.map((v) => option(String(v), `v${v}`, driftView.version))),
    ),
    readings.length ? null : el("p", { class: "muted" }, "No closed buckets yet."),
    lineChart("PSI per feature", times, psi, { threshold, marks, id: "psi-chart" }),
    lineChart("Prediction drift (PSI)", times, perVersion((r) => r.prediction.psi), { threshold, marks, id: "prediction-chart" }),
    lineChart("Accuracy from feedback", times, perVersion((r) => r.accuracy), { marks, id: "accuracy-chart" }),
    latest
      ? [
          el("h2", {}, `Latest bucket (v${latest.version}, ending ${when(latest.bucket_end)})`),
          table(
            ["feature", "PSI", "threshold", "JS", "mean shift (σ)", "verdict"],
            latest.features.map((f) => [
              f.name,
              f.psi == null ? "" : f.psi.toFixed(3),
              f.psi_threshold == null ? "" : f.psi_threshold.toFixed(3),
              f.js == null ? "" : f.js.toFixed(3),
              f.mean_shift == null ? "" : f.mean_shift.toFixed(2),
              status(f.verdict),
            ]),
          ),
        ]
      : null,
    el("h2", {}, "Drift and retraining events"),
    eventList(marked),
  );
}
driftPage.live = LIVE_MS * 5;

// --- routing ------------------------------------------------------------------------------

const ROUTES = [
  [/^#\/fleet$/, fleetPage],
  [/^#\/devices\/([^/]+)$/, devicePage],
  [/^#\/rollouts$/, rolloutsPage],
  [/^#\/rollouts\/([^/]+)$/, rolloutPage],
  [/^#\/models$/, modelsPage],
  [/^#\/models\/([^/]+)$/, modelPage],
  [/^#\/drift\/([^/]+)$/, driftPage],
];

async function route() {
  clearInterval(timer);
  timer = null;
  if (!sessionStorage.getItem(TOKEN_KEY)) {
    loginPage();
    return;
  }
  if (!caller) {
    try {
      caller = await get("/whoami");
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 401)) logout(error.message);
      return;
    }
    document.getElementById("nav").hidden = false;
    document.getElementById("who").textContent = `${caller.name} (${caller.role})`;
  }
  const hash = location.hash || "#/fleet";
  for (const [pattern, page] of ROUTES) {
    const match = hash.match(pattern);
    if (!match) continue;
    const args = match.slice(1).map(decodeURIComponent);
    const render = async () => {
      try {
        const node = await page(...args);
        if ((location.hash || "#/fleet") === hash) main.replaceChildren(node);
      } catch (error) {
        if (!(error instanceof ApiError && error.status === 401)) {
          main.replaceChildren(el("p", { class: "error" }, error.message));
        }
      }
    };
    await render();
    if (page.live) timer = setInterval(render, page.live);
    return;
  }
  main.replaceChildren(el("p", {}, "No such page."));
}

window.addEventListener("hashchange", route);
route();
