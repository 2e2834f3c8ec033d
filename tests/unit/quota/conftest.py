"""Fixtures of the quota tests: every ledger test runs on SQLite and on PostgreSQL.

PostgreSQL is a throwaway server (tests/postgres.py) started once per session, with a
new database per test; SQLite is a file in the test's tmp_path.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy.engine import Engine

from shangzhuang.quota.db import make_engine, migrate
from shangzhuang.quota.ledger import Ledger
from shangzhuang.settings import Quota
from tests.postgres import Postgres, PostgresUnavailable, start_postgres

TZ = "Asia/Shanghai"

# The site policy most tests use: two limited accounts, one unlimited (the default).
POLICY = {
    "period": "monthly",
    "warn_fraction": 0.1,
    "grace_seconds": 300,
    "accounts": {
        "default": {},
        "physics": {"gpu_hours": 10, "cpu_hours": 100},
        "bio": {"gpu_hours": 2},
    },
    "users": {
        "alice": {"account": "physics", "gpu_hours": 4},  # a personal cap inside the pool
        "bob": {"account": "physics"},
        "carol": {"account": "bio"},
    },
}


def policy(**changes) -> Quota:
    """POLICY with top-level keys replaced."""
    return Quota.model_validate({**POLICY, **changes})


def at(*fields: int, tz: str = TZ, fold: int = 0) -> float:
    """Epoch seconds of a wall-clock time in `tz`: at(2026, 10, 31, 23, 30)."""
    return datetime(*fields, tzinfo=ZoneInfo(tz), fold=fold).timestamp()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    try:
        server = start_postgres()
    except PostgresUnavailable as e:
        pytest.skip(f"PostgreSQL unavailable: {e}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def new_database(request, tmp_path, db_kind) -> Callable[[], str]:
    """Makes fresh empty databases of the test's kind; returns their URLs.

    On PostgreSQL each is a new schema (a new database takes ~0.3 s to make, a schema
    ~0.02 s); they go with the server at the end of the session."""

    def new() -> str:
        if db_kind == "sqlite":
            return f"sqlite:///{tmp_path / f'quota-{uuid.uuid4().hex[:8]}.sqlite'}"
        return request.getfixturevalue("postgres").create_schema(f"t_{uuid.uuid4().hex[:16]}")

    return new


@pytest.fixture(params=["sqlite", "postgresql"])
def db_kind(request) -> str:
    return request.param


@pytest.fixture
def ledger_url(new_database) -> str:
    """One empty database (SQLite in tmp_path, or a new PostgreSQL database)."""
    return new_database()


@pytest.fixture
def engines(ledger_url) -> Iterator[Callable[[], Engine]]:
    """Engines on `ledger_url`, migrated (one per process that would share the database)."""
    made: list[Engine] = []

    def new() -> Engine:
        engine = make_engine(ledger_url)
        migrate(engine)
        made.append(engine)
        return engine

    yield new
    for engine in made:
        engine.dispose()


@pytest.fixture
def engine(engines) -> Engine:
    return engines()


@pytest.fixture
def ledger(engine) -> Ledger:
    """The ledger under POLICY, monthly in Asia/Shanghai."""
    return Ledger(engine, policy(), TZ)
