"""Attack: sign up under the name of a user an admin deleted, and inherit what was theirs.

The hub deletes its own records of a user, but the Unix account `{prefix}NAME`, its home
and the quota ledger's rows under NAME stayed: whoever signed up as NAME next got the
earlier person's account, files and usage. Now deleting a hub user archives their home
(root-only, under the hub state), locks the Unix account and renames it
`{prefix}retiredUID` (so useradd never hands its uid to the next person), and sets their ledger rows
apart under `NAME~deleted-STAMP`, and their published apps are archived too
(hub/accounts.py). Seen red before the fix: the new dana read the earlier dana's file and
saw her usage; and the new dana got the old one's uid, so a file she left outside her
home was the new dana's.

Not as root every session runs as the hub's account (nothing per user to delete but the
home folder): the same attack on the per-user folder, and the home page says plainly what
is not isolated; the server limits, being the hub's own, hold there too.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import uuid

import pytest
import requests

from shangzhuang.apps.registry import Registry
from shangzhuang.quota import open_ledger
from shangzhuang.settings import load_settings
from tests.integration.apps_kit import cli, write_app
from tests.integration.hub import RunningHub, workdir

pytestmark = pytest.mark.integration

QUOTA = """
sample_seconds = 1
[quota.accounts.default]
cpu_hours = 100
"""

PLANT = (
    "import os; open(os.path.expanduser('~/diary.txt'), 'w').write('mine alone');"
    " print(os.getuid(), os.path.expanduser('~'))"
)
LOOK = (
    "import os; print(os.path.exists(os.path.expanduser('~/diary.txt')), os.getuid(),"
    " sorted(os.listdir(os.path.expanduser('~'))))"
)


def charged_consumers(hub, name: str) -> set[str]:
    """What NAME was charged for (sessions), as the quota service's usage API reports."""
    r = requests.get(
        f"{hub.url}/services/quota/api/v1/usage", params={"user": name},
        headers={"Authorization": f"token {hub.admin_token()}"}, timeout=30,
    )  # fmt: skip
    r.raise_for_status()
    return {c["consumer"] for c in r.json()["records"]}


def delete_and_sign_up_again(hub, name: str) -> tuple[str, str, set[str]]:
    """Plant a file as NAME, burn some quota, get deleted by the admin, sign up again;
    return what the first and the second NAME's kernels printed, and the first's sessions
    in the ledger."""
    hub.new_user(name)
    hub.spawn(name, "cpu")
    hub.wait_ready(name)
    first = hub.run_code(name, PLANT)
    notebook = write_app(hub.base / f"{name}-app")  # and publishes an app
    r = cli(hub, hub.token_for(name), "publish", str(notebook), "--name", "diary")
    assert r.returncode == 0, r.stderr
    hub.wait(lambda: charged_consumers(hub, name), 60, f"{name}'s usage charged")
    hub.stop_server(name)

    # Publishing starts the app's server: a user with a running server isn't deleted.
    def servers() -> dict:
        return hub.api("GET", f"/users/{name}").json()["servers"]

    hub.wait(lambda: servers().get("app-diary", {}).get("ready"), 120, "the app started")
    r = hub.api("DELETE", f"/users/{name}", ok=None)
    assert r.status_code == 400 and "still has running servers (app-diary)" in r.text, r.text
    hub.api("DELETE", f"/users/{name}/servers/app-diary")
    hub.wait(lambda: "app-diary" not in servers(), 60, "the app stopped")
    before = charged_consumers(hub, name)
    hub.api("DELETE", f"/users/{name}")
    hub.new_user(name, password="another-person-42")
    hub.spawn(name, "cpu")
    hub.wait_ready(name)
    second = hub.run_code(name, LOOK)
    return first, second, before


@pytest.mark.skipif(os.geteuid() != 0, reason="users get their own Unix accounts only as root")
def test_a_deleted_users_name_signed_up_again_inherits_nothing():
    with RunningHub(workdir(), gpus=0, quota=QUOTA) as hub:
        first, second, old_sessions = delete_and_sign_up_again(hub, "dana")
        old_uid, old_home = first.split()
        exists, new_uid, listing = second.split(maxsplit=2)
        assert exists == "False", second
        assert "diary.txt" not in listing, second
        # A file of the old dana's outside every folder the cleanup reaches (a Slurm node's
        # disk, /scratch): her uid, which the new dana never gets, holds it still.
        scratch = hub.base / "scratch"
        scratch.mkdir()
        (scratch / "results.csv").write_text("hers")
        os.chown(scratch / "results.csv", int(old_uid), -1)
        assert new_uid != old_uid, (first, second)
        owner = pwd.getpwuid((scratch / "results.csv").stat().st_uid)
        assert owner.pw_name == f"{hub.prefix}retired{old_uid}", owner
        assert owner.pw_shell == "/usr/sbin/nologin" and owner.pw_dir == "/nonexistent"
        # The home is new (the archive holds the old one, root-only).
        archive = hub.state / "archived-homes"
        (home,) = [p for p in archive.iterdir() if p.name.startswith(f"{hub.prefix}dana-")]
        assert (home / "diary.txt").read_text() == "mine alone"
        # Her published app went to the archive too: the new dana owns none.
        settings = load_settings(hub.config)
        assert Registry(settings.apps_folder).owned("dana") == []
        (apps,) = (archive / "apps").iterdir()
        assert (apps / "diary" / "app.json").exists()
        assert (hub.state / "archived-homes").stat().st_mode & 0o777 == 0o700
        assert pwd.getpwnam(f"{hub.prefix}dana").pw_dir == old_home
        # The quota record: the new dana has used nothing; the old one is kept apart.
        assert old_sessions and not old_sessions & charged_consumers(hub, "dana")
        ledger = open_ledger(settings)
        tombs = [u for u in ledger.users() if u.startswith("dana~deleted-")]
        assert len(tombs) == 1, ledger.users()
        assert {c.consumer for c in ledger.usage(user=tombs[0])} == old_sessions
        hub.stop_server("dana")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make the hub's own account")
def test_not_root_a_reused_name_gets_a_fresh_folder_and_the_home_page_says_what_is_shared():
    account = f"szh{uuid.uuid4().hex[:5]}"
    subprocess.run(["useradd", "--create-home", "--user-group", account], check=True)
    try:
        base = workdir()
        ids = pwd.getpwnam(account)
        os.chown(base, ids.pw_uid, ids.pw_gid)
        hub = RunningHub(base, run_as=account, gpus=0, quota=QUOTA)
        limits = "named_server_limit_per_user = 1\n"
        hub.config.write_text(hub.config.read_text().replace("[hub]\n", "[hub]\n" + limits, 1))
        with hub:
            browser = hub.new_user("nina")
            home = browser.get(f"{hub.url}/hub/home").text
            assert "users are not isolated" in home
            assert "connect to their kernels and Dask clusters" in home
            # The hub's own limit holds without root too.
            hub.api("POST", "/users/nina/servers/one", json={"profile": "cpu"})
            r = hub.api("POST", "/users/nina/servers/two", json={"profile": "cpu"}, ok=None)
            assert r.status_code == 400, r.text
            hub.api("DELETE", "/users/nina/servers/one", json={"remove": True})
            _, second, old_sessions = delete_and_sign_up_again(hub, "omar")
            assert second.split()[0] == "False", second
            assert not old_sessions & charged_consumers(hub, "omar")
            hub.stop_server("omar")
    finally:
        subprocess.run(["pkill", "-KILL", "-u", account], check=False)
        subprocess.run(["userdel", "--remove", account], check=False, capture_output=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a Unix account")
def test_a_hub_user_named_like_a_retired_account_does_not_get_it():
    """A hub user 'retired1037' maps to the Unix name of the retired account that holds
    uid 1037; sessions must not run as it (ensure_account refuses)."""
    import asyncio

    from shangzhuang.hub.unix import RETIRED_COMMENT, AccountError, ensure_account

    name = f"szr{uuid.uuid4().hex[:5]}"
    comment = f"{RETIRED_COMMENT} olga"
    subprocess.run(["useradd", "--user-group", "--comment", comment, name], check=True)
    try:
        with pytest.raises(AccountError, match="retired account"):
            asyncio.run(ensure_account(name, f"/home/{name}", "retired1037"))
    finally:
        subprocess.run(["userdel", "--remove", name], check=False, capture_output=True)
