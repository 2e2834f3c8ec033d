import {
  burnPerHour,
  exhaustedMessage,
  formatAmount,
  formatCost,
  formatDuration,
  formatGiB,
  formatHours,
  formatSiteTime,
  hoursToEmpty,
  ILimit,
  IQuotaInfo,
  limitText,
  lowMessage,
  lowestShare,
  MAX_BACKOFF_SECONDS,
  nextDelaySeconds,
  noticeFor,
  resetText,
  stateClass,
  statusText,
  stopsInText,
  tooltipText,
  usedFraction
} from '../format';
import cases from './format-cases.json';

function limit(allocated: number, used: number, granted = 0): ILimit {
  return { allocated, granted, used, remaining: allocated + granted - used };
}

function quota(overrides: Partial<IQuotaInfo> = {}): IQuotaInfo {
  return {
    enabled: true,
    user: 'alice',
    account: 'tsinghua',
    state: 'ok',
    period: { start: '2026-11-01T00:00:00+08:00', resets_at: '2026-12-01T00:00:00+08:00' },
    resources: {
      cpu_hours: { remaining: 310.75, account: limit(20000, 19689.25), personal: null },
      gpu_hours: { remaining: 12.4, account: limit(500, 100), personal: limit(40, 27.6) }
    },
    exhausted_since: null,
    running: [
      {
        consumer: 'lab:alice/@1',
        source: 'lab',
        profile: 'gpu-1',
        cost_per_hour: { cpu_hours: 4, gpu_hours: 1 }
      }
    ],
    session: { profile: 'gpu-1', cost_per_hour: { cpu_hours: 4, gpu_hours: 1 } },
    grace_seconds: 300,
    session_stops: false,
    stops_in_seconds: null,
    ...overrides
  };
}

// Shared with the Python mirror in tests/e2e/quota_text.py.
const CASES = cases as unknown as {
  formatHours: [number, string][];
  statusText: [Record<string, number | null>, string][];
};

describe('formatHours', () => {
  it.each(CASES.formatHours)('%p hours -> %p', (hours, text) => {
    expect(formatHours(hours)).toBe(text);
  });

  it('never rounds up: what is shown is there', () => {
    for (let i = 0; i < 2000; i++) {
      const h = i * 0.0731;
      const shown = parseFloat(formatHours(h));
      const unit = formatHours(h).endsWith('min') ? 60 : 1;
      if (!isNaN(shown)) {
        expect(shown / unit).toBeLessThanOrEqual(h + 1e-6);
      }
    }
  });
});

describe('statusText', () => {
  it.each(CASES.statusText)('%p -> %p', (remaining, text) => {
    const resources: IQuotaInfo['resources'] = {};
    for (const [r, left] of Object.entries(remaining)) {
      resources[r] = { remaining: left, account: null, personal: null };
    }
    expect(statusText({ resources })).toBe(text);
  });

  it('names the limited resources, GPUs first', () => {
    expect(statusText(quota())).toBe('GPU 12.4 h · CPU 310 h left');
  });

  it('leaves out resources without a limit', () => {
    const q = quota();
    q.resources.gpu_hours = { remaining: null, account: null, personal: null };
    expect(statusText(q)).toBe('CPU 310 h left');
  });

  it('is empty when nothing is limited', () => {
    const q = quota();
    q.resources.gpu_hours = { remaining: null, account: null, personal: null };
    q.resources.cpu_hours = { remaining: null, account: null, personal: null };
    expect(statusText(q)).toBe('');
  });
});

describe('state and thresholds', () => {
  it('gives one class per state', () => {
    expect(stateClass('ok')).toBe('sz-quota-ok');
    expect(stateClass('low')).toBe('sz-quota-low');
    expect(stateClass('exhausted')).toBe('sz-quota-exhausted');
    expect(stateClass('unavailable')).toBe('sz-quota-unavailable');
  });

  it('notifies once each time the state becomes low or exhausted', () => {
    expect(noticeFor(null, 'ok')).toBeNull();
    expect(noticeFor(null, 'low')).toBe('low');
    expect(noticeFor('ok', 'low')).toBe('low');
    expect(noticeFor('low', 'low')).toBeNull();
    expect(noticeFor('low', 'exhausted')).toBe('exhausted');
    expect(noticeFor('exhausted', 'exhausted')).toBeNull();
    expect(noticeFor('exhausted', 'ok')).toBeNull();
    expect(noticeFor('ok', 'low')).toBe('low');
  });

  it('says which limit is low, by how much', () => {
    const q = quota({ state: 'low' });
    q.resources.gpu_hours = { remaining: 3.5, account: limit(500, 100), personal: limit(40, 36.5) };
    q.resources.cpu_hours.account = limit(20000, 10000);
    expect(lowestShare(q)).toEqual({ resource: 'gpu_hours', share: 3.5 / 40 });
    expect(lowMessage(q)).toBe(
      'Less than 9% of your GPU quota left (3.5 h); it resets Dec 1, 2026, 00:00 (+08:00).'
    );
  });

  it('counts grants in the share', () => {
    const q = quota();
    q.resources.gpu_hours = { remaining: 9, account: limit(10, 11, 10), personal: null };
    q.resources.cpu_hours = { remaining: null, account: null, personal: null };
    expect(lowestShare(q).share).toBeCloseTo(9 / 20);
  });
});

describe('bars and amounts', () => {
  it('is the used share of allocation plus grants, clamped', () => {
    expect(usedFraction(limit(40, 10))).toBe(0.25);
    expect(usedFraction(limit(40, 10, 40))).toBe(0.125);
    expect(usedFraction(limit(1, 2))).toBe(1);
    expect(usedFraction(limit(0, 0))).toBe(0);
    expect(usedFraction(limit(0, 1))).toBe(1);
  });

  it('writes a limit as used of total and left', () => {
    expect(limitText(limit(40, 27.6))).toBe('27.6 of 40 h used · 12.4 h left');
  });

  it.each([
    [0, '0'],
    [0.0166666, '0.0167'],
    [1.256, '1.26'],
    [310.75, '310.75'],
    [20000, '20000']
  ])('formatAmount(%p) = %p', (h, text) => expect(formatAmount(h)).toBe(text));

  it('writes costs without the resources a profile does not use', () => {
    expect(formatCost({ cpu_hours: 4, gpu_hours: 1 })).toBe('1 GPU-h/h · 4 CPU-h/h');
    expect(formatCost({ cpu_hours: 2, gpu_hours: 0 })).toBe('2 CPU-h/h');
    expect(formatCost(null)).toBe('not metered yet');
  });

  it('writes GPU memory in GiB', () => {
    expect(formatGiB(3 * 2 ** 30, 80 * 2 ** 30)).toBe('3.0 / 80.0 GiB');
    expect(formatGiB(null, 1)).toBe('?');
  });
});

describe('time to empty', () => {
  it('divides remaining by the burn of the running sessions', () => {
    const q = quota();
    expect(burnPerHour(q, 'gpu_hours')).toBe(1);
    expect(hoursToEmpty(q, 'gpu_hours')).toBeCloseTo(12.4);
    expect(hoursToEmpty(q, 'cpu_hours')).toBeCloseTo(310.75 / 4);
    q.running.push({ ...q.running[0], consumer: 'lab:alice/big@2' });
    expect(hoursToEmpty(q, 'gpu_hours')).toBeCloseTo(6.2);
  });

  it('is null when not burning or not limited', () => {
    const q = quota({ running: [] });
    expect(hoursToEmpty(q, 'gpu_hours')).toBeNull();
    const r = quota();
    r.resources.gpu_hours.remaining = null;
    expect(hoursToEmpty(r, 'gpu_hours')).toBeNull();
  });

  it.each([
    [77.6875, '3 d 5 h'],
    [48, '2 d'],
    [5.34, '5 h 20 min'],
    [2, '2 h'],
    [0.75, '45 min'],
    [0.001, '< 1 min'],
    [Infinity, 'never']
  ])('formatDuration(%p) = %p', (h, text) => expect(formatDuration(h)).toBe(text));
});

describe('reset date and tooltip', () => {
  it('keeps the site clock of the API', () => {
    expect(formatSiteTime('2026-12-01T00:00:00+08:00')).toBe('Dec 1, 2026, 00:00 (+08:00)');
    expect(formatSiteTime('2026-11-30T23:59:00+08:00')).toBe('Nov 30, 2026, 23:59 (+08:00)');
    expect(formatSiteTime('2026-12-01T00:00:00Z')).toBe('Dec 1, 2026, 00:00 (UTC)');
    expect(formatSiteTime('2026-12-01T08:30:00')).toBe('Dec 1, 2026, 08:30');
    expect(formatSiteTime('not a time')).toBe('not a time');
    expect(formatSiteTime(null)).toBe('');
    expect(resetText(null)).toBe('no reset: grants only');
  });

  it('gives the reset date in the tooltip', () => {
    expect(tooltipText(quota())).toBe(
      'Quota of alice (account tsinghua): resets Dec 1, 2026, 00:00 (+08:00)\n' +
        'GPU hours: 12.4 h left\nCPU hours: 310 h left\nClick for details'
    );
  });

  it('counts down in the tooltip when this session will be stopped', () => {
    const q = quota({ state: 'exhausted', session_stops: true, stops_in_seconds: 61 });
    expect(tooltipText(q).split('\n')).toContain('Quota used up: this session stops in 1 minute');
  });
});

describe('exhausted', () => {
  it.each([
    [300, 'in 5 minutes'],
    [89, 'in 1 minute'],
    [59, 'in less than a minute'],
    [0, 'now'],
    [null, 'soon']
  ])('stopsInText(%p) = %p', (s, text) => expect(stopsInText(s)).toBe(text));

  it('tells the user to save their work when this session will stop', () => {
    const q = quota({ state: 'exhausted', session_stops: true, stops_in_seconds: 300 });
    expect(exhaustedMessage(q)).toBe(
      'Quota used up: this session stops in 5 minutes: save your work.'
    );
    expect(exhaustedMessage({ ...q, stops_in_seconds: null })).toBe(
      'Quota used up: this session stops soon: save your work.'
    );
  });

  it('says a session that does not burn the empty resource keeps running', () => {
    const q = quota({ state: 'exhausted', session_stops: false });
    q.resources.gpu_hours = { remaining: 0, account: limit(500, 100), personal: limit(40, 40) };
    expect(exhaustedMessage(q)).toBe(
      'GPU quota used up: this session uses none of it and keeps running, ' +
        'but sessions that need it cannot start.'
    );
  });
});

describe('backoff', () => {
  it('waits the refresh period while all is well', () => {
    expect(nextDelaySeconds(0, 30)).toBe(30);
    expect(nextDelaySeconds(0, 0.1)).toBe(1);
  });

  it('doubles per failure, up to five minutes', () => {
    expect([1, 2, 3, 4, 5, 6].map(f => nextDelaySeconds(f, 30))).toEqual([
      60, 120, 240, 300, 300, 300
    ]);
    expect(nextDelaySeconds(1000, 2)).toBe(MAX_BACKOFF_SECONDS);
  });

  it('never waits less than the period, even a long one', () => {
    expect(nextDelaySeconds(3, 600)).toBe(600);
  });

  it('makes few requests in an hour of outage', () => {
    let t = 0;
    let tries = 0;
    while (t < 3600) {
      tries += 1;
      t += nextDelaySeconds(tries, 2);
    }
    expect(tries).toBeLessThan(20);
  });
});
