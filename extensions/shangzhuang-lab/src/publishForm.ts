/**
 * The "Publish as app" dialog's pure parts: a name from a notebook's file name, the lists
 * people type, and the request the server extension takes (tested with jest).
 */
import { ENGLISH, ILocale } from './format';

/** Who may view an app besides its owner (the apps API's viewers object). */
export interface IViewers {
  users: string[];
  groups: string[];
  signed_in: boolean;
  public: boolean;
}

export type Audience = 'named' | 'signed-in' | 'public';

export interface IPublishRequest {
  path: string;
  name: string;
  description: string;
  viewers: IViewers;
  files: string[];
  profile: string;
}

/** App names: lower-case letters, digits and dashes, up to 40, starting with a letter or digit. */
export const APP_NAME = /^[a-z0-9][a-z0-9-]{0,39}$/;

/** "Sales Forecast (v2).ipynb" -> "sales-forecast-v2". */
export function appNameFor(path: string): string {
  const file = path.split('/').pop() ?? '';
  const stem = file.replace(/\.ipynb$/i, '');
  const slug = stem
    .toLowerCase()
    .normalize('NFKD')
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-+|-+$/g, '')
    .slice(0, 40)
    .replace(/-+$/g, '');
  return slug || 'app';
}

/** "alice, bob  carol" -> ["alice", "bob", "carol"] (commas or spaces, no repeats). */
export function parseNames(text: string): string[] {
  const names = text
    .split(/[\s,;]+/)
    .map(s => s.trim())
    .filter(s => s.length > 0);
  return Array.from(new Set(names));
}

export function viewersFor(audience: Audience, users: string, groups: string): IViewers {
  return {
    users: audience === 'named' ? parseNames(users) : [],
    groups: audience === 'named' ? parseNames(groups) : [],
    signed_in: audience === 'signed-in',
    public: audience === 'public'
  };
}

/** What is wrong with the form, or null. */
export function problemWith(request: IPublishRequest, trans: ILocale = ENGLISH): string | null {
  if (!APP_NAME.test(request.name)) {
    return trans.__(
      'The name may have lower-case letters, digits and dashes (up to 40), starting with a letter or digit.'
    );
  }
  if (!request.path.toLowerCase().endsWith('.ipynb')) {
    return trans.__('Only a notebook (.ipynb) can be published as an app.');
  }
  return null;
}

/** One line for the notification: who may view it. */
export function audienceText(viewers: IViewers, trans: ILocale = ENGLISH): string {
  if (viewers.public) {
    return trans.__('anyone with the link');
  }
  if (viewers.signed_in) {
    return trans.__('anyone signed in');
  }
  const named = [...viewers.users, ...viewers.groups.map(g => trans.__('group %1', g))];
  return named.length ? named.join(trans.__(', ')) : trans.__('only you');
}
