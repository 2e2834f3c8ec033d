"""Voila apps: a notebook published as an app, shared with viewers who see the app alone.

- `registry`: the apps a site has (one folder each: `app.json` and the snapshot, `files/`).
- `snapshot`: what a publisher sends: the notebook and the files it declares.
- `service`: the apps service (JupyterHub-managed): the API, the apps page, open-on-visit.
- `spawn`: what the hub does for app servers (named servers `{prefix}{name}`).
- `server`: the app server itself, standalone Voila behind the hub's OAuth (or public).
- `client`: the apps API from Python (the CLI, the Lab extension's handler).
- `culling`: app servers' idle stop (the idle culler's arbiter).
"""

from __future__ import annotations


def is_app_server(server_name: str, prefix: str) -> bool:
    """Named servers whose name starts with the apps prefix run published apps."""
    return bool(prefix) and server_name.startswith(prefix) and len(server_name) > len(prefix)
