"""Per-user origins (hub.public_url, JupyterHub's subdomain_host) and the app server's
per-address visit limit, without services."""

from __future__ import annotations

import pytest
from traitlets.config import Config

from shangzhuang.apps.server import Visits, client_address
from shangzhuang.hub import configure, services_on_the_hub_host
from shangzhuang.settings import Hub, SettingsError, load_settings


def test_the_hub_and_users_have_their_own_origins():
    hub = Hub(port=8000)
    assert hub.url == "http://hub.localhost:8000"
    assert hub.bind_url == "http://127.0.0.1:8000"
    assert hub.user_origin("alice") == "http://alice.hub.localhost:8000"
    site = Hub(public_url="https://hub.example.org/")
    assert site.url == "https://hub.example.org"
    assert site.user_origin("bob") == "https://bob.hub.example.org"


@pytest.mark.parametrize(
    "url, says",
    [
        ("http://127.0.0.1:8000", "a host name is needed, not an address"),
        ("https://hub.example.org/jupyter", "no path"),
        ("hub.example.org", "is not a URL"),
    ],
)
def test_public_url_must_be_a_host_that_can_have_subdomains(tmp_path, url, says):
    config = tmp_path / "site.toml"
    config.write_text(f'[hub]\npublic_url = "{url}"\n[[profiles]]\nname = "cpu"\ncores = 1\n'
                      'memory = "1G"\n')  # fmt: skip
    with pytest.raises(SettingsError) as e:
        load_settings(config)
    assert "hub.public_url" in str(e.value) and says in str(e.value)


def test_users_get_subdomains_and_services_stay_on_the_hub_host(tmp_path):
    assert services_on_the_hub_host("alice", "hub.localhost", "user") == "alice.hub.localhost"
    assert services_on_the_hub_host("apps", "hub.localhost", "service") == "hub.localhost"
    config = tmp_path / "site.toml"
    config.write_text(f'[hub]\nstate_dir = "{tmp_path / "state"}"\n[quota]\nenabled = false\n'
                      '[[profiles]]\nname = "cpu"\ncores = 1\nmemory = "1G"\n')  # fmt: skip
    c = Config()
    configure(c, load_settings(config))
    assert c.JupyterHub.subdomain_host == "http://hub.localhost:8000"
    assert c.JupyterHub.bind_url == "http://127.0.0.1:8000"
    assert c.JupyterHub.cookie_host_prefix_enabled is False  # needs https
    assert c.WorkbenchSpawner.app_server_prefix == "app-"


def test_visits_are_limited_per_address_for_a_minute():
    now = [1000.0]
    visits = Visits(2, clock=lambda: now[0])
    assert visits.wait_seconds("1.2.3.4") == 0
    assert visits.wait_seconds("1.2.3.4") == 0
    assert visits.wait_seconds("1.2.3.4") == 61  # the first visit leaves the window in 60 s
    assert visits.wait_seconds("5.6.7.8") == 0  # another address
    now[0] += 60
    assert visits.wait_seconds("1.2.3.4") == 0
    assert Visits(0).wait_seconds("1.2.3.4") == 0  # 0: no limit


def test_the_address_is_the_one_the_proxy_added():
    class Request:
        remote_ip = "127.0.0.1"
        headers = {"X-Forwarded-For": "10.9.9.9, 203.0.113.7"}

    assert client_address(Request()) == "203.0.113.7"
    Request.headers = {}
    assert client_address(Request()) == "127.0.0.1"
