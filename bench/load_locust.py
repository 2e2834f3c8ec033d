"""Locust's runner for bench/load.py: `python bench/load_locust.py CONFIG.json`.

Locust (gevent) starts the users at CONFIG's arrival rate; each walks one journey
(tests/journey.py, which tests/integration/test_load.py walks too) and stops. Every
request goes to locust's statistics and, with its wall-clock time, to CONFIG's "out" file
(JSON lines) from which bench/load.py computes its figures and fault windows; each
finished journey adds a {"journey": summary} line.
Its own process, so gevent's monkey-patching never reaches bench/load.py.
"""

from gevent import monkey

monkey.patch_all()  # before anything imports socket users (requests, websocket-client)

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
from locust import User, events, task  # noqa: E402
from locust.env import Environment  # noqa: E402
from locust.exception import StopUser  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.journey import Failed, Journey  # noqa: E402

CONFIG = json.loads(Path(sys.argv[1]).read_text())
NAMES = list(CONFIG["names"])
OUT = open(CONFIG["out"], "a", buffering=1)  # noqa: SIM115 - open for the whole run
DONE: list[dict] = []


class JourneyUser(User):
    @task
    def journey(self) -> None:
        if not NAMES:
            # Locust replaces a user that stopped while it still starts others (at 50
            # arrivals, the first journeys end before the last user starts): without a
            # name left, the replacement's task failed and ran again at once, a busy loop.
            raise StopUser()
        name = NAMES.pop(0)

        def record(kind: str, seconds: float, error: str | None) -> None:
            self.environment.events.request.fire(
                request_type="journey", name=kind, response_time=seconds * 1000,
                response_length=0, exception=error and Failed(error), context={},
            )  # fmt: skip
            OUT.write(json.dumps({"t": time.time(), "user": name, "kind": kind,
                                  "seconds": seconds, "error": error}) + "\n")  # fmt: skip

        j = Journey(CONFIG["url"], name, CONFIG["password"], profile=CONFIG["profile"],
                    extras=CONFIG["extras"], idle=CONFIG["idle"], record=record,
                    resend=CONFIG.get("resend", True))  # fmt: skip
        summary = j.run()
        OUT.write(json.dumps({"journey": summary}) + "\n")
        DONE.append(summary)
        raise StopUser()


def client_lag(lags: list[float]) -> None:
    """How late this process's own 0.1 s sleeps wake: the load client waiting for a CPU (or
    for its other users' greenlets). A request it was about to send waits as long."""
    while True:
        t0 = time.monotonic()
        gevent.sleep(0.1)
        lags.append(time.monotonic() - t0 - 0.1)


def main() -> None:
    env = Environment(user_classes=[JourneyUser], events=events)
    runner = env.create_local_runner()
    n = len(NAMES)
    lags: list[float] = []
    watch = gevent.spawn(client_lag, lags)
    runner.start(n, spawn_rate=CONFIG["rate"])
    while len(DONE) < n:
        gevent.sleep(0.5)
    runner.quit()
    watch.kill()
    OUT.write(json.dumps({"client lag": {"ticks": len(lags), "over 1 s": sum(x > 1 for x in lags),
                                         "max": max(lags, default=0.0)}}) + "\n")  # fmt: skip
    total = env.stats.total
    print(f"locust: {total.num_requests} requests, {total.num_failures} failed; "
          f"{sum(not d['error'] for d in DONE)}/{n} journeys complete", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
