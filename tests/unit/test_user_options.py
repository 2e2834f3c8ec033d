"""A server takes one option, its profile (#13): anything else in `user_options` (the JSON
body of POST /hub/api/users/NAME/server) is a 400 naming it, on both backends, and the
Slurm batch script is made from the site's settings and the profile alone."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from tornado import web

from shangzhuang.hub.gpus import GpuPool
from shangzhuang.hub.spawners import SlurmSpawner
from tests.unit.spawner_kit import HUB, make_spawner, profile

PROFILES = [profile("cpu"), profile("gpu-1", 1)]


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"profile": "cpu", "ngpus": "2"}, "'ngpus'"),
        ({"profile": "cpu", "runtime": "99:00:00"}, "'runtime'"),
        ({"partition": "x"}, "'partition'"),
        ({"profile": "cpu", "account": "rich"}, "'account'"),
        ({"profile": "cpu\n#SBATCH --gres=gpu:2"}, "'cpu\\n#SBATCH --gres=gpu:2'"),
        ({"profile": ["cpu"]}, "['cpu']"),
    ],
)
def test_anything_but_a_known_profile_is_a_400_naming_it(options, named):
    spawner = make_spawner(GpuPool([]), profiles=PROFILES)
    with pytest.raises(web.HTTPError) as refused:
        spawner.apply_user_options(spawner, options)
    assert refused.value.status_code == 400
    assert named in refused.value.log_message


@pytest.mark.parametrize("options", [{}, None, {"profile": ""}, {"profile": "gpu-1"}])
def test_a_profile_or_none_passes(options):
    spawner = make_spawner(GpuPool([]), profiles=PROFILES)
    spawner.apply_user_options(spawner, options)


def test_the_slurm_script_ignores_what_batchspawner_merges_from_user_options():
    spawner = SlurmSpawner(
        user=SimpleNamespace(name="ana", url="/user/ana/"),
        orm_spawner=SimpleNamespace(name="", display_name="", server=None, last_activity=None),
        hub=HUB, profiles=PROFILES, user_prefix="sz-", home_root="/home",
    )  # fmt: skip
    spawner.req_nprocs, spawner.req_memory, spawner.req_runtime = "1", "1024M", "01:00:00"
    # batchspawner 1.3.0's submit_batch_script passes these when user_options hold them
    script = asyncio.run(
        spawner._get_batch_script(
            cmd="run-lab", ngpus="2", runtime="99:00:00", partition="x\n#SBATCH --gres=gpu:8"
        )
    )
    assert "gres" not in script and "99:00:00" not in script and "#SBATCH --time=01:00:00" in script
    assert "#SBATCH --output=/home/sz-ana/.shangzhuang/slurm-lab-%j.log" in script
    assert "#SBATCH --chdir=/home/sz-ana\n" in script
