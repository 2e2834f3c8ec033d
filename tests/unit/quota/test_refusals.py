"""The hub's side of refused starts (quota/refusals.py): a refusal's record never holds up
the spawn it is about, and names only the site's own profiles. The ledger's side and the
estate's counts are in test_figures.py; a refusal through a real hub in
tests/integration/test_usage_page.py."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from types import SimpleNamespace

from shangzhuang.hub.limits import asked_profile
from shangzhuang.quota import api_client
from shangzhuang.quota.api_client import QuotaAPI


def test_a_refusals_record_never_holds_up_the_spawn(caplog, monkeypatch):
    """A quota service that takes the connection and never answers: `refused` returns at
    once, and the record is given up after REFUSAL_TIMEOUT, with a warning."""
    monkeypatch.setattr(api_client, "REFUSAL_TIMEOUT", 0.3)
    held = []  # the silent service's connections, kept open

    async def main() -> float:
        server = await asyncio.start_server(lambda r, w: held.append(w), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        quota = QuotaAPI(f"http://127.0.0.1:{port}/services/quota/", "hub-token")
        t0 = time.perf_counter()
        quota.refused("alice", "gpus-busy", "gpu-1")
        returned = time.perf_counter() - t0
        assert len(quota._recording) == 1  # under way, in the background
        await asyncio.wait_for(asyncio.gather(*quota._recording), 5)
        server.close()
        return returned

    with caplog.at_level(logging.WARNING, "shangzhuang.quota.api_client"):
        returned = asyncio.run(main())
    assert returned < 0.05, returned
    assert "refusal of alice (gpus-busy) not recorded" in caplog.text


def handler(form: dict | None = None, body: bytes = b""):
    """What asked_profile reads of a JupyterHub request handler."""
    form = form or {}
    return SimpleNamespace(
        get_argument=lambda name, default: form.get(name, default),
        request=SimpleNamespace(body=body),
    )


def test_the_profile_asked_for_is_one_of_the_sites_or_none():
    profiles = ["cpu", "gpu-1"]
    assert asked_profile(handler({"profile": "gpu-1"}), profiles) == "gpu-1"  # the form
    assert asked_profile(handler(body=json.dumps({"profile": "gpu-1"}).encode()), profiles) == (
        "gpu-1"
    )  # the API's JSON body
    assert asked_profile(handler(), profiles) == "cpu"  # none: the site's first
    # what a user typed is never recorded
    assert asked_profile(handler({"profile": "x" * 500}), profiles) == ""
    assert asked_profile(handler(body=b'["not", "an", "object"]'), profiles) == "cpu"
