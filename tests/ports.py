"""Free TCP ports for the servers the tests start.

Binding port 0 and closing the socket lets the kernel hand the same port out
again, so a rig asking for five ports at once can get one twice (CI saw
hub.port == hub.proxy_api_port). One helper remembers what it gave out in this
process and never repeats it.
"""

import socket

_given: set[int] = set()


def free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _given:
            _given.add(port)
            return port
