"""The quota schema: `migrate()` is idempotent, and the Alembic head builds exactly the
tables of `db.Base.metadata` (no autogenerate diffs), on SQLite and on PostgreSQL."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, event, inspect, text

from shangzhuang.quota.db import MIGRATIONS, Base, make_engine, migrate
from shangzhuang.quota.ledger import Ledger
from tests.unit.quota.conftest import TZ, policy

DDL = ("CREATE", "ALTER", "DROP")


def head_revision() -> str:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(cfg).get_current_head()


@pytest.fixture
def fresh(request, db_kind, tmp_path):
    """An engine on an empty database: on PostgreSQL a whole new database, not a schema."""
    if db_kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'fresh.sqlite'}"
    else:
        url = request.getfixturevalue("postgres").create_database()
    engine = make_engine(url)
    yield engine
    engine.dispose()


def statements(engine, f) -> list[str]:
    seen: list[str] = []

    def record(conn, cursor, statement, *args):
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        f()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    return seen


def test_migrate_twice_is_a_no_op(fresh):
    first = statements(fresh, lambda: migrate(fresh))
    assert any(s.lstrip().upper().startswith("CREATE TABLE") for s in first)
    with fresh.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == head_revision()
    # Data written between the two runs survives the second.
    ledger = Ledger(fresh, policy(), TZ)
    ledger.grant(by="admin", account="physics", resource="gpu_hours", amount=1, reason="x")
    tables = sorted(inspect(fresh).get_table_names())

    second = statements(fresh, lambda: migrate(fresh))
    assert [s for s in second if s.lstrip().upper().startswith(DDL)] == []
    assert not any("alembic_version" in s and "UPDATE" in s.upper() for s in second)
    with fresh.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == head_revision()
        assert conn.execute(text("SELECT count(*) FROM grants")).scalar() == 1
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    assert sorted(inspect(fresh).get_table_names()) == tables


def test_the_head_schema_matches_the_models(fresh):
    migrate(fresh)
    with fresh.connect() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        assert compare_metadata(ctx, Base.metadata) == []
        # The comparison does see the tables: against no models, each is a removal.
        removed = {d[1].name for d in compare_metadata(ctx, MetaData()) if d[0] == "remove_table"}
        assert removed == set(Base.metadata.tables)
    tables = set(inspect(fresh).get_table_names())
    assert tables == set(Base.metadata.tables) | {"alembic_version"}


@pytest.mark.parametrize("db_kind", ["postgresql"])
def test_a_ledger_schema_on_postgresql_is_its_own(ledger_url, engine):
    """The PostgreSQL tests run each in a schema of its own: check that it is so."""
    schema = ledger_url.rsplit("%3D", 1)[1]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT current_schema()")).scalar() == schema
        assert conn.execute(text("SELECT to_regclass('public.charges')")).scalar() is None
        assert conn.execute(text(f"SELECT to_regclass('{schema}.charges')")).scalar()


def test_upgrading_from_the_first_revision_keeps_the_ledger(fresh):
    """A database made by revision 0001 (the first release) upgrades in place: its charges
    survive, and the charge key is (start, consumer, resource) afterwards."""
    from alembic import command

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with fresh.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.execute(
            text(
                "INSERT INTO charges (consumer, \"user\", account, resource, source, start,"
                " \"end\", amount, period_start) VALUES ('lab:ann/@1', 'ann', 'default',"
                " 'cpu_hours', 'lab', 10, 20, 0.5, 0)"
            )
        )
    migrate(fresh)
    with fresh.connect() as conn:
        assert conn.execute(text("SELECT amount FROM charges")).scalar_one() == 0.5
    keys = {
        tuple(u["column_names"]) for u in inspect(fresh).get_unique_constraints("charges")
    }
    assert ("start", "consumer", "resource") in keys
    assert ("consumer", "resource", "start") not in keys


def test_downgrading_below_the_journal_posts_it_first(fresh):
    """Revision 0003 adds the journal; going back to 0002 moves its rows into `charges`
    rather than dropping them with the table."""
    from alembic import command

    migrate(fresh)
    ledger = Ledger(fresh, policy(), TZ)
    ledger.open("lab:ann/@1", user="ann", account="physics", source="lab", started=10.0,
                rates={"cpu_hours": 2.0})  # fmt: skip
    ledger.close("lab:ann/@1", 10.0 + 1800)
    assert ledger.journal_size() == 1
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with fresh.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0002")
    assert "journal" not in inspect(fresh).get_table_names()
    with fresh.connect() as conn:
        assert conn.execute(text("SELECT \"user\", amount FROM charges")).one() == ("ann", 1.0)


def test_an_accounts_days_and_burn_read_its_charges_by_index(fresh, db_kind):
    """Revision 0011: `ix_charges_account_end` exists, and on SQLite the usage page's query
    for an account's charges (figures._charges, under its days and its burn) searches by
    it, not through every charge by start (bench/usage_page.py: 501 ms at 1,000,000 rows)."""
    from shangzhuang.quota import figures

    migrate(fresh)
    indexes = {i["name"]: i["column_names"] for i in inspect(fresh).get_indexes("charges")}
    assert indexes["ix_charges_account_end"] == ["account", "end"]
    if db_kind != "sqlite":
        return  # PostgreSQL plans an empty table by scanning it: its plan says nothing here
    ledger = Ledger(fresh, policy(), TZ)
    asked: list[tuple[str, tuple]] = []

    def record(conn, cursor, statement, parameters, *args):
        if "FROM charges" in statement:
            asked.append((statement, parameters))

    event.listen(fresh, "before_cursor_execute", record)
    try:
        w = figures.window(ledger, 0)
        figures.daily(ledger, w.start, w.end, account="physics")
        figures.burn(ledger, "physics")
    finally:
        event.remove(fresh, "before_cursor_execute", record)
    assert len(asked) == 2  # the days' charges, then the burn's last week
    with fresh.connect() as conn:
        for statement, parameters in asked:
            plan = " ".join(r[-1] for r in conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN " + statement, parameters))  # fmt: skip
            assert "USING INDEX ix_charges_account_end (account=? AND end>?)" in plan, plan


def test_gpu_readings_keep_through_the_move_to_without_rowid(fresh, db_kind):
    """Revision 0017: on SQLite gpu_samples is rebuilt WITHOUT ROWID (rows in (consumer, at)
    order, for utilisation.tidy) and back on a downgrade; its readings and its index on `at`
    survive both ways. PostgreSQL's table is left as it is."""
    from alembic import command

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    rows = [("lab:ann/@1", 15.0, 40.0), ("lab:ann/@1", 30.0, 5.0), ("lab:bob/@1", 15.0, 99.0)]

    def table_sql() -> str:
        with fresh.connect() as conn:
            return conn.execute(
                text("SELECT sql FROM sqlite_master WHERE name = 'gpu_samples'")
            ).scalar_one()

    def readings() -> list[tuple]:
        with fresh.connect() as conn:
            q = "SELECT consumer, at, percent FROM gpu_samples ORDER BY consumer, at"
            return [tuple(r) for r in conn.execute(text(q))]

    with fresh.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0016")
        for consumer, at, percent in rows:
            conn.execute(
                text("INSERT INTO gpu_samples (consumer, at, \"user\", seconds, percent, peak,"
                     " idle_seconds, memory_mib) VALUES (:c, :at, 'ann', 15, :p, :p, 0, NULL)"),
                {"c": consumer, "at": at, "p": percent},
            )  # fmt: skip
    migrate(fresh)
    assert readings() == rows
    assert [i["column_names"] for i in inspect(fresh).get_indexes("gpu_samples")] == [["at"]]
    if db_kind == "sqlite":
        assert table_sql().rstrip().endswith("WITHOUT ROWID")
    with fresh.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0016")
    assert readings() == rows
    if db_kind == "sqlite":
        assert "WITHOUT ROWID" not in table_sql()
