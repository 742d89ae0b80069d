// The AGL dashboard: a single page reading the store's JSON API (/v1/agl/...), refreshed by polling.
// Preact + htm render it without a build step; uPlot draws the charts; jsdiff (global `Diff`) diffs templates.
import { h, render } from 'preact';
import { useEffect, useRef, useState } from 'preact/hooks';
import htm from 'htm';
import uPlot from 'uplot';

const html = htm.bind(h);

const TOKEN_KEY = 'agl.dashboard.token';
const POLL_MS = 2000;
const STATUSES = ['queuing', 'preparing', 'running', 'requeuing', 'succeeded', 'failed', 'cancelled'];
const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);
const MODES = ['train', 'val', 'test'];
const WINDOWS = [['', 'any time'], ['300', 'last 5 min'], ['900', 'last 15 min'], ['3600', 'last hour'], ['86400', 'last day']];
const PAGE_SIZES = [25, 50, 100, 200];
const OVERVIEW_WINDOW = 900; // seconds of history in the overview's series

// -- API -----------------------------------------------------------------------------------------------------------

class AuthError extends Error {}

let onAuthNeeded = () => {};

function readToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || '';
  } catch {
    return '';
  }
}

function writeToken(value) {
  try {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // storage disabled: the token then lasts until the page is reloaded
  }
  memoryToken = value;
}

let memoryToken = readToken();

function detailText(body) {
  if (body && typeof body === 'object' && 'detail' in body) {
    const d = body.detail;
    if (typeof d === 'string') return d;
    if (Array.isArray(d)) return d.map((e) => `${(e.loc || []).join('.')}: ${e.msg}`).join('; ');
    return JSON.stringify(d);
  }
  return body == null ? 'no answer' : JSON.stringify(body);
}

// GET /v1/agl/<path> with the token; params values may be arrays (repeated) and empty values are left out.
async function api(path, params) {
  const url = new URL('v1/agl/' + path, document.baseURI);
  for (const [key, value] of Object.entries(params || {})) {
    for (const item of Array.isArray(value) ? value : [value]) {
      if (item !== undefined && item !== null && item !== '') url.searchParams.append(key, String(item));
    }
  }
  const headers = { Accept: 'application/json' };
  const token = memoryToken;
  if (token) headers.Authorization = 'Bearer ' + token;
  const response = await fetch(url, { headers, cache: 'no-store' });
  if (response.status === 401) {
    onAuthNeeded(token ? 'The store refused this token (401). Check it and try again.' : '');
    throw new AuthError('401');
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const error = new Error(`${response.status}: ${detailText(body)}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

// -- live data -----------------------------------------------------------------------------------------------------

const liveListeners = new Set();
function announceUpdate() {
  const at = new Date();
  for (const listener of liveListeners) listener(at);
}

// Runs `load` now and every POLL_MS while the tab is visible (paused while hidden, resumed when shown again).
// `key` identifies the query: a new key restarts the cycle. `keepPolling(data)` may stop it (e.g. a finished rollout).
function usePoll(load, key, keepPolling) {
  const [state, setState] = useState({ data: null, error: null, key: null });
  const loadRef = useRef(load);
  loadRef.current = load;
  const keepRef = useRef(keepPolling);
  keepRef.current = keepPolling;
  useEffect(() => {
    let stopped = false;
    let timer = null;
    let busy = false;
    let done = false;
    const tick = async () => {
      timer = null;
      if (stopped || busy || document.hidden) return;
      busy = true;
      try {
        const data = await loadRef.current();
        if (stopped) return;
        setState({ data, error: null, key });
        announceUpdate();
        if (keepRef.current && !keepRef.current(data)) done = true;
      } catch (error) {
        if (stopped || error instanceof AuthError) return;
        setState((old) => ({ data: old.key === key ? old.data : null, error: error.message, status: error.status, key }));
      } finally {
        busy = false;
      }
      if (!stopped && !done && !document.hidden) timer = setTimeout(tick, POLL_MS);
    };
    const onVisibility = () => {
      if (!document.hidden && timer === null && !busy && !done) tick();
    };
    document.addEventListener('visibilitychange', onVisibility);
    tick();
    return () => {
      stopped = true;
      if (timer !== null) clearTimeout(timer);
      document.removeEventListener('visibilitychange', onVisibility);
    };
  }, [key]);
  return state;
}

// -- routing -------------------------------------------------------------------------------------------------------

function parseHash() {
  const raw = location.hash.replace(/^#/, '') || '/';
  const at = raw.indexOf('?');
  const path = at < 0 ? raw : raw.slice(0, at);
  return { path: path || '/', query: new URLSearchParams(at < 0 ? '' : raw.slice(at + 1)) };
}

function useRoute() {
  const [route, setRoute] = useState(parseHash);
  useEffect(() => {
    const onChange = () => setRoute(parseHash());
    window.addEventListener('hashchange', onChange);
    return () => window.removeEventListener('hashchange', onChange);
  }, []);
  return route;
}

function rolloutLink(id) {
  return '#/rollouts/' + encodeURIComponent(id);
}

// -- formatting ----------------------------------------------------------------------------------------------------

const pad = (n) => String(n).padStart(2, '0');

function fmtTime(t) {
  if (t == null) return '—';
  const d = new Date(t * 1000);
  const today = new Date();
  const time = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  if (d.toDateString() === today.toDateString()) return time;
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${time}`;
}

function fmtSeconds(s) {
  if (s == null || Number.isNaN(s)) return '—';
  if (s < 0.01) return `${(s * 1000).toFixed(1)} ms`;
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  const parts = (big, bigUnit, small, smallUnit) => `${big} ${bigUnit}` + (small ? ` ${small} ${smallUnit}` : '');
  if (s < 3600) return parts(Math.floor(s / 60), 'min', Math.floor(s % 60), 's');
  if (s < 86400) return parts(Math.floor(s / 3600), 'h', Math.floor((s % 3600) / 60), 'min');
  return `${(s / 86400).toFixed(1)} d`;
}

function fmtAgo(t, now) {
  if (t == null) return '—';
  return fmtSeconds(Math.max(0, now - t)) + ' ago';
}

function fmtReward(r) {
  if (r == null || Number.isNaN(r)) return '—';
  return String(Math.round(r * 1000) / 1000);
}

const fmtCount = (n) => (n == null ? '—' : n.toLocaleString('en-US'));

const nowSeconds = () => Date.now() / 1000;

// -- small components ----------------------------------------------------------------------------------------------

function Status({ status }) {
  return html`<span class=${'badge st-' + status}>${status}</span>`;
}

function Failure({ error }) {
  return html`<div class="error" role="alert">Could not load: ${error}</div>`;
}

function Loading({ state }) {
  if (state.error) return html`<${Failure} error=${state.error} />`;
  return html`<div class="muted">Loading…</div>`;
}

function Json({ value }) {
  return html`<pre class="json">${JSON.stringify(value, null, 2)}</pre>`;
}

function RawToggle({ value, label = 'raw JSON' }) {
  const [open, setOpen] = useState(false);
  return html`<div class="raw">
    <button class="link" type="button" aria-expanded=${open} onClick=${() => setOpen(!open)}>
      ${open ? 'hide ' : 'show '}${label}
    </button>
    ${open && html`<${Json} value=${value} />`}
  </div>`;
}

function Card({ label, value, sub, tone }) {
  return html`<div class=${'card' + (tone ? ' tone-' + tone : '')}>
    <div class="card-label">${label}</div>
    <div class="card-value">${value}</div>
    ${sub && html`<div class="card-sub">${sub}</div>`}
  </div>`;
}

// A uPlot chart. `xs` and each series' `values` are plotted as given; `points` (if set) is exposed as the
// container's data-points attribute so tests and tools can read exactly what is drawn.
function Chart({ id, title, xs, series, time = true, xLabels, yLabel, points, pending, height = 220, empty, note }) {
  const box = useRef(null);
  const plot = useRef(null);
  const data = [xs, ...series.map((s) => s.values)];
  const shape = JSON.stringify([time, xLabels ? xLabels.length : -1, series.map((s) => s.label), yLabel]);
  const hasData = xs.length > 0;
  useEffect(() => {
    if (!hasData) return undefined;
    const el = box.current;
    const width = () => Math.max(el.clientWidth, 240);
    const x = { time };
    if (xLabels) x.range = [0.5, xLabels.length + 0.5];
    // One point alone would stretch a time axis over years: give it a minute on each side.
    else x.range = (_, min, max) => (min === max ? [min - 60, max + 60] : [min, max]);
    const xAxis = { stroke: '#5b6474', grid: { stroke: '#eef0f4' } };
    if (xLabels) {
      // At most ~10 labels: many versions would overlap.
      const every = Math.max(1, Math.ceil(xLabels.length / 10));
      xAxis.splits = () => xLabels.map((_, i) => i + 1).filter((v) => (v - 1) % every === 0);
      xAxis.values = (_, splits) => splits.map((v) => xLabels[v - 1] ?? '');
    }
    const opts = {
      width: width(),
      height,
      scales: { x },
      legend: { live: true },
      cursor: { drag: { x: false, y: false } },
      series: [
        { label: xLabels ? 'version' : time ? 'time' : 'x', value: xLabels ? (_, v) => (v == null ? '—' : xLabels[v - 1] ?? '') : undefined },
        ...series.map((s) => ({
          label: s.label,
          stroke: s.color,
          width: 2,
          fill: s.fill,
          points: { show: s.points ?? xs.length <= 40, size: 6 },
          spanGaps: Boolean(s.spanGaps),
          value: (_, v) => (v == null ? '—' : s.format ? s.format(v) : String(Math.round(v * 1000) / 1000)),
        })),
      ],
      axes: [xAxis, { label: yLabel, stroke: '#5b6474', grid: { stroke: '#eef0f4' }, size: 56 }],
    };
    const chart = new uPlot(opts, data, el);
    plot.current = chart;
    const onResize = () => chart.setSize({ width: width(), height });
    window.addEventListener('resize', onResize);
    return () => {
      window.removeEventListener('resize', onResize);
      chart.destroy();
      plot.current = null;
    };
  }, [shape, hasData]);
  const dataKey = JSON.stringify(data);
  useEffect(() => {
    if (plot.current) plot.current.setData(data);
  }, [dataKey]);
  return html`<section class="chart panel" data-testid=${id} data-points=${points === undefined ? undefined : JSON.stringify(points)} data-pending=${pending}>
    <h3>${title}</h3>
    ${note && html`<div class="muted small chart-note">${note}</div>`}
    ${hasData ? html`<div ref=${box} class="chart-box"></div>` : html`<div class="muted chart-empty">${empty || 'No data yet.'}</div>`}
  </section>`;
}

// -- overview ------------------------------------------------------------------------------------------------------

function Overview() {
  const state = usePoll(() => api('dashboard/overview', { window: OVERVIEW_WINDOW }), 'overview');
  const data = state.data;
  if (!data) return html`<${Loading} state=${state} />`;
  const { rollouts, queue, workers, series, reward, resources } = data;
  const buckets = series.buckets;
  const xs = buckets.map((b) => b.t);
  const perMinute = 60 / series.bucket_seconds;
  const rate = (key) => buckets.map((b) => b[key] * perMinute);
  const errorRate = buckets.map((b) => (b.finished > 0 ? (100 * b.failed) / b.finished : null));
  const windowFinished = buckets.reduce((sum, b) => sum + b.finished, 0);
  const windowFailed = buckets.reduce((sum, b) => sum + b.failed, 0);
  const byVersion = reward.by_version;
  const overTime = reward.over_time;
  const rewardModes = MODES.concat(['none']).filter((m) => byVersion.some((p) => p.modes && p.modes[m]));
  const modeColors = { train: '#3b6fd8', val: '#1f9d55', test: '#c26a00', none: '#8a94a6' };
  const pending = reward.pending ?? 0;
  const pendingNote = pending > 0 ? `reading the rewards of ${fmtCount(pending)} more finished rollout${pending === 1 ? '' : 's'}…` : '';
  return html`<div class="page" data-testid="overview">
    ${state.error && html`<${Failure} error=${state.error} />`}
    <div class="cards">
      <${Card} label="Rollouts" value=${fmtCount(rollouts.total)} sub=${`${fmtCount(windowFinished)} finished in the last ${fmtSeconds(OVERVIEW_WINDOW)}`} />
      <${Card} label="Queue" value=${fmtCount(queue.depth)} sub=${queue.oldest_age_seconds == null ? 'empty' : `oldest waiting ${fmtSeconds(queue.oldest_age_seconds)}`} />
      <${Card} label="Workers" value=${fmtCount(workers.total)} sub=${`${workers.busy} busy · ${workers.idle} idle · ${workers.silent} silent`} tone=${workers.silent > 0 ? 'warn' : ''} />
      <${Card} label="Error rate" value=${windowFinished ? `${((100 * windowFailed) / windowFinished).toFixed(1)} %` : '—'} sub="failed / finished, this window" tone=${windowFailed > 0 ? 'bad' : ''} />
      <${Card} label="Rewarded rollouts" value=${fmtCount(reward.count)} sub=${`resources: ${resources.count} version${resources.count === 1 ? '' : 's'}${resources.latest_id ? ', latest ' + resources.latest_id : ''}`} />
    </div>
    <section class="panel">
      <h3>Rollouts by status</h3>
      <div class="status-row" data-testid="status-counts">
        ${STATUSES.map(
          (s) => html`<a class="status-count" href=${'#/rollouts?status=' + s} data-status=${s}>
            <${Status} status=${s} /><span class="count">${fmtCount(rollouts.by_status[s] ?? 0)}</span>
          </a>`,
        )}
      </div>
    </section>
    <div class="grid2">
      <${Chart} id="reward-over-time" title=${`Mean reward over time (${fmtSeconds(reward.bucket_seconds)} buckets of end time)`}
        xs=${overTime.map((p) => p.t)} series=${[{ label: 'mean reward', values: overTime.map((p) => p.mean), color: '#3b6fd8' }]}
        points=${overTime} pending=${pending} note=${pendingNote} empty="No finished rollout has a reward yet." />
      <${Chart} id="reward-by-version" title="Mean reward per resources version" time=${false}
        xs=${byVersion.map((_, i) => i + 1)} xLabels=${byVersion.map((p) => p.resources_id ?? '(none)')}
        series=${[
          { label: 'all modes', values: byVersion.map((p) => p.mean), color: '#7a4cc2' },
          ...(rewardModes.length > 1
            ? rewardModes.map((m) => ({
                label: m,
                values: byVersion.map((p) => (p.modes && p.modes[m] ? p.modes[m].mean : null)),
                color: modeColors[m],
                spanGaps: true, // e.g. train and val rollouts run under different resources versions
              }))
            : []),
        ]}
        points=${byVersion} pending=${pending} note=${pendingNote} empty="No finished rollout has a reward yet." />
      <${Chart} id="throughput" title=${`Finished rollouts per minute (${series.bucket_seconds} s buckets)`} xs=${xs}
        series=${[
          { label: 'succeeded', values: rate('succeeded'), color: '#1f9d55' },
          { label: 'failed', values: rate('failed'), color: '#d64545' },
          { label: 'cancelled', values: rate('cancelled'), color: '#8a94a6' },
        ]} yLabel="per min" />
      <${Chart} id="error-rate" title="Error rate (failed / finished, %)" xs=${xs}
        series=${[{ label: 'error rate', values: errorRate, color: '#d64545', points: true, format: (v) => v.toFixed(1) + ' %' }]} yLabel="%" />
    </div>
    ${byVersion.length > 0 &&
    html`<section class="panel">
      <h3>Reward per resources version</h3>
      <table class="table compact">
        <thead><tr><th>#</th><th>resources</th><th class="num">mean reward</th><th class="num">rollouts</th>
          ${rewardModes.map((m) => html`<th class="num">${m}</th>`)}</tr></thead>
        <tbody>
          ${byVersion.map(
            (p) => html`<tr><td>${p.version ?? '—'}</td><td class="mono">${p.resources_id ?? '(none)'}</td><td class="num">${fmtReward(p.mean)}</td><td class="num">${fmtCount(p.count)}</td>
              ${rewardModes.map((m) => html`<td class="num">${p.modes && p.modes[m] ? `${fmtReward(p.modes[m].mean)} (${fmtCount(p.modes[m].count)})` : '—'}</td>`)}</tr>`,
          )}
        </tbody>
      </table>
    </section>`}
  </div>`;
}

// -- rollouts ------------------------------------------------------------------------------------------------------

const SORTABLE = { rollout_id: 'Rollout', status: 'Status', start_time: 'Started', end_time: 'Ended' };

function Rollouts({ query }) {
  const statuses = query.getAll('status');
  const modes = query.getAll('mode');
  const windowSeconds = query.get('window') || '';
  const q = query.get('q') || '';
  const sort = query.get('sort') || 'start_time';
  const order = query.get('order') || 'desc';
  const limit = Number(query.get('limit')) || 50;
  const offset = Math.max(0, Number(query.get('offset')) || 0);
  const key = query.toString();
  const state = usePoll(
    () =>
      api('dashboard/rollouts', {
        status: statuses,
        mode: modes,
        since: windowSeconds ? (nowSeconds() - Number(windowSeconds)).toFixed(3) : '',
        q,
        sort,
        order,
        limit,
        offset,
      }),
    'rollouts?' + key,
  );
  const [search, setSearch] = useState(q);
  useEffect(() => setSearch(q), [q]);

  const navigate = (changes, keepOffset = false) => {
    const next = new URLSearchParams(query);
    for (const [name, value] of Object.entries(changes)) {
      next.delete(name);
      for (const item of Array.isArray(value) ? value : [value]) if (item !== '' && item != null) next.append(name, item);
    }
    if (!keepOffset) next.delete('offset');
    location.hash = '#/rollouts' + (next.toString() ? '?' + next.toString() : '');
  };
  const toggle = (list, value) => (list.includes(value) ? list.filter((v) => v !== value) : [...list, value]);
  const onSearch = (event) => {
    event.preventDefault();
    navigate({ q: search.trim() });
  };
  const sortBy = (field) => navigate({ sort: field, order: sort === field && order === 'desc' ? 'asc' : 'desc' });

  const data = state.data;
  const now = nowSeconds();
  const total = data ? data.total : 0;
  const first = total === 0 ? 0 : offset + 1;
  const last = data ? offset + data.items.length : 0;
  return html`<div class="page" data-testid="rollouts">
    <form class="filters panel" onSubmit=${onSearch}>
      <div class="filter-group">
        <span class="filter-label">Status</span>
        ${STATUSES.map(
          (s) => html`<label class=${'chip' + (statuses.includes(s) ? ' on' : '')}>
            <input type="checkbox" name="status" value=${s} checked=${statuses.includes(s)} onChange=${() => navigate({ status: toggle(statuses, s) })} />
            <span class=${'dot st-' + s}></span>${s}
          </label>`,
        )}
      </div>
      <div class="filter-group">
        <span class="filter-label">Mode</span>
        ${MODES.map(
          (m) => html`<label class=${'chip' + (modes.includes(m) ? ' on' : '')}>
            <input type="checkbox" name="mode" value=${m} checked=${modes.includes(m)} onChange=${() => navigate({ mode: toggle(modes, m) })} />${m}
          </label>`,
        )}
        <span class="filter-label">Started</span>
        <select name="window" value=${windowSeconds} onChange=${(e) => navigate({ window: e.currentTarget.value })}>
          ${WINDOWS.map(([value, label]) => html`<option value=${value}>${label}</option>`)}
        </select>
        <input class="search" type="search" name="q" placeholder="search rollout id" value=${search} onInput=${(e) => setSearch(e.currentTarget.value)} />
        <button type="submit">Search</button>
        ${(statuses.length > 0 || modes.length > 0 || windowSeconds || q) && html`<a class="link" href="#/rollouts">clear filters</a>`}
      </div>
    </form>
    ${state.error && html`<${Failure} error=${state.error} />`}
    <section class="panel">
      <div class="table-head">
        <span data-testid="rollouts-range" data-total=${data ? data.total : ''} data-query=${state.key === 'rollouts?' + key ? key : ''}>
          ${data ? `${fmtCount(first)}–${fmtCount(last)} of ${fmtCount(total)} rollouts` : 'Loading…'}
        </span>
        <span class="pager">
          <label>per page <select name="limit" value=${String(limit)} onChange=${(e) => navigate({ limit: e.currentTarget.value })}>
            ${PAGE_SIZES.map((n) => html`<option value=${String(n)}>${n}</option>`)}
          </select></label>
          <button type="button" name="prev" disabled=${offset === 0} onClick=${() => navigate({ offset: String(Math.max(0, offset - limit)) }, true)}>‹ Prev</button>
          <button type="button" name="next" disabled=${!data || last >= total} onClick=${() => navigate({ offset: String(offset + limit) }, true)}>Next ›</button>
        </span>
      </div>
      <table class="table" data-testid="rollouts-table">
        <thead>
          <tr>
            ${Object.entries(SORTABLE)
              .slice(0, 2)
              .map(([field, label]) => html`<${SortHeader} field=${field} label=${label} sort=${sort} order=${order} onSort=${sortBy} />`)}
            <th>Mode</th>
            ${Object.entries(SORTABLE)
              .slice(2)
              .map(([field, label]) => html`<${SortHeader} field=${field} label=${label} sort=${sort} order=${order} onSort=${sortBy} />`)}
            <th class="num">Duration</th><th class="num">Attempts</th><th>Worker</th><th>Resources</th><th class="num">Reward</th>
          </tr>
        </thead>
        <tbody>
          ${data &&
          data.items.map(
            (r) => html`<tr data-rollout-id=${r.rollout_id}>
              <td class="mono"><a href=${rolloutLink(r.rollout_id)}>${r.rollout_id}</a></td>
              <td><${Status} status=${r.status} /></td>
              <td>${r.mode || '—'}</td>
              <td title=${r.start_time}>${fmtTime(r.start_time)}</td>
              <td title=${r.end_time ?? ''}>${fmtTime(r.end_time)}</td>
              <td class="num">${r.start_time == null ? '—' : fmtSeconds((r.end_time ?? now) - r.start_time)}</td>
              <td class="num">${r.attempts}</td>
              <td>${r.worker_id || '—'}</td>
              <td class="mono">${r.resources_id || '—'}</td>
              <td class="num">${fmtReward(r.reward)}</td>
            </tr>`,
          )}
        </tbody>
      </table>
      ${data && data.items.length === 0 && html`<div class="muted empty">No rollout matches these filters.</div>`}
    </section>
  </div>`;
}

function SortHeader({ field, label, sort, order, onSort }) {
  const active = sort === field;
  return html`<th class="sortable" aria-sort=${active ? (order === 'asc' ? 'ascending' : 'descending') : 'none'}>
    <button type="button" class="link" data-sort=${field} onClick=${() => onSort(field)}>${label}${active ? (order === 'asc' ? ' ▲' : ' ▼') : ''}</button>
  </th>`;
}

// -- rollout detail ------------------------------------------------------------------------------------------------

function RolloutDetail({ id }) {
  const state = usePoll(
    () => api('dashboard/rollouts/' + encodeURIComponent(id)),
    'rollout/' + id,
    (data) => !TERMINAL.has(data.rollout.status),
  );
  const data = state.data;
  if (!data) {
    if (state.status === 404) return html`<div class="page"><div class="error" role="alert">Rollout ${id} was not found in this store.</div><a href="#/rollouts">back to rollouts</a></div>`;
    return html`<${Loading} state=${state} />`;
  }
  const { rollout, attempts, spans, spans_total: spansTotal, reward } = data;
  const now = nowSeconds();
  return html`<div class="page" data-testid="rollout-detail" data-rollout-id=${rollout.rollout_id}>
    ${state.error && html`<${Failure} error=${state.error} />`}
    <section class="panel">
      <div class="detail-head">
        <h2 class="mono">${rollout.rollout_id}</h2>
        <${Status} status=${rollout.status} />
        <span class="reward-big" data-testid="final-reward">reward ${fmtReward(reward)}</span>
      </div>
      <dl class="facts">
        <dt>mode</dt><dd>${rollout.mode || '—'}</dd>
        <dt>resources</dt><dd class="mono">${rollout.resources_id || '—'}</dd>
        <dt>started</dt><dd>${fmtTime(rollout.start_time)}</dd>
        <dt>ended</dt><dd>${fmtTime(rollout.end_time)}</dd>
        <dt>duration</dt><dd>${rollout.start_time == null ? '—' : fmtSeconds((rollout.end_time ?? now) - rollout.start_time)}</dd>
        <dt>attempts</dt><dd>${attempts.length}</dd>
      </dl>
      <h3>Input</h3>
      <${Json} value=${data.input} />
      <${RawToggle} value=${rollout} label="rollout JSON" />
    </section>
    <section class="panel">
      <h3>Attempts</h3>
      <${Timeline} attempts=${attempts} now=${now} />
    </section>
    <section class="panel">
      <h3>Spans <span class="muted">(${spans.length < spansTotal ? `first ${fmtCount(spans.length)} of ${fmtCount(spansTotal)}` : fmtCount(spansTotal)})</span></h3>
      <${SpanForest} spans=${spans} attempts=${attempts} />
    </section>
  </div>`;
}

function Timeline({ attempts, now }) {
  if (attempts.length === 0) return html`<div class="muted">No attempt yet (the rollout is waiting in the queue).</div>`;
  const starts = attempts.map((a) => a.start_time);
  const ends = attempts.map((a) => a.end_time ?? now);
  const t0 = Math.min(...starts);
  const t1 = Math.max(...ends, t0 + 0.001);
  const span = t1 - t0;
  const ticks = [0, 0.25, 0.5, 0.75, 1];
  return html`<div class="timeline" data-testid="attempt-timeline">
    ${attempts.map((a, i) => {
      const left = ((starts[i] - t0) / span) * 100;
      const width = Math.max(0.4, ((ends[i] - starts[i]) / span) * 100);
      const label = `#${a.sequence_id} ${a.attempt_id} · ${a.status} · ${a.worker_id || 'no worker'} · ${fmtSeconds(ends[i] - starts[i])}`;
      return html`<div class="tl-row" data-attempt-id=${a.attempt_id}>
        <div class="tl-label"><span class="mono">#${a.sequence_id}</span> <${Status} status=${a.status} /> <span class="muted">${a.worker_id || ''}</span></div>
        <div class="tl-track"><div class=${'tl-bar bg-' + a.status} style=${`left:${left}%;width:${Math.min(width, 100 - left)}%`} title=${label}></div></div>
      </div>`;
    })}
    <div class="tl-row tl-axis">
      <div class="tl-label muted">${fmtTime(t0)}</div>
      <div class="tl-track">${ticks.map((f) => html`<span class="tl-tick" style=${`left:${f * 100}%`}>+${fmtSeconds(f * span)}</span>`)}</div>
    </div>
  </div>`;
}

// What a span is, from its name and attributes (AGL's and OpenTelemetry GenAI conventions).
function spanKind(span) {
  const name = span.name || '';
  const attrs = span.attributes || {};
  const keys = Object.keys(attrs);
  if ((name === 'agentlightning.annotation' || name === 'agentlightning.reward') && rewardsOf(span).length > 0) return 'reward';
  if (name === 'agentlightning.exception') return 'exception';
  if (name.startsWith('tool') || 'tool.name' in attrs) return 'tool';
  if (name === 'openai.chat.completion' || name === 'openai.completion' || name === 'raw_gen_ai_request' || keys.some((k) => k.startsWith('gen_ai.'))) return 'llm';
  if (name === 'agentlightning.operation') return 'operation';
  if (name === 'agentlightning.message') return 'message';
  if (name === 'agentlightning.annotation') return 'annotation';
  return 'span';
}

function rewardsOf(span) {
  const attrs = span.attributes || {};
  const out = [];
  for (let i = 0; `agentlightning.reward.${i}.value` in attrs; i++) {
    out.push({ name: attrs[`agentlightning.reward.${i}.name`] ?? String(i), value: attrs[`agentlightning.reward.${i}.value`] });
  }
  if (out.length === 0 && span.name === 'agentlightning.reward' && 'reward' in attrs) out.push({ name: 'reward', value: attrs.reward });
  return out;
}

function exceptionOf(span) {
  const attrs = span.attributes || {};
  for (const event of span.events || []) {
    if (event.name === 'exception') {
      const a = event.attributes || {};
      return { type: a['exception.type'] || 'exception', message: a['exception.message'] || '', stack: a['exception.stacktrace'] };
    }
  }
  if (attrs['exception.type'] || attrs['exception.message']) {
    return { type: attrs['exception.type'] || 'exception', message: attrs['exception.message'] || '', stack: attrs['exception.stacktrace'] };
  }
  const status = span.status || {};
  if (status.status_code === 'ERROR') return { type: 'error', message: status.description || attrs['error.type'] || '' };
  return null;
}

// Messages stored flat as `<prefix>.<i>.role` / `.content`.
function messages(attrs, prefix) {
  const out = [];
  for (let i = 0; `${prefix}.${i}.role` in attrs || `${prefix}.${i}.content` in attrs; i++) {
    const calls = [];
    for (let j = 0; `${prefix}.${i}.tool_calls.${j}.name` in attrs; j++) {
      calls.push(`${attrs[`${prefix}.${i}.tool_calls.${j}.name`]}(${attrs[`${prefix}.${i}.tool_calls.${j}.arguments`] ?? ''})`);
    }
    out.push({ role: attrs[`${prefix}.${i}.role`] || '', content: attrs[`${prefix}.${i}.content`] ?? '', calls });
  }
  return out;
}

function tokenCounts(attrs) {
  const first = (...keys) => keys.map((k) => attrs[k]).find((v) => typeof v === 'number');
  const count = (key) => (Array.isArray(attrs[key]) ? attrs[key].length : undefined);
  const prompt = first('gen_ai.usage.prompt_tokens', 'gen_ai.usage.input_tokens') ?? count('prompt_token_ids') ?? count('llm.hosted_vllm.prompt_token_ids');
  const completion = first('gen_ai.usage.completion_tokens', 'gen_ai.usage.output_tokens') ?? count('response_token_ids') ?? count('llm.hosted_vllm.response_token_ids');
  const total = first('gen_ai.usage.total_tokens') ?? (prompt != null && completion != null ? prompt + completion : undefined);
  return { prompt, completion, total };
}

function SpanForest({ spans, attempts }) {
  if (spans.length === 0) return html`<div class="muted">No spans recorded.</div>`;
  const byAttempt = new Map();
  for (const span of spans) {
    if (!byAttempt.has(span.attempt_id)) byAttempt.set(span.attempt_id, []);
    byAttempt.get(span.attempt_id).push(span);
  }
  const order = attempts.map((a) => a.attempt_id).filter((id) => byAttempt.has(id));
  for (const id of byAttempt.keys()) if (!order.includes(id)) order.push(id);
  const sequence = new Map(attempts.map((a) => [a.attempt_id, a.sequence_id]));
  return html`<div class="forest" data-testid="span-tree">
    ${order.map(
      (attemptId) => html`<div class="attempt-spans">
        ${order.length > 1 && html`<h4>Attempt #${sequence.get(attemptId) ?? '?'} <span class="mono muted">${attemptId}</span></h4>`}
        <ul class="tree">${buildTree(byAttempt.get(attemptId)).map((node) => html`<${SpanNode} node=${node} />`)}</ul>
      </div>`,
    )}
  </div>`;
}

function buildTree(spans) {
  const nodes = new Map();
  for (const span of spans) nodes.set(span.trace_id + '/' + span.span_id, { span, children: [] });
  const roots = [];
  for (const node of nodes.values()) {
    const parent = node.span.parent_id ? nodes.get(node.span.trace_id + '/' + node.span.parent_id) : undefined;
    if (parent && parent !== node) parent.children.push(node);
    else roots.push(node);
  }
  const byStart = (a, b) => (a.span.start_time ?? 0) - (b.span.start_time ?? 0) || a.span.sequence_id - b.span.sequence_id;
  const sortAll = (list) => {
    list.sort(byStart);
    for (const node of list) sortAll(node.children);
    return list;
  };
  return sortAll(roots);
}

function SpanNode({ node }) {
  const { span, children } = node;
  const kind = spanKind(span);
  const error = exceptionOf(span);
  const attrs = span.attributes || {};
  const duration = span.start_time != null && span.end_time != null ? fmtSeconds(span.end_time - span.start_time) : '';
  const [raw, setRaw] = useState(false);
  return html`<li class=${'span kind-' + kind + (error ? ' has-error' : '')} data-span-id=${span.span_id} data-kind=${kind}>
    <div class="span-head">
      <span class=${'kind-tag tag-' + kind}>${kind}</span>
      <span class="span-name">${span.name}</span>
      ${kind === 'tool' && attrs['tool.name'] && html`<span class="mono">${attrs['tool.name']}</span>`}
      <span class="muted">${duration}</span>
      <button class="link" type="button" aria-expanded=${raw} onClick=${() => setRaw(!raw)}>${raw ? 'hide JSON' : 'JSON'}</button>
    </div>
    ${raw && html`<${Json} value=${span} />`}
    ${kind === 'llm' && html`<${LlmBody} attrs=${attrs} />`}
    ${kind === 'reward' && html`<div class="span-body rewards">${rewardsOf(span).map((r) => html`<span class="reward-pill">${r.name} = ${fmtReward(Number(r.value))}</span>`)}</div>`}
    ${kind === 'message' && attrs['agentlightning.message.body'] != null && html`<div class="span-body"><pre class="text">${attrs['agentlightning.message.body']}</pre></div>`}
    ${kind === 'tool' && html`<${ToolBody} attrs=${attrs} />`}
    ${error && html`<div class="span-body exception" role="note"><strong>${error.type}</strong>${error.message ? ': ' + error.message : ''}${error.stack && html`<pre class="text">${error.stack}</pre>`}</div>`}
    ${children.length > 0 && html`<ul class="tree">${children.map((child) => html`<${SpanNode} node=${child} />`)}</ul>`}
  </li>`;
}

function LlmBody({ attrs }) {
  const prompt = messages(attrs, 'gen_ai.prompt');
  const completion = messages(attrs, 'gen_ai.completion');
  const tokens = tokenCounts(attrs);
  const model = attrs['gen_ai.response.model'] || attrs['gen_ai.request.model'];
  return html`<div class="span-body llm">
    <div class="llm-meta">
      ${model && html`<span>model <span class="mono">${model}</span></span>`}
      <span data-testid="tokens">tokens: prompt ${tokens.prompt ?? '—'} · completion ${tokens.completion ?? '—'} · total ${tokens.total ?? '—'}</span>
    </div>
    ${prompt.length > 0 && html`<div class="msgs"><div class="msgs-title">Prompt</div>${prompt.map((m) => html`<${Message} m=${m} />`)}</div>`}
    ${completion.length > 0 && html`<div class="msgs"><div class="msgs-title">Response</div>${completion.map((m) => html`<${Message} m=${m} />`)}</div>`}
  </div>`;
}

function Message({ m }) {
  return html`<div class="msg"><span class=${'role role-' + m.role}>${m.role}</span><pre class="text">${m.content}${m.calls.length ? '\n' + m.calls.join('\n') : ''}</pre></div>`;
}

function ToolBody({ attrs }) {
  const shown = Object.entries(attrs).filter(([k]) => k.startsWith('tool.') && k !== 'tool.name');
  if (shown.length === 0) return null;
  return html`<div class="span-body"><dl class="facts">${shown.map(([k, v]) => html`<dt>${k.slice(5)}</dt><dd><pre class="text">${typeof v === 'string' ? v : JSON.stringify(v)}</pre></dd>`)}</dl></div>`;
}

// -- resources -----------------------------------------------------------------------------------------------------

const RESOURCES_PAGE = 20;

function Resources({ query }) {
  const offset = Math.max(0, Number(query.get('offset')) || 0);
  // One more than shown, so the oldest shown version can be compared with its predecessor.
  const state = usePoll(
    () => api('resources', { sort_by: 'create_time', sort_order: 'desc', limit: RESOURCES_PAGE + 1, offset }),
    'resources?' + offset,
  );
  const data = state.data;
  if (!data) return html`<${Loading} state=${state} />`;
  const items = data.items;
  const shown = items.slice(0, RESOURCES_PAGE);
  const go = (value) => {
    location.hash = '#/resources' + (value > 0 ? '?offset=' + value : '');
  };
  return html`<div class="page" data-testid="resources">
    ${state.error && html`<${Failure} error=${state.error} />`}
    <div class="table-head">
      <span>${data.total === 0 ? 'No resources published yet.' : `${offset + 1}–${offset + shown.length} of ${fmtCount(data.total)} resources versions, newest first`}</span>
      <span class="pager">
        <button type="button" disabled=${offset === 0} onClick=${() => go(Math.max(0, offset - RESOURCES_PAGE))}>‹ Newer</button>
        <button type="button" disabled=${offset + shown.length >= data.total} onClick=${() => go(offset + RESOURCES_PAGE)}>Older ›</button>
      </span>
    </div>
    ${shown.map((update, i) => html`<${ResourcesVersion} update=${update} previous=${items[i + 1]} latest=${offset === 0 && i === 0} />`)}
  </div>`;
}

function ResourcesVersion({ update, previous, latest }) {
  const names = [...new Set([...Object.keys(update.resources), ...Object.keys(previous ? previous.resources : {})])].sort();
  return html`<section class="panel resources-version" data-resources-id=${update.resources_id}>
    <div class="detail-head">
      <h3 class="mono">${update.resources_id}</h3>
      <span class="badge">version ${update.version}</span>
      ${latest && html`<span class="badge st-succeeded">latest</span>`}
      <span class="muted">created ${fmtTime(update.create_time)}${update.update_time !== update.create_time ? ` · updated ${fmtTime(update.update_time)}` : ''}</span>
    </div>
    ${previous ? html`<div class="muted small">compared with <span class="mono">${previous.resources_id}</span></div>` : html`<div class="muted small">the first version</div>`}
    ${names.map((name) => html`<${ResourceChange} name=${name} now=${update.resources[name]} before=${previous ? previous.resources[name] : undefined} first=${!previous} />`)}
    <${RawToggle} value=${update} label="JSON" />
  </section>`;
}

const LLM_FIELDS = ['model', 'endpoint', 'weights_version', 'api_key'];

function ResourceChange({ name, now, before, first }) {
  if (!now) return html`<div class="resource removed"><span class="mono">${name}</span> <span class="badge st-failed">removed</span></div>`;
  const type = now.resource_type;
  const added = !before && !first;
  let body;
  if (type === 'prompt_template') {
    body = html`<div><span class="muted small">engine ${now.engine}</span><${TemplateDiff} before=${before && before.resource_type === 'prompt_template' ? before.template : null} now=${now.template} /></div>`;
  } else if (type === 'llm' || type === 'proxy_llm') {
    const fields = LLM_FIELDS.filter((f) => now[f] != null || (before && before[f] != null));
    fields.push('sampling_parameters');
    body = html`<dl class="facts">${fields.map((f) => {
      const value = f === 'api_key' && now[f] ? '••••' : now[f];
      const old = before ? (f === 'api_key' && before[f] ? '••••' : before[f]) : undefined;
      const show = (v) => (v == null ? '—' : typeof v === 'object' ? JSON.stringify(v) : String(v));
      const changed = before && show(old) !== show(value);
      return html`<dt>${f}</dt><dd class=${changed ? 'changed' : ''}>${changed ? html`<del>${show(old)}</del> → <ins>${show(value)}</ins>` : show(value)}</dd>`;
    })}</dl>`;
  } else {
    body = html`<${Json} value=${now} />`;
  }
  return html`<div class="resource" data-name=${name} data-type=${type}>
    <div class="resource-head">
      <span class="mono">${name}</span> <span class="badge">${type}</span>
      ${added && html` <span class="badge st-running">added</span>`}
      ${before && before.resource_type !== type && html` <span class="badge warn">was ${before.resource_type}</span>`}
    </div>
    ${body}
  </div>`;
}

function TemplateDiff({ before, now }) {
  if (before == null || typeof Diff === 'undefined') return html`<pre class="text template">${now}</pre>`;
  if (before === now) return html`<div class="muted small">template unchanged</div><pre class="text template">${now}</pre>`;
  const parts = Diff.diffLines(before, now);
  return html`<pre class="text template diff" data-testid="template-diff">${parts.flatMap((part) =>
    part.value
      .replace(/\n$/, '')
      .split('\n')
      .map((line) => html`<span class=${part.added ? 'add' : part.removed ? 'del' : 'same'}>${(part.added ? "+ " : part.removed ? "- " : "  ") + line}</span>`),
  )}</pre>`;
}

// -- workers -------------------------------------------------------------------------------------------------------

function Workers() {
  const state = usePoll(() => api('dashboard/workers'), 'workers');
  const data = state.data;
  if (!data) return html`<${Loading} state=${state} />`;
  const items = data.items;
  const count = (status) => items.filter((w) => w.status === status).length;
  const silent = items.filter((w) => w.silent).length;
  return html`<div class="page" data-testid="workers">
    ${state.error && html`<${Failure} error=${state.error} />`}
    <div class="cards">
      <${Card} label="Workers" value=${fmtCount(items.length)} />
      <${Card} label="Busy" value=${count('busy')} />
      <${Card} label="Idle" value=${count('idle')} />
      <${Card} label="Silent" value=${silent} sub=${`no heartbeat for ${fmtSeconds(data.silent_after_seconds)}`} tone=${silent ? 'warn' : ''} />
    </div>
    <section class="panel">
      <table class="table" data-testid="workers-table">
        <thead><tr><th>Worker</th><th>Status</th><th>Current rollout</th><th class="num">Heartbeat</th><th>Last dequeue</th><th>Last error</th></tr></thead>
        <tbody>
          ${items.map(
            (w) => html`<tr data-worker-id=${w.worker_id} class=${w.silent ? 'silent' : ''}>
              <td class="mono">${w.worker_id}</td>
              <td><${Status} status=${w.status} />${w.silent && html` <span class="badge warn">silent</span>`}</td>
              <td class="mono">${w.current_rollout_id ? html`<a href=${rolloutLink(w.current_rollout_id)}>${w.current_rollout_id}</a>` : '—'}</td>
              <td class="num">${w.heartbeat_age_seconds == null ? '—' : fmtSeconds(w.heartbeat_age_seconds) + ' ago'}</td>
              <td>${fmtAgo(w.last_dequeue_time, data.now)}</td>
              <td>${w.last_error
                ? html`<a class="mono" href=${rolloutLink(w.last_error.rollout_id)}>${w.last_error.rollout_id}</a> <${Status} status=${w.last_error.status} /> <span class="muted">${fmtAgo(w.last_error.time, data.now)}</span>`
                : '—'}</td>
            </tr>`,
          )}
        </tbody>
      </table>
      ${items.length === 0 && html`<div class="muted empty">No worker has registered with this store yet.</div>`}
    </section>
  </div>`;
}

// -- login and shell -----------------------------------------------------------------------------------------------

function Login({ error, onToken }) {
  const [value, setValue] = useState('');
  const submit = (event) => {
    event.preventDefault();
    onToken(value.trim());
  };
  return html`<div class="login-wrap">
    <form class="login panel" onSubmit=${submit} data-testid="login">
      <h2>AGL store</h2>
      <p class="muted">This store needs its access token (the <span class="mono">--token</span> it was started with, or <span class="mono">AGL_STORE_TOKEN</span>).</p>
      <label for="token">Token</label>
      <input id="token" name="token" type="password" autocomplete="current-password" value=${value} onInput=${(e) => setValue(e.currentTarget.value)} autofocus />
      ${error && html`<div class="error" role="alert" data-testid="login-error">${error}</div>`}
      <button type="submit" disabled=${!value.trim()}>Open dashboard</button>
      <p class="muted small">The token is kept in this tab's session storage only.</p>
    </form>
  </div>`;
}

function LiveClock() {
  const [at, setAt] = useState(null);
  const [hidden, setHidden] = useState(document.hidden);
  useEffect(() => {
    liveListeners.add(setAt);
    const onVisibility = () => setHidden(document.hidden);
    document.addEventListener('visibilitychange', onVisibility);
    return () => {
      liveListeners.delete(setAt);
      document.removeEventListener('visibilitychange', onVisibility);
    };
  }, []);
  if (hidden) return html`<span class="live paused">paused</span>`;
  return html`<span class="live" title="refreshed every 2 s while this tab is visible">${at ? `live · ${pad(at.getHours())}:${pad(at.getMinutes())}:${pad(at.getSeconds())}` : 'live'}</span>`;
}

const PAGES = [
  ['#/', 'Overview', (p) => p === '/'],
  ['#/rollouts', 'Rollouts', (p) => p.startsWith('/rollouts')],
  ['#/resources', 'Resources', (p) => p.startsWith('/resources')],
  ['#/workers', 'Workers', (p) => p.startsWith('/workers')],
];

function Page({ route }) {
  const path = route.path;
  if (path === '/') return html`<${Overview} />`;
  if (path === '/rollouts') return html`<${Rollouts} query=${route.query} />`;
  if (path.startsWith('/rollouts/')) {
    const id = decodeURIComponent(path.slice('/rollouts/'.length));
    return html`<${RolloutDetail} key=${id} id=${id} />`;
  }
  if (path === '/resources') return html`<${Resources} query=${route.query} />`;
  if (path === '/workers') return html`<${Workers} />`;
  return html`<div class="page"><div class="error">No page at ${path}.</div><a href="#/">Go to the overview</a></div>`;
}

function App() {
  const route = useRoute();
  const [auth, setAuth] = useState({ state: 'checking', error: '' });
  const check = async () => {
    try {
      await api('resources', { limit: 1 });
    } catch (error) {
      if (error instanceof AuthError) return;
    }
    setAuth({ state: 'ok', error: '' });
  };
  useEffect(() => {
    onAuthNeeded = (message) => setAuth({ state: 'login', error: message });
    check();
  }, []);
  if (auth.state === 'checking') return null;
  if (auth.state === 'login') {
    const onToken = (value) => {
      writeToken(value);
      setAuth({ state: 'checking', error: '' });
      check();
    };
    return html`<${Login} error=${auth.error} onToken=${onToken} />`;
  }
  const forget = () => {
    writeToken('');
    location.reload();
  };
  return html`<div class="shell">
    <header class="top">
      <a class="brand" href="#/">AGL <span>dashboard</span></a>
      <nav>${PAGES.map(([href, label, active]) => html`<a href=${href} class=${active(route.path) ? 'active' : ''}>${label}</a>`)}</nav>
      <span class="spacer"></span>
      <${LiveClock} />
      ${memoryToken && html`<button type="button" class="link" onClick=${forget}>forget token</button>`}
    </header>
    <main><${Page} route=${route} /></main>
  </div>`;
}

const root = document.getElementById('app');
root.textContent = ''; // the boot message: render() adds to what is there
render(html`<${App} />`, root);
