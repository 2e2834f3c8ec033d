"""What the hub-managed services share (shangzhuang.services), without a hub."""

from __future__ import annotations

import logging

from shangzhuang.services import ADMIN_SCOPE_WITHHELD, is_admin


def test_admin_is_the_requests_scope_not_the_flag():
    assert is_admin({"name": "root", "scopes": ["admin:users", "read:users"]})
    assert not is_admin({"name": "root", "admin": True, "scopes": ["read:metrics"]})
    assert not is_admin({"name": "root", "admin": True})


def notice(requested: str, granted: str) -> logging.LogRecord:
    message = (
        f"Service JupyterHub service quota requested scopes {requested} for user nadia,"
        f" granting only {granted}."
    )
    return logging.LogRecord("JupyterHub", logging.WARNING, "auth.py", 319, message, (), None)


def test_only_a_withheld_admin_scope_is_demoted_to_info():
    record = notice("admin:users,access:services!service=quota", "access:services!service=quota")
    assert ADMIN_SCOPE_WITHHELD.filter(record) and record.levelname == "INFO"
    # anything else withheld stays a warning
    record = notice("admin:users,read:hub", "")
    assert ADMIN_SCOPE_WITHHELD.filter(record) and record.levelname == "WARNING"
    record = notice("read:hub", "")
    assert ADMIN_SCOPE_WITHHELD.filter(record) and record.levelno == logging.WARNING
