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
from shangzhuang.quota.consumers import Consumer


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


def test_starts_refused_while_the_quota_service_is_down_wait_with_their_time(monkeypatch):
    """A start refused because the quota service does not answer can't be posted then: it
    waits with its time, after the metering calls (charges first), at most
    MAX_WAITING_REFUSALS of them, and is posted with that time once the service answers."""
    monkeypatch.setattr(api_client, "MAX_WAITING_REFUSALS", 3)
    posted = []

    async def main():
        quota = QuotaAPI("http://127.0.0.1:1/services/quota/", "hub-token", retry_every=60)

        async def answered(method, path, body=None, timeout=None):
            posted.append((path, body))
            return {}

        t0 = time.time()
        for _ in range(5):  # clicked five times: three kept
            quota.refused("alice", "quota-unavailable", "gpu-1")
        quota.close(Consumer.session("lab", "alice", "", t0 - 60), t0)
        await asyncio.sleep(0.3)  # the first try: nobody listens on port 1
        assert len(quota.undelivered) == 4 and not posted
        monkeypatch.setattr(quota, "call", answered)
        assert await quota._deliver_waiting()
        return t0

    t0 = asyncio.run(main())
    assert [p for p, _ in posted] == ["/consumers/close"] + ["/refusals"] * 3
    for _, body in posted[1:]:
        assert body["reason"] == "quota-unavailable" and body["user"] == "alice"
        assert t0 - 1 < body["at"] <= t0 + 1


def test_a_late_refusal_posted_twice_is_counted_once(ledger):
    """The hub posts a waiting refusal again when its earlier post timed out, which the
    service may still have recorded: with its own time, it is kept once."""
    from shangzhuang.quota import figures, refusals

    at = time.time() - 600
    for _ in range(2):
        refusals.record(ledger, "alice", "quota-unavailable", "cpu", now=at, once=True)
    refusals.record(ledger, "bob", "held-at-zero", "job:1", now=at)  # the meter's, same tick
    refusals.record(ledger, "bob", "held-at-zero", "job:2", now=at)
    counted = figures.refusals(ledger, at - 60, at + 60)["by_reason"]
    assert counted["quota-unavailable"] == 1 and counted["held-at-zero"] == 2
