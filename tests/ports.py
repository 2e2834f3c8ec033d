"""Free TCP ports for the servers the tests start.

Binding port 0 and closing the socket lets the kernel hand the same port out
again, so a rig asking for five ports at once can get one twice (CI saw
hub.port == hub.proxy_api_port). One helper remembers what it gave out in this
process and never repeats it.

`make test` runs two pytest workers side by side (tests/run.sh), which cannot see each
other's memory: each takes its ports from its own range, below the kernel's ephemeral
range (32768-60999), where no port-0 bind by a hub or a Lab lands either.
"""

import os
import random
import socket

_given: set[int] = set()


def worker_range() -> range:
    """This pytest worker's own ports: gw0 20000-25999, gw1 26000-31999; all of
    20000-31999 when the suite runs in one process."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw"):
        return range(20000, 32000)
    share = 12000 // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    start = 20000 + int(worker[2:]) * share
    return range(start, start + share)


def free_port() -> int:
    ports = worker_range()
    while True:
        port = random.choice(ports)
        if port in _given:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        _given.add(port)
        return port


def free_block(n: int) -> int:
    """The first of `n` consecutive free ports (a session's block of dashboard ports)."""
    ports = worker_range()
    while True:
        first = random.choice(ports[: len(ports) - n])
        block = range(first, first + n)
        if _given.intersection(block):
            continue
        try:
            for port in block:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        _given.update(block)
        return first
