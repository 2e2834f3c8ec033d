/**
 * The `ILocale` the formatters write in, from JupyterLab's translator: the bundle of our
 * `shangzhuang_lab` domain and the language Lab runs in (`zh-CN`, `en`...).
 */
import { ITranslator, nullTranslator } from '@jupyterlab/translation';

import { DOMAIN, ILocale } from './format';

export function localeOf(translator: ITranslator | null): ILocale {
  const t = translator ?? nullTranslator;
  const bundle = t.load(DOMAIN);
  return {
    __: bundle.__.bind(bundle),
    _n: bundle._n.bind(bundle),
    language: t.languageCode || 'en'
  };
}
