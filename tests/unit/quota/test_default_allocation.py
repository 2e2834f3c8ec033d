"""The shipped site config (what `make up` runs) gives the default account a modest monthly
allocation, so a newcomer's first balance (home page, Lab status bar, `shangzhuang.quota()`)
shows hours left instead of "not limited"."""

from __future__ import annotations

from shangzhuang.quota.client import QuotaReport
from shangzhuang.quota.db import make_engine, migrate
from shangzhuang.quota.ledger import Ledger
from shangzhuang.settings import DEFAULT_CONFIG, load_settings


def test_a_newcomer_on_the_shipped_config_has_hours_left(tmp_path):
    settings = load_settings(DEFAULT_CONFIG)
    assert settings.quota.period == "monthly"
    default = settings.quota.accounts[settings.quota.default_account]
    assert default.limits() == {"gpu_hours": 10, "cpu_hours": 200}
    engine = make_engine(f"sqlite:///{tmp_path / 'quota.sqlite'}")
    migrate(engine)
    try:
        ledger = Ledger(engine, settings.quota, settings.site.timezone)
        balance = ledger.balance("newcomer")
        assert balance.account == "default" and balance.state == "ok"
        assert balance.remaining("gpu_hours") == 10 and balance.remaining("cpu_hours") == 200
        assert balance.period.resets
        text = repr(QuotaReport(balance.as_dict()))
        assert "GPU hours: 10 left" in text and "not limited" not in text
    finally:
        engine.dispose()
