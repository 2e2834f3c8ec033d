"""Quota alerts on a real hub: a Lab session burns a tiny pool; its managers get a mail at a
real SMTP server (aiosmtpd) and the webhook a POST at 50%, the hub and its quota service
restart, and at 100% the next one comes, each threshold once."""

import pytest
from aiosmtpd.controller import Controller

from tests.ports import free_port
from tests.unit.quota.test_alerts import Mailbox, Webhook

from .hub import RunningHub, workdir

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def receivers():
    box = Mailbox()
    smtp = Controller(box, hostname="127.0.0.1", port=free_port())
    smtp.start()
    hook = Webhook()
    yield smtp, box, hook
    hook.close()
    smtp.stop()


def quota(smtp: Controller, hook: Webhook) -> str:
    # the cpu profile burns 2 cpu_hours an hour: 0.01 lasts 18 s, half of it 9 s
    return f"""
sample_seconds = 1
min_minutes_to_spawn = 0.01
grace_seconds = 600
[quota.alerts]
thresholds = [0.5, 1.0]
webhook_url = "{hook.url}"
smtp_host = "127.0.0.1"
smtp_port = {smtp.port}
mail_from = "quota@example.org"
mail_domain = "example.org"
[quota.accounts.default]
cpu_hours = 1000
[quota.accounts.lab]
cpu_hours = 0.01
managers = ["mona"]
[quota.users.lena]
account = "lab"
"""


def thresholds(hook: Webhook) -> list[float]:
    return [p["threshold"] for p in hook.posts if p.get("account") == "lab"]


def test_each_threshold_once_across_a_restart(receivers):
    smtp, box, hook = receivers
    with RunningHub(workdir(), quota=quota(smtp, hook)) as hub:
        hub.new_user("lena")
        hub.spawn("lena", "cpu")
        hub.wait_ready("lena")
        hub.wait(lambda: 0.5 in thresholds(hook), 120, "the 50% alert")
        assert thresholds(hook) == [0.5]
        hub.restart()  # the quota service with it; lena's session keeps running
        hub.wait(lambda: 1.0 in thresholds(hook), 180, "the 100% alert")
        assert thresholds(hook) == [0.5, 1.0]
        assert hook.posts[-1]["text"].startswith(
            "The account lab has used 100% of its cpu_hours this period"
        )
        mails = [(to, m["Subject"]) for to, m in box.mails]
        assert mails == [
            (["mona@example.org"], "Quota: the account lab has used 50% of its cpu_hours"),
            (["mona@example.org"], "Quota: the account lab has used 100% of its cpu_hours"),
        ]
        hub.stop_server("lena")
