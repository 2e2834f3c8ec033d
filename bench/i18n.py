"""Hub pages in 中文 vs English (issue 14): what translating costs a page.

Two measurements, zh_CN against en:
- the home page's template alone (JupyterHub's loader, our templates, the Translated
  extension), rendered in-process: the cost of gettext, Babel's dates and numbers;
- GET /hub/home and /hub/spawn on a real hub (signed in, the quota service answering),
  the browser's Accept-Language choosing the language: what a user waits for.

    .venv/bin/python bench/i18n.py [--renders 2000] [--requests 300]

Writes its section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HEADING = "## Hub pages in 中文 and English (bench/i18n.py)"
LANGUAGES = {"zh_CN": "zh-CN,zh;q=0.9", "en": "en-US,en;q=0.9"}


def template_renders(n: int) -> dict[str, list[float]]:
    """Milliseconds per render of home.html (with the quota section), per language."""
    from tests.unit.test_i18n import QUOTA, hub_environment, namespace

    from shangzhuang import i18n

    env = hub_environment()
    template = env.get_template("home.html")
    ns = namespace(quota=QUOTA, quota_warn=0.2, default_server=None, named_servers=[],
                   named_server_limit_per_user=3, allow_named_servers=True,
                   url="/user/alice/", spawner_options_form="")  # fmt: skip
    ns["user"].all_spawners = lambda include_default=False: []
    times: dict[str, list[float]] = {lang: [] for lang in LANGUAGES}
    for _round in range(n):
        for lang in LANGUAGES:  # interleaved: the machine's noise falls on both alike
            i18n.use(lang, "Asia/Shanghai")
            t = time.perf_counter()
            template.render(**ns)
            times[lang].append((time.perf_counter() - t) * 1000)
    i18n.use("en", "UTC")
    return times


def hub_requests(n: int) -> dict[str, dict[str, list[float]]]:
    """Milliseconds per GET of the hub's home and spawn pages, per language."""
    from tests.integration.hub import RunningHub, workdir

    quota = "[quota.accounts.default]\ngpu_hours = 100\ncpu_hours = 1000\n"
    out: dict[str, dict[str, list[float]]] = {}
    with RunningHub(workdir(), quota=quota) as hub:
        session = hub.new_user("bench")
        for path in ("/hub/home", "/hub/spawn"):
            out[path] = {lang: [] for lang in LANGUAGES}
            for header in LANGUAGES.values():  # warm both
                session.get(f"{hub.url}{path}", headers={"Accept-Language": header})
            for _round in range(n):
                for lang, header in LANGUAGES.items():
                    t = time.perf_counter()
                    r = session.get(f"{hub.url}{path}", headers={"Accept-Language": header})
                    out[path][lang].append((time.perf_counter() - t) * 1000)
                    assert r.status_code == 200, (path, r.status_code)
            assert "你的算力配额" in session.get(
                f"{hub.url}/hub/home", headers={"Accept-Language": LANGUAGES["zh_CN"]}
            ).content.decode()
    return out


def row(what: str, times: dict[str, list[float]]) -> str:
    zh, en = statistics.median(times["zh_CN"]), statistics.median(times["en"])
    p95 = {k: statistics.quantiles(v, n=20)[18] for k, v in times.items()}
    return (
        f"| {what} | {en:.2f} ms | {zh:.2f} ms | {zh / en:.2f} | "
        f"{p95['en']:.2f} / {p95['zh_CN']:.2f} ms | {len(times['en'])} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--renders", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()

    import babel
    import jupyterhub
    from bench.report import machine, write_section

    renders = template_renders(args.renders)
    pages = hub_requests(args.requests)
    lines = [
        HEADING,
        "",
        "The same page in each language, interleaved (one zh_CN, one en, ...), median and",
        "95th percentile. Template: home.html with the quota section, rendered in-process",
        "(JupyterHub's loader, our templates, i18n.Translated). Hub: GET over HTTP through",
        "the proxy, signed in, Accept-Language choosing the language (the quota service",
        "answers the home page's balance and the spawn form's refusals).",
        "",
        "| Page | en | zh_CN | zh_CN / en | p95 en / zh_CN | n each |",
        "|---|---|---|---|---|---|",
        row("home.html template", renders),
        *(row(f"GET {path}", times) for path, times in pages.items()),
        "",
        f"Machine: {machine(f'JupyterHub {jupyterhub.__version__}', f'Babel {babel.__version__}')}"
        ".",
        "",
    ]
    section = "\n".join(lines)
    write_section(HEADING, section)
    print(section)


if __name__ == "__main__":
    main()
