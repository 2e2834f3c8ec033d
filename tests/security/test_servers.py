"""Attacks: one user takes the site's capacity by starting server after server, or changes
how their server runs with a Jupyter config file of their own.

- more named servers than `hub.named_server_limit_per_user` (JupyterHub's limit; apps,
  `app-NAME` servers, don't count, so a server merely named like an app must not raise the
  allowance);
- more running servers on the site than `hub.active_server_limit`;
- `~/.jupyter/jupyter_server_config.json` read by the user's own server (disable_user_config
  off): here it moves the Lab's file root to the node's "/".

Seen red before the fix: the third named server started, the fourth active server started,
and the user's config file was applied. The limits hold the same when the hub is not
root (they are the hub's own), tested in test_accounts.py's non-root test with the home
page's notice.
"""

from __future__ import annotations

import pytest
import requests

from tests.integration.hub import RunningHub, workdir

pytestmark = pytest.mark.integration

LIMITS = "named_server_limit_per_user = 2\nactive_server_limit = 3\n"


def test_named_and_active_server_limits_and_user_config():
    hub = RunningHub(workdir(), gpus=0)
    # RunningHub writes the [hub] table: the limits go into it.
    hub.config.write_text(hub.config.read_text().replace("[hub]\n", "[hub]\n" + LIMITS, 1))
    with hub:
        hub.new_user("mallory")
        hub.new_user("alice")
        hub.new_user("bob")
        for server in ("a", "b"):
            hub.api("POST", "/users/mallory/servers/" + server, json={"profile": "cpu"})
        # A server named like an app (refused at spawn: no such app) is no extra allowance.
        hub.api("POST", "/users/mallory/servers/app-x", json={"profile": "cpu"}, ok=None)
        r = hub.api("POST", "/users/mallory/servers/c", json={"profile": "cpu"}, ok=None)
        assert r.status_code == 400, r.text
        assert "maximum of" in r.json()["message"], r.text

        def running(name: str, server: str) -> bool:
            servers = hub.api("GET", f"/users/{name}").json()["servers"]
            return bool(servers.get(server, {}).get("ready"))

        hub.wait(lambda: running("mallory", "a") and running("mallory", "b"), 120, "a, b")

        # alice's server is the site's third; bob's would be the fourth.
        hub.spawn("alice", "cpu")
        hub.wait_ready("alice")
        r = hub.spawn("bob", "cpu", ok=None)
        assert r.status_code == 429, r.text
        assert "Active user limit exceeded" in r.json()["message"], r.text

        # alice's own config file moves her Lab's file root to the node's "/".
        token = hub.token_for("alice")
        hub.run_code(
            "alice",
            "import json, os; os.makedirs(os.path.expanduser('~/.jupyter'), exist_ok=True)\n"
            "json.dump({'ServerApp': {'root_dir': '/'}},"
            " open(os.path.expanduser('~/.jupyter/jupyter_server_config.json'), 'w'))",
            token,
        )
        hub.stop_server("alice")
        hub.spawn("alice", "cpu")
        hub.wait_ready("alice")
        r = requests.get(
            f"{hub.user_url('alice')}api/contents",
            headers={"Authorization": f"token {token}"}, timeout=30,
        )  # fmt: skip
        assert r.status_code == 200, r.text
        names = {item["name"] for item in r.json()["content"]}
        assert not {"etc", "proc"} & names, names  # her home, not the node's root
