"""Attacks on the `slurm` backend by a signed-in stranger, on a real Slurm with accounting
(tests/slurm.py: slurmctld, two slurmd, slurmdbd on MariaDB) and a real hub as root:

- a symbolic link in the user's home (`~/.shangzhuang -> a root folder`), which the hub
  used to chown to the user as root at the next spawn;
- `user_options` beyond the profile (the JSON body of POST /hub/api/users/NAME/server),
  which batchspawner merges into the batch script: GPUs, wall time, partition, account
  and extra `#SBATCH` lines for the price of the cheapest profile;
- a job name with a newline, which forged a line of the meter's `squeue` parse and so
  charged someone else (or nobody) for the attacker's job;
- a session using more than its profile: Slurm's cgroup plugins (the shipped
  hub_config/examples/cgroup.conf) hold its cores, memory and devices inside the job.
"""

import os
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import requests

from tests.integration.hub import RunningHub, workdir
from tests.slurm import LocalSlurm

pytestmark = [pytest.mark.integration, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

PROFILES = """
[[profiles]]
name = "cpu"
cores = 1
memory = "1G"
[[profiles]]
name = "gpu-2"
cores = 1
memory = "1G"
gpus = 2
"""

QUOTA = """
sample_seconds = 1
min_minutes_to_spawn = 0.05
[quota.accounts.default]
cpu_hours = 1000
gpu_hours = 1000
[quota.accounts.rich]
cpu_hours = 1000
"""


@pytest.fixture(scope="module")
def slurm():
    s = LocalSlurm(accounting=True, cgroups=True)
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def hub(slurm):
    with RunningHub(workdir(), slurm_conf=slurm.conf, profiles=PROFILES, quota=QUOTA) as h:
        yield h


def jobs_of(slurm, hub, name):
    return [j for j in slurm.jobs() if j["user"] == f"{hub.prefix}{name}"]


def spawn_outcome(hub, name, body, timeout=120):
    """POST the server with `body`; wait until it is ready or the spawn failed. Returns
    (status of the POST, the message a person would see or "ready")."""
    r = hub.api("POST", f"/users/{name}/server", json=body, ok=None)
    if r.status_code not in (201, 202):
        return r.status_code, r.json().get("message", "")

    def done():
        model = hub.api("GET", f"/users/{name}").json()
        server = model["servers"].get("")
        if server and server["ready"]:
            return "ready"
        if not server and not model.get("pending"):
            return "failed"
        return None

    outcome = hub.wait(done, timeout, f"{name}'s spawn to end")
    return r.status_code, outcome


INJECTED = [
    ({"profile": "cpu", "ngpus": "2"}, "ngpus"),
    ({"profile": "cpu", "runtime": "99-00:00:00"}, "runtime"),
    ({"profile": "cpu", "partition": "private"}, "partition"),
    ({"profile": "cpu", "account": "rich"}, "account"),
    ({"profile": "cpu\n#SBATCH --gres=gpu:2"}, "profile"),
]


@pytest.mark.parametrize(("body", "key"), INJECTED, ids=[k for _, k in INJECTED])
def test_options_beyond_the_profile_are_refused_with_400(hub, slurm, body, key):
    name = f"mal{key[:4]}"
    hub.new_user(name)
    r = hub.api("POST", f"/users/{name}/server", json=body, ok=None)
    try:
        assert r.status_code == 400, r.text
        assert repr(key) in r.json()["message"] or key in r.json()["message"], r.text
        assert not jobs_of(slurm, hub, name)  # nothing reached sbatch
    finally:
        if r.status_code in (201, 202):
            hub.api("DELETE", f"/users/{name}/server", ok=None)


def test_the_profile_alone_still_spawns_and_the_script_has_only_site_values(hub, slurm):
    hub.new_user("plain")
    hub.spawn("plain", "cpu")
    hub.wait_ready("plain")
    (job,) = jobs_of(slurm, hub, "plain")
    info = slurm.cmd("scontrol", "show", "job", job["id"])
    assert "TRES=cpu=1,mem=1G,node=1" in info.replace("billing=1,", ""), info
    hub.stop_server("plain")


INSIDE = """
import os
cg = dict(line.split(":", 2)[1:] for line in open("/proc/self/cgroup").read().splitlines())
path = "/sys/fs/cgroup/memory" + cg["memory"]
while "/job_" in path and not os.path.basename(path).startswith("job_"):
    path = os.path.dirname(path)
limit = int(open(path + "/memory.limit_in_bytes").read())
try:
    open({device!r}, "rb")
    device = "opened"
except OSError as e:
    device = type(e).__name__
print(len(os.sched_getaffinity(0)), limit, device)
"""


def test_a_session_holds_its_profile_inside_the_job(hub, slurm):
    hub.new_user("greedy")
    hub.spawn("greedy", "cpu")  # 1 core, 1 GiB, no GPU
    hub.wait_ready("greedy")
    device = str(slurm.run / "dev" / "c1" / "nvidia0")  # a (fake) GPU it was not given
    cores, limit, opened = hub.run_code("greedy", INSIDE.format(device=device)).split()
    assert int(cores) == 1  # the node has 4
    assert int(limit) == 1024**3  # the profile's memory, not the node's 4000 MB
    assert opened == "PermissionError"  # the devices cgroup, not the file's 0666 mode
    hub.stop_server("greedy")


def test_a_symlinked_log_folder_does_not_hand_a_root_folder_to_the_user(hub, slurm):
    hub.new_user("linky")
    hub.spawn("linky", "cpu")  # the first spawn makes the Unix account and its home
    hub.wait_ready("linky")
    hub.stop_server("linky")
    unix = f"{hub.prefix}linky"
    home = Path(hub.homes, unix)
    # A root folder standing in for /etc (the attack works on any folder root owns).
    decoy = Path(tempfile.mkdtemp(prefix="sz-decoy-"))
    try:
        decoy.chmod(0o755)
        (decoy / "passwd").write_text("root:x:0:0::/root:/bin/bash\n")
        link = home / ".shangzhuang"
        subprocess.run(
            ["runuser", "-u", unix, "--", "sh", "-c", f'rm -rf "{link}"; ln -s "{decoy}" "{link}"'],
            check=True,
        )  # fmt: skip
        status, outcome = spawn_outcome(hub, "linky", {"profile": "cpu"})
        assert decoy.stat().st_uid == 0 and decoy.stat().st_mode & 0o777 == 0o755
        assert (decoy / "passwd").stat().st_uid == 0
        assert [p.name for p in decoy.iterdir()] == ["passwd"]  # no job log written there
        if outcome == "ready":
            hub.stop_server("linky")
        assert outcome != "ready", "the spawn went ahead through the link"
    finally:
        subprocess.run(["rm", "-rf", str(decoy)], check=False)


def usage(hub, name):
    r = requests.get(
        f"{hub.url}/services/quota/api/v1/usage?user={name}",
        headers={"Authorization": f"token {hub.admin_token()}"}, timeout=30,
    )  # fmt: skip
    r.raise_for_status()
    out = {}
    for row in r.json()["records"]:
        per = out.setdefault(row["consumer"], {})
        per[row["resource"]] = per.get(row["resource"], 0.0) + row["amount"]
    return out


def test_a_job_name_with_a_newline_changes_nobodys_charges(hub, slurm):
    hub.new_user("victim")
    hub.new_user("forger")
    unix = f"{hub.prefix}forger"
    subprocess.run(["useradd", "--user-group", unix], check=False, capture_output=True)
    start = time.strftime("%Y-%m-%dT%H:%M:%S")
    # What the old `squeue -o '%i|%u|%S|%C|%b|%j'` parse read as a second job: the
    # victim's, with 64 cores and 8 GPUs. (The meter no longer prints job names at all.)
    forged = f"90|{hub.prefix}victim|{start}|64|gres/gpu:8|x"
    out = subprocess.run(
        ["runuser", "-u", unix, "--", "sbatch", "--parsable", "--chdir=/tmp", "--output=/dev/null",
         f"--job-name=x\n{forged}", "--wrap", "sleep 4"],
        env=slurm.env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    job_id = out.stdout.strip().split(";")[0]
    hub.wait(lambda: slurm.cmd("squeue", "-h", "-j", job_id, check=False).strip(), 30, "running")
    hub.wait(lambda: not slurm.cmd("squeue", "-h", "-j", job_id, check=False).strip(), 60, "ended")
    time.sleep(3)  # a few meter ticks (1 s) after the job's end
    assert usage(hub, "victim") == {}
    # The forger's job is charged once Slurm's accounting has it: exactly its run, 1 core.
    hub.wait(lambda: _settled(hub, slurm, job_id), 60, "the job settled from sacct")
    assert usage(hub, "victim") == {}
    assert set(usage(hub, "forger")) == {f"job:{job_id}"}


def _settled(hub, slurm, job_id):
    from datetime import datetime

    line = slurm.cmd("sacct", "-n", "-X", "-P", "-j", job_id, "-o", "Start,End,AllocTRES,State")
    start, end, tres, state = line.strip().split("|")
    if state != "COMPLETED":
        return False
    seconds = datetime.fromisoformat(end).timestamp() - datetime.fromisoformat(start).timestamp()
    got = usage(hub, "forger").get(f"job:{job_id}", {})
    assert "gres/gpu" not in tres
    # the usage API rounds each row to 1e-9 h (3.6 µs): a few rows
    return abs(got.get("cpu_hours", 0) * 3600 - seconds) < 1e-4
