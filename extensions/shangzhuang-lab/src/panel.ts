/**
 * The quota side panel: a bar per limit (account pool, personal cap), this session's
 * profile and cost, time to empty, reset date, live GPU use, the last ten charges and
 * the full usage as CSV. Plain DOM with textContent: nothing from the API is parsed as HTML.
 */
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import {
  formatAmount,
  formatChargeTime,
  formatCost,
  formatDuration,
  formatGiB,
  formatHours,
  formatPercent,
  hoursToEmpty,
  ICharge,
  IGpuUse,
  ILimit,
  ILocale,
  IQuotaInfo,
  limitText,
  limitedResources,
  resetText,
  resourceLabel,
  resourceTitle,
  stateClass,
  statusText,
  stopsInText,
  unavailableText,
  usedFraction
} from './format';
import { endpointUrl, fetchCharges, fetchGpus, QuotaModel } from './model';
import { reclaimOf, renderReclaim } from './reclaim';

export const PANEL_ID = 'shangzhuang-quota-panel';

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className = '',
  text = ''
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (text) {
    node.textContent = text;
  }
  return node;
}

function bar(fraction: number, className = ''): HTMLElement {
  const outer = el('div', `sz-bar ${className}`.trim());
  const fill = el('div', 'sz-bar-fill');
  fill.style.width = `${(fraction * 100).toFixed(1)}%`;
  outer.setAttribute('role', 'meter');
  outer.setAttribute('aria-valuemin', '0');
  outer.setAttribute('aria-valuemax', '100');
  outer.setAttribute('aria-valuenow', (fraction * 100).toFixed(0));
  outer.appendChild(fill);
  return outer;
}

export class QuotaPanel extends Widget {
  gpuRefreshSeconds = 5;

  private _charges: ICharge[] | null = null;
  private _chargesError: string | null = null;
  private _gpus: { gpus: IGpuUse[]; message: string | null } | null = null;
  private _gpuError: string | null = null;
  private _gpuTimer: number | null = null;

  constructor(
    private model: QuotaModel,
    private trans: ILocale
  ) {
    super();
    this.id = PANEL_ID;
    this.addClass('sz-quota-panel');
    this.title.caption = trans.__('Quota: GPU and CPU hours');
    model.changed.connect(this.onQuotaChanged, this);
    this.render();
  }

  dispose(): void {
    this.stopGpuTimer();
    super.dispose();
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    void this.refreshDetails();
    this.startGpuTimer();
  }

  protected onAfterHide(msg: Message): void {
    super.onAfterHide(msg);
    this.stopGpuTimer();
  }

  private onQuotaChanged(): void {
    this.render();
    // New charges come with each refresh; while the service is down, don't ask twice.
    if (this.isVisible && !this.model.error && !this.model.disabled) {
      void this.refreshCharges();
    }
  }

  private startGpuTimer(): void {
    this.stopGpuTimer();
    this._gpuTimer = window.setInterval(
      () => void this.refreshGpus(),
      Math.max(1, this.gpuRefreshSeconds) * 1000
    );
  }

  private stopGpuTimer(): void {
    if (this._gpuTimer !== null) {
      window.clearInterval(this._gpuTimer);
      this._gpuTimer = null;
    }
  }

  async refreshDetails(): Promise<void> {
    await Promise.all([this.model.disabled ? null : this.refreshCharges(), this.refreshGpus()]);
  }

  private async refreshCharges(): Promise<void> {
    try {
      this._charges = (await fetchCharges()).records;
      this._chargesError = null;
    } catch (err) {
      this._chargesError = err instanceof Error ? err.message : String(err);
    }
    this.render();
  }

  private async refreshGpus(): Promise<void> {
    try {
      this._gpus = await fetchGpus();
      this._gpuError = null;
    } catch (err) {
      this._gpuError = err instanceof Error ? err.message : String(err);
    }
    this.render();
  }

  render(): void {
    const node = this.node;
    const trans = this.trans;
    node.replaceChildren();
    const info = this.model.info;
    const head = el('div', 'sz-panel-head');
    head.appendChild(el('h2', '', trans.__('Quota')));
    const state = this.model.error ? 'unavailable' : info?.state ?? 'ok';
    const summary = el(
      'div',
      `sz-panel-summary ${stateClass(state)}`,
      this.model.error
        ? unavailableText(this.trans)
        : info
          ? (info.enabled && statusText(info, this.trans)) || trans.__('not limited')
          : trans.__('loading…')
    );
    summary.dataset.state = state;
    head.appendChild(summary);
    node.appendChild(head);

    if (this.model.error) {
      const retry = Math.max(0, Math.round((this.model.nextAt - Date.now()) / 1000));
      node.appendChild(
        el(
          'p',
          'sz-panel-error',
          info
            ? trans.__(
                'The quota service does not answer (%1); trying again in %2 s. The figures below are from the last answer.',
                this.model.error,
                retry
              )
            : trans.__(
                'The quota service does not answer (%1); trying again in %2 s.',
                this.model.error,
                retry
              )
        )
      );
    }
    if (!info) {
      return;
    }
    if (!info.enabled) {
      node.appendChild(el('p', 'sz-muted', trans.__('This site has no GPU or CPU hour quotas.')));
      node.appendChild(this.renderGpus());
      return;
    }

    node.appendChild(this.renderSession(info));
    const reclaim = reclaimOf(info); // its GPUs sit idle: when it stops, and the way on
    if (reclaim) {
      node.appendChild(renderReclaim(reclaim, trans));
    }
    node.appendChild(this.renderLimits(info));
    if (info.usage_url && limitedResources(info).length) {
      node.appendChild(this.renderAskMore(info.usage_url));
    }
    node.appendChild(this.renderGpus());
    node.appendChild(this.renderCharges());
  }

  private renderSession(info: IQuotaInfo): HTMLElement {
    const trans = this.trans;
    const section = el('section', 'sz-session');
    section.appendChild(el('h3', '', trans.__('This session')));
    const dl = el('dl', 'sz-facts');
    const fact = (term: string, value: string, cls: string) => {
      dl.appendChild(el('dt', '', term));
      dl.appendChild(el('dd', cls, value));
    };
    fact(trans.__('Profile'), info.session.profile ?? trans.__('unknown'), 'sz-session-profile');
    fact(trans.__('Cost per hour'), formatCost(info.session.cost_per_hour, this.trans), 'sz-session-cost');
    fact(trans.__('Account'), info.account, 'sz-account');
    fact(trans.__('Period'), resetText(info.period.resets_at, this.trans), 'sz-resets');
    if (info.session_stops) {
      fact(trans.__('Stops'), stopsInText(info.stops_in_seconds, this.trans), 'sz-stops');
    }
    if (info.running.length > 1) {
      fact(trans.__('Your sessions'), String(info.running.length), 'sz-running-count');
    }
    section.appendChild(dl);
    return section;
  }

  private renderLimits(info: IQuotaInfo): HTMLElement {
    const trans = this.trans;
    const section = el('section', 'sz-limits');
    const resources = limitedResources(info);
    if (!resources.length) {
      section.appendChild(el('p', 'sz-muted', trans.__('No GPU or CPU hours are limited for you.')));
      return section;
    }
    for (const r of resources) {
      const rb = info.resources[r];
      const block = el('div', 'sz-resource');
      block.dataset.resource = r;
      const left = formatHours(rb.remaining as number, this.trans);
      const title = el('h3', '', trans.__('%1: %2 left', resourceTitle(r, this.trans), left));
      block.appendChild(title);
      const row = (label: string, limit: ILimit, kind: string) => {
        const line = el('div', `sz-limit sz-limit-${kind}`);
        line.appendChild(el('div', 'sz-limit-label', label));
        line.appendChild(bar(usedFraction(limit), limit.remaining <= 0 ? 'sz-bar-empty' : ''));
        line.appendChild(el('div', 'sz-limit-text', limitText(limit, this.trans)));
        block.appendChild(line);
      };
      if (rb.account) {
        row(trans.__('Account pool (%1)', info.account), rb.account, 'account');
      }
      if (rb.personal) {
        row(trans.__('Your personal cap'), rb.personal, 'personal');
      }
      const hours = hoursToEmpty(info, r);
      let burn: string;
      if ((rb.remaining as number) <= 0) {
        burn = trans.__('Used up');
      } else if (hours === null) {
        burn = info.running.length
          ? trans.__('Not used by your sessions now')
          : trans.__('Not used by any session now');
      } else {
        burn = trans.__('Empty in %1 at the current burn', formatDuration(hours, this.trans));
      }
      block.appendChild(el('div', 'sz-time-to-empty', burn));
      section.appendChild(block);
    }
    return section;
  }

  /** The usage page's request form, in a new tab on the hub's origin: the hub signs the
   * user in there and the page's XSRF token guards the request (nothing is posted from Lab). */
  private renderAskMore(usageUrl: string): HTMLElement {
    const section = el('section', 'sz-ask-more');
    const link = el('a', 'sz-ask-more-link', this.trans.__('Request more quota'));
    link.href = `${usageUrl}#request`;
    link.target = '_blank';
    link.rel = 'noopener noreferrer';
    link.title = this.trans.__(
      "Opens the usage page's request form: your account's managers and the admins decide."
    );
    section.appendChild(link);
    return section;
  }

  private renderGpus(): HTMLElement {
    const trans = this.trans;
    const section = el('section', 'sz-gpus');
    section.appendChild(el('h3', '', trans.__('GPUs of this session')));
    if (this._gpuError) {
      section.appendChild(el('p', 'sz-muted', trans.__('GPU figures unavailable: %1', this._gpuError)));
    } else if (!this._gpus) {
      section.appendChild(el('p', 'sz-muted', trans.__('reading…')));
    } else if (!this._gpus.gpus.length) {
      const why = this._gpus.message ?? trans.__('no GPU in this session');
      section.appendChild(el('p', 'sz-muted sz-no-gpu', why));
    } else {
      for (const gpu of this._gpus.gpus) {
        const row = el('div', 'sz-gpu');
        row.appendChild(el('div', 'sz-gpu-name', `GPU ${gpu.index ?? '?'}: ${gpu.name}`));
        const util = gpu.utilization_percent ?? 0;
        const busy = formatPercent(gpu.utilization_percent, this.trans);
        row.appendChild(el('div', 'sz-limit-label', trans.__('Utilisation %1', busy)));
        row.appendChild(bar(util / 100));
        const mem =
          gpu.memory_used_bytes !== null && gpu.memory_total_bytes
            ? gpu.memory_used_bytes / gpu.memory_total_bytes
            : 0;
        const memory = formatGiB(gpu.memory_used_bytes, gpu.memory_total_bytes, this.trans);
        row.appendChild(el('div', 'sz-limit-label', trans.__('Memory %1', memory)));
        row.appendChild(bar(mem));
        section.appendChild(row);
      }
      if (this._gpus.message) {
        section.appendChild(el('p', 'sz-muted', this._gpus.message));
      }
    }
    return section;
  }

  private renderCharges(): HTMLElement {
    const trans = this.trans;
    const section = el('section', 'sz-charges');
    section.appendChild(el('h3', '', trans.__('Last charges')));
    if (this._chargesError) {
      section.appendChild(el('p', 'sz-muted', trans.__('Charges unavailable: %1', this._chargesError)));
    } else if (!this._charges) {
      section.appendChild(el('p', 'sz-muted', trans.__('loading…')));
    } else if (!this._charges.length) {
      section.appendChild(el('p', 'sz-muted', trans.__('No charges yet.')));
    } else {
      const table = el('table', 'sz-charges-table');
      const head = el('tr');
      for (const [h, cls] of [[trans.__('From'), ''], ['', ''], [trans.__('Hours'), 'sz-num']]) {
        head.appendChild(el('th', cls, h));
      }
      table.appendChild(head);
      for (const c of this._charges) {
        const tr = el('tr');
        tr.title = `${c.source}: ${c.consumer}\n${c.start} – ${c.end}`;
        tr.appendChild(el('td', 'sz-when', formatChargeTime(c.start)));
        tr.appendChild(el('td', '', resourceLabel(c.resource)));
        tr.appendChild(el('td', 'sz-num', formatAmount(c.amount, this.trans)));
        table.appendChild(tr);
      }
      section.appendChild(table);
    }
    const link = el('a', 'sz-csv-link', trans.__('Download all usage (CSV)'));
    link.href = endpointUrl('usage.csv');
    link.setAttribute('download', 'usage.csv');
    section.appendChild(link);
    return section;
  }
}
