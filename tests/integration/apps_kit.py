"""Helpers for the apps tests: a small widget notebook, a viewer's browser-like session
(hub login, OAuth consent), the app's kernel websocket."""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlparse

import nbformat
import requests
import websocket

from .hub import RunningHub

SLIDER_CODE = """import json, os
import ipywidgets as w
params = json.load(open("model.json"))
x = w.IntSlider(value=1, min=0, max=10, description="x")
out = w.Label(value="")
def update(change=None):
    out.value = f"y = {params['a'] * x.value + params['b']}"
x.observe(update, names="value")
update()
display(w.VBox([x, out]))
print("app token in kernel:", os.environ.get("JUPYTERHUB_API_TOKEN"))
"""


def write_app(folder: Path, name: str = "app.ipynb", a: int = 3, b: int = 1) -> Path:
    """A notebook with a slider x and a label y = a*x + b; it declares model.json."""
    folder.mkdir(parents=True, exist_ok=True)
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# A linear model\n\nMove the slider."),
        nbformat.v4.new_code_cell(SLIDER_CODE),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}  # fmt: skip
    nb.metadata["shangzhuang"] = {"files": ["model.json"]}
    path = folder / name
    nbformat.write(nb, path)
    (folder / "model.json").write_text(json.dumps({"a": a, "b": b}))
    (folder / "secret.txt").write_text("the owner's private notes\n")  # not declared
    return path


def cli(hub: RunningHub, token: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "shangzhuang.cli", "apps", *args, "--hub-url", hub.url,
         "--token", token],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def consent(s: requests.Session, r: requests.Response) -> requests.Response:
    """Accept JupyterHub's one-time 'authorize this server to know who you are' page."""
    if "oauth2/authorize" not in r.url or r.status_code != 200:
        return r
    form = re.search(r"<form[^>]*>(.*?)</form>", r.text, re.S).group(1)
    fields = [
        (html.unescape(n), html.unescape(v))
        for n, v in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form)
    ]
    return s.post(r.url, data=fields, headers={"Accept": "text/html"})


def open_app(s: requests.Session, url: str) -> requests.Response:
    """GET an app link as a browser would (redirects, OAuth, consent)."""
    r = s.get(url, headers={"Accept": "text/html"}, timeout=120)
    return consent(s, r)


def kernel_id(page: str) -> str:
    m = re.search(r'"kernelId":\s*"([0-9a-f-]{36})"', page) or re.search(
        r"kernel_id\W+([0-9a-f]{8}-[0-9a-f-]{27})", page
    )
    assert m, "no kernel id in the app page"
    return m.group(1)


def kernel_socket(s: requests.Session, server_url: str, kid: str):
    """The app page's kernel websocket, as its browser opens it: the cookies the session
    holds for the app's host, and the app's own origin."""
    url = f"{server_url}api/kernels/{kid}/channels"
    cookies = requests.cookies.get_cookie_header(s.cookies, requests.Request("GET", url))
    origin = "{0.scheme}://{0.netloc}".format(urlparse(server_url))
    return websocket.create_connection(
        url.replace("http", "ws", 1), header=[f"Cookie: {cookies or ''}"], origin=origin,
        timeout=20,
    )  # fmt: skip


def message(msg_type: str, content: dict, channel: str = "shell") -> dict:
    return {
        "header": {"msg_id": uuid.uuid4().hex, "username": "viewer", "session": uuid.uuid4().hex,
                   "msg_type": msg_type, "version": "5.3"},
        "parent_header": {}, "metadata": {}, "content": content, "channel": channel,
    }  # fmt: skip


def replies_to(ws, msg_id: str, seconds: float) -> list[dict]:
    """Every message answering msg_id within `seconds`."""
    import time

    out, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        ws.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            msg = json.loads(ws.recv())
        except websocket.WebSocketTimeoutException:
            break
        if msg.get("parent_header", {}).get("msg_id") == msg_id:
            out.append(msg)
    return out
