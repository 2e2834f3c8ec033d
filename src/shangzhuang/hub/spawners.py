"""Spawners: how a Lab session starts on each backend.

`WorkbenchSpawner` holds what every backend shares (profiles, the spawn form, limits);
each backend is one small class beside it. `LocalSpawner` runs the Lab as a local
process, as the user's own Unix account when the hub is root, with exclusive GPUs.
"""

from __future__ import annotations

import os
import pwd
import sys
import time
from datetime import UTC
from functools import cache
from pathlib import Path

from jupyterhub.spawner import LocalProcessSpawner, SpawnException, set_user_setuid
from traitlets import Bool, Instance, List, Unicode, default

from shangzhuang.hub import form, unix
from shangzhuang.hub.gpus import Gpu, GpuPool, GpusBusy, grant_device, revoke_device, shared_pool
from shangzhuang.quota.ledger import rates_of
from shangzhuang.quota.meter import lab_consumer
from shangzhuang.settings import Profile, load_settings


@cache
def site_ledger(path: str):
    """The quota ledger of the hub process (one per site config)."""
    from shangzhuang.quota import open_ledger

    return open_ledger(load_settings(path))


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
        return lambda spawner: form.render(spawner.profile_choices())

    def profile_choices(self) -> list[form.Choice]:
        ledger = self.ledger
        if ledger is None:
            return form.choices(self.profiles, self.gpu_pool)
        balance = ledger.balance(self.user.name)
        hours = ledger.policy.min_minutes_to_spawn / 60
        return form.choices(self.profiles, self.gpu_pool, balance, hours)

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

    site_config = Unicode(
        "",
        help="The site config file; when set, spawns are metered and checked against quota.",
    ).tag(config=True)

    consumer = Unicode("", help="The ledger's id of the running session (kept in state).")

    @property
    def ledger(self):
        return site_ledger(self.site_config) if self.site_config else None

    def check_quota(self, profile: Profile) -> None:
        """Refuse a spawn the balance can't pay for `min_minutes_to_spawn`, saying why."""
        ledger = self.ledger
        if ledger is None:
            return
        minutes = ledger.policy.min_minutes_to_spawn
        ledger.set_account(self.user.name, ledger.account_for(self.user.name, self.group_names))
        balance = ledger.balance(self.user.name)
        rates = rates_of(profile)
        short = balance.can_afford(rates, minutes / 60)
        if not short:
            return
        left = ", ".join(f"{balance.remaining(r):.2f} {r}" for r in short)
        cost = " + ".join(f"{v:g} {r}" for r, v in rates.items() if v)
        resets = balance.as_dict()["period"]["resets_at"]
        when = (
            f"Your quota resets at {resets} ({ledger.tz})" if resets else "This site has no reset"
        )
        raise SpawnException(
            f"Not enough quota to start {profile.name}: {left} left in account "
            f"{balance.account}. {profile.name} costs {cost} per hour and needs at least "
            f"{minutes:g} minutes. {when}; an admin can grant more.",
            reason="quota",
            status_code=403,
        )

    @property
    def group_names(self) -> list[str]:
        return [g.name for g in getattr(self.user, "groups", [])]

    def open_consumer(self, profile: Profile) -> None:
        """Start metering this session from the moment the hub started it."""
        if self.ledger is None:
            return
        started = self.orm_spawner.started if self.orm_spawner else None
        t = started.replace(tzinfo=UTC).timestamp() if started else time.time()
        self.consumer = lab_consumer(self.user.name, self.name, t)
        self.ledger.open(
            self.consumer, user=self.user.name, account=self.ledger.account_of(self.user.name),
            source="lab", started=t, rates=rates_of(profile), profile=profile.name,
        )  # fmt: skip

    def close_consumer(self, stopped_now: bool) -> None:
        """Stopped by the hub: charge up to now. Found dead: up to the meter's last mark."""
        if self.consumer and self.ledger is not None:
            self.ledger.close(self.consumer, time.time() if stopped_now else None)
        self.consumer = ""

    # --- state: the ledger's consumer survives a hub restart ---------------------------
    def load_state(self, state):
        super().load_state(state)
        self.consumer = state.get("consumer", "")

    def get_state(self):
        state = super().get_state()
        if self.consumer:
            state["consumer"] = self.consumer
        return state

    _stopping = False

    def clear_state(self):
        """The session stopped or was found dead: close its metering."""
        super().clear_state()
        self.close_consumer(stopped_now=self._stopping)

    async def stop(self, now=False):
        # Alive until we stop it: its end is exact. Already dead: the meter's mark stands.
        self._stopping = bool(self.pid) and (await self.poll()) is None
        try:
            await super().stop(now=now)
        finally:
            self._stopping = False

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
    home_root = Unicode("/home", help="Folder that holds the users' home folders.").tag(config=True)
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
        env["PATH"] = os.pathsep.join(
            [os.path.join(sys.prefix, "bin"), "/usr/local/bin", "/usr/bin", "/bin"]
        )
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
        self.check_quota(profile)
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
            self.open_consumer(profile)
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
