"""Idle GPU reclaim's share of a meter tick, with 1,000 GPU sessions.

    .venv/bin/python bench/reclaim.py [--sessions 1000]

A quota database (SQLite, WAL, as `make up` makes it); every session reads idle (3%) every
15 s, as the meter records them (utilisation.record_many); `Reclaim.tick` (quota/reclaim.py)
runs after each tick's readings, for 65 minutes of ticks with the site's default period
(an hour), so every session is warned once, at the same tick (the worst tick there is).
Measured: the first tick (each session's idle run read from the ledger, as after a restart
of the quota service), the ticks after it (only the readings written since the last tick),
and the tick that warns all of them. Beside it: the same rule asked of
`utilisation.idle_for` once per session per tick, as the first version did.

Goal: the whole meter tick under 200 ms. Writes its section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from report import machine, write_section  # noqa: E402
from shangzhuang.quota import utilisation  # noqa: E402
from shangzhuang.quota.db import make_engine, migrate  # noqa: E402
from shangzhuang.quota.ledger import Ledger  # noqa: E402
from shangzhuang.quota.meter import Running  # noqa: E402
from shangzhuang.quota.reclaim import Reclaim  # noqa: E402
from shangzhuang.settings import parse_settings  # noqa: E402

HEADING = "## Idle GPU reclaim (bench/reclaim.py)"
T0 = 1_790_000_000.0
INTERVAL = 15.0


class NoStop:
    name = "lab"

    async def stop(self, *_args) -> None:
        pass


def run(n: int) -> dict:
    site = parse_settings({
        "quota": {"sample_seconds": INTERVAL, "reclaim": {"idle_seconds": 3600}},
        "profiles": [{"name": "cpu", "cores": 2, "memory": "1G"},
                     {"name": "gpu", "cores": 4, "memory": "8G", "gpus": 1}],
    })  # fmt: skip
    folder = tempfile.mkdtemp(prefix="sz-bench-reclaim-")
    engine = make_engine(f"sqlite:///{folder}/quota.sqlite")
    migrate(engine)
    ledger = Ledger(engine, site.quota, "UTC")
    seen = {
        f"lab:u{i:05d}/@1": Running(f"lab:u{i:05d}/@1", f"u{i:05d}", "lab", T0,
                                    {"gpu_hours": 1.0, "cpu_hours": 4.0}, "gpu")
        for i in range(n)
    }  # fmt: skip
    reclaim, sources = Reclaim(ledger, site), {"lab": NoStop()}
    ticks, warn_ms, per_session = [], None, []
    now = T0
    for tick in range(int(65 * 60 / INTERVAL)):
        now += INTERVAL
        with ledger._write() as conn:
            utilisation.record_many(
                conn, [utilisation.Sample(c, r.user, now, 3.0, INTERVAL) for c, r in seen.items()]
            )
        t = time.perf_counter()
        report = asyncio.run(reclaim.tick(seen, sources, now))
        ms = (time.perf_counter() - t) * 1000
        if report.warned:
            warn_ms = ms
        else:
            ticks.append(ms)
        if tick % 60 == 30:  # the first version's way, now and then: idle_for per session
            t = time.perf_counter()
            with ledger._read() as conn:
                for c in seen:
                    utilisation.idle_for(conn, c, 10, now)
            per_session.append((time.perf_counter() - t) * 1000)
    return {
        "first": ticks[0], "p50": statistics.median(ticks[1:]),
        "p99": sorted(ticks[1:])[int(0.99 * (len(ticks) - 2))], "warn": warn_ms,
        "per_session": per_session, "warned": len(reclaim.warnings()),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=1000)
    args = parser.parse_args()
    r = run(args.sessions)
    per = ", ".join(f"{ms:.0f}" for ms in r["per_session"])
    section = f"""{HEADING}

Machine: {machine()}.
{args.sessions:,} GPU sessions on SQLite, each reading 3% every {INTERVAL:.0f} s for 65 minutes
(site period an hour, so all {r["warned"]:,} are warned at the same tick); `Reclaim.tick`:

| reclaim's part of a tick | ms |
|---|---|
| first tick (each idle run read from the ledger, as after a restart) | {r["first"]:.0f} |
| later ticks, p50 (the readings written since the last tick, one query) | {r["p50"]:.0f} |
| later ticks, p99 | {r["p99"]:.0f} |
| the tick that warns all {args.sessions:,} | {r["warn"]:.0f} |

Asking `utilisation.idle_for` of every session each tick (the first version) took {per} ms
at 15, 30, 45 and 60 minutes of readings: it reads a session's whole idle run, which grows
to a day of readings. Goal: the whole meter tick under 200 ms; reclaim's part fits in it
except on the first tick after a restart of the quota service (once).
"""
    print(section)
    write_section(HEADING, section)


if __name__ == "__main__":
    main()
