"""Spawners: how a Lab session starts on each backend.

`WorkbenchSpawner` holds what every backend shares (profiles, the spawn form, limits);
each backend is one small class beside it. `LocalSpawner` runs the Lab as a local
process, as the user's own Unix account when the hub is root, with exclusive GPUs.
"""

from __future__ import annotations

import os
import pwd
import sys
from pathlib import Path

from jupyterhub.spawner import LocalProcessSpawner, SpawnException, set_user_setuid
from traitlets import Bool, Instance, List, Unicode, default

from shangzhuang.hub import form, unix
from shangzhuang.hub.gpus import Gpu, GpuPool, GpusBusy, grant_device, revoke_device, shared_pool
from shangzhuang.settings import Profile


class WorkbenchSpawner(LocalProcessSpawner):
    """Profiles and the spawn form; the base of every backend's spawner."""

    profiles = List(
        Instance(Profile),
        help="The profiles users choose from (from the site config's [[profiles]]).",
    ).tag(config=True)

    gpus = List(
        Instance(Gpu),
        help="The node's GPUs (from the config, or found with NVML); each goes to one session.",
    ).tag(config=True)

    @property
    def gpu_pool(self) -> GpuPool:
        # Config values are copied into each spawner: the pool itself is the hub's one.
        return shared_pool(self.gpus)

    @default("options_form")
    def _form(self):
        return lambda spawner: form.render(form.choices(spawner.profiles, spawner.gpu_pool))

    def options_from_form(self, formdata):
        return {"profile": formdata.get("profile", [""])[0]}

    @property
    def profile(self) -> Profile:
        """The profile asked for (the first one if none was), or a 400 naming the bad name."""
        name = (self.user_options or {}).get("profile") or self.profiles[0].name
        for p in self.profiles:
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.profiles)
        raise SpawnException(
            f"Unknown profile {name!r}; this site offers: {known}.", reason="bad-profile"
        )

    def apply_profile(self, profile: Profile) -> None:
        """Limits the session sees as MEM_LIMIT and CPU_LIMIT (read by jupyter-resource-usage)."""
        self.cpu_limit = float(profile.cores)
        self.mem_limit = profile.memory
        self.environment["SHANGZHUANG_PROFILE"] = profile.name


class LocalSpawner(WorkbenchSpawner):
    """The `local` backend: a Lab process on this machine, as the user's Unix account."""

    isolate = Bool(
        help="""Run each user's Lab as their own Unix account (needs the hub to run as root).

        Off: every session runs as the hub's account and users are not isolated.""",
    ).tag(config=True)

    @default("isolate")
    def _root(self):
        return os.geteuid() == 0

    user_prefix = Unicode("sz-", help="Prefix of the Unix account made for each hub user.").tag(
        config=True
    )
    home_root = Unicode("/home", help="Folder that holds the users' home folders.").tag(
        config=True
    )
    log_dir = Unicode("", help="Folder for the sessions' logs (one file per server).").tag(
        config=True
    )

    @property
    def owner(self) -> str:
        """The pool's name for this session."""
        return f"{self.user.name}/{self.name}"

    @property
    def unix_name(self) -> str:
        return self.user_prefix + self.user.name if self.isolate else pwd.getpwuid(os.getuid())[0]

    @property
    def home(self) -> str:
        if self.isolate:
            return os.path.join(self.home_root, self.unix_name)
        # Not isolated: one folder per user under the hub account's home.
        return str(Path.home() / "shangzhuang-homes" / self.user.name)

    # --- state: the GPUs this session holds survive a hub restart -------------------
    def load_state(self, state):
        super().load_state(state)
        if state.get("gpus"):
            self.gpu_pool.restore(self.owner, state["gpus"])

    def get_state(self):
        state = super().get_state()
        held = [g.index for g in self.gpu_pool.held_by(self.owner)]
        if held:
            state["gpus"] = held
        return state

    def clear_state(self):
        """Called when the session stops or is found dead: its GPUs go back to the pool."""
        super().clear_state()
        for gpu in self.gpu_pool.release(self.owner):
            revoke_device(gpu)
            self.log.info("GPU %s released by %s", gpu.index, self.owner)

    # --- start ------------------------------------------------------------------------
    def make_preexec_fn(self, name):
        if self.isolate:
            return set_user_setuid(self.unix_name)
        home = self.home
        return lambda: os.chdir(home)

    def user_env(self, env):
        env["USER"] = self.unix_name
        env["HOME"] = self.home
        env["SHELL"] = "/bin/bash"
        return env

    def get_env(self):
        env = super().get_env()
        # The session's Python is the workbench's environment, not whatever PATH the hub had.
        env["PATH"] = os.pathsep.join([os.path.join(sys.prefix, "bin"), "/usr/local/bin", "/usr/bin", "/bin"])
        env["VIRTUAL_ENV"] = sys.prefix
        gpus = self.gpu_pool.held_by(self.owner)
        # Empty hides every GPU from CUDA: a CPU profile must not touch a GPU by accident.
        env["CUDA_VISIBLE_DEVICES"] = ",".join(g.cuda_id for g in gpus)
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        env["SHANGZHUANG_GPUS"] = ",".join(str(g.index) for g in gpus)
        return env

    async def start(self):
        profile = self.profile
        self.apply_profile(profile)
        if self.isolate:
            account = await unix.ensure_account(self.unix_name, self.home, self.user.name)
        else:
            os.makedirs(self.home, mode=0o700, exist_ok=True)
            account = None
        try:
            gpus = self.gpu_pool.allocate(self.owner, profile.gpus) if profile.gpus else []
        except GpusBusy as e:
            raise SpawnException(str(e), reason="gpus-busy", status_code=503) from None
        try:
            for gpu in gpus:
                if account is not None:
                    grant_device(gpu, account.pw_uid, account.pw_gid)
                self.log.info("GPU %s allocated to %s", gpu.index, self.owner)
            with self._session_log() as log:
                self.popen_kwargs = {**self.popen_kwargs, "stdout": log, "stderr": log}
                return await super().start()
        except BaseException:
            self.clear_state()
            raise

    def _session_log(self):
        """The session's stdout and stderr go to a file the hub owns, not the hub's terminal."""
        if not self.log_dir:
            return open(os.devnull, "wb")
        os.makedirs(self.log_dir, mode=0o700, exist_ok=True)
        name = f"{self.user.name}{'-' + self.name if self.name else ''}.log"
        return open(os.path.join(self.log_dir, name), "ab")
