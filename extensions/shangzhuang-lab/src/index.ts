/**
 * shangzhuang-lab: remaining GPU and CPU hours in the status bar, a quota panel on the
 * right, notifications when the quota runs low or out.
 */
import { ILabShell, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette, Notification } from '@jupyterlab/apputils';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { IStatusBar } from '@jupyterlab/statusbar';
import { ITranslator } from '@jupyterlab/translation';
import { LabIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

import {
  exhaustedMessage,
  ILocale,
  lowMessage,
  noticeFor,
  QuotaState,
  stateClass,
  statusText,
  tooltipText,
  unavailableText
} from './format';
import { localeOf } from './locale';
import { QuotaModel } from './model';
import { PANEL_ID, QuotaPanel } from './panel';
import { publishPlugin } from './publish';
import { reclaimMessage, reclaimOf, ReclaimNotices, reclaimStatus } from './reclaim';

const PLUGIN_ID = 'shangzhuang-lab:plugin';
const OPEN_COMMAND = 'shangzhuang:open-quota';

export const quotaIcon = new LabIcon({
  name: 'shangzhuang-lab:quota',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" width="16" height="16">' +
    '<path class="jp-icon3" fill="#616161" d="M12 4a9 9 0 0 0-9 9c0 2.3.9 4.5 2.4 6.1l1.4-1.4A7 7 0 1 1 ' +
    '19 13a7 7 0 0 1-1.8 4.7l1.4 1.4A9 9 0 0 0 12 4zm4.2 4.4-5.1 3.8a1.5 1.5 0 1 0 1.7 1.7z"/></svg>'
});

/** The status bar item: text, a class per state, a tooltip; a click opens the panel. */
class QuotaStatus extends Widget {
  constructor(
    private model: QuotaModel,
    private trans: ILocale,
    onClick: () => void
  ) {
    super({ node: document.createElement('div') });
    this.addClass('sz-quota-status');
    this.addClass('jp-StatusBar-TextItem');
    this.node.setAttribute('role', 'button');
    this.node.tabIndex = 0;
    this.node.addEventListener('click', onClick);
    this.node.addEventListener('keydown', (e: KeyboardEvent) => {
      if (e.key === 'Enter' || e.key === ' ') {
        onClick();
      }
    });
    model.changed.connect(this.update, this);
  }

  /** Shown once there is something to say: limits, or that the service is down. */
  get hasText(): boolean {
    return !!this.node.textContent;
  }

  protected onUpdateRequest(): void {
    const { info, error } = this.model;
    let state: QuotaState | 'unavailable';
    if (error) {
      state = 'unavailable';
      this.node.textContent = unavailableText(this.trans);
      this.node.title = this.trans.__(
        'The quota service does not answer: %1. Retrying with backoff.',
        error
      );
    } else if (info && !info.enabled) {
      this.node.textContent = '';
      return;
    } else if (info) {
      state = info.state;
      this.node.textContent = statusText(info, this.trans);
      this.node.title = tooltipText(info, this.trans);
      const reclaim = reclaimOf(info); // idle GPUs: said first, the item marked
      if (reclaim) {
        const hours = this.node.textContent;
        this.node.textContent = reclaimStatus(reclaim, this.trans) + (hours ? ` · ${hours}` : '');
        this.node.title = reclaimMessage(reclaim, this.trans) + '\n' + this.node.title;
      }
      this.node.classList.toggle('sz-reclaim-warned', !!reclaim);
    } else {
      return;
    }
    for (const s of ['ok', 'low', 'exhausted', 'unavailable'] as const) {
      this.node.classList.toggle(stateClass(s), s === state);
    }
    this.node.dataset.state = state;
  }
}

/** Notifications: one when the quota becomes low, one (kept up to date) when it is used up. */
class QuotaNotices {
  private previous: QuotaState | null = null;
  private exhaustedId: string | null = null;

  constructor(
    private model: QuotaModel,
    private trans: ILocale
  ) {
    model.changed.connect(this.onChanged, this);
  }

  private onChanged(): void {
    const info = this.model.info;
    if (!info || !info.enabled || this.model.error) {
      return;
    }
    const notice = noticeFor(this.previous, info.state);
    this.previous = info.state;
    if (info.state !== 'exhausted' && this.exhaustedId) {
      Notification.dismiss(this.exhaustedId);
      this.exhaustedId = null;
    }
    if (notice === 'low') {
      Notification.warning(lowMessage(info, this.trans), { autoClose: 15000 });
    } else if (notice === 'exhausted') {
      this.exhaustedId = Notification.error(exhaustedMessage(info, this.trans), { autoClose: false });
    } else if (info.state === 'exhausted' && this.exhaustedId) {
      const message = exhaustedMessage(info, this.trans);
      Notification.update({ id: this.exhaustedId, message, type: 'error' });
    }
  }
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'Remaining GPU and CPU hours in the status bar, a quota panel, warnings, live GPU use.',
  autoStart: true,
  optional: [IStatusBar, ISettingRegistry, ILabShell, ICommandPalette, ITranslator],
  activate: (
    app: JupyterFrontEnd,
    statusBar: IStatusBar | null,
    settingRegistry: ISettingRegistry | null,
    labShell: ILabShell | null,
    palette: ICommandPalette | null,
    translator: ITranslator | null
  ) => {
    const trans = localeOf(translator);
    const model = new QuotaModel();
    const panel = new QuotaPanel(model, trans);
    panel.title.icon = quotaIcon;
    app.shell.add(panel, 'right', { rank: 900 });

    app.commands.addCommand(OPEN_COMMAND, {
      label: trans.__('Show Quota (GPU and CPU hours)'),
      execute: () => {
        app.shell.activateById(PANEL_ID);
      }
    });
    palette?.addItem({ command: OPEN_COMMAND, category: 'Shangzhuang' });

    if (statusBar) {
      const item = new QuotaStatus(model, trans, () => {
        if (panel.isVisible && labShell) {
          labShell.collapseRight();
        } else {
          void app.commands.execute(OPEN_COMMAND);
        }
      });
      statusBar.registerStatusItem('shangzhuang-lab:quota', {
        item,
        align: 'left',
        rank: 50,
        isActive: () => item.hasText,
        activeStateChanged: model.changed
      });
    }
    new QuotaNotices(model, trans);
    new ReclaimNotices(model, trans);

    const apply = (settings: ISettingRegistry.ISettings) => {
      model.refreshSeconds = settings.get('refreshSeconds').composite as number;
      panel.gpuRefreshSeconds = settings.get('gpuRefreshSeconds').composite as number;
    };
    const settingsLoaded = settingRegistry
      ? settingRegistry
          .load(PLUGIN_ID)
          .then(settings => {
            apply(settings);
            settings.changed.connect(apply);
          })
          .catch(reason => console.warn('shangzhuang-lab: settings not loaded', reason))
      : Promise.resolve();
    // First fetch once Lab has drawn its layout: nothing of ours on the launcher's path.
    void Promise.all([settingsLoaded, app.restored]).then(() => model.start());
  }
};

export default [plugin, publishPlugin];
