"""Run a notebook in a user's workbench session the way JupyterLab does.

The notebook is read from the user's home through the session's contents API, a kernel is
started for it through the sessions API (so its working folder is the notebook's, and it
runs as the user's Unix account with the session's environment: CUDA_VISIBLE_DEVICES, the
quota service's address, the session's hub token), and its code cells are sent to that
kernel one by one over the kernel websocket, through the hub's proxy. Parameters go in as
papermill puts them: a cell of assignments after the cell tagged `parameters`.

Unlike nbclient, nothing here runs the kernel in the test process: what passes here passes
for a student pressing "Run All" in the same session.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from dataclasses import dataclass, field

import nbformat
import requests
import websocket

from tests.integration.hub import RunningHub, execute_request

from .parameters import with_parameters

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class CellError(AssertionError):
    """A cell raised: the message shows the cell and the kernel's traceback."""


@dataclass
class CellRun:
    source: str
    text: str = ""  # streams and text/plain of results and displays, in order
    mimetypes: list[str] = field(default_factory=list)  # of every display/result
    pngs: list[bytes] = field(default_factory=list)  # every image/png shown, in order


@dataclass
class NotebookRun:
    path: str
    cells: list[CellRun]

    @property
    def text(self) -> str:
        return "\n".join(c.text for c in self.cells)

    def mimetypes(self) -> set[str]:
        return {m for c in self.cells for m in c.mimetypes}

    def pngs(self) -> list[bytes]:
        return [png for c in self.cells for png in c.pngs]


def run_notebook(
    hub: RunningHub, user: str, token: str, path: str, timeout: float = 300, **parameters
) -> NotebookRun:
    """Execute `path` (relative to the user's home) top to bottom in their running session."""
    base = f"{hub.user_url(user)}api"
    headers = {"Authorization": f"token {token}"}
    r = requests.get(f"{base}/contents/{path}", headers=headers, timeout=60)
    assert r.status_code == 200, f"GET contents/{path}: {r.status_code} {r.text[:300]}"
    nb = nbformat.from_dict(r.json()["content"])
    if parameters:
        nb = with_parameters(nb, **parameters)
    r = requests.post(
        f"{base}/sessions",
        json={"path": path, "type": "notebook", "name": path, "kernel": {"name": "python3"}},
        headers=headers, timeout=120,
    )  # fmt: skip
    assert r.status_code == 201, f"POST sessions: {r.status_code} {r.text[:300]}"
    session = r.json()
    ws = websocket.create_connection(
        f"{base.replace('http', 'ws', 1)}/kernels/{session['kernel']['id']}/channels",
        header=[f"Authorization: token {token}"],
        timeout=timeout,
    )
    try:
        cells = [
            _run_cell(ws, cell.source, i) for i, cell in enumerate(nb.cells)
            if cell.cell_type == "code"
        ]  # fmt: skip
    finally:
        ws.close()
        requests.delete(f"{base}/sessions/{session['id']}", headers=headers, timeout=60)
    return NotebookRun(path, cells)


def _run_cell(ws, source: str, index: int) -> CellRun:
    run = CellRun(source)
    msg_id = uuid.uuid4().hex
    ws.send(json.dumps(execute_request(msg_id, source)))
    error = None
    while True:
        frame = ws.recv()
        if isinstance(frame, bytes):  # a message with binary buffers: widget data (images)
            continue
        msg = json.loads(frame)
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            run.text += content["text"]
        elif kind in ("display_data", "execute_result", "update_display_data"):
            run.mimetypes += list(content["data"])
            run.text += content["data"].get("text/plain", "") + "\n"
            if "image/png" in content["data"]:
                run.pngs.append(base64.b64decode(content["data"]["image/png"]))
        elif kind == "error":
            error = ANSI.sub("", "\n".join(content["traceback"]))
        elif kind == "status" and content["execution_state"] == "idle":
            break
    if error is not None:
        raise CellError(f"cell {index} failed:\n{source}\n---\n{error}\n--- output:\n{run.text}")
    run.text = ANSI.sub("", run.text)
    return run
