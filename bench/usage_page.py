"""The usage page for an admin over a big ledger: server-side latency and Chromium's time.

    .venv/bin/python bench/usage_page.py [--users 10000] [--accounts 100] [--records 1000000]
        [--requests 20] [--browser-runs 5] [--no-write]

1. Seed: bench/quota_api.py's `seed` (USERS members in ACCOUNTS accounts, RECORDS charge rows
   over the last 365 days, skewed users; its docstring says how), into the quota database of
   a test hub (tests/integration/hub.py's RunningHub), before the hub starts.
2. Server side: the admin signs in (a browser's cookie and the page's XSRF token, as the
   page's script sends them) and asks, through the proxy, REQUESTS times each (after 2 unmeasured):
   the page's HTML, the estate this period (what the page draws first) and the period
   before (a period change), his own days, one account's days and burn, the requests to
   decide. p50 and p99 per request, in ms, proxy and the hub's auth included.
3. Chromium (Playwright, /usr/bin/chromium): BROWSER_RUNS times, the admin opens the page
   already signed in: the time until the page says it has drawn everything it loads (its
   `data-loaded` mark: his own charts and the estate; an admin's account sections load when
   opened), then picks the period before and waits for the mark again, then opens the
   first account's section and waits until its figures are drawn.

Writes its section of docs/benchmarks.md ("## Usage page (bench/usage_page.py)").
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from tests.integration.hub import ADMIN, RunningHub, workdir  # noqa: E402

from quota_api import account_names, quota_toml, seed  # noqa: E402
from report import machine, write_section  # noqa: E402
from shangzhuang.quota import ledger_file  # noqa: E402
from shangzhuang.settings import load_settings  # noqa: E402

HEADING = "## Usage page (bench/usage_page.py)"
SERVER_GOAL_MS = 300.0
BROWSER_GOAL_S = 2.0
CHROMIUM = "/usr/bin/chromium"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def server_side(hub: RunningHub, account: str, n: int) -> dict[str, list[float]]:
    browser = hub.login(ADMIN, hub.password_of_admin())
    # text/html: the service sends a browser through the hub's OAuth (a cookie of its own)
    page = browser.get(f"{hub.url}/services/quota/", headers={"Accept": "text/html"}, timeout=120)
    page.raise_for_status()
    xsrf = re.search(r'data-xsrf="([^"]+)"', page.text).group(1)
    api = f"{hub.url}/services/quota/api/v1/"
    asks = {
        "the page (HTML)": f"{hub.url}/services/quota/",
        "estate, this period": api + "estate?back=0",
        "estate, the period before": api + "estate?back=1",
        "his own days": api + "usage/daily?back=0",
        "an account's days": api + f"usage/daily?account={account}&back=0",
        "an account's burn": api + f"accounts/{account}/burn",
        "requests to decide": api + "requests",
    }
    times: dict[str, list[float]] = {k: [] for k in asks}
    for i in range(n + 2):
        for what, url in asks.items():
            t0 = time.perf_counter()
            headers = {"X-XSRFToken": xsrf, "Accept": "text/html" if "/api/" not in url else "*/*"}
            r = browser.get(url, headers=headers, timeout=120)
            took = time.perf_counter() - t0
            r.raise_for_status()
            if i >= 2:
                times[what].append(took * 1000)
    return times


def in_chromium(hub: RunningHub, runs: int) -> dict[str, list[float]]:
    from playwright.sync_api import sync_playwright

    out: dict[str, list[float]] = {"first render": [], "period change": [], "an account": []}
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = b.new_context(viewport={"width": 1200, "height": 1400})
        page = context.new_page()
        page.goto(f"{hub.url}/hub/login?next=/services/quota/")
        page.fill("#username_input", ADMIN)
        page.fill("#password_input", hub.password_of_admin())
        page.click("#login_submit")
        page.wait_for_url("**/services/quota/", timeout=120_000)
        page.wait_for_selector('main[data-loaded="0"]', state="attached", timeout=600_000)
        for _ in range(runs):
            t0 = time.perf_counter()
            page.goto(f"{hub.url}/services/quota/")
            page.wait_for_selector('main[data-loaded="0"]', state="attached", timeout=600_000)
            out["first render"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            page.select_option("#sz-period", "1")
            page.wait_for_selector('main[data-loaded="1"]', state="attached", timeout=600_000)
            out["period change"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()  # an admin opens one account's section
            page.locator("details.sz-account").first.locator("summary").click()
            page.wait_for_selector(
                'details.sz-account[data-loaded="1"]', state="attached", timeout=600_000
            )
            out["an account"].append(time.perf_counter() - t0)
        b.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--accounts", type=int, default=100)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--browser-runs", type=int, default=5)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    accounts = account_names(args.accounts)
    hub = RunningHub(workdir(), quota=quota_toml(accounts))
    try:
        settings = load_settings(hub.config)
        log(f"seeding {args.records:,} charge rows, {args.users:,} users")
        seeded = seed(ledger_file(settings), settings, args.users, args.records, time.time())
        log(f"seeded in {seeded['seconds']:.0f} s; starting the hub")
        hub.start(timeout=180)
        log(f"{args.requests} requests each")
        server = server_side(hub, accounts[0], args.requests)
        log(f"Chromium, {args.browser_runs} runs")
        browser = in_chromium(hub, args.browser_runs)
    finally:
        hub.cleanup()

    rows = [
        f"| {what} | {statistics.median(ms):.0f} | {pct(ms, 99):.0f} |"
        for what, ms in server.items()
    ]
    first = statistics.median(browser["first render"])
    change = statistics.median(browser["period change"])
    opened = statistics.median(browser["an account"])
    missed = [what for what, ms in server.items() if statistics.median(ms) >= SERVER_GOAL_MS]
    section = "\n".join([
        HEADING,
        "",
        f"Machine: {machine()}. {args.users:,} users in {args.accounts} accounts, "
        f"{args.records:,} charge rows over a year (seeded as bench/quota_api.py does), "
        f"an admin's browser through the proxy, {args.requests} requests each:",
        "",
        "| request | p50 ms | p99 ms |",
        "|---|---|---|",
        *rows,
        "",
        f"Chromium, median of {args.browser_runs}: the admin's page drawn (his own days, the "
        f"estate; the {args.accounts} accounts' sections closed) in {first:.2f} s, a period "
        f"change in {change:.2f} s, one account's section opened and drawn in {opened:.2f} s. "
        f"Goals: server side p50 under {SERVER_GOAL_MS:.0f} ms ("
        f"{'met by every request' if not missed else 'missed by ' + ', '.join(missed)}), "
        f"the page interactive under "
        f"{BROWSER_GOAL_S:.0f} s ("
        + ("met)." if first < BROWSER_GOAL_S else "missed)."),
        "",
    ])  # fmt: skip
    print(section)
    if not args.no_write:
        write_section(HEADING, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
