"""Unix accounts for hub users: never a system account, whatever the prefix."""

import asyncio
import os

import pytest

from shangzhuang.hub.unix import AccountError, ensure_account


@pytest.mark.skipif(os.geteuid() != 0, reason="creating Unix accounts needs root")
def test_a_hub_user_named_like_a_system_account_is_refused(tmp_path):
    # An empty user_prefix maps hub user "daemon" to Unix "daemon" (uid 1): refused.
    with pytest.raises(AccountError, match="daemon is a system account"):
        asyncio.run(ensure_account("daemon", str(tmp_path / "daemon"), "daemon"))
    with pytest.raises(AccountError, match="root is a system account"):
        asyncio.run(ensure_account("root", str(tmp_path / "root"), "root"))
