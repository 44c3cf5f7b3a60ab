// scalelab monitoring dashboard: plain JS over Prometheus's HTTP API, no build step.
//
// Pages are paths, as in Prometheus's own UI (/graph, /table, /alerts, /targets, /silences),
// switched in place with the History API. The expression's state is kept in the URL with
// Prometheus's parameter names (g0.expr, g0.tab, g0.range_input, g0.end_input, g0.step_input,
// g0.moment_input), so links from and to a Prometheus UI carry over. All requests use
// relative URLs (api/v1/...), so the page also works behind a path prefix.
'use strict';

(() => {
  const PAGES = ['graph', 'table', 'alerts', 'targets', 'silences'];
  const RANGES = [300, 900, 1800, 3600, 10800, 21600, 43200, 86400, 172800, 604800, 1209600];
  const DEFAULT_RANGE = 3600;
  const MAX_SERIES = 1000; // series drawn at most; more would make the graph unreadable anyway
  const MAX_ROWS = 10000; // table rows shown at most
  const HISTORY_SIZE = 50;
  const NAMES_TTL_MS = 60000;
  const ZERO_TIME = '0001-01-01T00:00:00Z';

  const AGGREGATORS = [
    'sum', 'min', 'max', 'avg', 'group', 'stddev', 'stdvar', 'count', 'count_values',
    'bottomk', 'topk', 'quantile', 'limitk', 'limit_ratio',
  ];
  const FUNCTIONS = [
    'abs', 'absent', 'absent_over_time', 'acos', 'asin', 'atan', 'avg_over_time', 'ceil',
    'changes', 'clamp', 'clamp_max', 'clamp_min', 'cos', 'count_over_time', 'day_of_month',
    'day_of_week', 'day_of_year', 'days_in_month', 'deg', 'delta', 'deriv', 'exp', 'floor',
    'histogram_quantile', 'holt_winters', 'hour', 'idelta', 'increase', 'irate', 'label_join',
    'label_replace', 'last_over_time', 'ln', 'log10', 'log2', 'max_over_time', 'min_over_time',
    'minute', 'month', 'predict_linear', 'present_over_time', 'quantile_over_time', 'rad',
    'rate', 'resets', 'round', 'scalar', 'sgn', 'sin', 'sort', 'sort_desc', 'sqrt',
    'stddev_over_time', 'stdvar_over_time', 'sum_over_time', 'tan', 'time', 'timestamp',
    'vector', 'year',
  ];

  // -- small helpers ----------------------------------------------------------------------

  const $ = (selector, root = document) => root.querySelector(selector);
  const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));

  // Builds DOM nodes; text always goes in as text, never as HTML.
  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === 'class') node.className = value;
      else if (key === 'text') node.textContent = value;
      else if (key === 'style') node.style.cssText = value;
      else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? '' : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const store = {
    get(key, fallback) {
      try {
        const text = localStorage.getItem(`scalelab.monitoring.${key}`);
        return text === null ? fallback : JSON.parse(text);
      } catch {
        return fallback;
      }
    },
    set(key, value) {
      try {
        localStorage.setItem(`scalelab.monitoring.${key}`, JSON.stringify(value));
      } catch {
        // private mode or full storage: settings just don't persist
      }
    },
  };

  // -- the API ----------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(type, message, status) {
      super(message);
      this.type = type;
      this.status = status;
    }
  }

  // Prometheus's envelope ({status, data, errorType, error, warnings}) for /api/v1, and
  // Alertmanager's bare JSON (errors as a JSON string) for /api/v2; both end up as ApiError.
  async function api(path, { params, form, json, method } = {}) {
    let url = path;
    if (params) url += `?${new URLSearchParams(params)}`;
    const init = { method: method || 'GET', headers: { Accept: 'application/json' } };
    if (form) {
      init.method = method || 'POST';
      init.body = new URLSearchParams(form);
    } else if (json !== undefined) {
      init.method = method || 'POST';
      init.body = JSON.stringify(json);
      init.headers['Content-Type'] = 'application/json';
    }
    let response;
    try {
      response = await fetch(url, init);
    } catch (err) {
      throw new ApiError('network', `cannot reach the server: ${err.message}`, 0);
    }
    const text = await response.text();
    let body = null;
    if (text) {
      try {
        body = JSON.parse(text);
      } catch {
        const detail = text.length > 500 ? `${text.slice(0, 500)}…` : text;
        throw new ApiError(`HTTP ${response.status}`, detail || response.statusText, response.status);
      }
    }
    if (body && typeof body === 'object' && body.status === 'error') {
      throw new ApiError(body.errorType || 'error', body.error || '', response.status);
    }
    if (!response.ok) {
      let message = typeof body === 'string' ? body : JSON.stringify(body);
      let type = `HTTP ${response.status}`;
      if (body && typeof body === 'object' && body.error && typeof body.error === 'object') {
        message = body.error.message || message;
        type = body.error.code || type;
      }
      throw new ApiError(type, message, response.status);
    }
    return body;
  }

  function showError(node, err) {
    node.replaceChildren();
    if (err instanceof ApiError) {
      node.append(el('span', { class: 'error-type', text: err.type }), ': ', err.message);
    } else {
      node.append(el('span', { class: 'error-type', text: 'error' }), ': ', String(err && err.message || err));
    }
    node.hidden = false;
  }

  function hideError(node) {
    node.hidden = true;
    node.replaceChildren();
  }

  // -- time and numbers -------------------------------------------------------------------

  const settings = {
    utc: store.get('utc', false),
    refresh: store.get('refresh', 0),
  };

  const pad = (n, width = 2) => String(n).padStart(width, '0');

  function parts(ms) {
    const d = new Date(ms);
    return settings.utc
      ? [d.getUTCFullYear(), d.getUTCMonth() + 1, d.getUTCDate(), d.getUTCHours(), d.getUTCMinutes(), d.getUTCSeconds(), d.getUTCMilliseconds()]
      : [d.getFullYear(), d.getMonth() + 1, d.getDate(), d.getHours(), d.getMinutes(), d.getSeconds(), d.getMilliseconds()];
  }

  function fmtTime(ms, { millis = false } = {}) {
    const [y, mo, d, h, mi, s, msPart] = parts(ms);
    let text = `${y}-${pad(mo)}-${pad(d)} ${pad(h)}:${pad(mi)}:${pad(s)}`;
    if (millis && msPart) text += `.${pad(msPart, 3)}`;
    return settings.utc ? `${text} UTC` : text;
  }

  function toInputValue(ms) {
    const [y, mo, d, h, mi, s] = parts(ms);
    return `${y}-${pad(mo)}-${pad(d)}T${pad(h)}:${pad(mi)}:${pad(s)}`;
  }

  function fromInputValue(text) {
    const m = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2}))?/.exec(text || '');
    if (!m) return null;
    const [y, mo, d, h, mi, s] = m.slice(1).map((x) => Number(x || 0));
    return settings.utc ? Date.UTC(y, mo - 1, d, h, mi, s) : new Date(y, mo - 1, d, h, mi, s).getTime();
  }

  // URL times: Prometheus's "YYYY-MM-DD HH:MM:SS" in UTC, or Unix seconds.
  function fmtUrlTime(ms) {
    return new Date(ms).toISOString().slice(0, 19).replace('T', ' ');
  }

  function parseUrlTime(text) {
    if (!text) return null;
    if (/^\d+(\.\d+)?$/.test(text)) return Math.round(Number(text) * 1000);
    const m = /^(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2})(?::(\d{2}))?/.exec(text);
    if (!m) return null;
    const [y, mo, d, h, mi, s] = m.slice(1).map((x) => Number(x || 0));
    return Date.UTC(y, mo - 1, d, h, mi, s);
  }

  const DURATION_UNITS = [['y', 31536000000], ['w', 604800000], ['d', 86400000], ['h', 3600000], ['m', 60000], ['s', 1000], ['ms', 1]];

  // "1h30m", "15s", "90" (seconds) -> seconds; null for empty, NaN for nonsense.
  function parseDuration(text) {
    const s = String(text || '').trim();
    if (!s) return null;
    if (/^\d+(\.\d+)?$/.test(s)) return Number(s);
    const re = /(\d+)(ms|y|w|d|h|m|s)/y;
    let total = 0;
    let m;
    while (re.lastIndex < s.length && (m = re.exec(s)) !== null) {
      total += Number(m[1]) * Object.fromEntries(DURATION_UNITS)[m[2]];
    }
    return re.lastIndex === s.length && total > 0 ? total / 1000 : NaN;
  }

  function fmtDuration(seconds) {
    let ms = Math.round(seconds * 1000);
    if (ms === 0) return '0s';
    let text = ms < 0 ? '-' : '';
    ms = Math.abs(ms);
    for (const [unit, size] of DURATION_UNITS.slice(1)) {
      if (ms >= size) {
        text += `${Math.floor(ms / size)}${unit}`;
        ms %= size;
      }
    }
    return text;
  }

  // "3.2s ago", "5m12s ago", "in 1h59m": the two largest units are enough at a glance.
  function fmtAgo(ms) {
    const diff = (Date.now() - ms) / 1000;
    const a = Math.abs(diff);
    if (a < 0.05) return 'just now';
    const text = a < 60 ? `${a.toFixed(1)}s` : (fmtDuration(Math.round(a)).match(/\d+[a-z]+/g) || []).slice(0, 2).join('');
    return diff > 0 ? `${text} ago` : `in ${text}`;
  }

  function fmtSeconds(seconds) {
    if (typeof seconds !== 'number' || !Number.isFinite(seconds)) return '';
    return seconds < 1 ? `${(seconds * 1000).toFixed(1)}ms` : `${seconds.toFixed(3)}s`;
  }

  // RFC 3339 from the API; Go's zero time means "never".
  function isoToMs(text) {
    if (!text || text === ZERO_TIME || text.startsWith('0001-01-01')) return null;
    const ms = Date.parse(text);
    return Number.isNaN(ms) ? null : ms;
  }

  function timeCell(iso) {
    const ms = isoToMs(iso);
    if (ms === null) return el('td', { class: 'nowrap muted', text: 'never' });
    return el('td', { class: 'nowrap', title: fmtTime(ms, { millis: true }), text: fmtAgo(ms) });
  }

  // Sample values arrive as strings: "1.5", "NaN", "+Inf", "-Inf".
  function parseValue(text) {
    if (text === '+Inf' || text === 'Inf') return Infinity;
    if (text === '-Inf') return -Infinity;
    return Number(text);
  }

  const trimNum = (v) => String(Number(v.toPrecision(4)));

  function fmtAxisNumber(v) {
    if (v === null || v === undefined || Number.isNaN(v)) return '';
    const a = Math.abs(v);
    if (a === 0) return '0';
    const big = [[1e15, 'P'], [1e12, 'T'], [1e9, 'G'], [1e6, 'M'], [1e3, 'k']];
    const small = [[1e-6, 'µ'], [1e-9, 'n'], [1e-12, 'p']];
    if (a >= 1e4) for (const [f, p] of big) if (a >= f) return trimNum(v / f) + p;
    if (a < 1e-3) for (const [f, p] of small) if (a >= f) return trimNum(v / f) + p;
    return trimNum(v);
  }

  function fmtValue(v) {
    if (v === Infinity) return '+Inf';
    if (v === -Infinity) return '-Inf';
    return String(v);
  }

  // -- labels -----------------------------------------------------------------------------

  function labelsText(metric) {
    const name = metric.__name__ || '';
    const pairs = Object.entries(metric)
      .filter(([k]) => k !== '__name__')
      .map(([k, v]) => `${k}=${JSON.stringify(v)}`);
    return pairs.length || !name ? `${name}{${pairs.join(', ')}}` : name;
  }

  function labelsNode(metric) {
    const name = metric.__name__ || '';
    const pairs = Object.entries(metric).filter(([k]) => k !== '__name__');
    const node = el('span', { class: 'labels' });
    if (name) node.append(el('span', { class: 'labels-name', text: name }));
    if (pairs.length || !name) {
      node.append('{');
      pairs.forEach(([k, v], i) => {
        if (i) node.append(', ');
        node.append(el('span', { class: 'label-key', text: k }), '=', el('span', { class: 'label-value', text: JSON.stringify(v) }));
      });
      node.append('}');
    }
    return node;
  }

  function chips(labels, title) {
    const entries = Object.entries(labels || {});
    return el('div', { class: 'chips', title }, entries.map(([k, v]) => el('span', { class: 'chip', text: `${k}="${v}"` })));
  }

  // -- series colours: golden-angle hues, as hex so they are easy to check on the canvas --

  function hslToHex(h, s, l) {
    const k = (n) => (n + h / 30) % 12;
    const a = s * Math.min(l, 1 - l);
    const f = (n) => l - a * Math.max(-1, Math.min(k(n) - 3, 9 - k(n), 1));
    return `#${[f(0), f(8), f(4)].map((x) => pad(Math.round(x * 255).toString(16))).join('')}`;
  }

  const darkScheme = window.matchMedia('(prefers-color-scheme: dark)');
  const seriesColor = (i) => {
    const lightness = (darkScheme.matches ? 0.6 : 0.42) + (i % 2 ? 0 : 0.06);
    return hslToHex((210 + i * 137.508) % 360, 0.7, lightness);
  };

  // -- routing ----------------------------------------------------------------------------

  function currentPage() {
    const name = location.pathname.split('/').pop();
    return PAGES.includes(name) ? name : 'graph';
  }

  function navigate(href) {
    history.pushState(null, '', href);
    render();
  }

  document.addEventListener('click', (event) => {
    const link = event.target.closest('a[data-nav]');
    if (!link || event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey || event.altKey) return;
    event.preventDefault();
    const target = link.dataset.tab || link.dataset.page;
    if (target === 'graph' || target === 'table') {
      query.expr = exprInput.value.trim();
      navigate(queryHref(target));
    } else {
      navigate(link.getAttribute('href'));
    }
  });

  window.addEventListener('popstate', render);

  let loadCurrent = null; // what the refresh timer calls for the page on screen

  function render() {
    let page = currentPage();
    const search = new URLSearchParams(location.search);
    // A Prometheus link to the table tab (/graph?g0.tab=1) opens our table page.
    if (page === 'graph' && ['1', 'table'].includes(search.get('g0.tab'))) {
      history.replaceState(null, '', `table?${search}`);
      page = 'table';
    }
    for (const link of $$('.topbar nav a')) link.classList.toggle('active', link.dataset.page === page);
    const section = page === 'graph' || page === 'table' ? 'query' : page;
    for (const node of $$('main > section.page')) node.hidden = node.id !== `page-${section}`;
    document.title = `${page[0].toUpperCase()}${page.slice(1)} · scalelab monitoring`;
    if (section === 'query') {
      loadCurrent = () => (query.expr && (tab === 'graph' ? query.end : query.moment) === null ? execute() : null);
      showQueryPage(page);
    } else {
      loadCurrent = { alerts: loadAlerts, targets: loadTargets, silences: loadSilences }[page];
      if (page === 'silences') prefillSilence(search);
      loadCurrent();
    }
  }

  // -- refresh and UTC controls -----------------------------------------------------------

  let refreshTimer = null;
  let refreshBusy = false;

  function setRefresh(seconds) {
    settings.refresh = seconds;
    store.set('refresh', seconds);
    clearInterval(refreshTimer);
    refreshTimer = null;
    if (seconds > 0) {
      refreshTimer = setInterval(async () => {
        if (refreshBusy || document.hidden || !loadCurrent) return;
        refreshBusy = true;
        try {
          await loadCurrent();
        } finally {
          refreshBusy = false;
        }
      }, seconds * 1000);
    }
  }

  // -- the expression page: graph and table -----------------------------------------------

  const exprInput = $('#expr');
  const suggestList = $('#suggest');
  const rangeSelect = $('#range');
  const endInput = $('#end');
  const stepInput = $('#step');
  const momentInput = $('#moment');
  const queryError = $('#query-error');
  const queryWarnings = $('#query-warnings');
  const queryStatus = $('#query-status');
  const graphView = $('#graph-view');
  const tableView = $('#table-view');
  const chartNode = $('#chart');
  const chartBox = $('#chart-box');
  const tooltip = $('#tooltip');
  const legend = $('#legend');
  const resultTable = $('#result-table');

  const query = { expr: '', range: DEFAULT_RANGE, end: null, step: null, moment: null };
  let tab = 'graph';
  let runSeq = 0;
  let chart = null;

  const autoStep = (rangeSeconds) => Math.max(1, Math.round(rangeSeconds / 250));

  function queryParams(forTab) {
    const p = new URLSearchParams();
    if (query.expr) p.set('g0.expr', query.expr);
    p.set('g0.tab', forTab === 'table' ? '1' : '0');
    p.set('g0.range_input', fmtDuration(query.range));
    if (query.end !== null) p.set('g0.end_input', fmtUrlTime(query.end));
    if (query.step !== null) p.set('g0.step_input', String(query.step));
    if (query.moment !== null) p.set('g0.moment_input', fmtUrlTime(query.moment));
    return p;
  }

  const queryHref = (forTab) => `${forTab}?${queryParams(forTab)}`;

  function readQueryUrl() {
    const p = new URLSearchParams(location.search);
    query.expr = p.get('g0.expr') || '';
    const range = parseDuration(p.get('g0.range_input'));
    query.range = range > 0 ? range : DEFAULT_RANGE;
    query.end = parseUrlTime(p.get('g0.end_input'));
    const step = parseDuration(p.get('g0.step_input'));
    query.step = step > 0 ? step : null;
    query.moment = parseUrlTime(p.get('g0.moment_input'));
  }

  function writeQueryUrl() {
    history.replaceState(null, '', queryHref(tab));
  }

  function fillRangeOptions() {
    const values = RANGES.includes(query.range) ? RANGES : [...RANGES, query.range].sort((a, b) => a - b);
    rangeSelect.replaceChildren(...values.map((v) => el('option', { value: v, text: fmtDuration(v) })));
    rangeSelect.value = String(query.range);
  }

  function syncControls() {
    if (document.activeElement !== exprInput || !exprInput.value) exprInput.value = query.expr;
    autoGrow();
    fillRangeOptions();
    endInput.value = query.end === null ? '' : toInputValue(query.end);
    stepInput.value = query.step === null ? '' : fmtDuration(query.step);
    $('#step-auto').textContent = query.step === null ? `auto: ${fmtDuration(autoStep(query.range))}` : '';
    momentInput.value = query.moment === null ? '' : toInputValue(query.moment);
  }

  function showQueryPage(page) {
    tab = page;
    readQueryUrl();
    syncControls();
    for (const link of $$('.tabs a')) link.classList.toggle('active', link.dataset.tab === tab);
    $('#graph-controls').hidden = tab !== 'graph';
    $('#table-controls').hidden = tab !== 'table';
    graphView.hidden = true;
    tableView.hidden = true;
    loadMetricNames();
    if (query.expr) execute();
    else clearResult();
  }

  function clearResult() {
    runSeq += 1;
    hideError(queryError);
    queryWarnings.hidden = true;
    queryStatus.textContent = 'Enter an expression and press Execute.';
    graphView.hidden = true;
    tableView.hidden = true;
    destroyChart();
  }

  async function execute() {
    const expr = exprInput.value.trim();
    query.expr = expr;
    writeQueryUrl();
    if (!expr) {
      clearResult();
      return;
    }
    addHistory(expr);
    const seq = ++runSeq;
    const started = performance.now();
    queryStatus.textContent = 'Loading…';
    try {
      if (tab === 'graph') {
        const end = query.end ?? Date.now();
        const start = end - query.range * 1000;
        const step = query.step ?? autoStep(query.range);
        const body = await api('api/v1/query_range', {
          form: { query: expr, start: (start / 1000).toFixed(3), end: (end / 1000).toFixed(3), step: String(step) },
        });
        if (seq !== runSeq) return;
        hideError(queryError);
        const count = drawGraph(body.data, start / 1000, end / 1000);
        showWarnings(body.warnings);
        queryStatus.textContent = `Load time: ${Math.round(performance.now() - started)}ms · Resolution: ${fmtDuration(step)} · Result series: ${count}`;
      } else {
        const at = query.moment ?? Date.now();
        const body = await api('api/v1/query', { form: { query: expr, time: (at / 1000).toFixed(3) } });
        if (seq !== runSeq) return;
        hideError(queryError);
        const count = drawTable(body.data);
        showWarnings(body.warnings);
        queryStatus.textContent = `Load time: ${Math.round(performance.now() - started)}ms · Evaluated at ${fmtTime(at, { millis: true })} · Result series: ${count}`;
      }
    } catch (err) {
      if (seq !== runSeq) return;
      showError(queryError, err);
      queryWarnings.hidden = true;
      queryStatus.textContent = '';
      graphView.hidden = true;
      tableView.hidden = true;
      destroyChart();
    }
  }

  const extraWarnings = []; // notes from drawing a result, shown with the API's warnings

  function showWarnings(warnings) {
    const list = [...(warnings || []), ...extraWarnings.splice(0)];
    queryWarnings.hidden = list.length === 0;
    queryWarnings.textContent = list.join('\n');
  }

  // -- graph ------------------------------------------------------------------------------

  function destroyChart() {
    if (chart) chart.destroy();
    chart = null;
    chartNode.replaceChildren();
    legend.replaceChildren();
    tooltip.hidden = true;
  }

  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  // Aligns the matrix on one time axis (the union of its timestamps); a missing sample is a
  // gap (null), and so are NaN and ±Inf, which cannot be drawn.
  function alignMatrix(result) {
    const times = new Set();
    for (const s of result) for (const [t] of s.values || []) times.add(t);
    const xs = Float64Array.from(times).sort();
    const index = new Map();
    xs.forEach((t, i) => index.set(t, i));
    const ys = result.map((s) => {
      const column = new Array(xs.length).fill(null);
      for (const [t, v] of s.values || []) {
        const n = parseValue(v);
        column[index.get(t)] = Number.isFinite(n) ? n : null;
      }
      return column;
    });
    return [Array.from(xs), ...ys];
  }

  function drawGraph(data, startSec, endSec) {
    destroyChart();
    tableView.hidden = true;
    graphView.hidden = false;
    if (data.resultType !== 'matrix') {
      chartNode.append(el('div', { class: 'empty', text: `A ${data.resultType} result has no graph; see the Table tab.` }));
      return 0;
    }
    let result = data.result || [];
    if (result.some((s) => s.histograms)) extraWarnings.push('native histogram samples are not drawn');
    if (result.length > MAX_SERIES) {
      extraWarnings.push(`The query returned ${result.length} series; only the first ${MAX_SERIES} are drawn.`);
    }
    const total = result.length;
    result = result.slice(0, MAX_SERIES);
    if (result.length === 0) {
      chartNode.append(el('div', { class: 'empty', text: 'Empty query result' }));
      return 0;
    }
    if (typeof window.uPlot !== 'function') {
      showError(queryError, new Error('the chart library (ui/vendor/uPlot.iife.min.js) did not load'));
      return total;
    }
    const aligned = alignMatrix(result);
    const colors = result.map((_, i) => seriesColor(i));
    const axis = cssVar('--axis');
    const grid = cssVar('--grid');
    const options = {
      width: Math.max(300, chartBox.clientWidth),
      height: 420,
      legend: { show: false },
      focus: { alpha: 0.35 },
      cursor: {
        focus: { prox: 24 },
        drag: { x: true, y: false, setScale: false },
        points: { size: 7 },
      },
      scales: { x: { time: true, range: () => [startSec, endSec] } },
      axes: [
        { stroke: axis, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } },
        {
          stroke: axis,
          grid: { stroke: grid, width: 1 },
          ticks: { stroke: grid, width: 1 },
          size: 64,
          values: (u, splits) => splits.map(fmtAxisNumber),
        },
      ],
      series: [
        {},
        ...result.map((s, i) => ({
          label: labelsText(s.metric),
          stroke: colors[i],
          width: 1.5,
          spanGaps: false,
          points: { size: 4, fill: colors[i] },
        })),
      ],
      hooks: {
        setCursor: [(u) => updateTooltip(u, result, colors)],
        setSelect: [zoomTo],
      },
    };
    if (settings.utc) options.tzDate = (ts) => window.uPlot.tzDate(new Date(ts * 1000), 'Etc/UTC');
    chart = new window.uPlot(options, aligned, chartNode);
    chartNode.dataset.series = String(result.length);
    drawLegend(result, colors);
    return total;
  }

  // Dragging across the graph queries that span, as in Prometheus.
  function zoomTo(u) {
    if (u.select.width < 5) return;
    const from = u.posToVal(u.select.left, 'x');
    const to = u.posToVal(u.select.left + u.select.width, 'x');
    u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
    if (!(to > from)) return;
    query.end = Math.round(to * 1000);
    query.range = Math.max(1, Math.round(to - from));
    syncControls();
    execute();
  }

  function updateTooltip(u, result, colors) {
    const idx = u.cursor.idx;
    if (idx === null || idx === undefined || u.cursor.left < 0) {
      tooltip.hidden = true;
      return;
    }
    let best = -1;
    let bestDistance = Infinity;
    for (let i = 1; i < u.series.length; i++) {
      const v = u.data[i][idx];
      if (!u.series[i].show || v === null || v === undefined) continue;
      const distance = Math.abs(u.valToPos(v, 'y') - u.cursor.top);
      if (distance < bestDistance) {
        best = i;
        bestDistance = distance;
      }
    }
    if (best < 0) {
      tooltip.hidden = true;
      return;
    }
    const t = u.data[0][idx];
    tooltip.replaceChildren(
      el('div', { class: 'time', text: fmtTime(t * 1000, { millis: true }) }),
      el('div', { class: 'series' }, el('span', { class: 'swatch', style: `background:${colors[best - 1]}` }), ' ', labelsNode(result[best - 1].metric)),
      el('div', { class: 'value', text: fmtValue(u.data[best][idx]) }),
    );
    tooltip.hidden = false;
    const over = u.over.getBoundingClientRect();
    const box = chartBox.getBoundingClientRect();
    let left = over.left - box.left + u.cursor.left + 14;
    const top = over.top - box.top + u.cursor.top + 14;
    if (left + tooltip.offsetWidth > box.width) left = Math.max(0, left - tooltip.offsetWidth - 28);
    tooltip.style.left = `${left}px`;
    tooltip.style.top = `${top}px`;
  }

  // Click a series to show only it (click again for all); Ctrl/Cmd-click toggles one.
  function drawLegend(result, colors) {
    const items = result.map((s, i) =>
      el('li', { 'data-index': i + 1, title: 'click: show only this series; Ctrl/Cmd-click: toggle it' },
        el('span', { class: 'swatch', style: `background:${colors[i]}` }),
        labelsNode(s.metric)));
    legend.replaceChildren(...items);
    const apply = () => {
      for (const li of items) li.classList.toggle('off', !chart.series[Number(li.dataset.index)].show);
    };
    legend.onclick = (event) => {
      const li = event.target.closest('li');
      if (!li || !chart) return;
      const index = Number(li.dataset.index);
      if (event.ctrlKey || event.metaKey) {
        chart.setSeries(index, { show: !chart.series[index].show });
      } else {
        const alone = chart.series.every((s, i) => i === 0 || (i === index) === s.show);
        chart.batch(() => {
          for (let i = 1; i < chart.series.length; i++) chart.setSeries(i, { show: alone || i === index });
        });
      }
      apply();
    };
    legend.onmouseover = (event) => {
      const li = event.target.closest('li');
      if (li && chart) chart.setSeries(Number(li.dataset.index), { focus: true });
    };
    legend.onmouseleave = () => {
      if (chart) chart.setSeries(null, { focus: false });
    };
  }

  let resizeTimer = null;
  window.addEventListener('resize', () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => {
      if (chart) chart.setSize({ width: Math.max(300, chartBox.clientWidth), height: 420 });
    }, 100);
  });

  // -- table ------------------------------------------------------------------------------

  function drawTable(data) {
    destroyChart();
    graphView.hidden = true;
    tableView.hidden = false;
    const rows = [];
    const { resultType, result } = data;
    let count = 0;
    if (resultType === 'vector') {
      count = result.length;
      for (const s of result.slice(0, MAX_ROWS)) {
        const value = s.value ? s.value[1] : `histogram ${JSON.stringify(s.histogram && s.histogram[1])}`;
        rows.push(el('tr', {}, el('td', { class: 'series' }, labelsNode(s.metric)), el('td', { class: 'value', text: value })));
      }
    } else if (resultType === 'matrix') {
      count = result.length;
      for (const s of result.slice(0, MAX_ROWS)) {
        const lines = (s.values || []).map(([t, v]) => `${v} @${t}`);
        for (const [t, h] of s.histograms || []) lines.push(`histogram ${JSON.stringify(h)} @${t}`);
        rows.push(el('tr', {}, el('td', { class: 'series' }, labelsNode(s.metric)), el('td', { class: 'values', text: lines.join('\n') })));
      }
    } else if (resultType === 'scalar' || resultType === 'string') {
      count = 1;
      rows.push(el('tr', {}, el('td', { class: 'series', text: resultType }), el('td', { class: 'value', text: result[1] })));
    }
    if (rows.length === 0) rows.push(el('tr', {}, el('td', { class: 'empty', colspan: 2, text: 'Empty query result' })));
    resultTable.replaceChildren(
      el('thead', {}, el('tr', {}, el('th', { text: resultType === 'vector' || resultType === 'matrix' ? 'Series' : 'Type' }), el('th', { text: resultType === 'matrix' ? 'Values @ time' : 'Value' }))),
      el('tbody', {}, rows),
    );
    resultTable.dataset.resultType = resultType;
    if (count > MAX_ROWS) extraWarnings.push(`Showing the first ${MAX_ROWS} of ${count} series.`);
    return count;
  }

  // -- expression box: history and completion ---------------------------------------------

  let exprHistory = store.get('history', []);
  let metricNames = [];
  let namesLoadedAt = 0;
  let suggestItems = [];
  let suggestIndex = -1;

  function addHistory(expr) {
    exprHistory = [expr, ...exprHistory.filter((h) => h !== expr)].slice(0, HISTORY_SIZE);
    store.set('history', exprHistory);
  }

  async function loadMetricNames() {
    if (Date.now() - namesLoadedAt < NAMES_TTL_MS) return;
    namesLoadedAt = Date.now();
    try {
      const body = await api('api/v1/label/__name__/values');
      metricNames = body.data || [];
      if (document.activeElement === exprInput && exprInput.value.trim()) updateSuggest();
    } catch {
      namesLoadedAt = 0; // completion is a convenience: try again on the next focus
    }
  }

  function autoGrow() {
    exprInput.style.height = 'auto';
    exprInput.style.height = `${exprInput.scrollHeight + 2}px`;
  }

  // Is the caret inside a label matcher, a range or a string? No metric names there.
  function inSelector(before) {
    let depth = 0;
    let quote = null;
    for (let i = 0; i < before.length; i++) {
      const ch = before[i];
      if (quote) {
        if (ch === '\\') i += 1;
        else if (ch === quote) quote = null;
      } else if (ch === '"' || ch === "'" || ch === '`') quote = ch;
      else if (ch === '{' || ch === '[') depth += 1;
      else if ((ch === '}' || ch === ']') && depth > 0) depth -= 1;
    }
    return quote !== null || depth > 0;
  }

  function wordAtCaret() {
    const pos = exprInput.selectionStart;
    const text = exprInput.value;
    const before = /[a-zA-Z_:][a-zA-Z0-9_:]*$/.exec(text.slice(0, pos));
    const after = /^[a-zA-Z0-9_:]*/.exec(text.slice(pos));
    const start = before ? pos - before[0].length : pos;
    return { start, end: pos + after[0].length, word: before ? before[0] : '', before: text.slice(0, start) };
  }

  function updateSuggest(force = false) {
    const text = exprInput.value;
    const items = [];
    if (!text.trim()) {
      for (const h of exprHistory.slice(0, 15)) items.push({ kind: 'history', text: h, match: '' });
    } else {
      const trimmed = text.trim();
      for (const h of exprHistory) {
        if (items.length >= 5) break;
        if (h !== trimmed && h.includes(trimmed)) items.push({ kind: 'history', text: h, match: trimmed });
      }
      const { word, before } = wordAtCaret();
      if ((word || force) && !inSelector(before)) {
        const lower = word.toLowerCase();
        const pools = [
          ['metric', metricNames],
          ['function', FUNCTIONS],
          ['aggregation', AGGREGATORS],
        ];
        const prefix = [];
        const inner = [];
        for (const [kind, names] of pools) {
          for (const name of names) {
            if (name === word) continue;
            const at = name.toLowerCase().indexOf(lower);
            if (at === 0) prefix.push({ kind, text: name, match: word });
            else if (at > 0 && lower.length >= 2) inner.push({ kind, text: name, match: word });
          }
        }
        items.push(...prefix, ...inner);
      }
    }
    suggestItems = items.slice(0, 60);
    suggestIndex = -1;
    renderSuggest();
  }

  function highlight(text, match) {
    const at = match ? text.toLowerCase().indexOf(match.toLowerCase()) : -1;
    if (at < 0) return el('span', { text });
    return el('span', {}, text.slice(0, at), el('mark', { text: text.slice(at, at + match.length) }), text.slice(at + match.length));
  }

  function renderSuggest() {
    if (suggestItems.length === 0 || document.activeElement !== exprInput) {
      suggestList.hidden = true;
      return;
    }
    suggestList.replaceChildren(...suggestItems.map((item, i) =>
      el('li', {
        role: 'option',
        class: i === suggestIndex ? 'selected' : '',
        'data-index': i,
        onmousedown: (event) => {
          event.preventDefault(); // keep the focus in the box
          acceptSuggestion(i);
        },
      }, highlight(item.text, item.match), el('span', { class: 'kind', text: item.kind }))));
    suggestList.hidden = false;
    const selected = suggestList.children[suggestIndex];
    if (selected) selected.scrollIntoView({ block: 'nearest' });
  }

  function closeSuggest() {
    suggestItems = [];
    suggestList.hidden = true;
  }

  function acceptSuggestion(i) {
    const item = suggestItems[i];
    if (!item) return;
    if (item.kind === 'history') {
      exprInput.value = item.text;
      exprInput.setSelectionRange(item.text.length, item.text.length);
    } else {
      const { start, end } = wordAtCaret();
      const text = exprInput.value;
      const call = item.kind !== 'metric' && text[end] !== '(';
      const insert = call ? `${item.text}(` : item.text;
      exprInput.value = text.slice(0, start) + insert + text.slice(end);
      const caret = start + insert.length;
      exprInput.setSelectionRange(caret, caret);
    }
    closeSuggest();
    autoGrow();
  }

  exprInput.addEventListener('input', () => {
    autoGrow();
    updateSuggest();
  });
  exprInput.addEventListener('focus', () => {
    loadMetricNames();
    if (!exprInput.value) updateSuggest();
  });
  exprInput.addEventListener('blur', () => setTimeout(closeSuggest, 100));
  exprInput.addEventListener('keydown', (event) => {
    const open = !suggestList.hidden && suggestItems.length > 0;
    if (event.key === ' ' && event.ctrlKey) {
      event.preventDefault();
      updateSuggest(true);
    } else if (open && (event.key === 'ArrowDown' || event.key === 'ArrowUp')) {
      event.preventDefault();
      const n = suggestItems.length;
      suggestIndex = event.key === 'ArrowDown' ? (suggestIndex + 1) % n : (suggestIndex - 1 + n) % n;
      renderSuggest();
    } else if (open && event.key === 'Tab') {
      event.preventDefault();
      acceptSuggestion(Math.max(0, suggestIndex));
    } else if (open && event.key === 'Escape') {
      event.preventDefault();
      closeSuggest();
    } else if (event.key === 'Enter' && !event.shiftKey) {
      event.preventDefault();
      if (open && suggestIndex >= 0) {
        acceptSuggestion(suggestIndex);
      } else {
        closeSuggest();
        execute();
      }
    }
  });

  $('#expr-form').addEventListener('submit', (event) => {
    event.preventDefault();
    closeSuggest();
    execute();
  });

  // -- graph and table controls -----------------------------------------------------------

  function stepRange(direction) {
    const current = query.range;
    const next = direction < 0
      ? [...RANGES].reverse().find((r) => r < current)
      : RANGES.find((r) => r > current);
    if (next === undefined) return;
    query.range = next;
    syncControls();
    execute();
  }

  $('#range-minus').addEventListener('click', () => stepRange(-1));
  $('#range-plus').addEventListener('click', () => stepRange(1));
  rangeSelect.addEventListener('change', () => {
    query.range = Number(rangeSelect.value);
    syncControls();
    execute();
  });
  endInput.addEventListener('change', () => {
    query.end = fromInputValue(endInput.value);
    execute();
  });
  $('#end-now').addEventListener('click', () => {
    query.end = null;
    syncControls();
    execute();
  });
  stepInput.addEventListener('change', () => {
    const step = parseDuration(stepInput.value);
    if (Number.isNaN(step) || step === 0) {
      showError(queryError, new ApiError('bad step', `"${stepInput.value}" is not a duration (try 15s, 1m or a number of seconds)`));
      return;
    }
    query.step = step;
    syncControls();
    execute();
  });
  momentInput.addEventListener('change', () => {
    query.moment = fromInputValue(momentInput.value);
    execute();
  });
  $('#moment-now').addEventListener('click', () => {
    query.moment = null;
    syncControls();
    execute();
  });

  // -- alerts -----------------------------------------------------------------------------

  let alertsData = null;
  const openRules = new Map(); // rule key -> open, as the user left it

  async function loadAlerts() {
    const errorNode = $('#alerts-error');
    try {
      const [rules, alerts] = await Promise.all([api('api/v1/rules'), api('api/v1/alerts')]);
      alertsData = { groups: rules.data.groups || [], alerts: alerts.data.alerts || [] };
      hideError(errorNode);
    } catch (err) {
      showError(errorNode, err);
      return;
    }
    renderAlerts();
  }

  function silenceHref(labels) {
    const p = new URLSearchParams();
    for (const [k, v] of Object.entries(labels)) p.append('matcher', `${k}=${JSON.stringify(v)}`);
    return `silences?${p}`;
  }

  function ruleDefinition(rule) {
    const lines = [`alert: ${rule.name}`, `expr: ${rule.query}`];
    if (rule.duration) lines.push(`for: ${fmtDuration(rule.duration)}`);
    if (rule.keepFiringFor) lines.push(`keep_firing_for: ${fmtDuration(rule.keepFiringFor)}`);
    for (const key of ['labels', 'annotations']) {
      const entries = Object.entries(rule[key] || {});
      if (entries.length === 0) continue;
      lines.push(`${key}:`);
      for (const [k, v] of entries) lines.push(`  ${k}: ${JSON.stringify(v)}`);
    }
    return lines.join('\n');
  }

  function alertsTable(alerts) {
    if (alerts.length === 0) return null;
    return el('table', {},
      el('thead', {}, el('tr', {}, ['Labels', 'State', 'Active since', 'Value', 'Annotations', ''].map((h) => el('th', { text: h })))),
      el('tbody', {}, alerts.map((a) => {
        const activeAt = isoToMs(a.activeAt);
        const value = parseValue(a.value);
        return el('tr', { class: `alert ${a.state}` },
          el('td', {}, chips(a.labels)),
          el('td', {}, el('span', { class: `badge ${a.state}`, text: a.state })),
          el('td', { class: 'nowrap', title: activeAt === null ? '' : fmtAgo(activeAt), text: activeAt === null ? '' : fmtTime(activeAt) }),
          el('td', { class: 'mono', title: a.value, text: Number.isNaN(value) && a.value !== 'NaN' ? a.value : fmtValue(value) }),
          el('td', {}, Object.entries(a.annotations || {}).map(([k, v]) => el('div', {}, el('strong', { text: `${k}: ` }), v))),
          el('td', {}, el('a', { href: silenceHref(a.labels), 'data-nav': true, text: 'Silence' })));
      })));
  }

  function renderAlerts() {
    if (!alertsData) return;
    const shown = new Set($$('#page-alerts input[data-state]').filter((c) => c.checked).map((c) => c.dataset.state));
    const needle = $('#alerts-search').value.trim().toLowerCase();
    const counts = { inactive: 0, pending: 0, firing: 0 };
    const body = $('#alerts-body');
    const sections = [];
    const recording = [];
    for (const group of alertsData.groups) {
      const rules = [];
      for (const rule of group.rules) {
        if (rule.type !== 'alerting') {
          recording.push({ group, rule });
          continue;
        }
        counts[rule.state] = (counts[rule.state] || 0) + 1;
        if (!shown.has(rule.state)) continue;
        const haystack = `${rule.name} ${JSON.stringify(rule.labels)} ${rule.alerts.map((a) => JSON.stringify(a.labels)).join(' ')}`.toLowerCase();
        if (needle && !haystack.includes(needle)) continue;
        const key = `${group.file}\u0000${group.name}\u0000${rule.name}`;
        const open = openRules.has(key) ? openRules.get(key) : rule.state !== 'inactive';
        const details = el('details', { class: `rule ${rule.state}`, open, 'data-rule': rule.name },
          el('summary', {},
            el('span', { class: `badge ${rule.state}`, text: rule.state }),
            el('span', { class: 'rule-name', text: rule.name }),
            el('span', { class: 'muted', text: rule.alerts.length ? `${rule.alerts.length} active` : '' }),
            rule.health === 'err' ? el('span', { class: 'badge err', text: 'error' }) : null),
          el('div', { class: 'body' },
            el('pre', { class: 'definition', text: ruleDefinition(rule) }),
            rule.lastError ? el('div', { class: 'error', text: rule.lastError }) : null,
            alertsTable(rule.alerts)));
        details.addEventListener('toggle', () => openRules.set(key, details.open));
        rules.push(details);
      }
      if (rules.length) {
        sections.push(el('h2', {}, group.name, ' ', el('span', { class: 'group-meta', text: `${group.file} · every ${fmtDuration(group.interval)} · last evaluated ${isoToMs(group.lastEvaluation) === null ? 'never' : fmtAgo(isoToMs(group.lastEvaluation))}` })));
        sections.push(...rules);
      }
    }
    for (const state of Object.keys(counts)) $(`#page-alerts [data-count="${state}"]`).textContent = `(${counts[state]})`;
    const total = counts.inactive + counts.pending + counts.firing;
    if (total === 0) {
      sections.push(el('p', { class: 'muted', text: 'No alerting rules. Load rule files with SCALELAB_MONITORING_RULE_FILES (comma-separated globs).' }));
    } else if (sections.length === 0) {
      sections.push(el('p', { class: 'muted', text: 'No alerting rule matches the filters.' }));
    }
    body.replaceChildren(...sections);

    const active = alertsData.alerts;
    const firing = active.filter((a) => a.state === 'firing').length;
    $('#alerts-summary').textContent = `${firing} firing and ${active.length - firing} pending alerts from ${total} alerting rules.`;

    const rulesBody = $('#rules-body');
    if (recording.length === 0) {
      rulesBody.replaceChildren();
      return;
    }
    rulesBody.replaceChildren(
      el('h2', { text: 'Recording rules' }),
      el('table', { class: 'card' },
        el('thead', {}, el('tr', {}, ['Group', 'Record', 'Expression', 'Health', 'Last evaluation', 'Took'].map((h) => el('th', { text: h })))),
        el('tbody', {}, recording.map(({ group, rule }) => el('tr', {},
          el('td', { text: group.name }),
          el('td', { class: 'mono', text: rule.name }),
          el('td', { class: 'mono' }, rule.query, rule.lastError ? el('div', { class: 'error', text: rule.lastError }) : null),
          el('td', {}, el('span', { class: `badge ${rule.health}`, text: rule.health })),
          timeCell(rule.lastEvaluation),
          el('td', { class: 'nowrap', text: fmtSeconds(rule.evaluationTime) }))))));
  }

  for (const input of $$('#page-alerts input[data-state]')) input.addEventListener('change', renderAlerts);
  $('#alerts-search').addEventListener('input', renderAlerts);

  // -- targets ----------------------------------------------------------------------------

  let targetsData = null;
  const openPools = new Map();

  async function loadTargets() {
    const errorNode = $('#targets-error');
    try {
      targetsData = (await api('api/v1/targets')).data;
      hideError(errorNode);
    } catch (err) {
      showError(errorNode, err);
      return;
    }
    renderTargets();
  }

  function renderTargets() {
    if (!targetsData) return;
    const unhealthyOnly = $('#targets-unhealthy').checked;
    const needle = $('#targets-search').value.trim().toLowerCase();
    const pools = new Map();
    for (const t of targetsData.activeTargets || []) {
      if (!pools.has(t.scrapePool)) pools.set(t.scrapePool, []);
      pools.get(t.scrapePool).push(t);
    }
    const sections = [];
    let up = 0;
    let all = 0;
    for (const [pool, targets] of pools) {
      const poolUp = targets.filter((t) => t.health === 'up').length;
      up += poolUp;
      all += targets.length;
      const visible = targets.filter((t) => {
        if (unhealthyOnly && t.health === 'up') return false;
        if (!needle) return true;
        return `${t.scrapeUrl} ${JSON.stringify(t.labels)}`.toLowerCase().includes(needle);
      });
      if (visible.length === 0) continue;
      const open = openPools.has(pool) ? openPools.get(pool) : true;
      const details = el('details', { class: 'pool', open, 'data-pool': pool },
        el('summary', {},
          el('strong', { text: pool }),
          el('span', { class: `badge ${poolUp === targets.length ? 'up' : 'down'}`, text: `${poolUp}/${targets.length} up` })),
        el('div', { class: 'body' }, el('table', {},
          el('thead', {}, el('tr', {}, ['Endpoint', 'State', 'Labels', 'Last scrape', 'Scrape duration', 'Error'].map((h) => el('th', { text: h })))),
          el('tbody', {}, visible.map((t) => el('tr', { class: `target ${t.health}` },
            el('td', { class: 'mono' }, el('a', { href: t.scrapeUrl, title: t.globalUrl, target: '_blank', rel: 'noopener', text: t.scrapeUrl })),
            el('td', {}, el('span', { class: `badge ${t.health}`, text: t.health })),
            el('td', {}, chips(t.labels, `before relabeling: ${labelsText(t.discoveredLabels || {})}`)),
            timeCell(t.lastScrape),
            el('td', { class: 'nowrap', text: isoToMs(t.lastScrape) === null ? '' : fmtSeconds(t.lastScrapeDuration) }),
            el('td', { class: 'error-cell', text: t.lastError || '' })))))));
      details.addEventListener('toggle', () => openPools.set(pool, details.open));
      sections.push(details);
    }
    const dropped = Object.values(targetsData.droppedTargetCounts || {}).reduce((a, b) => a + b, 0);
    if (all === 0) {
      sections.push(el('p', { class: 'muted', text: 'No scrape targets. Give a Prometheus-style scrape config with SCALELAB_MONITORING_SCRAPE_CONFIG.' }));
    } else if (sections.length === 0) {
      sections.push(el('p', { class: 'muted', text: 'No target matches the filters.' }));
    }
    $('#targets-summary').textContent = `${up} of ${all} targets up in ${pools.size} scrape pools${dropped ? `; ${dropped} dropped by relabeling` : ''}.`;
    $('#targets-body').replaceChildren(...sections);
  }

  $('#targets-unhealthy').addEventListener('change', renderTargets);
  $('#targets-search').addEventListener('input', renderTargets);

  // -- silences ---------------------------------------------------------------------------

  const OPS = ['=', '!=', '=~', '!~'];
  const OP_FLAGS = { '=': [false, true], '!=': [false, false], '=~': [true, true], '!~': [true, false] };
  let silencesData = [];
  let silenceState = 'active';

  const matcherText = (m) => `${m.name}${m.isRegex ? (m.isEqual ? '=~' : '!~') : (m.isEqual ? '=' : '!=')}${JSON.stringify(m.value)}`;

  function matcherRow(m = { name: '', op: '=', value: '' }) {
    const row = el('div', { class: 'matcher-row' },
      el('input', { class: 'name', placeholder: 'label', value: m.name, 'aria-label': 'label name' }),
      el('select', { class: 'op', 'aria-label': 'operator' }, OPS.map((op) => el('option', { value: op, text: op, selected: op === m.op }))),
      el('input', { class: 'value', placeholder: 'value', value: m.value, 'aria-label': 'label value' }),
      el('button', { type: 'button', class: 'small', title: 'remove this matcher', text: '×', onclick: () => row.remove() }));
    return row;
  }

  // /silences?matcher=alertname="X"&matcher=job=~"a.*" fills the form (the alerts page's links).
  function prefillSilence(search) {
    const given = search.getAll('matcher');
    if (given.length === 0) {
      if ($('#silence-matchers').children.length === 0) $('#silence-matchers').append(matcherRow({ name: 'alertname', op: '=', value: '' }));
      return;
    }
    const rows = [];
    for (const text of given) {
      const m = /^\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$/.exec(text);
      if (!m) continue;
      let value = m[3];
      if (value.startsWith('"')) {
        try {
          value = JSON.parse(value);
        } catch {
          value = value.slice(1, -1);
        }
      }
      rows.push(matcherRow({ name: m[1], op: m[2], value }));
    }
    $('#silence-matchers').replaceChildren(...rows);
    $('#silence-new').open = true;
    history.replaceState(null, '', 'silences');
  }

  function readMatchers() {
    return $$('#silence-matchers .matcher-row')
      .map((row) => {
        const [isRegex, isEqual] = OP_FLAGS[$('.op', row).value];
        return { name: $('.name', row).value.trim(), value: $('.value', row).value, isRegex, isEqual };
      })
      .filter((m) => m.name);
  }

  function silenceTimes() {
    const start = fromInputValue($('#silence-start').value);
    const duration = parseDuration($('#silence-duration').value);
    const startMs = start ?? Date.now();
    return { start, startMs, duration, endMs: duration > 0 ? startMs + duration * 1000 : null };
  }

  function updateSilenceEnd() {
    const { endMs } = silenceTimes();
    $('#silence-end').textContent = endMs === null ? 'duration: e.g. 2h, 30m, 1d' : `ends ${fmtTime(endMs)}`;
  }

  async function loadSilences() {
    const errorNode = $('#silences-error');
    updateSilenceEnd();
    if (!$('#silence-by').value) $('#silence-by').value = store.get('createdBy', '');
    try {
      silencesData = await api('api/v2/silences');
      hideError(errorNode);
    } catch (err) {
      showError(errorNode, err);
      return;
    }
    renderSilences();
  }

  function renderSilences() {
    const counts = { active: 0, pending: 0, expired: 0 };
    for (const s of silencesData) counts[s.status.state] = (counts[s.status.state] || 0) + 1;
    $('#silence-states').replaceChildren(el('div', { class: 'state-tabs' }, Object.keys(counts).map((state) =>
      el('button', {
        type: 'button',
        class: state === silenceState ? 'active' : '',
        'data-state': state,
        text: `${state[0].toUpperCase()}${state.slice(1)} (${counts[state]})`,
        onclick: () => {
          silenceState = state;
          renderSilences();
        },
      }))));
    const shown = silencesData.filter((s) => s.status.state === silenceState);
    const body = $('#silences-body');
    if (shown.length === 0) {
      body.replaceChildren(el('p', { class: 'muted', text: `No ${silenceState} silences.` }));
      return;
    }
    body.replaceChildren(el('table', { class: 'card' },
      el('thead', {}, el('tr', {}, ['State', 'Matchers', 'Starts', 'Ends', 'Created by', 'Comment', ''].map((h) => el('th', { text: h })))),
      el('tbody', {}, shown.map((s) => {
        const state = s.status.state;
        const starts = isoToMs(s.startsAt);
        const ends = isoToMs(s.endsAt);
        return el('tr', { class: 'silence', 'data-id': s.id },
          el('td', {}, el('span', { class: `badge ${state === 'pending' ? 'pending-silence' : state}`, text: state })),
          el('td', {}, el('div', { class: 'chips', title: `id ${s.id}` }, s.matchers.map((m) => el('span', { class: 'chip', text: matcherText(m) })))),
          el('td', { class: 'nowrap', title: starts === null ? '' : fmtAgo(starts), text: starts === null ? '' : fmtTime(starts) }),
          el('td', { class: 'nowrap', title: ends === null ? '' : fmtAgo(ends), text: ends === null ? '' : fmtTime(ends) }),
          el('td', { text: s.createdBy }),
          el('td', { text: s.comment }),
          el('td', {}, state === 'expired' ? null : el('button', {
            type: 'button',
            class: 'small expire',
            text: 'Expire',
            onclick: () => expireSilence(s.id),
          })));
      }))));
  }

  async function expireSilence(id) {
    try {
      await api(`api/v2/silence/${encodeURIComponent(id)}`, { method: 'DELETE' });
      hideError($('#silences-error'));
    } catch (err) {
      showError($('#silences-error'), err);
    }
    await loadSilences();
  }

  $('#silence-add-matcher').addEventListener('click', () => $('#silence-matchers').append(matcherRow()));
  $('#silence-start').addEventListener('change', updateSilenceEnd);
  $('#silence-duration').addEventListener('input', updateSilenceEnd);
  $('#silence-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const errorNode = $('#silence-form-error');
    const created = $('#silence-created');
    created.textContent = '';
    const { startMs, duration, endMs } = silenceTimes();
    if (!(duration > 0) || endMs === null) {
      showError(errorNode, new ApiError('bad duration', `"${$('#silence-duration').value}" is not a duration (try 2h, 30m, 1d)`));
      return;
    }
    const createdBy = $('#silence-by').value.trim();
    store.set('createdBy', createdBy);
    const body = {
      matchers: readMatchers(),
      startsAt: new Date(startMs).toISOString(),
      endsAt: new Date(endMs).toISOString(),
      createdBy,
      comment: $('#silence-comment').value,
    };
    try {
      const reply = await api('api/v2/silences', { json: body });
      hideError(errorNode);
      created.textContent = `Created silence ${reply.silenceID}`;
      $('#silence-comment').value = '';
      silenceState = startMs > Date.now() ? 'pending' : 'active';
    } catch (err) {
      showError(errorNode, err);
      return;
    }
    await loadSilences();
  });

  // -- start ------------------------------------------------------------------------------

  const utcBox = $('#utc');
  utcBox.checked = settings.utc;
  utcBox.addEventListener('change', () => {
    settings.utc = utcBox.checked;
    store.set('utc', settings.utc);
    render();
  });
  const refreshSelect = $('#refresh');
  refreshSelect.value = String(settings.refresh);
  if (refreshSelect.value !== String(settings.refresh)) refreshSelect.value = '0';
  refreshSelect.addEventListener('change', () => setRefresh(Number(refreshSelect.value)));
  setRefresh(Number(refreshSelect.value));

  render();
})();
