"""Quota service latency and meter tick time on a big ledger.

    .venv/bin/python bench/quota_api.py [--users 10000] [--accounts 100] [--records 1000000]
        [--sessions 1000] [--small-records 10000] [--requests 500] [--warmup 50] [--ticks 11]
        [--profile] [--py-spy PATH] [--no-write]

1. Seed. A quota database (ledger/quota.sqlite, the file `open_ledger` uses) is created
   with the project's own schema (shangzhuang.quota.db.make_engine + migrate), then filled
   with sqlite3 executemany in one transaction, before the hub starts: USERS members, assigned
   round-robin to ACCOUNTS accounts (declared in [quota.accounts.NAME] with allocations big
   enough that nobody runs out); RECORDS charge rows, as the meter writes them (one row per
   15 s interval and resource), with their (closed) consumers: first one 15 s cpu interval
   per user in the current period (a busy month: a totals row per user this period, whatever
   the date; as many users as there are records), then Lab sessions of 5 min to 2 h (1 in 5
   gpu-1, which pays cpu_hours and gpu_hours) spread over the last 365 days, split at period
   boundaries, users drawn skewed (index = USERS * U**3), so a few users have many records.
   The totals table is the sum of the charges per (period_start, kind, name, resource), kind
   user and account, checked for one user at the end. No ANALYZE (the application never
   runs it).

2. Quota API against the hub API. The hub starts (`shangzhuang up`, tests/integration/hub.py's
   RunningHub, quota.sample_seconds = 3600 so that the meter stays out of the way). The
   seeded user with the most records signs up, is approved and gets a token. Then, through
   the proxy, with that token, one requests.Session (keep-alive) per endpoint, sequentially:
   GET /services/quota/api/v1/me and GET /hub/api/user, interleaved (order alternating),
   WARMUP each unmeasured, then REQUESTS each measured. p50 and p99 per endpoint. Peak RSS
   of the quota service (the hub's child whose cmdline has shangzhuang.quota.service) and of
   the hub process: the kernel's high-water mark (VmHWM in /proc/PID/status) at the end.
   After the hub stops: Ledger.balance(user) in-process on the same file (the ledger's share
   of the quota service's latency).

3. Meter tick. In-process, no hub: a Ledger on a database seeded as above with SMALL_RECORDS
   charge rows, and one on the RECORDS database from step 2 (same users and accounts). A fake
   UsageSource lists SESSIONS running Lab sessions (distinct users, 1 in 5 gpu-1, hub
   groups = their account): it stands in for the hub API (the lab source), so that the tick
   measures the ledger, not the hub's HTTP listing. The first tick opens the SESSIONS
   consumers (reported apart); then Meter.post_slices untimed ticks fill the journal to its
   steady size (each tick posts the next slice of users' rows to the history); then TICKS
   ticks each, `now` advancing by 15 s, the two databases alternating; the median of
   Meter.tick's own timing (TickReport.seconds, posting included).

Prints two markdown tables and writes them to docs/benchmarks.md (section
"## Quota API and meter (bench/quota_api.py)"; other sections are kept). When a goal is
missed (or with --profile) it finds out what costs the time and writes that into the section
too. GET /me: py-spy on the running quota service's main thread during another REQUESTS
requests, if a py-spy binary is given (--py-spy, default: py-spy on PATH; `pip install
py-spy`, not a project dependency); cProfile of Ledger.balance in-process; each SELECT of
Ledger.balance timed alone in sqlite3 with its query plan. The tick: cProfile of one tick on
the RECORDS database, and the pages one tick writes to the WAL on each database (separate
ticks with automatic checkpoints off; those are not the timed ones).

Every process started (hub, proxy, quota service) is stopped at the end (RunningHub.cleanup).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import cProfile
import datetime as dt
import io
import json
import os
import pstats
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import psutil
import requests
from sqlalchemy import event

from report import machine as report_machine  # noqa: E402  (bench/ is on sys.path)
from report import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.hub import RunningHub, workdir  # noqa: E402

from shangzhuang.quota import ledger_file  # noqa: E402
from shangzhuang.quota.consumers import Consumer  # noqa: E402
from shangzhuang.quota.db import make_engine, migrate  # noqa: E402
from shangzhuang.quota.ledger import Ledger, rates_of  # noqa: E402
from shangzhuang.quota.meter import Meter, Running  # noqa: E402
from shangzhuang.quota.periods import period_at  # noqa: E402
from shangzhuang.settings import Settings, load_settings  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
HEADING = "## Quota API and meter (bench/quota_api.py)"
SAMPLE = 15.0  # seconds per charged interval, as the default quota.sample_seconds
HISTORY = 365 * 86400.0
BATCH = 100_000
TICK_GOAL_MS = 200.0
TICK_RATIO_GOAL = 1.2
PASSWORD = "bench-horse-42"
WHY_TICK = """ A tick writes its charge rows to the journal (its
table, `uq_journal_interval` (start, consumer, resource), `ix_journal_user_start` (user,
start)) and moves the running consumers' marks and the totals of their users and accounts;
none of that is bigger on a longer history, so a ratio above 1 here is the checkpoint
(wal_autocheckpoint, 1,000 pages) copying pages back into a bigger file, or other work on
the machine. The history's own per-user index is written only when the journal is posted."""
SPY_PARTS = {  # what the quota service's main thread does per GET /me (py-spy frames)
    "the whole handler (MeHandler.get)": "MeHandler.get",
    "Ledger.balances": "Ledger.balances",
    "HubAuthenticated.get_current_user (HubAuth on its thread, the loop waiting)": (
        "HubAuthenticated.get_current_user"
    ),
    "writing the response (APIHandler.write_json)": "APIHandler.write_json",
    "reading the request (HTTP1Connection._read_message)": "HTTP1Connection._read_message",
    "epoll (waiting, not counted idle)": "EpollSelector.select",
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def user_names(n: int) -> list[str]:
    return [f"u{i:05d}" for i in range(n)]


def account_names(n: int) -> list[str]:
    return [f"acct{i:03d}" for i in range(n)]


def quota_toml(accounts: list[str]) -> str:
    """What goes into [quota]: a slow meter and ACCOUNTS accounts nobody exhausts."""
    lines = ["sample_seconds = 3600", f'default_account = "{accounts[0]}"']
    for a in accounts:
        lines += [f"[quota.accounts.{a}]", "cpu_hours = 100000", "gpu_hours = 10000"]
    return "\n".join(lines) + "\n"


# --- seeding --------------------------------------------------------------------------
def period_starts(settings: Settings, since: float, until: float) -> list[float]:
    """Start of every quota period that overlaps [since, until], ascending."""
    kind, tz = settings.quota.period, settings.site.timezone
    p = period_at(since, kind, tz)
    out = [p.start]
    while p.resets and p.end <= until:
        p = period_at(p.end, kind, tz)
        out.append(p.start)
    return out


def seed(path: Path, settings: Settings, n_users: int, n_records: int, now: float) -> dict:
    """Fill a new quota database at `path`; returns what it holds."""
    t0 = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    engine = make_engine(f"sqlite:///{path}")
    migrate(engine)  # the project's schema, exactly as open_ledger makes it
    engine.dispose()

    rng = random.Random(1)
    users = user_names(n_users)
    accounts = sorted(settings.quota.accounts)
    account_of = {u: accounts[i % len(accounts)] for i, u in enumerate(users)}
    profiles = {p: rates_of(settings.profile(p)) for p in ("cpu", "gpu-1")}
    starts = period_starts(settings, now - HISTORY, now)
    bounds = starts[1:]  # an interval that crosses one is cut there

    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA synchronous=OFF")
    con.execute("PRAGMA cache_size=-262144")  # 256 MiB: inserts into big indexes stay fast
    con.execute("BEGIN")
    con.executemany('INSERT INTO members ("user", account) VALUES (?, ?)', list(account_of.items()))
    charge_sql = (
        'INSERT INTO charges (consumer, "user", account, resource, source, start, "end", '
        "amount, period_start) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    consumer_sql = (
        'INSERT INTO consumers (id, "user", account, source, profile, cpu_rate, gpu_rate, '
        "started, charged_until, closed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    totals: dict[tuple, float] = defaultdict(float)
    per_user: Counter = Counter()
    charges, consumers, cids = [], [], set()
    made = n_consumers = 0
    # A busy period: every user has used something in the current one (one 15 s cpu
    # interval each, as far as the records go), so the current period has a totals row per
    # user whatever the date and the number of records; the rest is history, skewed.
    lo = max(starts[-1], now - HISTORY)
    if now - lo < 2 * SAMPLE:  # the period began seconds ago: put them just before it
        lo = now - HISTORY
    first = min(n_users, n_records)
    while made < n_records:
        if made < first:
            user, profile, k = users[made], "cpu", 1
            started = round(lo + rng.random() * (now - lo - 2 * SAMPLE), 3)
        else:
            user = users[int(n_users * rng.random() ** 3)]
            profile = "gpu-1" if rng.random() < 0.2 else "cpu"
            k = rng.randint(20, 480)  # 5 min to 2 h
            started = round(now - HISTORY + rng.random() * (HISTORY - k * SAMPLE - 60), 3)
        acct = account_of[user]
        rates = [(r, v) for r, v in profiles[profile].items() if v > 0]
        cid = str(Consumer.session("lab", user, "", started))
        if cid in cids:
            continue
        cids.add(cid)
        t = started
        rows = []
        for _ in range(k):
            end = t + SAMPLE
            i = bisect.bisect_right(bounds, t)
            pieces = [(t, end)]
            if i < len(bounds) and bounds[i] < end:
                pieces = [(t, bounds[i]), (bounds[i], end)]
            for a, b in pieces:
                ps = starts[bisect.bisect_right(starts, a) - 1]
                for resource, rate in rates:
                    rows.append((cid, user, acct, resource, "lab", a, b, rate * (b - a) / 3600, ps))
            t = end
        rows = rows[: n_records - made]
        for r in rows:
            totals[(r[8], "user", user, r[3])] += r[7]
            totals[(r[8], "account", acct, r[3])] += r[7]
        per_user[user] += len(rows)
        made += len(rows)
        charges += rows
        cpu, gpu = profiles[profile]["cpu_hours"], profiles[profile]["gpu_hours"]
        consumers.append((cid, user, acct, "lab", profile, cpu, gpu, started, rows[-1][6], 1))
        n_consumers += 1
        if len(charges) >= BATCH:
            con.executemany(charge_sql, charges)
            con.executemany(consumer_sql, consumers)
            charges, consumers = [], []
    con.executemany(charge_sql, charges)
    con.executemany(consumer_sql, consumers)
    con.executemany(
        "INSERT INTO totals (period_start, kind, name, resource, used, granted) "
        "VALUES (?, ?, ?, ?, ?, 0.0)",
        [(*key, used) for key, used in totals.items()],
    )
    con.execute("COMMIT")

    # The totals must be what the charges add up to: check the busiest user.
    top = per_user.most_common(1)[0][0]
    got = dict(
        con.execute(
            "SELECT resource, SUM(used) FROM totals WHERE kind = ? AND name = ? GROUP BY resource",
            ("user", top),
        ).fetchall()
    )
    want = dict(
        con.execute(
            'SELECT resource, SUM(amount) FROM charges WHERE "user" = ? GROUP BY resource', (top,)
        ).fetchall()
    )
    assert got.keys() == want.keys(), (got, want)
    assert all(abs(got[r] - want[r]) < 1e-6 for r in got), (got, want)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return {
        "records": made,
        "consumers": n_consumers,
        "totals": len(totals),
        "totals_now": sum(1 for key in totals if key[0] == starts[-1]),
        "users": n_users,
        "accounts": len(accounts),
        "top_user": top,
        "top_records": per_user[top],
        "seconds": time.perf_counter() - t0,
        "mb": path.stat().st_size / 2**20,
    }


# --- quota API against hub API -----------------------------------------------------------
def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def peak_rss(proc: psutil.Process) -> float:
    """Highest RSS of the process so far (VmHWM), in bytes."""
    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return proc.memory_info().rss


def quota_process(hub_proc: psutil.Process, timeout: float = 30) -> psutil.Process:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in hub_proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if any("shangzhuang.quota.service" in a for a in p.cmdline()):
                    return p
        time.sleep(0.2)
    raise RuntimeError("no quota service process under the hub")


def measure_http(hub: RunningHub, name: str, token: str, n: int, warmup: int) -> dict:
    urls = {
        "quota": f"{hub.url}/services/quota/api/v1/me",
        "hub": f"{hub.url}/hub/api/user",
    }
    headers = {"Authorization": f"token {token}"}
    sessions = {k: requests.Session() for k in urls}
    times: dict[str, list[float]] = {k: [] for k in urls}
    for i in range(warmup + n):
        for k in list(urls) if i % 2 == 0 else list(reversed(urls)):
            t0 = time.perf_counter()
            r = sessions[k].get(urls[k], headers=headers, timeout=30)
            elapsed = time.perf_counter() - t0
            if r.status_code != 200:
                raise RuntimeError(f"GET {urls[k]}: {r.status_code} {r.text[:300]}")
            if i == 0:
                body = r.json()
                who = body["user"] if k == "quota" else body["name"]
                assert who == name, body
            if i >= warmup:
                times[k].append(elapsed)
    for s in sessions.values():
        s.close()
    return times


def measure_balance(db: Path, settings: Settings, user: str, n: int = 200) -> list[float]:
    """Ledger.balance(user).as_dict() and its JSON, in-process: the ledger's part of /me."""
    engine = make_engine(f"sqlite:///{db}")
    ledger = Ledger(engine, settings.quota, settings.site.timezone)
    out = []
    try:
        for i in range(n + 20):
            t0 = time.perf_counter()
            json.dumps(ledger.balance(user).as_dict())
            if i >= 20:
                out.append(time.perf_counter() - t0)
    finally:
        engine.dispose()
    return out


def py_spy_profile(py_spy: str, pid: int, run, out: Path, n: int = 16) -> tuple[str, dict]:
    """Sample the quota service with py-spy while `run()` sends requests; the functions in
    the most busy samples (inclusive, the way a flame graph's widths read)."""
    rec = subprocess.Popen(
        [py_spy, "record", "--pid", str(pid), "--rate", "500", "--format", "raw",
         "--threads", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        time.sleep(1.5)
        t0 = time.perf_counter()
        requests_sent = run()
        wall = time.perf_counter() - t0
    finally:
        rec.send_signal(signal.SIGINT)
        try:
            rec.wait(30)
        except subprocess.TimeoutExpired:
            rec.kill()
            rec.wait()
    if not out.exists():
        return f"py-spy wrote nothing: {rec.stderr.read().decode(errors='replace')[-500:]}", {}
    inclusive: Counter = Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if "MainThread" not in frames[0]:  # the event loop, where the handlers run
            continue
        total += int(count)
        frames = {re.sub(r":\d+\)$", ")", f) for f in frames[1:]}
        for f in frames:
            inclusive[f] += int(count)
    if not total:
        return "py-spy: no samples", {}
    rows = [
        f"{c / total * 100:5.1f}%  {f.replace(str(ROOT) + '/', '').replace(sys.prefix + '/', '')}"
        for f, c in inclusive.most_common()
        if c < total  # not the frames every sample has (runpy, asyncio.run, the loop)
    ][:n]
    shares = {
        label: sum(c for f, c in inclusive.items() if f.startswith(frame + " (")) / total
        for label, frame in SPY_PARTS.items()
    }
    shares["ms per request"] = total / 500 / requests_sent * 1000
    return (
        f"py-spy on the quota service during {requests_sent} GET /me ({wall:.1f} s): "
        f"{total} samples of the main thread at 500/s that py-spy did not count as idle "
        f"({total / 500 / requests_sent * 1000:.2f} ms per request); share of those in "
        "each function (inclusive; HubAuth.get_user blocks the main thread on its own thread):\n"
        + "\n".join(rows)
    ), shares


# --- meter tick --------------------------------------------------------------------------
class FakeLabSessions:
    """A UsageSource that stands in for the hub API (LabSessions): it lists a fixed set of
    running Lab sessions from memory, so that the tick measures the ledger, not the hub's
    HTTP listing. It stops nothing (nobody runs out), but remembers any call."""

    name = "lab"

    def __init__(self, running: list[Running]):
        self._running = running
        self.stopped: list[str] = []

    async def running(self) -> list[Running]:
        return list(self._running)

    async def stop(self, consumer: str, user: str, reason: str) -> None:
        self.stopped.append(consumer)


def running_sessions(settings: Settings, n_users: int, n: int, now: float) -> list[Running]:
    rng = random.Random(2)
    users = user_names(n_users)
    accounts = sorted(settings.quota.accounts)
    out = []
    for i in range(n):
        idx = i * n_users // n
        user = users[idx]
        profile = settings.profile("gpu-1" if i % 5 == 4 else "cpu")
        started = round(now - rng.uniform(60, 7200), 3)
        out.append(
            Running(
                consumer=str(Consumer.session("lab", user, "", started)), user=user, source="lab",
                started=started, rates=rates_of(profile), profile=profile.name,
                groups=(accounts[idx % len(accounts)],),
            )
        )  # fmt: skip
    return out


def bench_ticks(
    settings: Settings, dbs: dict[str, Path], n_users: int, n_sessions: int, ticks: int,
    now0: float, diagnose: bool = False,
) -> dict:  # fmt: skip
    """Time Meter.tick on each database, alternating; with `diagnose`, then profile one tick
    on the last database and count the WAL pages a tick writes on each."""
    loop = asyncio.new_event_loop()
    running = running_sessions(settings, n_users, n_sessions, now0)
    expected = sum(sum(1 for v in r.rates.values() if v > 0) for r in running)
    meters, engines, sources = {}, [], {}
    for label, db in dbs.items():
        engine = make_engine(f"sqlite:///{db}")
        engines.append(engine)
        sources[label] = FakeLabSessions(running)
        meters[label] = Meter(
            Ledger(engine, settings.quota, settings.site.timezone),
            [sources[label]],
            settings.quota.grace_seconds,
        )
    result: dict = {label: {"first": 0.0, "ticks": [], "posted": [], "post": []} for label in dbs}
    result["charges_per_tick"] = expected
    slices = next(iter(meters.values())).post_slices
    result["warmup_ticks"] = slices
    t = now0
    try:
        for label, meter in meters.items():
            rep = loop.run_until_complete(meter.tick(now0))
            assert rep.opened == n_sessions, rep
            result[label]["first"] = rep.seconds
        # The journal fills for `post_slices` ticks, then holds steady (each tick posts the
        # next slice of users): time the steady state, as a meter running for days is.
        for i in range(1, slices + ticks + 1):
            t = now0 + SAMPLE * i
            for label in list(meters) if i % 2 else list(reversed(meters)):
                rep = loop.run_until_complete(meters[label].tick(t))
                assert rep.charged == expected and rep.opened == 0 and not rep.stopped, rep
                if i > slices:
                    result[label]["ticks"].append(rep.seconds)
                    result[label]["posted"].append(rep.posted)
                    result[label]["post"].append(rep.post_seconds)
        for label, meter in meters.items():
            assert not sources[label].stopped, sources[label].stopped
            result[label]["journal"] = meter.ledger.journal_size()
        if diagnose:
            last = list(meters)[-1]
            t += SAMPLE
            prof = cProfile.Profile()
            prof.enable()
            loop.run_until_complete(meters[last].tick(t))
            prof.disable()
            result["profile"] = top_functions(prof, 10)
            result["profile_parts"] = tick_parts(prof)
            for e in engines:
                e.dispose()
            for label, db in dbs.items():
                result[label]["wal_pages"] = wal_pages_per_tick(settings, db, running, t, loop)
    finally:
        loop.close()
        for e in engines:
            e.dispose()
    return result


def wal_pages_per_tick(
    settings: Settings, db: Path, running: list[Running], t: float, loop, n: int = 3
) -> float:
    """Pages one tick writes to the WAL (checkpoints off; the median of n ticks): the
    B-tree pages it changes, which the commit's checkpoint then copies into the database."""
    engine = make_engine(f"sqlite:///{db}")

    @event.listens_for(engine, "connect")
    def _no_checkpoints(conn, _record):
        conn.execute("PRAGMA wal_autocheckpoint=0")

    meter = Meter(
        Ledger(engine, settings.quota, settings.site.timezone),
        [FakeLabSessions(running)],
        settings.quota.grace_seconds,
    )
    wal = Path(f"{db}-wal")
    pages = []
    try:
        for i in range(1, n + 1):
            engine.dispose()
            with contextlib.closing(sqlite3.connect(db)) as con:
                page = con.execute("PRAGMA page_size").fetchone()[0]
                con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            loop.run_until_complete(meter.tick(t + SAMPLE * i))
            size = wal.stat().st_size if wal.exists() else 0
            pages.append(max(0, size - 32) / (page + 24))
    finally:
        engine.dispose()
        with contextlib.closing(sqlite3.connect(db)) as con:
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return statistics.median(pages)


def tick_parts(prof: cProfile.Profile) -> dict[str, float]:
    """Seconds (cumulative) of the tick's main parts, from a profile of one tick."""
    wanted = {
        ("quota/ledger.py", "charge"): "Ledger.charge",
        ("quota/meter.py", "_enforce"): "Meter._enforce",
        ("quota/ledger.py", "balances"): "Ledger.balances",
        ("quota/ledger.py", "open_consumers"): "Ledger.open_consumers",
        ("~", "<method 'commit' of 'sqlite3.Connection' objects>"): "commits",
    }
    out: dict[str, float] = {}
    for (file, _line, name), (_cc, _nc, _tt, ct, _callers) in pstats.Stats(prof).stats.items():
        for (suffix, fname), label in wanted.items():
            if name == fname and file.endswith(suffix):
                out[label] = out.get(label, 0.0) + ct
    out["total"] = pstats.Stats(prof).total_tt
    return out


def top_functions(prof: cProfile.Profile, n: int = 8) -> str:
    """The project's own functions by cumulative time, then everything by own time."""

    def table(sort: str, *restrict) -> list[str]:
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats(sort).print_stats(*restrict)
        lines = buf.getvalue().splitlines()
        start = next(i for i, x in enumerate(lines) if "ncalls" in x)
        return [
            x.replace(str(ROOT) + "/", "").replace(sys.prefix + "/", "")
            for x in lines[start:]
            if x.strip()
        ]

    head = pstats.Stats(prof).total_tt
    return "\n".join(
        [
            f"total {head * 1000:.1f} ms; src/shangzhuang functions by cumulative time:",
            *table("cumulative", "src/shangzhuang", n),
            "all functions by own time:",
            *table("tottime", n),
        ]
    )


def profile_balance(db: Path, settings: Settings, user: str, n: int = 300) -> str:
    engine = make_engine(f"sqlite:///{db}")
    ledger = Ledger(engine, settings.quota, settings.site.timezone)
    try:
        ledger.balance(user)
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(n):
            json.dumps(ledger.balance(user).as_dict())
        prof.disable()
    finally:
        engine.dispose()
    return f"{n} calls of Ledger.balance(user).as_dict() + json.dumps:\n" + top_functions(prof)


def balance_queries(db: Path, settings: Settings, user: str, n: int = 200) -> list[str]:
    """The SELECTs Ledger.balance(user) sends, each timed alone with sqlite3 (median of n)
    with SQLite's query plan: what the database itself costs per GET /me."""
    engine = make_engine(f"sqlite:///{db}")
    sent: list[tuple[str, tuple]] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _capture(_conn, _cursor, statement, parameters, _context, _many):
        sent.append((statement, tuple(parameters)))

    try:
        Ledger(engine, settings.quota, settings.site.timezone).balance(user)
    finally:
        engine.dispose()
    out = []
    with contextlib.closing(sqlite3.connect(db)) as con:
        for stmt, params in sent:
            if not stmt.lstrip().upper().startswith("SELECT"):
                continue
            plan = "; ".join(r[3] for r in con.execute("EXPLAIN QUERY PLAN " + stmt, params))
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                rows = con.execute(stmt, params).fetchall()
                times.append(time.perf_counter() - t0)
            table = re.search(r"FROM (\w+)", stmt).group(1)
            out.append(
                f"{statistics.median(times) * 1000:.3f} ms, {len(rows)} rows: {table}: {plan}"
            )
    return out


# --- report ------------------------------------------------------------------------------
def machine() -> str:
    import jupyterhub

    return report_machine(
        f"SQLite {sqlite3.sqlite_version}", f"jupyterhub {jupyterhub.__version__}"
    )


def fmt_int(n: int) -> str:
    return f"{n:,}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--accounts", type=int, default=100)
    ap.add_argument("--records", type=int, default=1_000_000, help="charge rows, hub DB")
    ap.add_argument("--sessions", type=int, default=1_000, help="running sessions (tick)")
    ap.add_argument("--small-records", type=int, default=10_000, help="charge rows, small DB")
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--ticks", type=int, default=11, help="measured ticks per DB (>= 5)")
    ap.add_argument("--profile", action="store_true", help="profile even if goals are met")
    ap.add_argument(
        "--py-spy",
        default=shutil.which("py-spy") or "",
        help="py-spy binary, to profile the quota service when /me misses its goal",
    )
    ap.add_argument("--no-write", action="store_true", help="don't update docs/benchmarks.md")
    args = ap.parse_args()
    if args.ticks < 5:
        ap.error("--ticks must be at least 5")
    if args.accounts < 1 or args.users < args.sessions:
        ap.error("need at least one account and at least as many users as sessions")

    t_start = time.monotonic()
    load0 = os.getloadavg()[0]
    now = time.time()
    hub = RunningHub(workdir(), quota=quota_toml(account_names(args.accounts)))
    big_db = ledger_file(load_settings(hub.config))
    small_db = hub.base / "small" / "quota.sqlite"
    spy, spy_parts, api_notes, queries = "", {}, [], []
    try:
        settings = load_settings(hub.config)
        log(f"seeding {fmt_int(args.records)} charge rows into {big_db}")
        big = seed(big_db, settings, args.users, args.records, now)
        log(
            f"seeded in {big['seconds']:.1f} s: {fmt_int(big['consumers'])} consumers, "
            f"{fmt_int(big['totals'])} totals rows, {big['mb']:.0f} MB; "
            f"{big['top_user']} has {fmt_int(big['top_records'])} records"
        )
        name = big["top_user"]

        log("starting the hub")
        hub.start(timeout=120)
        hub_proc = psutil.Process(hub.proc.pid)
        quota_proc = quota_process(hub_proc)
        hub.new_user(name, PASSWORD)
        token = hub.token_for(name)
        log(f"{args.warmup} + {args.requests} requests per endpoint as {name}")
        times = measure_http(hub, name, token, args.requests, args.warmup)
        hwm = {"quota": peak_rss(quota_proc), "hub": peak_rss(hub_proc)}
        p50 = {k: statistics.median(v) * 1000 for k, v in times.items()}
        api_ok = p50["quota"] <= p50["hub"]
        if (args.profile or not api_ok) and args.py_spy:
            log("profiling the quota service with py-spy")

            def more_requests(n: int = args.requests) -> int:
                with requests.Session() as s:
                    for _ in range(n):
                        s.get(
                            f"{hub.url}/services/quota/api/v1/me",
                            headers={"Authorization": f"token {token}"},
                            timeout=30,
                        ).raise_for_status()
                return n

            spy, spy_parts = py_spy_profile(
                args.py_spy, quota_proc.pid, more_requests, hub.base / "me.raw"
            )
        hub.stop()
        balance = measure_balance(big_db, settings, name)
        if args.profile or not api_ok:
            api_notes = [profile_balance(big_db, settings, name)]
            queries = balance_queries(big_db, settings, name)

        log(f"seeding {fmt_int(args.small_records)} charge rows into {small_db}")
        small = seed(small_db, settings, args.users, args.small_records, now)
        log(f"ticks: {args.sessions} running sessions, {args.ticks} measured ticks per DB")
        dbs = {"small": small_db, "big": big_db}
        tick = bench_ticks(settings, dbs, args.users, args.sessions, args.ticks, time.time())
        ms = {k: statistics.median(tick[k]["ticks"]) * 1000 for k in dbs}
        tick_ok = ms["small"] < TICK_GOAL_MS and ms["big"] < TICK_GOAL_MS
        ratio_ok = ms["big"] / ms["small"] <= TICK_RATIO_GOAL
        if args.profile or not (tick_ok and ratio_ok):
            log("diagnosing the tick (cProfile, WAL pages)")
            diag = bench_ticks(settings, dbs, args.users, args.sessions, 2, time.time(), True)
            tick["profile"], tick["profile_parts"] = diag["profile"], diag["profile_parts"]
            for k in dbs:
                tick[k]["wal_pages"] = diag[k]["wal_pages"]
    finally:
        hub.cleanup()
    elapsed = time.monotonic() - t_start
    load1 = os.getloadavg()[0]

    verdict = {True: "met", False: "**missed**"}
    ratio = ms["big"] / ms["small"]
    api_tbl = "\n".join(
        [
            "| endpoint | p50 ms | p99 ms | ratio of p50 (quota/hub) | peak RSS MB |",
            "|---|---:|---:|---:|---:|",
            f"| GET /services/quota/api/v1/me | {p50['quota']:.2f} | "
            f"{pct(times['quota'], 99) * 1000:.2f} | {p50['quota'] / p50['hub']:.2f} | "
            f"{hwm['quota'] / 2**20:.0f} (quota service) |",
            f"| GET /hub/api/user | {p50['hub']:.2f} | {pct(times['hub'], 99) * 1000:.2f} | "
            f"1.00 | {hwm['hub'] / 2**20:.0f} (hub) |",
        ]
    )
    tick_tbl = "\n".join(
        [
            "| charge rows in the ledger | first tick ms (opens consumers) "
            "| tick ms (median) | min–max ms |",
            "|---:|---:|---:|---:|",
            *(
                f"| {fmt_int(s['records'])} | {tick[k]['first'] * 1000:.0f} | {ms[k]:.1f} | "
                f"{min(tick[k]['ticks']) * 1000:.1f}–{max(tick[k]['ticks']) * 1000:.1f} |"
                for k, s in (("small", small), ("big", big))
            ),
            f"| ratio ({fmt_int(big['records'])} / {fmt_int(small['records'])}) | | "
            f"{ratio:.2f} | |",
        ]
    )
    bal = statistics.median(balance) * 1000
    slices = tick["warmup_ticks"]
    posted = [f"{statistics.median(tick[k]['posted']):.0f}" for k in dbs]
    post_ms = [statistics.median(tick[k]["post"]) * 1000 for k in dbs]
    text = f"""{HEADING}

Goals: quota `GET /me` p50 ≤ hub `GET /hub/api/user` p50: {verdict[api_ok]}
(ratio {p50["quota"] / p50["hub"]:.2f}). Meter tick < {TICK_GOAL_MS:.0f} ms:
{verdict[tick_ok]}. Tick at {fmt_int(big["records"])} charge rows ≤ {TICK_RATIO_GOAL}× the
tick at {fmt_int(small["records"])}: {verdict[ratio_ok]} (ratio {ratio:.2f}).

Measured {dt.datetime.now().strftime("%Y-%m-%d %H:%M")} on {machine()}.
The run took {elapsed / 60:.1f} min; 1-minute load average {load0:.2f} at its start,
{load1:.2f} at its end (anything above ~0.5 is other work on the machine, and every
number here moves with it).

Ledger (SQLite, seeded before the hub starts): {fmt_int(big["users"])} users round-robin in
{big["accounts"]} accounts; {fmt_int(big["records"])} charge rows (15 s intervals: one per
user in the current period, then {fmt_int(big["consumers"] - big["users"])} Lab sessions of
5 min to 2 h over 365 days, skewed to a few users), {fmt_int(big["totals"])} totals rows
({fmt_int(big["totals_now"])} in the current period), {big["mb"]:.0f} MB; seeded in
{big["seconds"]:.0f} s. The {fmt_int(small["records"])}-row database for the tick has the same
users and accounts and only the first part (one 15 s interval per user this period:
{fmt_int(small["totals_now"])} totals rows).

### Quota API against the hub API

{args.requests} sequential requests per endpoint after {args.warmup} warm-up, interleaved,
through the proxy, keep-alive, with the token of {name} ({fmt_int(big["top_records"])} charge
rows, the most of any user). Peak RSS: VmHWM of the quota service process and of the hub
process (not the proxy) at the end. For comparison, `Ledger.balance(user)` + JSON in-process
on the same database: p50 {bal:.2f} ms.

{api_tbl}
"""
    if spy or api_notes:
        text += "\nWhere the quota service's time goes"
        if spy_parts:
            text += (
                f" (py-spy, its main thread, {spy_parts['ms per request']:.2f} ms of samples "
                "per request):\n\n"
                + "\n".join(f"- {label}: {spy_parts[label] * 100:.0f}%" for label in SPY_PARTS)
                + "\n"
            )
        else:
            text += ":\n"
        text += (
            "\nThe SELECTs of one `Ledger.balance(user)`, each timed alone in sqlite3, with "
            "SQLite's plan:\n\n" + "\n".join(f"- {q}" for q in queries) + "\n\n"
        )
        if any(q.endswith("totals: SEARCH totals USING INDEX sqlite_autoindex_totals_1 "
                          "(period_start=?)") for q in queries):  # fmt: skip
            text += (
                "The totals SELECT uses only the first column of the key (period_start, kind, "
                "name, resource): it reads every totals row of the current period "
                f"({fmt_int(big['totals_now'])} here, about one per user who used anything "
                "this period) to return a handful.\n\n"
            )
        text += "\n\n".join(f"```\n{p}\n```" for p in [spy, *api_notes] if p) + "\n"
    text += f"""
### Meter tick

`Meter.tick(now)` in-process with {args.sessions} running Lab sessions (1 in 5 gpu-1:
{tick["charges_per_tick"]} charge rows per tick), listed by a fake in-memory UsageSource that
stands in for the hub API so that the tick measures the ledger, not the hub's HTTP listing.
The first tick opens the {args.sessions} consumers; {slices} untimed ticks follow, then
{args.ticks} timed ticks per database, `now` advancing 15 s each, the two databases
alternating. Both databases have the same {fmt_int(big["users"])} users and
{big["accounts"]} accounts. A tick writes its charge rows to the journal, then posts the
journal rows of the next 1/{slices} of the users (`Meter.post_slices`) to the history's
`charges`, in (user, start) order: the untimed ticks fill the journal to its steady size.
In the timed ticks, posting (part of each tick's time) moved a median of {posted[0]} and
{posted[1]} rows in {post_ms[0]:.1f} and {post_ms[1]:.1f} ms; the journal held
{fmt_int(tick["small"]["journal"])} and {fmt_int(tick["big"]["journal"])} rows at the end.

{tick_tbl}
"""
    if "profile" in tick:
        parts = tick["profile_parts"]
        text += f"""
Where the tick's time goes (cProfile of one more tick at {fmt_int(big["records"])} rows,
{parts["total"] * 1000:.0f} ms with the profiler): Ledger.charge
{parts.get("Ledger.charge", 0) * 1000:.0f} ms, Meter._enforce
{parts.get("Meter._enforce", 0) * 1000:.0f} ms (of which Ledger.balances of the
{args.sessions} users {parts.get("Ledger.balances", 0) * 1000:.0f} ms), sqlite3 commits
{parts.get("commits", 0) * 1000:.0f} ms. Pages one tick writes to the WAL (checkpoints off,
median of 3 ticks): {tick["small"]["wal_pages"]:.0f} at {fmt_int(small["records"])} rows,
{tick["big"]["wal_pages"]:.0f} at {fmt_int(big["records"])} rows.{"" if ratio_ok else WHY_TICK}

```
{tick["profile"]}
```
"""
    print(text)
    if not args.no_write:
        write_section(HEADING, text)
        log(f"wrote {DOC.relative_to(ROOT)}")
    return 0 if api_ok and tick_ok and ratio_ok else 1


if __name__ == "__main__":
    sys.exit(main())
