/**
 * "Publish as app": a notebook becomes a Voila app others can open (shangzhuang.apps).
 *
 * From the file browser's context menu on a notebook, or the command palette (the current
 * notebook, else the one selected in the file browser). A dialog asks for the app's name,
 * a description and who may view it; the server extension (POST shangzhuang/apps/publish)
 * takes the snapshot and publishes it with the session's hub token.
 */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { Dialog, ICommandPalette, Notification, showDialog } from '@jupyterlab/apputils';
import { URLExt } from '@jupyterlab/coreutils';
import { IFileBrowserFactory } from '@jupyterlab/filebrowser';
import { ServerConnection } from '@jupyterlab/services';
import { ITranslator } from '@jupyterlab/translation';
import { Widget } from '@lumino/widgets';

import { ILocale } from './format';
import { localeOf } from './locale';
import {
  appNameFor,
  Audience,
  audienceText,
  IPublishRequest,
  parseNames,
  problemWith,
  viewersFor
} from './publishForm';

export const PUBLISH_COMMAND = 'shangzhuang:publish-app';

/** What the apps service tells the dialog (GET shangzhuang/apps). */
interface IAppsInfo {
  user: string;
  public_links: boolean;
  profiles: string[];
  default_profile: string;
  owned: { name: string; description: string; viewers?: { users: string[]; groups: string[] } }[];
}

interface IPublished {
  owner: string;
  name: string;
  full_url: string;
  files: string[];
  access: string;
  start_error?: string;
}

async function call<T>(path: string, init: RequestInit = {}): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'shangzhuang', path);
  const response = await ServerConnection.makeRequest(url, init, settings);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new Error(body.message || `${response.status} ${response.statusText}`);
  }
  return body as T;
}

function field(label: string, input: HTMLElement, hint = ''): HTMLElement {
  const row = document.createElement('label');
  row.className = 'sz-publish-field';
  row.style.display = 'block';
  row.style.margin = '0 0 10px 0';
  const text = document.createElement('div');
  text.textContent = label;
  text.style.fontWeight = 'bold';
  row.append(text, input);
  if (hint) {
    const small = document.createElement('div');
    small.textContent = hint;
    small.style.color = 'var(--jp-ui-font-color2)';
    small.style.fontSize = 'var(--jp-ui-font-size0)';
    row.append(small);
  }
  return row;
}

function textInput(name: string, value = '', placeholder = ''): HTMLInputElement {
  const input = document.createElement('input');
  input.className = 'jp-mod-styled';
  input.name = name;
  input.value = value;
  input.placeholder = placeholder;
  input.style.width = '100%';
  return input;
}

/** The dialog's body: a form that reads back into a publish request. */
export class PublishForm extends Widget {
  constructor(
    private path: string,
    info: IAppsInfo | null,
    trans: ILocale
  ) {
    super({ node: document.createElement('form') });
        this.addClass('sz-publish-form');
    this.node.style.minWidth = '420px';
    const name = appNameFor(path);
    const previous = info?.owned.find(a => a.name === name);
    this.name = textInput('name', name);
    this.description = document.createElement('textarea');
    this.description.className = 'jp-mod-styled';
    this.description.name = 'description';
    this.description.rows = 3;
    this.description.style.width = '100%';
    this.description.value = previous?.description ?? '';
    this.users = textInput('users', previous?.viewers?.users.join(', ') ?? '', 'alice, bob');
    this.groups = textInput('groups', previous?.viewers?.groups.join(', ') ?? '', 'physics');
    this.files = textInput('files', '', 'model.pt, data/*.csv');
    this.profile = document.createElement('select');
    this.profile.className = 'jp-mod-styled';
    this.profile.name = 'profile';
    for (const p of info?.profiles ?? []) {
      const option = document.createElement('option');
      option.value = option.textContent = p;
      option.selected = p === info?.default_profile;
      this.profile.append(option);
    }

    const audience = document.createElement('div');
    const choices: [Audience, string, boolean][] = [
      ['named', trans.__('Named users and groups'), true],
      ['signed-in', trans.__('Anyone signed in to this site'), true],
      ['public', trans.__('Anyone with the link (no account)'), !!info?.public_links]
    ];
    for (const [value, label, allowed] of choices) {
      const row = document.createElement('label');
      row.style.display = 'flex';
      row.style.alignItems = 'center';
      row.style.gap = '6px';
      const radio = document.createElement('input');
      radio.type = 'radio';
      // Lab's dialog styles inputs as text boxes: a radio looks like one again.
      radio.style.appearance = 'auto';
      radio.style.width = 'auto';
      radio.style.margin = '0';
      radio.name = 'audience';
      radio.value = value;
      radio.checked = value === 'named';
      radio.disabled = !allowed;
      row.append(radio, allowed ? label : trans.__('%1 (not allowed on this site)', label));
      audience.append(row);
    }
    this.node.append(
      field(
        trans.__('Name'),
        this.name,
        trans.__('Part of the app\u2019s address: lower-case letters, digits, dashes.')
      ),
      field(trans.__('Description'), this.description),
      field(trans.__('Who may view it'), audience),
      field(trans.__('Users'), this.users, trans.__('With \u201cNamed users and groups\u201d.')),
      field(trans.__('Groups'), this.groups),
      field(
        trans.__('More files'),
        this.files,
        trans.__('Files beside the notebook the app needs, besides those its metadata declares.')
      ),
      field(trans.__('Runs on'), this.profile)
    );
    this.node.addEventListener('submit', e => e.preventDefault());
  }

  getValue(): IPublishRequest {
    const checked = this.node.querySelector<HTMLInputElement>('input[name=audience]:checked');
    const audience = (checked?.value ?? 'named') as Audience;
    return {
      path: this.path,
      name: this.name.value.trim(),
      description: this.description.value.trim(),
      viewers: viewersFor(audience, this.users.value, this.groups.value),
      files: parseNames(this.files.value),
      profile: this.profile.value
    };
  }

  private name: HTMLInputElement;
  private description: HTMLTextAreaElement;
  private users: HTMLInputElement;
  private groups: HTMLInputElement;
  private files: HTMLInputElement;
  private profile: HTMLSelectElement;
}

/** Ask, publish, and say how it went (with the app's link). */
export async function publishNotebook(path: string, trans: ILocale): Promise<IPublished | null> {
    let info: IAppsInfo | null = null;
  try {
    info = await call<IAppsInfo>('apps');
  } catch (err) {
    Notification.error(trans.__('Apps are not available here: %1', (err as Error).message), {
      autoClose: 10000
    });
    return null;
  }
  const form = new PublishForm(path, info, trans);
  for (;;) {
    const result = await showDialog({
      title: trans.__('Publish as app'),
      body: form,
      buttons: [
        Dialog.cancelButton({ label: trans.__('Cancel') }),
        Dialog.okButton({ label: trans.__('Publish') })
      ],
      focusNodeSelector: 'input[name=name]'
    });
    if (!result.button.accept || !result.value) {
      return null;
    }
    const request = result.value;
    const problem = problemWith(request, trans);
    if (problem) {
      await showDialog({
        title: trans.__('Publish as app'),
        body: problem,
        buttons: [Dialog.okButton({ label: trans.__('OK') })]
      });
      continue;
    }
    const pending = Notification.emit(trans.__('Publishing %1\u2026', request.name), 'in-progress', {
      autoClose: false
    });
    try {
      const app = await call<IPublished>('apps/publish', {
        method: 'POST',
        body: JSON.stringify(request)
      });
      Notification.update({
        id: pending,
        type: app.start_error ? 'warning' : 'success',
        message: app.start_error
          ? trans.__(
              'Published %1 for %2: %3 (not running yet: %4)',
              app.name,
              audienceText(request.viewers, trans),
              app.full_url,
              app.start_error
            )
          : trans.__(
              'Published %1 for %2: %3',
              app.name,
              audienceText(request.viewers, trans),
              app.full_url
            ),
        autoClose: false,
        actions: [
          { label: trans.__('Open app'), callback: () => window.open(app.full_url, '_blank') },
          {
            label: trans.__('Copy link'),
            callback: () => void navigator.clipboard?.writeText(app.full_url)
          }
        ]
      });
      return app;
    } catch (err) {
      Notification.update({
        id: pending,
        type: 'error',
        message: trans.__('Could not publish %1: %2', request.name, (err as Error).message),
        autoClose: false
      });
      return null;
    }
  }
}

export const publishPlugin: JupyterFrontEndPlugin<void> = {
  id: 'shangzhuang-lab:publish',
  description: 'Publish a notebook as a Voila app that others can open (and nothing else).',
  autoStart: true,
  optional: [IFileBrowserFactory, ICommandPalette, ITranslator],
  activate: (
    app: JupyterFrontEnd,
    browsers: IFileBrowserFactory | null,
    palette: ICommandPalette | null,
    translator: ITranslator | null
  ) => {
    const trans = localeOf(translator);
        /** The notebook to publish: the one right-clicked or selected, else the current one. */
    const target = (fromMenu: boolean): string | null => {
      const current = app.shell.currentWidget as { context?: { path?: string } } | null;
      const open = current?.context?.path;
      const selected = browsers?.tracker.currentWidget?.selectedItems().next();
      const picked = selected && !selected.done ? selected.value : null;
      const fromBrowser = picked?.type === 'notebook' ? picked.path : null;
      if (fromMenu) {
        return fromBrowser;
      }
      return open?.endsWith('.ipynb') ? open : fromBrowser;
    };

    app.commands.addCommand(PUBLISH_COMMAND, {
      label: trans.__('Publish as App\u2026'),
      caption: trans.__('Publish this notebook as a Voila app others can open'),
      execute: async args => {
        const path = (args.path as string) || target(!!args.fromMenu);
        if (!path) {
          Notification.info(
            trans.__('Open a notebook, or select one in the file browser, to publish it.')
          );
          return;
        }
        return publishNotebook(path, trans);
      }
    });
    app.contextMenu.addItem({
      command: PUBLISH_COMMAND,
      args: { fromMenu: true },
      selector: '.jp-DirListing-item[data-file-type="notebook"]',
      rank: 12
    });
    palette?.addItem({ command: PUBLISH_COMMAND, category: 'Shangzhuang' });
  }
};
