/**
 * Idle GPU reclaim in Lab: when the quota service has warned this session that its GPUs sit
 * idle, say when it stops and why (status bar tooltip, panel, a notification), with the
 * way on: "Continue on CPU" opens the quota service's page on the hub's origin, which asks
 * to confirm and restarts the session there (its XSRF token and the hub's sign-in guard it;
 * nothing is posted from Lab).
 */
import { Notification } from '@jupyterlab/apputils';

import { ENGLISH, formatSiteTime, ILocale, IQuotaInfo, stopsInText } from './format';
import { QuotaModel } from './model';

/** GET shangzhuang/quota's `reclaim`: this session's warning (null: none). */
export interface IReclaim {
  idle_since: string;
  warned_at: string;
  stops_at: string;
  stops_in_seconds: number;
  threshold_percent: number;
  /** The quota service's "continue on CPU" page, on the hub's origin. */
  continue_url: string;
}

/** This session's warning in GET shangzhuang/quota's answer, if it has one. */
export function reclaimOf(info: IQuotaInfo | null): IReclaim | null {
  return (info as (IQuotaInfo & { reclaim?: IReclaim | null }) | null)?.reclaim ?? null;
}

/** What the warning says: why, and when the session stops unless its GPUs get busy. */
export function reclaimMessage(reclaim: IReclaim, trans: ILocale = ENGLISH): string {
  return trans.__(
    "This session's GPUs have been under %1% use since %2: it stops %3 unless they get busy. Continue on CPU to keep working without them.",
    String(reclaim.threshold_percent),
    formatSiteTime(reclaim.idle_since, trans),
    stopsInText(reclaim.stops_in_seconds, trans)
  );
}

/** The status bar's words while warned (before the hours left, if any). */
export function reclaimStatus(reclaim: IReclaim, trans: ILocale = ENGLISH): string {
  return trans.__('Idle GPUs: stops %1', stopsInText(reclaim.stops_in_seconds, trans));
}

/** The button's words. */
export function continueLabel(trans: ILocale = ENGLISH): string {
  return trans.__('Continue on CPU');
}

/** Go to the quota service's page (this tab: the session restarts anyway). */
export function continueOnCpu(reclaim: IReclaim): void {
  window.location.assign(reclaim.continue_url);
}

/** The panel's section: the warning and the button (plain DOM, textContent only). */
export function renderReclaim(reclaim: IReclaim, trans: ILocale): HTMLElement {
  const section = document.createElement('section');
  section.className = 'sz-reclaim';
  const text = document.createElement('p');
  text.className = 'sz-reclaim-message';
  text.textContent = reclaimMessage(reclaim, trans);
  const button = document.createElement('button');
  button.className = 'jp-mod-styled jp-mod-accept sz-continue-on-cpu';
  button.textContent = continueLabel(trans);
  button.addEventListener('click', () => continueOnCpu(reclaim));
  section.append(text, button);
  return section;
}

/** One notification while the warning stands (kept up to date), gone once it is cleared. */
export class ReclaimNotices {
  private id: string | null = null;

  constructor(
    private model: QuotaModel,
    private trans: ILocale
  ) {
    model.changed.connect(this.onChanged, this);
  }

  private onChanged(): void {
    const info = this.model.info;
    if (!info || this.model.error) {
      return;
    }
    const reclaim = reclaimOf(info);
    if (!reclaim) {
      if (this.id) {
        Notification.dismiss(this.id);
        this.id = null;
      }
      return;
    }
    const message = reclaimMessage(reclaim, this.trans);
    const actions = [
      { label: continueLabel(this.trans), callback: () => continueOnCpu(reclaim) }
    ];
    if (this.id) {
      Notification.update({ id: this.id, message, type: 'warning', actions });
    } else {
      this.id = Notification.warning(message, { autoClose: false, actions });
    }
  }
}
