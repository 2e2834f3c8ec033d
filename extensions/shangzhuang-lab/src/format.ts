/**
 * What the quota figures look like on screen: pure functions, no JupyterLab code imported
 * (types only), so that jest tests them directly. tests/e2e mirrors `formatHours` and
 * `statusText` in Python to check the status bar against the quota API.
 *
 * Words go through JupyterLab's translator (domain `shangzhuang_lab`, catalog in
 * shangzhuang_lab/locale/), numbers and dates through Intl in the translator's language:
 * every function that writes words takes an `ILocale`, English by default.
 */
import type { TranslationBundle } from '@jupyterlab/translation';

/** The catalog's domain: shangzhuang_lab/locale/LANG/LC_MESSAGES/shangzhuang_lab.json. */
export const DOMAIN = 'shangzhuang_lab';

/**
 * The words (a translation bundle of `DOMAIN`) and their language (BCP 47, for Intl). Call
 * sites name it `trans` (`trans.__('...')`): that is what JupyterLab's string extraction
 * (jupyterlab-translate) looks for.
 */
export interface ILocale extends Pick<TranslationBundle, '__' | '_n'> {
  language: string;
}

/** The source language: JupyterLab's own rule, `%1`, `%2`... replaced by the arguments. */
function fill(text: string, args: unknown[]): string {
  return text.replace(/%(\d+)/g, (_, i) => String(args[Number(i) - 1]));
}

/** The messages as written (JupyterLab's nullTranslator does the same; jest can't import it). */
export const ENGLISH: ILocale = {
  __: (msgid: string, ...args: unknown[]) => fill(msgid, args),
  _n: (msgid: string, plural: string, n: number, ...args: unknown[]) =>
    fill(n === 1 ? msgid : plural, [n, ...args]),
  language: 'en'
};

/** `12.4` in the locale's digits, without grouping (the status bar is short). */
function decimal(value: number, digits: number, trans: ILocale): string {
  return new Intl.NumberFormat(trans.language, {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
    useGrouping: false
  }).format(value);
}

/** A number as short as it is (`0.25`, `4`) in the locale's digits. */
function plain(value: number, trans: ILocale): string {
  return new Intl.NumberFormat(trans.language, { maximumFractionDigits: 20, useGrouping: false }).format(
    value
  );
}

/** One limit on one resource: an account's pool or a personal cap (ledger.Limit). */
export interface ILimit {
  allocated: number;
  granted: number;
  used: number;
  remaining: number;
}

export interface IResourceBalance {
  /** min(personal, account) left; null: not limited. */
  remaining: number | null;
  account: ILimit | null;
  personal: ILimit | null;
}

export interface IRunning {
  consumer: string;
  source: string;
  profile: string;
  cost_per_hour: Record<string, number>;
}

export type QuotaState = 'ok' | 'low' | 'exhausted';

/** The server extension's /shangzhuang/quota: the quota service's `GET me`, plus this session. */
export interface IQuotaInfo {
  /** false: the site has no quotas (the session was given no quota service). */
  enabled: boolean;
  message?: string;
  user: string;
  account: string;
  state: QuotaState;
  period: { start: string | null; resets_at: string | null };
  resources: Record<string, IResourceBalance>;
  exhausted_since: string | null;
  running: IRunning[];
  /** This session's entry of `running` (null until the meter has seen it). */
  session: { profile: string | null; cost_per_hour: Record<string, number> | null };
  /** The site's grace period at zero; null when the session was not told it. */
  grace_seconds: number | null;
  /** Exhausted, and this session burns a resource that is at zero: the meter will stop it. */
  session_stops: boolean;
  /** Seconds until this session is stopped (when `session_stops`; null when unknown). */
  stops_in_seconds: number | null;
  /** The usage page on the hub's origin ("" when unknown): its #request form asks for more. */
  usage_url?: string;
}

export interface ICharge {
  consumer: string;
  resource: string;
  source: string;
  start: string;
  end: string;
  amount: number;
}

export interface IGpuUse {
  index: number | null;
  uuid: string;
  name: string;
  utilization_percent: number | null;
  memory_used_bytes: number | null;
  memory_total_bytes: number | null;
}

/** Short names in the status bar (the same in every language); the panel uses `resourceTitle`. */
export const RESOURCE_LABELS: Record<string, string> = {
  gpu_hours: 'GPU',
  cpu_hours: 'CPU'
};

/** Display order: GPUs first, they are what people count. */
const ORDER = ['gpu_hours', 'cpu_hours'];

function ordered(resources: Record<string, unknown>): string[] {
  const known = ORDER.filter(r => r in resources);
  const others = Object.keys(resources)
    .filter(r => !ORDER.includes(r))
    .sort();
  return [...known, ...others];
}

export function resourceLabel(resource: string): string {
  return RESOURCE_LABELS[resource] ?? resource.replace(/_hours$/, '').toUpperCase();
}

export function resourceTitle(resource: string, trans: ILocale = ENGLISH): string {
  switch (resource) {
    case 'gpu_hours':
      return trans.__('GPU hours');
    case 'cpu_hours':
      return trans.__('CPU hours');
    default:
      return resource.replace(/_/g, ' ');
  }
}

/** The API rounds hours to 6 decimals: float noise below that is not a lost tenth. */
const EPSILON = 1e-6;

/**
 * Hours left, rounded down (never show more than there is): `310 h`, `12.4 h`,
 * `36 min`, `< 1 min`, `0 h`.
 */
export function formatHours(hours: number, trans: ILocale = ENGLISH): string {
  if (!(hours > 0)) {
    return trans.__('%1 h', decimal(0, 0, trans));
  }
  if (hours >= 100) {
    return trans.__('%1 h', decimal(Math.floor(hours + EPSILON), 0, trans));
  }
  if (hours >= 1) {
    return trans.__('%1 h', decimal(Math.floor(hours * 10 + EPSILON) / 10, 1, trans));
  }
  const minutes = Math.floor(hours * 60 + EPSILON);
  return minutes >= 1 ? trans.__('%1 min', decimal(minutes, 0, trans)) : trans.__('< 1 min');
}

/** Resources that have a limit (remaining not null), in display order. */
export function limitedResources(info: Pick<IQuotaInfo, 'resources'>): string[] {
  return ordered(info.resources).filter(r => info.resources[r].remaining !== null);
}

/** The status bar text, e.g. `GPU 12.4 h · CPU 310 h left`; '' when nothing is limited. */
export function statusText(info: Pick<IQuotaInfo, 'resources'>, trans: ILocale = ENGLISH): string {
  const parts = limitedResources(info).map(
    r => `${resourceLabel(r)} ${formatHours(info.resources[r].remaining as number, trans)}`
  );
  // TRANSLATORS: %1 is a list such as "GPU 12.4 h · CPU 310 h".
  return parts.length ? trans.__('%1 left', parts.join(' · ')) : '';
}

/** The status bar and panel while the quota service does not answer. */
export function unavailableText(trans: ILocale = ENGLISH): string {
  return trans.__('quota unavailable');
}

/** CSS class of the status item: ok, low (under the site's warn fraction), exhausted, unavailable. */
export function stateClass(state: QuotaState | 'unavailable'): string {
  return `sz-quota-${state}`;
}

/**
 * `Dec 1, 2026, 00:00 (+08:00)`, `2026年12月1日 00:00 (+08:00)`: the API's ISO time on the
 * site's clock (the browser's own time zone is not the site's), written the locale's way.
 */
export function formatSiteTime(iso: string | null, trans: ILocale = ENGLISH): string {
  if (!iso) {
    return '';
  }
  const m = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::\d{2}(?:\.\d+)?)?(Z|[+-]\d{2}:\d{2})?$/.exec(
    iso
  );
  if (!m) {
    return iso;
  }
  const [year, month, day, hour, minute] = m.slice(1, 6).map(Number);
  // The site's wall clock written as if it were UTC, and formatted in UTC: never shifted.
  const wall = new Date(Date.UTC(year, month - 1, day, hour, minute));
  const text = new Intl.DateTimeFormat(trans.language, {
    dateStyle: 'medium',
    timeStyle: 'short',
    hourCycle: 'h23',
    timeZone: 'UTC'
  }).format(wall);
  const zone = m[6] === undefined ? '' : m[6] === 'Z' ? ' (UTC)' : ` (${m[6]})`;
  return `${text}${zone}`;
}

/** `resets Dec 1, 2026, 00:00 (+08:00)`, or what a period without reset means. */
export function resetText(resetsAt: string | null, trans: ILocale = ENGLISH): string {
  return resetsAt
    ? trans.__('resets %1', formatSiteTime(resetsAt, trans))
    : trans.__('no reset: grants only');
}

/** The status item's tooltip. */
export function tooltipText(info: IQuotaInfo, trans: ILocale = ENGLISH): string {
  const lines = [
    trans.__(
      'Quota of %1 (account %2): %3',
      info.user,
      info.account,
      resetText(info.period.resets_at, trans)
    )
  ];
  for (const r of limitedResources(info)) {
    const left = formatHours(info.resources[r].remaining as number, trans);
    lines.push(trans.__('%1: %2 left', resourceTitle(r, trans), left));
  }
  if (info.session_stops) {
    lines.push(
      trans.__('Quota used up: this session stops %1', stopsInText(info.stops_in_seconds, trans))
    );
  }
  lines.push(trans.__('Click for details'));
  return lines.join('\n');
}

/** `3 d 4 h`, `5 h 20 min`, `45 min`, `< 1 min`; for time to empty. */
export function formatDuration(hours: number, trans: ILocale = ENGLISH): string {
  if (!isFinite(hours)) {
    return trans.__('never');
  }
  const minutes = Math.max(0, Math.floor(hours * 60));
  if (minutes < 1) {
    return trans.__('< 1 min');
  }
  const [d, h, min] = [Math.floor(minutes / 1440), Math.floor((minutes % 1440) / 60), minutes % 60];
  const n = (value: number) => decimal(value, 0, trans);
  if (d > 0) {
    return h ? trans.__('%1 d %2 h', n(d), n(h)) : trans.__('%1 d', n(d));
  }
  if (h > 0) {
    return min ? trans.__('%1 h %2 min', n(h), n(min)) : trans.__('%1 h', n(h));
  }
  return trans.__('%1 min', n(min));
}

/** What the user burns per hour of `resource` now: the sum over their running sessions. */
export function burnPerHour(info: Pick<IQuotaInfo, 'running'>, resource: string): number {
  return info.running.reduce((sum, r) => sum + (r.cost_per_hour[resource] ?? 0), 0);
}

/** Hours until `resource` runs out at the current burn; null when not limited or not burning. */
export function hoursToEmpty(info: IQuotaInfo, resource: string): number | null {
  const remaining = info.resources[resource]?.remaining;
  const burn = burnPerHour(info, resource);
  if (remaining === null || remaining === undefined || !(burn > 0)) {
    return null;
  }
  return remaining / burn;
}

/** A session's cost per hour: `1 GPU-h/h · 4 CPU-h/h` (resources it does not use left out). */
export function formatCost(cost: Record<string, number> | null, trans: ILocale = ENGLISH): string {
  if (!cost) {
    return trans.__('not metered yet');
  }
  const parts = ordered(cost)
    .filter(r => cost[r] > 0)
    .map(r => costPerHour(r, plain(+cost[r].toFixed(3), trans), trans));
  return parts.length ? parts.join(' · ') : trans.__('free');
}

/** `1 GPU-h/h`: one message per resource, so that each language can name its unit. */
function costPerHour(resource: string, amount: string, trans: ILocale): string {
  switch (resource) {
    case 'gpu_hours':
      return trans.__('%1 GPU-h/h', amount);
    case 'cpu_hours':
      return trans.__('%1 CPU-h/h', amount);
    default:
      return `${amount} ${resourceLabel(resource)}-h/h`;
  }
}

/** Share of a limit used, 0..1, for bars. */
export function usedFraction(limit: ILimit): number {
  const total = limit.allocated + limit.granted;
  if (!(total > 0)) {
    return limit.used > 0 ? 1 : 0;
  }
  return Math.min(1, Math.max(0, limit.used / total));
}

/** `3.2 of 40 h used · 36.8 h left` for one bar. */
export function limitText(limit: ILimit, trans: ILocale = ENGLISH): string {
  const total = limit.allocated + limit.granted;
  return trans.__(
    '%1 of %2 h used · %3 left',
    formatAmount(limit.used, trans),
    formatAmount(total, trans),
    formatHours(limit.remaining, trans)
  );
}

/** An amount of hours with sensible precision: `310.75`, `1.25`, `0.0167`, `0` (no unit). */
export function formatAmount(hours: number, trans: ILocale = ENGLISH): string {
  if (hours === 0) {
    return plain(0, trans);
  }
  if (Math.abs(hours) >= 1) {
    return plain(+hours.toFixed(2), trans);
  }
  return plain(+hours.toPrecision(3), trans);
}

/** `in 5 minutes`, `in 1 minute`, `in less than a minute`, `now`, `soon` (unknown). */
export function stopsInText(seconds: number | null, trans: ILocale = ENGLISH): string {
  if (seconds === null || !isFinite(seconds)) {
    return trans.__('soon');
  }
  if (seconds <= 0) {
    return trans.__('now');
  }
  if (seconds < 60) {
    return trans.__('in less than a minute');
  }
  const minutes = Math.round(seconds / 60);
  return trans._n('in %1 minute', 'in %1 minutes', minutes);
}

/** Resources at zero, in display order. */
export function emptyResources(info: Pick<IQuotaInfo, 'resources'>): string[] {
  return limitedResources(info).filter(r => (info.resources[r].remaining as number) <= 0);
}

/** The notification at zero: when this session stops, or that it keeps running. */
export function exhaustedMessage(
  info: Pick<IQuotaInfo, 'resources' | 'session_stops' | 'stops_in_seconds'>,
  trans: ILocale = ENGLISH
): string {
  if (info.session_stops) {
    return trans.__(
      'Quota used up: this session stops %1: save your work.',
      stopsInText(info.stops_in_seconds, trans)
    );
  }
  const empty = emptyResources(info).map(resourceLabel);
  // TRANSLATORS: %1 is GPU, CPU, or "GPU · CPU".
  return empty.length
    ? trans.__(
        '%1 quota used up: this session uses none of it and keeps running, but sessions that need it cannot start.',
        empty.join(' · ')
      )
    : trans.__(
        'A quota is used up: this session uses none of it and keeps running, but sessions that need it cannot start.'
      );
}

/** The smallest remaining share of any limit, 0..1 (1 when nothing is limited). */
export function lowestShare(info: Pick<IQuotaInfo, 'resources'>): { resource: string; share: number } {
  let lowest = { resource: '', share: 1 };
  for (const r of limitedResources(info)) {
    for (const limit of [info.resources[r].account, info.resources[r].personal]) {
      if (!limit) {
        continue;
      }
      const total = limit.allocated + limit.granted;
      const share = total > 0 ? Math.max(0, limit.remaining) / total : 0;
      if (share < lowest.share) {
        lowest = { resource: r, share };
      }
    }
  }
  return lowest;
}

/** The notification when the quota becomes low: `Less than 10% of your GPU quota left (1.2 h)...`. */
export function lowMessage(info: IQuotaInfo, trans: ILocale = ENGLISH): string {
  const { resource, share } = lowestShare(info);
  const percent = new Intl.NumberFormat(trans.language, { style: 'percent' }).format(
    Math.max(1, Math.ceil(share * 100)) / 100
  );
  const left = formatHours(info.resources[resource]?.remaining ?? 0, trans);
  return trans.__(
    'Less than %1 of your %2 quota left (%3); it %4.',
    percent,
    resourceLabel(resource),
    left,
    resetText(info.period.resets_at, trans)
  );
}

/**
 * Which notification a refresh calls for: one each time the state *becomes* low or
 * exhausted (the first answer counts as a change), none while it stays the same.
 */
export function noticeFor(
  previous: QuotaState | null,
  current: QuotaState
): 'low' | 'exhausted' | null {
  if (current === previous || current === 'ok') {
    return null;
  }
  return current;
}

/** The longest wait between tries while the quota service does not answer, in seconds. */
export const MAX_BACKOFF_SECONDS = 300;

/**
 * Seconds until the next refresh: the refresh period, doubled for each failure in a
 * row, capped at 5 minutes (or at the period, if that is longer).
 */
export function nextDelaySeconds(failures: number, refreshSeconds: number): number {
  const period = Math.max(1, refreshSeconds);
  if (failures <= 0) {
    return period;
  }
  return Math.min(period * 2 ** Math.min(failures, 16), Math.max(period, MAX_BACKOFF_SECONDS));
}

/** `42%` and `3.1 / 80 GiB` for the live GPU rows. */
export function formatPercent(value: number | null, trans: ILocale = ENGLISH): string {
  if (value === null) {
    return '?';
  }
  return new Intl.NumberFormat(trans.language, { style: 'percent' }).format(Math.round(value) / 100);
}

export function formatGiB(used: number | null, total: number | null, trans: ILocale = ENGLISH): string {
  if (used === null || total === null) {
    return '?';
  }
  const gib = (b: number) => decimal(b / 2 ** 30, 1, trans);
  return `${gib(used)} / ${gib(total)} GiB`;
}

/** `11-29 22:54:03` from a charge's ISO start (site time, as the API gives it). */
export function formatChargeTime(iso: string): string {
  const m = /^\d{4}-(\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})/.exec(iso);
  return m ? `${m[1]} ${m[2]}` : iso;
}
