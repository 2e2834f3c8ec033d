"""The shangzhuang_lab server extension in a real Jupyter server (pytest-jupyter), against
a real Tornado stand-in for the quota service (quota_standin.py)."""

import csv
import io
import json
import sys
import time
import types

import pytest
from tornado.httpclient import HTTPClientError

from .quota_standin import TOKEN, Charge, balance, limit


async def get_json(jp_fetch, path, **kw):
    r = await jp_fetch("shangzhuang", path, **kw)
    return json.loads(r.body)


async def refused(jp_fetch, path) -> HTTPClientError:
    with pytest.raises(HTTPClientError) as e:
        await jp_fetch("shangzhuang", path)
    return e.value


# --- GET quota ---------------------------------------------------------------------------
async def test_quota_is_get_me_with_this_sessions_part(jp_fetch, quota):
    mine = {"consumer": "lab:alice/@1700000000000", "source": "lab", "profile": "gpu-1",
            "cost_per_hour": {"cpu_hours": 1.0, "gpu_hours": 1.0}, "server": "",
            "started_ms": 1700000000000}  # fmt: skip
    other = {"consumer": "lab:alice/big@1700000005000", "source": "lab", "profile": "gpu-2",
             "cost_per_hour": {"cpu_hours": 8.0, "gpu_hours": 2.0}, "server": "big",
             "started_ms": 1700000005000}  # fmt: skip
    quota.me = balance(running=[other, mine])
    body = await get_json(jp_fetch, "quota")
    assert body["enabled"] is True
    # Everything GET me says, unchanged...
    for key, value in quota.me.items():
        assert body[key] == value
    # ...and which running entry is this session (the default server, not "big").
    assert body["session"] == {
        "consumer": mine["consumer"],
        "profile": "gpu-1",
        "cost_per_hour": mine["cost_per_hour"],
    }
    assert body["grace_seconds"] == 300
    assert body["session_stops"] is False and body["stops_in_seconds"] is None
    # It asked with the session's token, at the quota service's own URL.
    (path, _, auth) = quota.requests[-1]
    assert path == "/services/quota/api/v1/me" and auth == f"token {TOKEN}"


async def test_profile_from_the_environment_before_the_meter_sees_the_session(jp_fetch, quota):
    body = await get_json(jp_fetch, "quota")
    assert body["session"] == {"consumer": None, "profile": "gpu-1", "cost_per_hour": None}


async def test_exhausted_says_when_this_session_stops(jp_fetch, quota):
    since = time.time() - 100
    # The quota service says when (the meter's rule, quota.meter.stops_in): grace 300 s,
    # at zero for 100 s.
    quota.me = balance(
        state="exhausted",
        exhausted_since=time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(since)),
        running=[{"consumer": "lab:alice/@1", "source": "lab", "profile": "gpu-1",
                  "cost_per_hour": {"cpu_hours": 1.0, "gpu_hours": 1.0}, "server": "",
                  "started_ms": 1, "stops_in_seconds": 200.04}],
    )  # fmt: skip
    quota.me["resources"]["gpu_hours"] = {
        "remaining": 0,
        "account": limit(500, 100),
        "personal": limit(40, 40),
    }
    body = await get_json(jp_fetch, "quota")
    assert body["session_stops"] is True
    assert body["stops_in_seconds"] == 200.0


async def test_a_session_that_does_not_burn_the_empty_resource_keeps_running(jp_fetch, quota):
    quota.me = balance(
        state="exhausted",
        running=[{"consumer": "lab:alice/@1", "source": "lab", "profile": "cpu",
                  "cost_per_hour": {"cpu_hours": 2.0, "gpu_hours": 0.0}, "server": "",
                  "started_ms": 1, "stops_in_seconds": None}],
    )  # fmt: skip
    quota.me["resources"]["gpu_hours"]["remaining"] = 0
    body = await get_json(jp_fetch, "quota")
    assert body["session_stops"] is False and body["stops_in_seconds"] is None


# --- the quota service down, slow or refusing --------------------------------------------
async def test_quota_service_down_is_503_with_a_message(jp_fetch, quota):
    quota.stop()
    t0 = time.monotonic()
    e = await refused(jp_fetch, "quota")
    assert e.code == 503
    body = json.loads(e.response.body)
    assert body["message"].startswith("quota unavailable: the quota service can't be reached")
    assert time.monotonic() - t0 < 2


async def test_quota_service_too_slow_is_503_after_the_timeout(jp_fetch, quota):
    quota.delay = 3  # request_timeout is 1 s in these tests
    t0 = time.monotonic()
    e = await refused(jp_fetch, "quota")
    assert e.code == 503
    assert json.loads(e.response.body)["message"] == (
        "quota unavailable: the quota service did not answer in 1 s"
    )
    assert time.monotonic() - t0 < 2.5


async def test_quota_service_error_is_503_and_a_refusal_502(jp_fetch, jp_serverapp, quota):
    quota.fail_status = 500
    e = await refused(jp_fetch, "quota")
    assert e.code == 503
    assert "the quota service answered 500: the ledger is locked" in e.response.body.decode()
    quota.fail_status = None
    # A token the quota service refuses: 502, with the service's own reason.
    jp_serverapp.web_app.settings["shangzhuang_quota"].config.api_token = "revoked"
    e = await refused(jp_fetch, "quota")
    assert e.code == 502
    assert json.loads(e.response.body)["message"] == (
        "quota unavailable: the quota service answered 403: a JupyterHub token or login is required"
    )


@pytest.mark.parametrize("lab_config", [{"quota_url": ""}])
async def test_a_site_without_quotas_is_not_an_error(jp_fetch, quota, lab_config):
    # The frontend hides its item and stops polling; the other endpoints say why.
    body = await get_json(jp_fetch, "quota")
    assert body["enabled"] is False and "$SHANGZHUANG_QUOTA_URL" in body["message"]
    e = await refused(jp_fetch, "usage")
    assert e.code == 503
    assert "$SHANGZHUANG_QUOTA_URL" in json.loads(e.response.body)["message"]
    assert quota.requests == []


def test_the_usage_page_is_on_the_hubs_origin(monkeypatch):
    """The panel's "Request more quota" opens the usage page's form on the hub's origin
    (sessions have origins of their own): $JUPYTERHUB_HOST and $JUPYTERHUB_BASE_URL, as
    JupyterHub gives every session; none without a quota service."""
    from shangzhuang_lab.config import ShangzhuangLab

    monkeypatch.setenv("JUPYTERHUB_HOST", "https://hub.example.org")
    monkeypatch.setenv("JUPYTERHUB_BASE_URL", "/")
    here = "http://127.0.0.1:9000/services/quota/"
    assert ShangzhuangLab(quota_url=here).usage_url == "https://hub.example.org/services/quota/"
    monkeypatch.setenv("JUPYTERHUB_BASE_URL", "/workbench/")
    assert ShangzhuangLab(quota_url=here).usage_url == (
        "https://hub.example.org/workbench/services/quota/"
    )
    assert ShangzhuangLab(quota_url="").usage_url == ""


@pytest.mark.parametrize("lab_config", [{"usage_url": "https://hub.example.org/services/quota/"}])
async def test_quota_says_where_to_ask_for_more(jp_fetch, quota, lab_config):
    body = await get_json(jp_fetch, "quota")
    assert body["usage_url"] == "https://hub.example.org/services/quota/"


@pytest.mark.parametrize("lab_config", [{"usage_url": "https://hub.example.org/services/quota/"}])
async def test_quota_passes_on_this_sessions_idle_gpu_warning(jp_fetch, quota, lab_config):
    """Idle GPU reclaim: the quota service's warning for this session (not another's), and
    "continue on CPU" as the quota service's page on the hub's origin."""
    warning = {"idle_since": "2026-12-01T10:00:00+08:00", "warned_at": "2026-12-01T11:00:00+08:00",
               "stops_at": "2026-12-01T11:30:00+08:00", "stops_in_seconds": 1500.0,
               "threshold_percent": 10, "idle_seconds": 3600,
               "continue_url": "/services/quota/continue-on-cpu?server="}  # fmt: skip
    entry = {"consumer": "lab:alice/@1", "source": "lab", "profile": "gpu-1", "server": "",
             "started_ms": 1, "cost_per_hour": {"gpu_hours": 1.0}, "reclaim": warning}  # fmt: skip
    other = {**entry, "consumer": "lab:alice/big@2", "server": "big", "started_ms": 2,
             "reclaim": {**warning, "stops_in_seconds": 5.0}}  # fmt: skip
    quota.me = balance(running=[other, entry])
    body = await get_json(jp_fetch, "quota")
    assert body["reclaim"] == {
        **warning, "continue_url": "https://hub.example.org/services/quota/continue-on-cpu?server="
    }
    quota.me = balance(running=[{**entry, "reclaim": None}])
    assert (await get_json(jp_fetch, "quota"))["reclaim"] is None


@pytest.mark.parametrize("lab_config", [{"slurm_job_id": "42"}])
async def test_a_session_on_slurm_finds_its_own_job_and_its_warning(jp_fetch, quota, lab_config):
    """On the slurm backend the session is its job (job:42): its cost and its idle GPU
    warning, not those of the user's other jobs (a Dask worker's, job:43)."""
    warning = {"idle_since": "2026-12-01T10:00:00+08:00", "warned_at": "2026-12-01T11:00:00+08:00",
               "stops_at": "2026-12-01T11:30:00+08:00", "stops_in_seconds": 1500.0,
               "threshold_percent": 10, "idle_seconds": 3600,
               "continue_url": "/services/quota/continue-on-cpu?server="}  # fmt: skip
    lab = {"consumer": "job:42", "source": "job", "profile": "gpu-1", "server": "",
           "cost_per_hour": {"cpu_hours": 1.0, "gpu_hours": 1.0}, "reclaim": warning}  # fmt: skip
    worker = {"consumer": "job:43", "source": "job", "profile": "",
              "cost_per_hour": {"cpu_hours": 1.0, "gpu_hours": 2.0}, "reclaim": None}  # fmt: skip
    quota.me = balance(running=[worker, lab])
    body = await get_json(jp_fetch, "quota")
    assert body["session"] == {"consumer": "job:42", "profile": "gpu-1",
                               "cost_per_hour": lab["cost_per_hour"]}  # fmt: skip
    assert body["reclaim"]["stops_at"] == warning["stops_at"]
    quota.me = balance(running=[worker])  # its job not seen yet: not the worker's
    assert (await get_json(jp_fetch, "quota"))["session"]["consumer"] is None


# --- GET usage: the newest ten charges ---------------------------------------------------
def charges_every(seconds: float, count: int, end: float, user: str = "alice") -> list[Charge]:
    return [
        Charge(f"lab:{user}/@1", user, "cpu_hours", end - (i + 1) * seconds, end - i * seconds,
               round(seconds / 3600, 9))
        for i in range(count)
    ]  # fmt: skip


async def test_usage_lists_the_newest_ten_newest_first(jp_fetch, quota):
    now = time.time()
    # A month of 15 s charges (too many to fetch whole) and another user's, newer.
    quota.charges = charges_every(15, 30 * 24 * 240, now) + charges_every(5, 50, now + 1, "bob")
    body = await get_json(jp_fetch, "usage")
    starts = [r["start"] for r in body["records"]]
    want = sorted((c for c in quota.charges if c.user == "alice"), key=lambda c: -c.start)[:10]
    assert starts == [c.as_dict()["start"] for c in want]
    assert {r["user"] for r in body["records"]} == {"alice"}
    calls = [q for p, q, _ in quota.requests if p.endswith("/usage")]
    assert all(q["user"] == "alice" and q["format"] == "json" for q in calls)
    assert len(calls) <= 3  # the narrowest window already holds ten


async def test_usage_finds_old_charges_and_dense_bursts(jp_fetch, quota):
    now = time.time()
    # Three charges 20 days ago, then a dense burst 3 days ago: 5000 rows in one hour.
    old = charges_every(60, 3, now - 20 * 86400)
    burst = charges_every(0.72, 5000, now - 3 * 86400)
    quota.charges = old + burst
    body = await get_json(jp_fetch, "usage")
    want = sorted(quota.charges, key=lambda c: -c.start)[:10]
    assert [r["start"] for r in body["records"]] == [c.as_dict()["start"] for c in want]
    quota.charges = old
    quota.requests.clear()
    body = await get_json(jp_fetch, "usage")
    assert len(body["records"]) == 3
    assert len(quota.requests) <= 8


async def test_usage_of_a_new_user_is_empty(jp_fetch, quota):
    assert (await get_json(jp_fetch, "usage")) == {"records": []}


# --- GET usage.csv -----------------------------------------------------------------------
async def test_usage_csv_is_the_full_usage_as_a_download(jp_fetch, quota):
    quota.charges = charges_every(15, 3000, time.time())
    r = await jp_fetch("shangzhuang", "usage.csv")
    assert r.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert r.headers["Content-Disposition"] == 'attachment; filename="usage-alice.csv"'
    rows = list(csv.DictReader(io.StringIO(r.body.decode())))
    assert len(rows) == 3000 and {row["user"] for row in rows} == {"alice"}
    assert rows[0]["start"] < rows[-1]["start"]
    ((_, query, _),) = [x for x in quota.requests if x[0].endswith("/usage")]
    assert query == {"user": "alice", "format": "csv"}


async def test_usage_csv_with_the_service_down_is_503_json(jp_fetch, quota):
    quota.stop()
    e = await refused(jp_fetch, "usage.csv")
    assert e.code == 503
    assert "Content-Disposition" not in e.response.headers
    assert json.loads(e.response.body)["message"].startswith("quota unavailable")


async def test_usage_csv_refused_upstream_keeps_the_message(jp_fetch, quota):
    quota.fail_status = 500
    e = await refused(jp_fetch, "usage.csv")
    assert e.code == 503
    assert "the ledger is locked" in json.loads(e.response.body)["message"]


# --- GET gpus ----------------------------------------------------------------------------
async def test_a_cpu_session_has_no_gpu(jp_fetch, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("SHANGZHUANG_GPUS", "")
    body = await get_json(jp_fetch, "gpus")
    assert body == {"gpus": [], "message": "no GPU in this session"}


async def test_messages_in_the_sessions_language(jp_fetch, monkeypatch, quota):
    """SHANGZHUANG_LANGUAGE=zh_CN (the hub's choice for this session): the server extension's
    own messages come from the zh_CN catalog, the quota service's own words inside them stay."""
    monkeypatch.setenv("SHANGZHUANG_LANGUAGE", "zh_CN")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("SHANGZHUANG_GPUS", "")
    assert (await get_json(jp_fetch, "gpus"))["message"] == "本会话没有 GPU"
    quota.fail_status = 500
    e = await refused(jp_fetch, "quota")
    assert json.loads(e.response.body)["message"] == (
        "配额暂不可查：配额服务返回 500：the ledger is locked"
    )


def fake_nvml(count: int = 4):
    """NVML stand-in with `count` GPUs that differ in every figure (no NVML on CPU hosts;
    tests/gpu checks the real one)."""

    class Handle(int):
        pass

    class Error(Exception):
        pass

    uuids = [f"GPU-{i:08d}-aaaa-bbbb-cccc-000000000000" for i in range(count)]

    def by_uuid(u):
        if u not in uuids:
            raise Error("Not Found")
        return Handle(uuids.index(u))

    def by_index(i):
        if not 0 <= i < count:
            raise Error("Invalid Argument")
        return Handle(i)

    return types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetHandleByUUID=by_uuid,
        nvmlDeviceGetHandleByIndex=by_index,
        nvmlDeviceGetIndex=lambda h: int(h),
        nvmlDeviceGetUUID=lambda h: uuids[h],
        nvmlDeviceGetName=lambda h: b"NVIDIA H200",
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=10 * (h + 1)),
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(
            used=(h + 1) * 2**30, total=141 * 2**30
        ),
    ), uuids


@pytest.mark.parametrize(
    "env, want",
    [
        ({"CUDA_VISIBLE_DEVICES": "GPU-00000002-aaaa-bbbb-cccc-000000000000",
          "SHANGZHUANG_GPUS": "2"}, [2]),
        ({"CUDA_VISIBLE_DEVICES": "GPU-00000003-aaaa-bbbb-cccc-000000000000,"
                                  "GPU-00000001-aaaa-bbbb-cccc-000000000000"}, [3, 1]),
        ({"CUDA_VISIBLE_DEVICES": "3", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}, [3]),
        ({"SHANGZHUANG_GPUS": "1,2"}, [1, 2]),
        ({"CUDA_VISIBLE_DEVICES": "", "SHANGZHUANG_GPUS": "1"}, []),
        ({}, []),
    ],
)  # fmt: skip
async def test_gpus_are_this_sessions_own_never_index_0_by_default(
    jp_fetch, monkeypatch, env, want
):
    import shangzhuang_lab.gpus as gpus

    nvml, uuids = fake_nvml()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setattr(gpus, "_initialised", False)
    for key in ("CUDA_VISIBLE_DEVICES", "SHANGZHUANG_GPUS", "CUDA_DEVICE_ORDER"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    body = await get_json(jp_fetch, "gpus")
    assert [g["index"] for g in body["gpus"]] == want
    for g in body["gpus"]:
        i = g["index"]
        assert g == {
            "index": i, "uuid": uuids[i], "name": "NVIDIA H200",
            "utilization_percent": 10.0 * (i + 1),
            "memory_used_bytes": (i + 1) * 2**30, "memory_total_bytes": 141 * 2**30,
        }  # fmt: skip
    assert body["message"] == (None if want else "no GPU in this session")


async def test_a_gpu_nvml_does_not_know_is_named(jp_fetch, monkeypatch):
    import shangzhuang_lab.gpus as gpus

    nvml, _ = fake_nvml(2)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setattr(gpus, "_initialised", False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-00000001-aaaa-bbbb-cccc-000000000000,GPU-gone")
    body = await get_json(jp_fetch, "gpus")
    assert [g["index"] for g in body["gpus"]] == [1]
    assert body["message"] == "GPU GPU-gone: Not Found"


async def test_without_nvml_the_panel_says_why(jp_fetch, monkeypatch):
    import shangzhuang_lab.gpus as gpus

    def broken():
        raise OSError("libnvidia-ml.so.1: cannot open shared object file")

    monkeypatch.setitem(sys.modules, "pynvml", types.SimpleNamespace(nvmlInit=broken))
    monkeypatch.setattr(gpus, "_initialised", False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    body = await get_json(jp_fetch, "gpus")
    assert body["gpus"] == []
    assert body["message"].startswith("GPU figures unavailable: NVML could not start (libnvidia-ml")


# --- no anonymous access -----------------------------------------------------------------
def extension_routes(web_app) -> list[tuple[str, type]]:
    """Every (URL pattern, handler) the extension registered, found in the app's routers."""
    from tornado.routing import PathMatches

    out = []

    def walk(router):
        for rule in getattr(router, "rules", []):
            target = rule.target
            if isinstance(target, type) and target.__module__.startswith("shangzhuang_lab"):
                assert isinstance(rule.matcher, PathMatches)
                out.append((rule.matcher.regex.pattern, target))
            elif hasattr(target, "rules"):
                walk(target)

    walk(web_app.default_router)
    return out


async def test_every_endpoint_refuses_an_unauthenticated_request(
    jp_serverapp, http_server_client, jp_base_url
):
    from shangzhuang_lab.handlers import HANDLERS
    from shangzhuang_lab.publish import PUBLISH_HANDLERS, PublishHandler

    every = {**HANDLERS, **PUBLISH_HANDLERS}
    routes = extension_routes(jp_serverapp.web_app)
    assert {h for _, h in routes} == set(every.values())
    assert len(routes) == len(every) == 6
    for pattern, handler in routes:
        path = pattern.rstrip("$").replace("\\", "")
        assert path.startswith(jp_base_url + "shangzhuang/"), path
        methods = [m for m in handler.SUPPORTED_METHODS if m.lower() in vars(handler)]
        assert methods == (["POST"] if handler is PublishHandler else ["GET"]), (handler, methods)
        for headers in ({}, {"Authorization": "token not-the-servers-token"}):
            for method in handler.SUPPORTED_METHODS:
                body = b"{}" if method in ("POST", "PUT", "PATCH") else None
                if method == "OPTIONS":  # jupyter_server's CORS preflight: no data, no auth
                    r = await http_server_client.fetch(path, method="OPTIONS", headers=headers)
                    assert r.body == b""
                    continue
                with pytest.raises(HTTPClientError) as e:
                    await http_server_client.fetch(
                        path, method=method, headers=headers, body=body,
                        follow_redirects=False, allow_nonstandard_methods=True,
                    )  # fmt: skip
                assert e.value.code in (401, 403, 302, 405), (method, path, e.value.code)
                if method in methods:
                    assert e.value.code in (401, 403, 302), (path, e.value.code)


async def test_every_endpoint_answers_with_the_servers_token(jp_fetch, quota):
    from shangzhuang_lab.handlers import HANDLERS

    for path in HANDLERS:
        r = await jp_fetch("shangzhuang", path)
        assert r.code == 200, path
