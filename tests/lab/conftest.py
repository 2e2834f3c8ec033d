"""pytest-jupyter's server fixtures (jp_fetch, jp_serverapp...) for these tests only, and a
Jupyter server with shangzhuang_lab enabled, pointed at a stand-in quota service."""

import pytest
from pytest_jupyter.jupyter_server import *  # noqa: F403  (fixtures and the async test hooks)
from traitlets.config import Config

from .quota_standin import TOKEN, QuotaStandIn


@pytest.fixture
def quota(jp_asyncio_loop):
    """The stand-in quota service, listening on a free port on the test's event loop."""
    standin = QuotaStandIn()
    standin.start()
    yield standin
    standin.stop()


@pytest.fixture
def lab_config() -> dict:
    """Extra `c.ShangzhuangLab` settings for one test (override the fixture to change)."""
    return {}


@pytest.fixture
def jp_base_url():
    return "/user/alice/"


@pytest.fixture
def jp_server_config(quota, lab_config):
    return Config(
        {
            "ServerApp": {"jpserver_extensions": {"shangzhuang_lab": True}},
            "ShangzhuangLab": {
                "quota_url": quota.url,
                "api_token": TOKEN,
                "user": "alice",
                "server_name": "",
                "profile": "gpu-1",
                "grace_seconds": 300.0,
                "request_timeout": 1.0,
                **lab_config,
            },
        }
    )
