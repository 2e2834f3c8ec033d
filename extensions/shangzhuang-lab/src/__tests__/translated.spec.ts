/**
 * The formatters in Chinese, through JupyterLab's own Gettext and the compiled catalog the
 * wheel ships (shangzhuang_lab/locale/zh_CN/LC_MESSAGES/shangzhuang_lab.json), the way
 * Lab's TranslationManager loads it.
 */
import { Gettext } from '@jupyterlab/translation/lib/gettext';

import {
  DOMAIN,
  exhaustedMessage,
  formatCost,
  formatDuration,
  formatHours,
  formatSiteTime,
  ILocale,
  lowMessage,
  resetText,
  statusText,
  stopsInText,
  tooltipText
} from '../format';
import { audienceText } from '../publishForm';
import catalog from '../../shangzhuang_lab/locale/zh_CN/LC_MESSAGES/shangzhuang_lab.json';

// Gettext reads <html lang> for a default locale; jest runs without a DOM.
(globalThis as any).document = { documentElement: { getAttribute: () => null } };

function chinese(): ILocale {
  const meta = (catalog as any)[''];
  const gettext = new Gettext({ domain: DOMAIN, locale: 'zh-CN' });
  // As TranslationManager.load does: the catalog's plural_forms is Gettext's pluralForms.
  gettext.loadJSON({ ...catalog, '': { ...meta, pluralForms: meta.plural_forms } } as any, DOMAIN);
  return { __: gettext.__.bind(gettext), _n: gettext._n.bind(gettext), language: 'zh-CN' };
}

const zh = chinese();

const limit = (allocated: number, used: number) => ({
  allocated,
  granted: 0,
  used,
  remaining: allocated - used
});

const info = {
  enabled: true,
  user: 'alice',
  account: 'tsinghua',
  state: 'low' as const,
  period: { start: null, resets_at: '2026-12-01T00:00:00+08:00' },
  resources: {
    gpu_hours: { remaining: 12.4, account: limit(500, 100), personal: limit(40, 27.6) },
    cpu_hours: { remaining: 310.75, account: limit(20000, 19689.25), personal: null }
  },
  exhausted_since: null,
  running: [],
  session: { profile: 'gpu-1', cost_per_hour: { cpu_hours: 4, gpu_hours: 1 } },
  grace_seconds: 300,
  session_stops: false,
  stops_in_seconds: null
};

describe('in Chinese', () => {
  it('writes the status bar as the issue asks', () => {
    expect(statusText(info, zh)).toBe('剩余 GPU 12.4 小时 · CPU 310 小时');
    expect(formatHours(0.6, zh)).toBe('36 分钟');
    expect(formatHours(0.001, zh)).toBe('不到 1 分钟');
  });

  it('writes dates the Chinese way, on the site clock', () => {
    expect(formatSiteTime('2026-12-01T00:00:00+08:00', zh)).toBe('2026年12月1日 00:00 (+08:00)');
    expect(resetText('2026-12-01T00:00:00+08:00', zh)).toBe('2026年12月1日 00:00 (+08:00) 重置');
    expect(resetText(null, zh)).toBe('不定期重置：仅靠管理员追加');
  });

  it('translates durations, costs, counts and lists', () => {
    expect(formatDuration(5.34, zh)).toBe('5 小时 20 分钟');
    expect(formatDuration(76, zh)).toBe('3 天 4 小时');
    expect(formatCost({ cpu_hours: 4, gpu_hours: 1 }, zh)).toBe('1 GPU 卡时/小时 · 4 CPU 核时/小时');
    expect(stopsInText(300, zh)).toBe('将在 5 分钟后');
    expect(stopsInText(60, zh)).toBe('将在 1 分钟后');
    const viewers = { users: ['bob'], groups: ['physics'], signed_in: false, public: false };
    expect(audienceText(viewers, zh)).toBe('bob、用户组 physics');
  });

  it('writes whole notices without an English word but names and units', () => {
    const texts = [
      tooltipText(info, zh),
      lowMessage(info, zh),
      exhaustedMessage({ ...info, session_stops: true, stops_in_seconds: 120 }, zh)
    ];
    expect(texts[0].split('\n')[0]).toBe('alice 的配额（账户 tsinghua）：2026年12月1日 00:00 (+08:00) 重置');
    expect(texts[1]).toBe('你的 CPU 配额已不足 2%（剩余 310 小时）；2026年12月1日 00:00 (+08:00) 重置。');
    expect(texts[2]).toBe('配额已用完：本会话将在 2 分钟后停止，请保存你的工作。');
    for (const text of texts) {
      const english = text.replace(/alice|tsinghua|GPU|CPU/g, '').match(/[A-Za-z]{2,}/g);
      expect(english).toBeNull();
    }
  });
});
