/**
 * The quota as this session sees it: fetched from our own server extension (never the
 * quota service directly), refreshed every `refreshSeconds`, backing off while it fails.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';
import { ISignal, Signal } from '@lumino/signaling';

import { ICharge, IGpuUse, IQuotaInfo, nextDelaySeconds } from './format';

/** An answer that is not 2xx, or no answer; `message` is the server extension's. */
export class UnavailableError extends Error {
  constructor(
    message: string,
    readonly status: number
  ) {
    super(message);
  }
}

/** URL of one of the server extension's endpoints, under the server's base_url. */
export function endpointUrl(path: string): string {
  const settings = ServerConnection.makeSettings();
  return URLExt.join(settings.baseUrl, 'shangzhuang', path);
}

/** GET one of the server extension's JSON endpoints. */
export async function requestJSON<T>(path: string): Promise<T> {
  const settings = ServerConnection.makeSettings();
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(endpointUrl(path), {}, settings);
  } catch (err) {
    throw new UnavailableError('the Lab server does not answer', 0);
  }
  let body: any = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const message = (body && body.message) || response.statusText || `HTTP ${response.status}`;
    throw new UnavailableError(message, response.status);
  }
  return body as T;
}

export class QuotaModel {
  /** The last good answer (kept while the service is down, for the panel). */
  info: IQuotaInfo | null = null;
  /** Why the last refresh failed; null after a good one. */
  error: string | null = null;
  /** Failed refreshes in a row: the backoff exponent. */
  failures = 0;
  /** When the next refresh is due (ms since epoch). */
  nextAt = 0;

  private _refreshSeconds = 30;
  private _timer: number | null = null;
  private _inFlight: Promise<void> | null = null;
  private _changed = new Signal<this, void>(this);
  private _disposed = false;

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  get refreshSeconds(): number {
    return this._refreshSeconds;
  }

  set refreshSeconds(value: number) {
    const changed = value !== this._refreshSeconds;
    this._refreshSeconds = value;
    if (changed && this._timer !== null) {
      this.schedule();
    }
  }

  /** Refresh now, then keep refreshing. */
  start(): void {
    void this.refresh();
  }

  /** Fetch the quota now (joins a refresh already in flight). */
  refresh(): Promise<void> {
    if (!this._inFlight) {
      this._inFlight = this._fetch().finally(() => {
        this._inFlight = null;
        this.schedule();
      });
    }
    return this._inFlight;
  }

  dispose(): void {
    this._disposed = true;
    if (this._timer !== null) {
      window.clearTimeout(this._timer);
      this._timer = null;
    }
    Signal.clearData(this);
  }

  /** The site has no quotas: nothing to show, nothing to poll. */
  get disabled(): boolean {
    return this.info?.enabled === false;
  }

  private schedule(): void {
    if (this._disposed || this.disabled) {
      return;
    }
    if (this._timer !== null) {
      window.clearTimeout(this._timer);
    }
    const delay = nextDelaySeconds(this.failures, this._refreshSeconds) * 1000;
    this.nextAt = Date.now() + delay;
    this._timer = window.setTimeout(() => {
      this._timer = null;
      void this.refresh();
    }, delay);
  }

  private async _fetch(): Promise<void> {
    try {
      this.info = await requestJSON<IQuotaInfo>('quota');
      if (this.failures > 0) {
        console.info('shangzhuang-lab: quota service answers again');
      }
      this.error = null;
      this.failures = 0;
    } catch (err) {
      this.error = err instanceof Error ? err.message : String(err);
      // One line when it starts failing, not one per retry.
      if (this.failures === 0) {
        console.warn(`shangzhuang-lab: quota unavailable (${this.error}); retrying with backoff`);
      }
      this.failures += 1;
    }
    this._changed.emit();
  }
}

/** The newest charges, newest first. */
export function fetchCharges(): Promise<{ records: ICharge[] }> {
  return requestJSON<{ records: ICharge[] }>('usage');
}

/** This session's GPUs as NVML reads them; `message` when there are none. */
export function fetchGpus(): Promise<{ gpus: IGpuUse[]; message: string | null }> {
  return requestJSON<{ gpus: IGpuUse[]; message: string | null }>('gpus');
}
