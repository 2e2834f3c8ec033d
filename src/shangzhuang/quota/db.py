"""The quota database: SQLAlchemy 2 tables, engines (SQLite WAL or PostgreSQL), Alembic migrations.

Times are epoch seconds (floats): exact, zone-free, and the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import (
    Boolean,
    Float,
    Index,
    Integer,
    String,
    UniqueConstraint,
    create_engine,
    event,
    false,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

MIGRATIONS = Path(__file__).parent / "migrations"


class Base(DeclarativeBase):
    pass


class _ChargeColumns:
    """One charged interval of one consumer for one resource."""

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    consumer: Mapped[str] = mapped_column(String(200))
    user: Mapped[str] = mapped_column(String(100))
    account: Mapped[str] = mapped_column(String(100))
    resource: Mapped[str] = mapped_column(String(20))
    source: Mapped[str] = mapped_column(String(10))  # lab | job | app
    start: Mapped[float] = mapped_column(Float)
    end: Mapped[float] = mapped_column(Float)
    amount: Mapped[float] = mapped_column(Float)
    period_start: Mapped[float] = mapped_column(Float)


class JournalEntry(_ChargeColumns, Base):
    """Charges as the meter writes them, waiting to be posted to `charges`.

    A tick's rows scatter over a per-user index (one leaf page per running user); here that
    index stays as small as the journal, so a tick's cost does not grow with the history.
    `Ledger.post` moves a few users' rows at a time to `charges`, in (user, start) order.
    """

    __tablename__ = "journal"
    __table_args__ = (
        # Charging the same interval twice is a no-op: a restarted meter can't double-count.
        # `start` first: one tick's rows share it, so they append to the index's end.
        UniqueConstraint("start", "consumer", "resource", name="uq_journal_interval"),
        Index("ix_journal_user_start", "user", "start"),
    )


class Charge(_ChargeColumns, Base):
    """The append-only ledger of charged intervals, posted from the journal."""

    __tablename__ = "charges"
    __table_args__ = (
        UniqueConstraint("start", "consumer", "resource", name="uq_charge_start_interval"),
        Index("ix_charges_user_start", "user", "start"),
        # An account's charges in a window (the usage page's days and burn) without the rest
        # of its history; the journal stays small enough to read whole.
        Index("ix_charges_account_end", "account", "end"),
    )


class Total(Base):
    """Running sums of the ledger per period, so a balance is one row read, not a scan."""

    __tablename__ = "totals"
    period_start: Mapped[float] = mapped_column(Float, primary_key=True)
    kind: Mapped[str] = mapped_column(String(10), primary_key=True)  # user | account
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    resource: Mapped[str] = mapped_column(String(20), primary_key=True)
    used: Mapped[float] = mapped_column(Float, default=0.0)
    granted: Mapped[float] = mapped_column(Float, default=0.0)


class Grant(Base):
    """A top-up of the current period: who granted how much to whom, and why."""

    __tablename__ = "grants"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[float] = mapped_column(Float)
    by: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(10))  # user | account
    name: Mapped[str] = mapped_column(String(100))
    resource: Mapped[str] = mapped_column(String(20))
    amount: Mapped[float] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(String(500))
    period_start: Mapped[float] = mapped_column(Float)


class Consumer(Base):
    """Something that burns quota while it runs (a Lab session, a job, an app): the meter's mark."""

    __tablename__ = "consumers"
    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    user: Mapped[str] = mapped_column(String(100))
    account: Mapped[str] = mapped_column(String(100))
    source: Mapped[str] = mapped_column(String(10))
    profile: Mapped[str] = mapped_column(String(100), default="")
    cpu_rate: Mapped[float] = mapped_column(Float, default=0.0)  # cpu_hours per hour
    gpu_rate: Mapped[float] = mapped_column(Float, default=0.0)  # gpu_hours per hour
    started: Mapped[float] = mapped_column(Float)
    charged_until: Mapped[float] = mapped_column(Float)
    closed: Mapped[bool] = mapped_column(Boolean, default=False)
    # Charged from Slurm's accounting once it ended (quota/accounting.py): final.
    reconciled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    __table_args__ = (Index("ix_consumers_open", "closed", "user"),)


class Watermark(Base):
    """How far a reader of an outside record has got (e.g. `sacct`'s job ends)."""

    __tablename__ = "watermarks"
    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    value: Mapped[float] = mapped_column(Float)


class Member(Base):
    """Which account a user is charged to (kept current by logins and spawns)."""

    __tablename__ = "members"
    user: Mapped[str] = mapped_column(String(100), primary_key=True)
    account: Mapped[str] = mapped_column(String(100))


class Exhaustion(Base):
    """Since when a user's balance has been at zero: the grace period counts from here."""

    __tablename__ = "exhaustions"
    user: Mapped[str] = mapped_column(String(100), primary_key=True)
    since: Mapped[float] = mapped_column(Float)


class Stop(Base):
    """A consumer stopped by enforcement, with why."""

    __tablename__ = "stops"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[float] = mapped_column(Float)
    user: Mapped[str] = mapped_column(String(100))
    consumer: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(String(500))


class Cap(Base):
    """A member's personal cap on one resource, set by a manager of their account (or an
    admin) on the usage page; it replaces the config's cap for that resource."""

    __tablename__ = "caps"
    user: Mapped[str] = mapped_column(String(100), primary_key=True)
    resource: Mapped[str] = mapped_column(String(20), primary_key=True)
    hours: Mapped[float] = mapped_column(Float)
    set_by: Mapped[str] = mapped_column(String(100))
    at: Mapped[float] = mapped_column(Float)


class Alert(Base):
    """A pool (kind "account") or a personal cap (kind "user") that crossed a threshold in
    a period; `posted` and `mailed` when the webhook and the mail took it (each channel
    once), `sent` once every channel did (until then it is retried)."""

    __tablename__ = "alerts"
    __table_args__ = (
        UniqueConstraint(
            "period_start", "kind", "name", "resource", "threshold", name="uq_alert_once"
        ),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    period_start: Mapped[float] = mapped_column(Float)
    kind: Mapped[str] = mapped_column(String(10))
    name: Mapped[str] = mapped_column(String(100))
    resource: Mapped[str] = mapped_column(String(20))
    threshold: Mapped[float] = mapped_column(Float)
    used: Mapped[float] = mapped_column(Float)
    total: Mapped[float] = mapped_column(Float)
    created: Mapped[float] = mapped_column(Float)
    sent: Mapped[float | None] = mapped_column(Float, nullable=True)
    posted: Mapped[float | None] = mapped_column(Float, nullable=True)
    mailed: Mapped[float | None] = mapped_column(Float, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)


class QuotaRequest(Base):
    """A user's request for more hours (the usage page, a quota refusal), decided by a
    manager of their account or an admin: approved with a grant, or declined with a reason
    the user reads."""

    __tablename__ = "quota_requests"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user: Mapped[str] = mapped_column(String(100), index=True)
    account: Mapped[str] = mapped_column(String(100), index=True)
    resource: Mapped[str] = mapped_column(String(20))
    hours: Mapped[float] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(String(500))
    created: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(10))  # open | deciding | approved | declined
    decided_by: Mapped[str | None] = mapped_column(String(100), nullable=True)
    decided_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    answer: Mapped[str | None] = mapped_column(String(500), nullable=True)
    grant_id: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Manager(Base):
    """A manager of an account set by an admin on the usage page; the config's
    (`[quota.accounts.X] managers`) are apart, and stay."""

    __tablename__ = "managers"
    account: Mapped[str] = mapped_column(String(100), primary_key=True)
    user: Mapped[str] = mapped_column(String(100), primary_key=True)
    set_by: Mapped[str] = mapped_column(String(100))
    at: Mapped[float] = mapped_column(Float)


class GpuSample(Base):
    """A GPU session's utilisation over `seconds` up to `at` (quota/utilisation.py): one
    meter tick's reading while recent, an hour's mean once older (downsampled)."""

    __tablename__ = "gpu_samples"
    consumer: Mapped[str] = mapped_column(String(200), primary_key=True)
    at: Mapped[float] = mapped_column(Float, primary_key=True)
    user: Mapped[str] = mapped_column(String(100))
    seconds: Mapped[float] = mapped_column(Float)  # the time this row stands for
    percent: Mapped[float] = mapped_column(Float)  # mean utilisation of the session's GPUs
    peak: Mapped[float] = mapped_column(Float)  # the highest reading merged into the row
    idle_seconds: Mapped[float] = mapped_column(Float)  # of `seconds`, under IDLE_PERCENT
    memory_mib: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Downsampling and pruning walk by time. No index by user: a tick's readings would
    # dirty a page of it per session; a user's readings are found through their consumers.
    # SQLite keeps the rows in (consumer, at) order (WITHOUT ROWID): merging a session's
    # hour deletes neighbours, not rows scattered over the hour's 240 ticks (schema 0017).
    __table_args__ = (Index("ix_gpu_samples_at", "at"), {"sqlite_with_rowid": False})


class GpuAccountHour(Base):
    """GPU-seconds read per account per clock hour (`hour`: its start), and how many were
    idle (under utilisation.IDLE_PERCENT): the estate's figure without reading every
    reading. Written with the readings (utilisation.record_many)."""

    __tablename__ = "gpu_account_hours"
    account: Mapped[str] = mapped_column(String(100), primary_key=True)
    hour: Mapped[float] = mapped_column(Float, primary_key=True)
    gpu_seconds: Mapped[float] = mapped_column(Float)
    idle_gpu_seconds: Mapped[float] = mapped_column(Float)
    percent_gpu_seconds: Mapped[float] = mapped_column(Float)  # for the mean utilisation
    __table_args__ = (Index("ix_gpu_account_hours_hour", "hour"),)


class ReclaimWarning(Base):
    """A GPU session warned that its idle GPUs will be reclaimed (quota/reclaim.py): kept
    here so that a restarted quota service keeps the clock."""

    __tablename__ = "reclaim_warnings"
    consumer: Mapped[str] = mapped_column(String(200), primary_key=True)
    user: Mapped[str] = mapped_column(String(100), index=True)
    idle_since: Mapped[float] = mapped_column(Float)
    warned_at: Mapped[float] = mapped_column(Float)
    stops_at: Mapped[float] = mapped_column(Float)
    stopped_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The session's hub server (a Slurm job's consumer id does not say it); None: written
    # before schema 0015, by a Lab session whose consumer id says it.
    server: Mapped[str | None] = mapped_column(String(255), nullable=True)


class ReclaimExemption(Base):
    """A user an admin exempted from idle GPU reclaim on the usage page; the config's
    (`[quota.reclaim] exempt`) are apart, and stay (quota/reclaim.py `exempted`)."""

    __tablename__ = "reclaim_exemptions"
    user: Mapped[str] = mapped_column(String(100), primary_key=True)
    set_by: Mapped[str] = mapped_column(String(100))
    at: Mapped[float] = mapped_column(Float)


class Refusal(Base):
    """A start refused, recorded where it was decided (quota/refusals.py): by the hub (no
    quota for the profile, every GPU taken, the site's server limits, Slurm refusing the
    job) or by the meter (a pending Slurm job held at zero quota)."""

    __tablename__ = "refusals"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[float] = mapped_column(Float, index=True)
    user: Mapped[str] = mapped_column(String(100))
    account: Mapped[str] = mapped_column(String(100))
    reason: Mapped[str] = mapped_column(String(20))  # refusals.REASONS
    asked: Mapped[str] = mapped_column(String(200))  # the profile, or a held job (job:ID)
    resources: Mapped[str] = mapped_column(String(50))  # short or at zero, space-separated


WAL_PAGES = 10_000  # SQLite pages (40 MB) in the WAL before a commit checkpoints it


def make_engine(url: str) -> Engine:
    """An engine for the quota database; SQLite gets WAL and a busy timeout (the hub and the
    service both write)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(conn, _record):
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            # The quota service copies the WAL back between meter ticks (Ledger.checkpoint);
            # at SQLite's 1,000 pages a tick of 1,000 GPU sessions (~2,000) did it in a commit.
            cur.execute(f"PRAGMA wal_autocheckpoint={WAL_PAGES}")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (idempotent)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
