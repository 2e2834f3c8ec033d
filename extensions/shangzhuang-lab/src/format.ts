/**
 * What the quota figures look like on screen: pure functions, no JupyterLab imports,
 * so that jest tests them directly. tests/e2e mirrors `formatHours` and `statusText` in
 * Python to check the status bar against the quota API.
 */

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

/** Short names in the status bar; the panel uses `RESOURCE_TITLES`. */
export const RESOURCE_LABELS: Record<string, string> = {
  gpu_hours: 'GPU',
  cpu_hours: 'CPU'
};

export const RESOURCE_TITLES: Record<string, string> = {
  gpu_hours: 'GPU hours',
  cpu_hours: 'CPU hours'
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

export function resourceTitle(resource: string): string {
  return RESOURCE_TITLES[resource] ?? resource.replace(/_/g, ' ');
}

/** The API rounds hours to 6 decimals: float noise below that is not a lost tenth. */
const EPSILON = 1e-6;

/**
 * Hours left, rounded down (never show more than there is): `310 h`, `12.4 h`,
 * `36 min`, `< 1 min`, `0 h`.
 */
export function formatHours(hours: number): string {
  if (!(hours > 0)) {
    return '0 h';
  }
  if (hours >= 100) {
    return `${Math.floor(hours + EPSILON)} h`;
  }
  if (hours >= 1) {
    return `${(Math.floor(hours * 10 + EPSILON) / 10).toFixed(1)} h`;
  }
  const minutes = Math.floor(hours * 60 + EPSILON);
  return minutes >= 1 ? `${minutes} min` : '< 1 min';
}

/** Resources that have a limit (remaining not null), in display order. */
export function limitedResources(info: Pick<IQuotaInfo, 'resources'>): string[] {
  return ordered(info.resources).filter(r => info.resources[r].remaining !== null);
}

/** The status bar text, e.g. `GPU 12.4 h · CPU 310 h left`; '' when nothing is limited. */
export function statusText(info: Pick<IQuotaInfo, 'resources'>): string {
  const parts = limitedResources(info).map(
    r => `${resourceLabel(r)} ${formatHours(info.resources[r].remaining as number)}`
  );
  return parts.length ? `${parts.join(' · ')} left` : '';
}

export const UNAVAILABLE_TEXT = 'quota unavailable';

/** CSS class of the status item: ok, low (under the site's warn fraction), exhausted, unavailable. */
export function stateClass(state: QuotaState | 'unavailable'): string {
  return `sz-quota-${state}`;
}

/** `2026-12-01 00:00 (+08:00)` from the API's ISO time in the site's zone; keeps the site's clock. */
export function formatSiteTime(iso: string | null): string {
  if (!iso) {
    return '';
  }
  const m = /^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2})(?::\d{2}(?:\.\d+)?)?(Z|[+-]\d{2}:\d{2})?$/.exec(iso);
  if (!m) {
    return iso;
  }
  const zone = m[3] === undefined ? '' : m[3] === 'Z' ? ' (UTC)' : ` (${m[3]})`;
  return `${m[1]} ${m[2]}${zone}`;
}

/** `resets 2026-12-01 00:00 (+08:00)`, or what a period without reset means. */
export function resetText(resetsAt: string | null): string {
  return resetsAt ? `resets ${formatSiteTime(resetsAt)}` : 'no reset: grants only';
}

/** The status item's tooltip. */
export function tooltipText(info: IQuotaInfo): string {
  const lines = [`Quota of ${info.user} (account ${info.account}): ${resetText(info.period.resets_at)}`];
  for (const r of limitedResources(info)) {
    lines.push(`${resourceTitle(r)}: ${formatHours(info.resources[r].remaining as number)} left`);
  }
  if (info.session_stops) {
    lines.push(`Quota used up: this session stops ${stopsInText(info.stops_in_seconds)}`);
  }
  lines.push('Click for details');
  return lines.join('\n');
}

/** `3 d 4 h`, `5 h 20 min`, `45 min`, `< 1 min`; for time to empty. */
export function formatDuration(hours: number): string {
  if (!isFinite(hours)) {
    return 'never';
  }
  const minutes = Math.max(0, Math.floor(hours * 60));
  if (minutes < 1) {
    return '< 1 min';
  }
  const d = Math.floor(minutes / 1440);
  const h = Math.floor((minutes % 1440) / 60);
  const min = minutes % 60;
  if (d > 0) {
    return h ? `${d} d ${h} h` : `${d} d`;
  }
  if (h > 0) {
    return min ? `${h} h ${min} min` : `${h} h`;
  }
  return `${min} min`;
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
export function formatCost(cost: Record<string, number> | null): string {
  if (!cost) {
    return 'not metered yet';
  }
  const parts = ordered(cost)
    .filter(r => cost[r] > 0)
    .map(r => `${+cost[r].toFixed(3)} ${resourceLabel(r)}-h/h`);
  return parts.length ? parts.join(' · ') : 'free';
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
export function limitText(limit: ILimit): string {
  const total = limit.allocated + limit.granted;
  return `${formatAmount(limit.used, '')} of ${formatAmount(total)} used · ${formatHours(
    limit.remaining
  )} left`;
}

/** An amount of hours with sensible precision: `310.75 h`, `1.25 h`, `0.0167 h`, `0 h`. */
export function formatAmount(hours: number, unit = ' h'): string {
  if (hours === 0) {
    return `0${unit}`;
  }
  if (Math.abs(hours) >= 1) {
    return `${+hours.toFixed(2)}${unit}`;
  }
  return `${+hours.toPrecision(3)}${unit}`;
}

/** `in 5 minutes`, `in 1 minute`, `in less than a minute`, `now`, `soon` (unknown). */
export function stopsInText(seconds: number | null): string {
  if (seconds === null || !isFinite(seconds)) {
    return 'soon';
  }
  if (seconds <= 0) {
    return 'now';
  }
  if (seconds < 60) {
    return 'in less than a minute';
  }
  const minutes = Math.round(seconds / 60);
  return minutes === 1 ? 'in 1 minute' : `in ${minutes} minutes`;
}

/** Resources at zero, in display order. */
export function emptyResources(info: Pick<IQuotaInfo, 'resources'>): string[] {
  return limitedResources(info).filter(r => (info.resources[r].remaining as number) <= 0);
}

/** The notification at zero: when this session stops, or that it keeps running. */
export function exhaustedMessage(
  info: Pick<IQuotaInfo, 'resources' | 'session_stops' | 'stops_in_seconds'>
): string {
  if (info.session_stops) {
    return `Quota used up: this session stops ${stopsInText(info.stops_in_seconds)}: save your work.`;
  }
  const empty = emptyResources(info).map(resourceLabel).join(' and ');
  return (
    `${empty || 'A'} quota used up: this session uses none of it and keeps running, ` +
    'but sessions that need it cannot start.'
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
export function lowMessage(info: IQuotaInfo): string {
  const { resource, share } = lowestShare(info);
  const percent = Math.max(1, Math.ceil(share * 100));
  const left = formatHours(info.resources[resource]?.remaining ?? 0);
  return (
    `Less than ${percent}% of your ${resourceLabel(resource)} quota left (${left}); ` +
    `it ${resetText(info.period.resets_at)}.`
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
export function formatPercent(value: number | null): string {
  return value === null ? '?' : `${Math.round(value)}%`;
}

export function formatGiB(used: number | null, total: number | null): string {
  if (used === null || total === null) {
    return '?';
  }
  const gib = (b: number) => (b / 2 ** 30).toFixed(1);
  return `${gib(used)} / ${gib(total)} GiB`;
}

/** `11-29 22:54:03` from a charge's ISO start (site time, as the API gives it). */
export function formatChargeTime(iso: string): string {
  const m = /^\d{4}-(\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})/.exec(iso);
  return m ? `${m[1]} ${m[2]}` : iso;
}
