"""Lab load to a visible launcher, with and without the shangzhuang-lab extension; or, with
`--mode language`, in Chinese (the zh-CN language pack and our catalog) and in English.

    .venv/bin/python bench/lab_load.py [--mode extension|language] [--rounds 5] [--loads 2]
                                       [--no-write]

One workbench (`shangzhuang up` under a temp folder, tests/integration/hub.py's RunningHub,
with a [quota] so that the extension has figures to show) and two users on the "cpu"
profile, side by side: `lab-with` has the extension as installed; `lab-without` has both
halves disabled in her own Jupyter config (~/.jupyter/labconfig/page_config.json
`disabledExtensions` and jupyter_server_config.json `jpserver_extensions`), which is what
`jupyter labextension disable` / `jupyter server extension disable --user` write. The
script checks that it took: her /shangzhuang/quota answers 404 and her page has no item.

Browser: Playwright for Python with Debian's /usr/bin/chromium. Per round and user (the
order alternates each round): a new browser context (empty cache), log in through the
form and open Lab once (not timed: it includes the single-user OAuth redirects), then
`--loads` timed navigations to /user/NAME/lab. A load's time is the page's own clock
(performance.now(), from navigation start) when `.jp-Launcher` is first visible; for
`lab-with` also when the status bar item first has its text.

Also: peak RSS (VmHWM) of each user's Lab server at the end; the extension's bundle as
installed (share/jupyter/labextensions/shangzhuang-lab/static, raw and gzip -9); and the
latency of the extension's GET /shangzhuang/quota (through the proxy, which asks the quota
service) beside the quota service's GET me (through the proxy), 100 sequential each.

Prints a markdown table and writes it to docs/benchmarks.md (section
"## Lab extension (bench/lab_load.py)"; other sections are kept).

`--mode language`: two users with the extension, `lab-zh` who chose 中文 on the hub (her
session's Lab opens in zh_CN: the language pack's catalogs and ours are fetched and
applied before the launcher shows) and `lab-en`; the same timed loads, and the status
item's first figures for both. Checked: her status item reads "剩余 ...", his "... left".
Section "## Lab in Chinese (bench/lab_load.py --mode language)".
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import statistics
import sys
import time
from pathlib import Path

import psutil
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tests.integration.hub import RunningHub, workdir  # noqa: E402

from report import machine as report_machine  # noqa: E402  (bench/ is on sys.path)
from report import write_section  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
HEADING = "## Lab extension (bench/lab_load.py)"
LANGUAGE_HEADING = "## Lab in Chinese (bench/lab_load.py --mode language)"
GOAL = 1.05
WITH, WITHOUT = "lab-with", "lab-without"
ZH, EN = "lab-zh", "lab-en"
PASSWORD = "correct-horse-9"
QUOTA = """
[quota.accounts.default]
gpu_hours = 100
cpu_hours = 1000
"""
LAUNCHER_VISIBLE = """() => {
  const l = document.querySelector('.jp-Launcher');
  return l && l.offsetParent !== null && l.getBoundingClientRect().height > 0
    ? performance.now() : false;
}"""
ITEM_SHOWN = """() => {
  const s = document.querySelector('.sz-quota-status');
  return s && s.textContent ? performance.now() : false;
}"""


def session_home(hub: RunningHub, name: str) -> Path:
    if hub.isolated:
        return hub.homes / f"{hub.prefix}{name}"
    return Path.home() / "shangzhuang-homes" / name


def disable_extension_for(hub: RunningHub, name: str) -> None:
    """Both halves off in the user's own Jupyter config (read at the session's next start)."""
    home = session_home(hub, name)
    st = home.stat()
    files = {
        home / ".jupyter" / "labconfig" / "page_config.json": {
            "disabledExtensions": {"shangzhuang-lab": True}
        },
        home / ".jupyter" / "jupyter_server_config.json": {
            "ServerApp": {"jpserver_extensions": {"shangzhuang_lab": False}}
        },
    }
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1))
        for p in (path, path.parent, path.parent.parent):
            if p.is_relative_to(home):
                os.chown(p, st.st_uid, st.st_gid)


def quiet_lab(hub: RunningHub, name: str, token: str) -> None:
    """No "Jupyter news" question over the page (the same for both users)."""
    r = requests.put(
        f"{hub.user_url(name)}lab/api/settings/@jupyterlab/apputils-extension:notification",
        json={"raw": json.dumps({"fetchNews": "false", "checkForUpdates": False})},
        headers={"Authorization": f"token {token}"}, timeout=30,
    )  # fmt: skip
    r.raise_for_status()


def lab_server(hub: RunningHub, name: str) -> psutil.Process:
    for p in psutil.Process(hub.proc.pid).children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
            if "jupyterhub-singleuser" in cmd and p.environ().get("JUPYTERHUB_USER") == name:
                return p
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    raise RuntimeError(f"no Lab server of {name} under the hub")


def peak_rss_mb(proc: psutil.Process) -> float:
    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return proc.memory_info().rss / 2**20


def bundle() -> tuple[int, int, int]:
    """(files, bytes, gzip -9 bytes) of the installed labextension's static folder."""
    static = Path(sys.prefix) / "share" / "jupyter" / "labextensions" / "shangzhuang-lab" / "static"
    files = [p for p in static.iterdir() if p.suffix == ".js"]
    raw = sum(p.stat().st_size for p in files)
    packed = sum(len(gzip.compress(p.read_bytes(), 9)) for p in files)
    return len(files), raw, packed


def latency_ms(url: str, token: str, n: int = 100) -> float:
    s = requests.Session()
    s.headers["Authorization"] = f"token {token}"
    for _ in range(5):
        s.get(url, timeout=30).raise_for_status()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        s.get(url, timeout=30).raise_for_status()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def measure(
    browser, hub: RunningHub, name: str, loads: int, with_item: bool | None = None
) -> tuple[list[float], list[float]]:
    """Seconds to a visible launcher for `loads` navigations, and to the status item (if any)."""
    with_item = name == WITH if with_item is None else with_item
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    try:
        page.goto(f"{hub.url}/hub/login?next=/user/{name}/lab")
        page.fill("#username_input", name)
        page.fill("#password_input", PASSWORD)
        page.click("#login_submit")
        page.wait_for_function(LAUNCHER_VISIBLE, timeout=120_000)
        launcher, item = [], []
        for _ in range(loads):
            page.goto(f"{hub.url}/user/{name}/lab", wait_until="commit")
            launcher.append(page.wait_for_function(LAUNCHER_VISIBLE, timeout=120_000).json_value())
            if with_item:
                item.append(page.wait_for_function(ITEM_SHOWN, timeout=60_000).json_value())
            else:
                page.wait_for_timeout(1500)  # what the extension would have had to show up
                assert page.locator(".sz-quota-status").count() == 0, "extension not disabled"
        return [t / 1000 for t in launcher], [t / 1000 for t in item]
    finally:
        context.close()


def machine() -> str:
    import jupyterhub
    import jupyterlab

    return report_machine(
        f"jupyterhub {jupyterhub.__version__}", f"jupyterlab {jupyterlab.__version__}",
        f"Chromium {CHROMIUM_VERSION}",
    )  # fmt: skip


CHROMIUM_VERSION = "?"


def main() -> None:
    global CHROMIUM_VERSION
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--loads", type=int, default=2, help="timed loads per round and user")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--mode", choices=["extension", "language"], default="extension")
    args = ap.parse_args()
    if args.mode == "language":
        return main_language(args)

    from playwright.sync_api import sync_playwright

    t_start, load_start = time.monotonic(), os.getloadavg()[0]
    hub = RunningHub(workdir(), quota=QUOTA)
    hub.start()
    try:
        tokens = {}
        for name in (WITH, WITHOUT):
            hub.new_user(name, PASSWORD)
            hub.spawn(name, "cpu")
            hub.wait_ready(name)
            tokens[name] = hub.token_for(name)
        hub.stop_server(WITHOUT)
        disable_extension_for(hub, WITHOUT)
        hub.spawn(WITHOUT, "cpu")
        hub.wait_ready(WITHOUT)
        for name in (WITH, WITHOUT):
            quiet_lab(hub, name, tokens[name])
        codes = {
            n: requests.get(
                f"{hub.user_url(n)}shangzhuang/quota",
                headers={"Authorization": f"token {tokens[n]}"}, timeout=30,
            ).status_code
            for n in (WITH, WITHOUT)
        }  # fmt: skip
        assert codes == {WITH: 200, WITHOUT: 404}, codes

        runs: dict[str, list[float]] = {WITH: [], WITHOUT: []}
        items: list[float] = []
        per_round = []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            CHROMIUM_VERSION = browser.version
            for r in range(args.rounds):
                order = (WITH, WITHOUT) if r % 2 == 0 else (WITHOUT, WITH)
                got = {}
                for name in order:
                    launcher, item = measure(browser, hub, name, args.loads)
                    runs[name] += launcher
                    items += item
                    got[name] = statistics.median(launcher)
                per_round.append(got)
                print(
                    f"round {r + 1}: with {got[WITH]:.2f} s, without {got[WITHOUT]:.2f} s",
                    flush=True,
                )
            browser.close()

        rss = {n: peak_rss_mb(lab_server(hub, n)) for n in (WITH, WITHOUT)}
        ext_ms = latency_ms(f"{hub.user_url(WITH)}shangzhuang/quota", tokens[WITH])
        me_ms = latency_ms(f"{hub.url}/services/quota/api/v1/me", tokens[WITH])
    finally:
        hub.cleanup()
    elapsed, load_end = time.monotonic() - t_start, os.getloadavg()[0]

    med = {n: statistics.median(v) for n, v in runs.items()}
    ratio = med[WITH] / med[WITHOUT]
    # Paired by round (same minute, same load on the machine): steadier than the medians' ratio.
    paired = statistics.median(g[WITH] / g[WITHOUT] for g in per_round)
    nfiles, raw, packed = bundle()
    n = len(runs[WITH])
    tbl = "\n".join(
        [
            "| | with shangzhuang-lab | without | ratio (with/without) |",
            "|---|---:|---:|---:|",
            f"| Lab load to visible launcher, median of {n} (s) | {med[WITH]:.2f} | "
            f"{med[WITHOUT]:.2f} | {ratio:.3f} |",
            f"| median of the per-round ratios | | | {paired:.3f} |",
            f"| fastest / slowest (s) | {min(runs[WITH]):.2f} / {max(runs[WITH]):.2f} | "
            f"{min(runs[WITHOUT]):.2f} / {max(runs[WITHOUT]):.2f} | |",
            f"| status bar item shows its figures, median (s) | {statistics.median(items):.2f} "
            "| — | |",
            f"| peak RSS of the Lab server (MB) | {rss[WITH]:.0f} | {rss[WITHOUT]:.0f} | "
            f"{rss[WITH] / rss[WITHOUT]:.3f} |",
        ]
    )
    rounds_txt = ", ".join(f"{g[WITH]:.2f} / {g[WITHOUT]:.2f}" for g in per_round)
    met = "met" if ratio <= GOAL else "**missed**"
    section = f"""{HEADING}

Goal: Lab load with the extension at most {GOAL:.2f}× without it (ratio ≤ {GOAL:.2f}): {met}.

One workbench, two users on the "cpu" profile: `lab-with` (the extension as installed)
and `lab-without` (both halves disabled in her own Jupyter config, checked: her
/shangzhuang/quota answers 404 and her page shows no item). Chromium through Playwright;
per round and user a new browser context, a login and one untimed first load (single-user
OAuth), then {args.loads} timed loads; a load's time is the page's performance.now() when
`.jp-Launcher` is first visible. {args.rounds} rounds, the users' order alternating. Peak
RSS: VmHWM of each user's Lab server at the end.

Measured {dt.datetime.now().strftime("%Y-%m-%d %H:%M")} on {machine()}.
The run took {elapsed / 60:.1f} min; 1-minute load average {load_start:.2f} at its start,
{load_end:.2f} at its end (above ~0.5 is other work on the machine).

{tbl}

Per round, median of its loads (with / without, s): {rounds_txt}.

Bundle (installed labextension, static/*.js): {nfiles} files, {raw / 1024:.1f} KB,
{packed / 1024:.1f} KB gzip -9. The server extension's GET /user/NAME/shangzhuang/quota
(through the proxy, asking the quota service) p50 {ext_ms:.1f} ms beside the quota
service's own GET me through the proxy p50 {me_ms:.1f} ms (100 sequential requests each).
"""
    print(section)
    if not args.no_write:
        write_section(HEADING, section)
        print(f"written to {DOC.relative_to(ROOT)}")


def main_language(args) -> None:
    """Lab in Chinese (language pack + our catalog) against Lab in English, both with the
    extension: the same rounds and loads as the extension mode."""
    global CHROMIUM_VERSION
    from playwright.sync_api import sync_playwright

    t_start, load_start = time.monotonic(), os.getloadavg()[0]
    hub = RunningHub(workdir(), quota=QUOTA)
    hub.start()
    try:
        for name, language in ((ZH, "zh_CN"), (EN, "en")):
            s = hub.new_user(name, PASSWORD)
            hub.form(s, "/hub/language", {"language": language}, allow_redirects=False)
            hub.spawn(name, "cpu")
            hub.wait_ready(name)
            quiet_lab(hub, name, hub.token_for(name))
        runs: dict[str, list[float]] = {ZH: [], EN: []}
        items: dict[str, list[float]] = {ZH: [], EN: []}
        per_round = []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            CHROMIUM_VERSION = browser.version
            for r in range(args.rounds):
                got = {}
                for name in (ZH, EN) if r % 2 == 0 else (EN, ZH):
                    launcher, item = measure(browser, hub, name, args.loads, with_item=True)
                    runs[name] += launcher
                    items[name] += item
                    got[name] = statistics.median(launcher)
                per_round.append(got)
                print(f"round {r + 1}: zh {got[ZH]:.2f} s, en {got[EN]:.2f} s", flush=True)
            # The languages took: each status item in its user's language.
            for name, word in ((ZH, "剩余"), (EN, "left")):
                context = browser.new_context()
                page = context.new_page()
                page.goto(f"{hub.url}/hub/login?next=/user/{name}/lab")
                page.fill("#username_input", name)
                page.fill("#password_input", PASSWORD)
                page.click("#login_submit")
                page.wait_for_function(ITEM_SHOWN, timeout=120_000)
                text = page.locator(".sz-quota-status").inner_text()
                assert word in text, (name, text)
                context.close()
            browser.close()
    finally:
        hub.cleanup()
    elapsed, load_end = time.monotonic() - t_start, os.getloadavg()[0]

    med = {n: statistics.median(v) for n, v in runs.items()}
    item = {n: statistics.median(v) for n, v in items.items()}
    ratio = med[ZH] / med[EN]
    paired = statistics.median(g[ZH] / g[EN] for g in per_round)
    n = len(runs[ZH])
    tbl = "\n".join(
        [
            "| | 中文 (zh_CN) | English | ratio (zh/en) |",
            "|---|---:|---:|---:|",
            f"| Lab load to visible launcher, median of {n} (s) | {med[ZH]:.2f} | "
            f"{med[EN]:.2f} | {ratio:.3f} |",
            f"| median of the per-round ratios | | | {paired:.3f} |",
            f"| fastest / slowest (s) | {min(runs[ZH]):.2f} / {max(runs[ZH]):.2f} | "
            f"{min(runs[EN]):.2f} / {max(runs[EN]):.2f} | |",
            f"| status bar item shows its figures, median (s) | {item[ZH]:.2f} | {item[EN]:.2f} "
            f"| {item[ZH] / item[EN]:.3f} |",
        ]
    )
    rounds_txt = ", ".join(f"{g[ZH]:.2f} / {g[EN]:.2f}" for g in per_round)
    met = "met" if ratio <= GOAL else "**missed**"
    section = f"""{LANGUAGE_HEADING}

Goal: Lab load in Chinese (jupyterlab-language-pack-zh-CN and shangzhuang-lab's zh_CN
catalog) at most {GOAL:.2f}× the English one (ratio ≤ {GOAL:.2f}): {met}.

One workbench, two users on the "cpu" profile, both with the extension: `lab-zh` chose
中文 on the hub (her session's Lab defaults to zh_CN: session.py), `lab-en` chose English.
Checked at the end: her status item reads "剩余 …", his "… left". Chromium through
Playwright; per round and user a new browser context, a login and one untimed first load,
then {args.loads} timed loads to a visible `.jp-Launcher` (performance.now()). {args.rounds}
rounds, the users' order alternating.

Measured {dt.datetime.now().strftime("%Y-%m-%d %H:%M")} on {machine()}.
The run took {elapsed / 60:.1f} min; 1-minute load average {load_start:.2f} at its start,
{load_end:.2f} at its end (above ~0.5 is other work on the machine).

{tbl}

Per round, median of its loads (zh / en, s): {rounds_txt}.
"""
    print(section)
    if not args.no_write:
        write_section(LANGUAGE_HEADING, section)
        print(f"written to {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
