"""Spawners: how a Lab session starts on each backend.

`WorkbenchSpawner` holds what every backend shares (profiles, the spawn form, limits,
Unix accounts, quota checks and metering); each backend is one small class beside it:
`LocalSpawner` runs the Lab as a local process with exclusive GPUs from the node's pool,
`SlurmSpawner` runs it as a Slurm job (batchspawner) with GPUs through gres.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shlex
import signal
import sys
import time
from contextlib import contextmanager
from datetime import UTC
from pathlib import Path
from subprocess import Popen, SubprocessError

import batchspawner
from jupyterhub.spawner import LocalProcessSpawner, Spawner, SpawnException, set_user_setuid
from jupyterhub.utils import random_port
from sqlalchemy import inspect
from tornado import web
from traitlets import Bool, Float, Instance, Integer, List, Unicode, default

from shangzhuang.hub import N_, form, unix
from shangzhuang.hub.containment import (
    DashboardFirewall,
    SessionCgroup,
    SessionLimits,
    SystemdScope,
    gpu_denials,
    gpu_device_rule,
    session_cgroup,
    session_name,
)  # fmt: skip
from shangzhuang.hub.gpus import Gpu, GpuPool, GpusBusy, grant_device, revoke_device, shared_pool
from shangzhuang.i18n import Message
from shangzhuang.quota.api_client import QuotaAPI, QuotaRefused, QuotaUnavailable, hub_quota
from shangzhuang.quota.consumers import Consumer
from shangzhuang.settings import Profile, find_profile

# What the user reads when the session's cgroup was missing at its start.
UNCONTAINED = N_(
    "Your session could not be contained (its cgroup, which holds it to its profile's "
    "cores, memory and GPUs, was missing), so it was not started. Try again; if it "
    "happens again, tell the site's admins."
)

# What the home page says when a session hit its memory limit (plain sentences to translate).


def memory_notices(user) -> list[str]:
    """For the home page: what the signed-in user's sessions' memory limits did."""
    if user is None:
        return []
    return [n for sp in user.spawners.values() for n in getattr(sp, "memory_notices", list)()]


class WorkbenchSpawner(Spawner):
    """What every backend shares; a backend's class puts this before its JupyterHub spawner."""

    profiles = List(
        Instance(Profile),
        help="The profiles users choose from (from the site config's [[profiles]]).",
    ).tag(config=True)

    user_prefix = Unicode("sz-", help="Prefix of the Unix account made for each hub user.").tag(
        config=True
    )
    home_root = Unicode("/home", help="Folder that holds the users' home folders.").tag(config=True)
    tutorials = List(
        Unicode(),
        help="""Files copied into a user's home when the workbench creates it (a new Unix
        account, or a new home folder when not isolated), never again ([tutorials]).""",
    ).tag(config=True)
    tutorials_folder = Unicode(
        "tutorials", help="Folder of the new home the tutorials go to ('' = the home itself)."
    ).tag(config=True)

    gpu_pool: GpuPool | None = None  # a pool of this node's GPUs, where the hub hands them out

    @default("options_form")
    def _form(self):
        async def options_form(spawner):
            return form.render(await spawner.profile_choices())

        return options_form

    async def profile_choices(self) -> list[form.Choice]:
        """The form's choices; what the quota can't pay for is greyed out (when the quota
        service does not answer, nothing is: the spawn itself asks again)."""
        affordable = None
        if self.quota is not None:
            try:
                affordable = (await self.quota.affordable(self.user.name))["profiles"]
            except (QuotaUnavailable, QuotaRefused) as e:
                self.log.warning("spawn form of %s without quota: %s", self.user.name, e)
        return form.choices(self.profiles, self.gpu_pool, affordable)

    def options_from_form(self, formdata):
        return {"profile": formdata.get("profile", [""])[0]}

    # JupyterHub runs this on every spawn's options (the form's, or the JSON body of
    # POST /hub/api/users/NAME/server) and turns a web.HTTPError into the reply.
    @default("apply_user_options")
    def _only_the_profile(self):
        return lambda spawner, options: spawner.check_user_options(options)

    def check_user_options(self, options: dict) -> None:
        """A server takes one option, the profile's name: anything else is a 400 naming it
        (batchspawner would put it into the batch script)."""
        for key in options or {}:
            if key != "profile":
                raise web.HTTPError(
                    400, f"Unknown option {key!r}: a server takes only 'profile' (its name)."
                )
        name = (options or {}).get("profile")
        if name in (None, ""):
            return  # the site's first profile
        known = [p.name for p in self.profiles]
        if not isinstance(name, str) or name not in known:
            raise web.HTTPError(
                400, f"Unknown profile {name!r}; this site offers: {', '.join(known)}."
            )

    app_server_prefix = Unicode(
        "",
        help="""Named servers whose name starts with this run published apps
        (apps.server_prefix). None is renamed into or out of it: a renamed app server would
        take its viewers' shares to a Lab, and a Lab renamed into it would pass for an app.""",
    ).tag(config=True)

    async def rename(self, old_name: str, new_name: str) -> None:
        """JupyterHub 6 asks this before renaming a named server; an error refuses it."""
        prefix = self.app_server_prefix
        if prefix and (old_name.startswith(prefix) or new_name.startswith(prefix)):
            raise web.HTTPError(
                403,
                f"server {old_name!r} can't be renamed to {new_name!r}: names starting with "
                f"{prefix!r} are kept for published apps (apps.server_prefix); publish or "
                "unpublish the app instead",
            )

    @property
    def profile(self) -> Profile:
        """The profile asked for (the first one if none was), or a 400 naming the bad name."""
        name = (self.user_options or {}).get("profile")
        try:
            return find_profile(self.profiles, name)
        except KeyError:
            known = ", ".join(p.name for p in self.profiles)
            raise SpawnException(
                f"Unknown profile {name!r}; this site offers: {known}.", reason="bad-profile"
            ) from None

    quota_url = Unicode(
        "",
        help="""The quota service's URL (http://127.0.0.1:PORT/services/quota/); when set,
        spawns are checked against quota and metered, by asking it.""",
    ).tag(config=True)
    quota_token = Unicode(
        "", help="The hub's token for the quota service (api_client.HUB_CLIENT's)."
    ).tag(config=True)

    consumer = Unicode("", help="The ledger's id of the running session (kept in state).")
    # "app" for a published Voila app's server (set by shangzhuang.apps.spawn before start).
    usage_source = Unicode("lab", help="The ledger's source of this server: lab or app.")

    @property
    def quota(self) -> QuotaAPI | None:
        return hub_quota(self.quota_url, self.quota_token) if self.quota_url else None

    async def check_quota(self, profile: Profile) -> str:
        """Refuse a spawn the balance can't pay for (the quota service's rule and message);
        refuse it too when the quota service does not answer (fail closed). Returns the
        user's account ("" without quota)."""
        if self.quota is None:
            return ""
        try:
            account = await self.quota.set_account(self.user.name, self.group_names)
            reply = await self.quota.affordable(self.user.name)
            terms = reply["profiles"][profile.name]
        except (QuotaUnavailable, QuotaRefused, KeyError) as e:
            self.log.warning("spawn of %s refused, quota unknown: %s", self.user.name, e)
            self.note_refusal("quota-unavailable", profile)
            raise SpawnException(
                Message(
                    "The quota service is not answering, so no session can start now: "
                    "try again in a minute, or tell the site's admins if it lasts."
                ),
                reason="quota-unavailable",
                status_code=503,
            ) from None
        if not terms["affordable"]:
            self.note_refusal("quota", profile, terms["short"])
            # In the reader's language where it is shown (the spawn page, its progress).
            refusal = form.quota_refusal(profile, reply)
            raise SpawnException(refusal, reason="quota", status_code=403)
        return account

    def note_refusal(self, reason: str, profile: Profile, resources=()) -> None:
        """Count a refused start in the ledger (quota/refusals.py), without waiting."""
        if self.quota is not None:
            self.quota.refused(self.user.name, reason, profile.name, resources)

    @property
    def group_names(self) -> list[str]:
        return [g.name for g in getattr(self.user, "groups", [])]

    async def open_consumer(self, profile: Profile, consumer: Consumer | None = None,
                            started: float = 0) -> None:  # fmt: skip
        """Start metering this session (by default from the moment the hub started it)."""
        if self.quota is None:
            return
        if consumer is None:
            hub_started = self.orm_spawner.started if self.orm_spawner else None
            started = hub_started.replace(tzinfo=UTC).timestamp() if hub_started else time.time()
            consumer = Consumer.session(self.usage_source, self.user.name, self.name, started)
        self.consumer = str(consumer)
        await self.quota.open(consumer, self.user.name, profile.name, started)

    _closing: asyncio.Event | None = None  # set once the close was tried

    # When the hub began stopping the session (alive then), kept in the database before the
    # Lab is signalled: a hub killed mid-stop (its exact close never sent) leaves it for
    # the restarted hub, which finds the session dead and charges up to it.
    stop_began = Float(0.0)

    def close_consumer(self, stopped_now: bool) -> None:
        """Stopped by the hub: charge up to now. Found dead: up to where a stop the hub
        began before it died (stop_began), else to the meter's last mark."""
        if self.consumer and self.quota is not None:
            end = time.time() if stopped_now else (self.stop_began or None)
            self._closing = self.quota.close(Consumer.parse(self.consumer), end)
        self.consumer = ""
        self.stop_began = 0.0

    # --- state: the ledger's consumer survives a hub restart ---------------------------
    def load_state(self, state):
        super().load_state(state)
        self.consumer = state.get("consumer", "")
        self.stop_began = state.get("stop_began", 0.0)

    def get_state(self):
        state = super().get_state()
        if self.consumer:
            state["consumer"] = self.consumer
            if self.stop_began:
                state["stop_began"] = self.stop_began
        return state

    _stopping = False

    def clear_state(self):
        """The session stopped or was found dead: close its metering."""
        super().clear_state()
        self.close_consumer(stopped_now=self._stopping)

    def _save_state(self) -> None:
        """The state in the hub's database now, as JupyterHub saves it after a start (in
        the session its row belongs to: Spawner.db is deprecated)."""
        row = inspect(self.orm_spawner, raiseerr=False)  # None: not a database row
        db = row.session if row is not None else None
        if db is not None:
            self.orm_spawner.state = self.get_state()
            db.commit()

    # The backend's JupyterHub spawner (after this class in the MRO) starts and polls.
    async def start(self):
        return await super().start()

    async def poll(self):
        return await super().poll()

    async def stop(self, now=False):
        # Alive until we stop it: its end is exact. Already dead: the meter's mark stands.
        self._stopping = (await self.poll()) is None
        if self._stopping and self.consumer:
            self.stop_began = time.time()
            self._save_state()
        try:
            await super().stop(now=now)
        finally:
            self._stopping = False
        if self._closing is not None:  # the stop answers once its charge is in (or queued)
            await self._closing.wait()
            self._closing = None

    def apply_profile(self, profile: Profile) -> None:
        """Limits the session sees as MEM_LIMIT and CPU_LIMIT (read by jupyter-resource-usage)."""
        self.cpu_limit = float(profile.cores)
        self.mem_limit = profile.memory
        self.environment["SHANGZHUANG_PROFILE"] = profile.name

    # --- the user's Unix account --------------------------------------------------------
    @property
    def isolated(self) -> bool:
        return True

    @property
    def unix_name(self) -> str:
        return self.user_prefix + self.user.name if self.isolated else pwd.getpwuid(os.getuid())[0]

    @property
    def home(self) -> str:
        if self.isolated:
            return os.path.join(self.home_root, self.unix_name)
        # Not isolated: one folder per user under the hub account's home.
        return str(Path.home() / "shangzhuang-homes" / self.user.name)

    async def unix_account(self) -> pwd.struct_passwd:
        """The user's Unix account, made on first use; refused for system accounts."""
        try:
            return await unix.ensure_account(
                self.unix_name, self.home, self.user.name, on_create=self.copy_tutorials
            )
        except unix.AccountError as e:
            raise SpawnException(str(e), reason="account", status_code=403) from None

    def copy_tutorials(self, account: pwd.struct_passwd | None = None) -> None:
        """Give a new home the site's tutorials, in the user's language where the site has
        them translated; a failure is logged, never fatal."""
        if not self.tutorials:
            return
        uid, gid = (account.pw_uid, account.pw_gid) if account else (-1, -1)
        files = tutorials_in(self.tutorials, self.session_language())
        try:
            copies = unix.copy_into_home(files, self.home, self.tutorials_folder, uid, gid)
            self.log.info("%d tutorial(s) copied into %s's new home", len(copies), self.user.name)
        except OSError as e:
            self.log.warning("tutorials not copied into %s's new home: %s", self.user.name, e)

    def session_language(self) -> str:
        """The session's language, zh_CN or en: SHANGZHUANG_LANGUAGE of `environment`, which
        the hub's config sets (a callable of the spawner: hub/language.py)."""
        language = self.environment.get("SHANGZHUANG_LANGUAGE", "en")
        return language(self) if callable(language) else language

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
        return env


# Where a tutorial's translation lives: beside it, in a folder named for the language.
TUTORIAL_TRANSLATIONS = {"zh_CN": "zh-CN"}


def tutorials_in(files: list[str], language: str) -> list[str]:
    """Each tutorial's translation into `language` (FOLDER/zh-CN/NAME beside FOLDER/NAME)
    where there is one, else the file itself (shapes.py, a site's untranslated notebook)."""
    folder = TUTORIAL_TRANSLATIONS.get(language)
    if folder is None:
        return list(files)
    translated = [Path(f).parent / folder / Path(f).name for f in files]
    return [str(t) if t.is_file() else f for f, t in zip(files, translated, strict=True)]


class LocalSpawner(WorkbenchSpawner, LocalProcessSpawner):
    """The `local` backend: a Lab process on this machine, as the user's Unix account."""

    gpus = List(
        Instance(Gpu),
        help="The node's GPUs (from the config, or found with NVML); each goes to one session.",
    ).tag(config=True)

    @property
    def gpu_pool(self) -> GpuPool:
        # Config values are copied into each spawner: the pool itself is the hub's one.
        return shared_pool(self.gpus)

    isolate = Bool(
        help="""Run each user's Lab as their own Unix account (needs the hub to run as root).

        Off: every session runs as the hub's account and users are not isolated.""",
    ).tag(config=True)

    @default("isolate")
    def _root(self):
        return os.geteuid() == 0

    log_dir = Unicode("", help="Folder for the sessions' logs (one file per server).").tag(
        config=True
    )

    cgroups = Unicode(
        "",
        help="""How sessions are contained: "v1" or "v2" (the cgroup file system), or ""
        for not at all (a hub that is not root). From backend.local.containment.""",
    ).tag(config=True)
    cgroup_parent = Unicode(
        "shangzhuang/hub", help="This hub's cgroup folder; each session gets one below it."
    ).tag(config=True)
    pids_limit = Integer(4096, help="Processes and threads a session may have.").tag(config=True)
    dashboard_chain = Unicode(
        "",
        help="""This hub's iptables chain keeping each session's Dask dashboard ports to its
        own account (containment.DashboardFirewall), or "" when dashboards are not protected
        (no iptables, or a hub that is not root).""",
    ).tag(config=True)

    cgroup: SessionCgroup | None = None  # the running session's cgroup (kept in state)
    oom_kills_seen = 0  # processes of this session the kernel killed for memory, logged
    memory_notice = ""  # why the last session stopped, when it was its memory (home page)
    dashboard_ports: range | None = None  # the session's dashboard ports (kept in state)
    dashboard_uid = 0  # the one account they are open to

    @property
    def firewall(self) -> DashboardFirewall:
        return DashboardFirewall(self.dashboard_chain)

    @property
    def isolated(self) -> bool:
        return self.isolate

    @property
    def owner(self) -> str:
        """The pool's name for this session."""
        return f"{self.user.name}/{self.name}"

    # --- state: the GPUs this session holds survive a hub restart -------------------
    def load_state(self, state):
        super().load_state(state)
        if state.get("gpus"):
            kept = self.gpu_pool.restore(self.owner, state["gpus"])
            # The hub locked every pool GPU at start: give the kept ones back to their holder.
            account = self._account_if_exists()
            for gpu in kept if account else []:
                grant_device(gpu, account.pw_uid, account.pw_gid)
        if state.get("cgroup"):
            self.cgroup = session_cgroup(state["cgroup"]["kind"], state["cgroup"]["path"])
            self.oom_kills_seen = state["cgroup"].get("oom_kills", 0)
        if state.get("dashboards"):
            start, stop, self.dashboard_uid = state["dashboards"]
            self.dashboard_ports = range(start, stop)
            if self.dashboard_chain:  # again, in case a reboot emptied iptables
                self.firewall.keep(self.dashboard_ports, self.dashboard_uid)

    def get_state(self):
        state = super().get_state()
        held = [g.index for g in self.gpu_pool.held_by(self.owner)]
        if held:
            state["gpus"] = held
        if self.cgroup is not None:
            state["cgroup"] = {
                "kind": self.cgroup.kind, "path": self.cgroup.path,
                "oom_kills": self.oom_kills_seen,
            }  # fmt: skip
        if self.dashboard_ports is not None:
            ports = self.dashboard_ports
            state["dashboards"] = [ports.start, ports.stop, self.dashboard_uid]
        return state

    def clear_state(self):
        """Called when the session stops or is found dead: everything still running in its
        cgroup is killed (detached processes too), and its GPUs go back to the pool."""
        super().clear_state()
        if self.cgroup is not None:
            self._note_oom_kills(stopped=True)
            cgroup, self.cgroup = self.cgroup, None
            try:  # the hub calls this on its loop: kill and remove off it (remove kills first)
                loop = asyncio.get_running_loop()
                removal = loop.create_task(self._remove_cgroup(cgroup))
                self._removals.add(removal)
                self._removing[cgroup.path] = removal
            except RuntimeError:
                cgroup.kill()  # no loop (a script): killed; stop() or the next start removes it
        if self.dashboard_ports is not None and self.dashboard_chain:
            # iptables (and the ports lock other hubs share) off the hub's event loop
            release = (self.firewall.release, self.dashboard_ports, self.dashboard_uid)
            try:
                loop = asyncio.get_running_loop()
                self._removals.add(loop.create_task(self._off_the_loop(*release)))
            except RuntimeError:
                release[0](*release[1:])  # no loop (a script)
        self.dashboard_ports = None
        for gpu in self.gpu_pool.release(self.owner):
            revoke_device(gpu)
            self.log.info("GPU %s released by %s", gpu.index, self.owner)

    def _account_if_exists(self) -> pwd.struct_passwd | None:
        try:
            return pwd.getpwnam(self.unix_name) if self.isolated else None
        except KeyError:
            return None

    # --- containment ------------------------------------------------------------------
    def session_limits(self, profile: Profile) -> SessionLimits:
        held = [gpu_device_rule(g.device) for g in self.gpu_pool.held_by(self.owner)]
        pool = [gpu_device_rule(g.device) for g in self.gpu_pool.gpus]
        return SessionLimits(
            cores=profile.cores, memory=profile.memory, pids=self.pids_limit,
            denied_devices=gpu_denials(pool, held),
            gpu_files=tuple(str(g.device) for g in self.gpu_pool.held_by(self.owner) if g.device),
        )  # fmt: skip

    async def _contain(self, profile: Profile) -> None:
        """Make the session's cgroup (an earlier run's leftovers in it are killed first)."""
        cgroup = session_cgroup(
            self.cgroups, f"{self.cgroup_parent}/{session_name(self.user.name, self.name)}"
        )
        # The last session's cgroup (the same path) may still be going, off the loop: its
        # rmdir, later, would take this session's folders, which then starts uncontained.
        if (removal := self._removing.get(cgroup.path)) is not None:
            await asyncio.wait([removal])
        if cgroup.exists():
            await cgroup.remove()
        # Off the loop: the parents' weights and the least used CPUs read every sibling's
        # files (1% of the hub's busy loop while 30 users arrived, bench/load.py).
        left_out = await asyncio.to_thread(cgroup.create, self.session_limits(profile))
        if left_out:
            self.log.warning("%s: not enforced here: %s", self.owner, "; ".join(left_out))
        self.cgroup, self.oom_kills_seen, self.memory_notice = cgroup, 0, ""

    _removals: set = set()  # cgroup and port releases under way (kept referenced until done)
    _removing: dict = {}  # cgroup path -> its removal under way (a new start waits for it)

    async def _remove_cgroup(self, cgroup: SessionCgroup) -> None:
        try:
            await cgroup.remove()
        finally:
            self._removals.discard(asyncio.current_task())
            if self._removing.get(cgroup.path) is asyncio.current_task():
                del self._removing[cgroup.path]

    async def _off_the_loop(self, fn, *args) -> None:
        try:
            await asyncio.to_thread(fn, *args)
        finally:
            self._removals.discard(asyncio.current_task())

    def _note_oom_kills(self, stopped: bool = False) -> None:
        """Log processes the kernel killed for the memory limit; tell the user on stopping."""
        cgroup = self.cgroup
        kills = cgroup.oom_kills() if cgroup is not None else 0
        if kills > self.oom_kills_seen:
            self.log.warning(
                "%s used more than its memory (%s): the kernel stopped %d process(es) in it",
                self.owner, form.memory(self.mem_limit or 0), kills - self.oom_kills_seen,
            )  # fmt: skip
            self.oom_kills_seen = kills
        if stopped and kills:
            self.memory_notice = Message(
                "Your last {session} session was stopped because it used more than its "
                "memory ({memory}).",
                session=self.name or "Lab", memory=form.memory(self.mem_limit or 0),
            )  # fmt: skip

    def memory_notices(self) -> list[str]:
        """What the home page tells the user about this server's memory limit."""
        self._note_oom_kills()
        if self.cgroup is not None and self.oom_kills_seen:
            return [
                Message(
                    "Your {session} session used more than its memory ({memory}): the system "
                    "stopped a process in it, which a notebook shows as a kernel that died.",
                    session=self.name or "Lab", memory=form.memory(self.mem_limit or 0),
                )  # fmt: skip
            ]
        return [self.memory_notice] if self.memory_notice else []

    # --- start ------------------------------------------------------------------------
    def make_preexec_fn(self, name):
        if self.isolate and not isinstance(self.cgroup, SystemdScope):
            become_user = set_user_setuid(self.unix_name)
        else:
            home = self.home

            def become_user():
                os.chdir(home)

        cgroup = self.cgroup

        def preexec():
            if cgroup is not None:  # before exec, as root: everything it starts is inside
                cgroup.join()
            become_user()

        return preexec

    def get_env(self):
        env = super().get_env()
        gpus = self.gpu_pool.held_by(self.owner)
        # Empty hides every GPU from CUDA: a CPU profile must not touch a GPU by accident.
        env["CUDA_VISIBLE_DEVICES"] = ",".join(g.cuda_id for g in gpus)
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        env["SHANGZHUANG_GPUS"] = ",".join(str(g.index) for g in gpus)
        if self.dashboard_ports is not None:  # shangzhuang.cluster serves dashboards there
            ports = self.dashboard_ports
            env["SHANGZHUANG_DASHBOARD_PORTS"] = f"{ports.start}-{ports.stop - 1}"
        return env

    async def start(self):
        profile = self.profile
        self.apply_profile(profile)
        await self.check_quota(profile)
        if self.isolated:
            account = await self.unix_account()
        else:
            new_home = not os.path.exists(self.home)
            os.makedirs(self.home, mode=0o700, exist_ok=True)
            if new_home:
                self.copy_tutorials()
            account = None
        try:
            gpus = self.gpu_pool.allocate(self.owner, profile.gpus) if profile.gpus else []
        except GpusBusy as e:
            self.note_refusal("gpus-busy", profile)
            # e.message is a shangzhuang.i18n.Message: shown in each reader's language.
            raise SpawnException(e.message, reason="gpus-busy", status_code=503) from None
        try:
            await self.open_consumer(profile)
            for gpu in gpus:
                if account is not None:
                    grant_device(gpu, account.pw_uid, account.pw_gid)
                self.log.info("GPU %s allocated to %s", gpu.index, self.owner)
            if self.isolated and self.cgroups:
                await self._contain(profile)
            if account is not None and self.dashboard_chain:
                self.dashboard_ports = await asyncio.to_thread(
                    self.firewall.reserve, account.pw_uid
                )
                self.dashboard_uid = account.pw_uid
            with self._session_log() as log, self._in_scope(account):
                self.popen_kwargs = {**self.popen_kwargs, "stdout": log, "stderr": log}
                ip, port = await self._start_process()
            await self._listening(ip, port)
            return ip, port
        except BaseException:
            # A start cancelled by Spawner.start_timeout (fifty people arriving at once on
            # two cores) may leave its Lab running: kill it now, while its pid is known.
            # clear_state() sets the pid to 0, and JupyterHub 6.1.1 then stops a server
            # still running with os.kill(0, SIGINT): the hub's own process group, which
            # shut the hub down (bench/load.py, 50 users).
            if self.proc is not None and self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own session (start_new_session)
                await asyncio.to_thread(self.proc.wait)
            self.clear_state()
            raise

    async def _start_process(self) -> tuple[str, int]:
        """JupyterHub 6.1.1's LocalProcessSpawner.start, with its Popen off the event loop.

        Popen returns once the child has exec'd, and before that the child joins the
        session's cgroup (a write to cgroup.procs in each v1 hierarchy, each waiting for
        the kernel) and waits for a CPU among the Labs starting beside it: the hub's loop
        stood still 0.2 s per start, up to 2.7 s, while 30 users arrived (bench/load.py).
        Kept while LocalProcessSpawner.start calls Popen on the loop."""
        if self.port == 0:
            self.port = random_port()
        cmd = [*self.cmd, *self.get_args()]
        if self.shell_cmd:
            cmd = [*self.shell_cmd, " ".join(shlex.quote(s) for s in cmd)]
        self.log.info("Spawning %s", " ".join(shlex.quote(s) for s in cmd))
        kwargs = {
            "preexec_fn": self.make_preexec_fn(self.user.name),
            "start_new_session": True,  # don't forward signals
            **self.popen_kwargs,
            "env": self.get_env(),  # user config does not override the environment
        }
        launch = asyncio.ensure_future(asyncio.to_thread(Popen, cmd, **kwargs))
        try:
            self.proc = await asyncio.shield(launch)
        except asyncio.CancelledError:  # start_timeout: the child is known, start() kills it
            self.proc = await launch
            raise
        except SubprocessError:  # the preexec step failed: the join refused, most likely
            self._refuse_uncontained()
            raise
        finally:
            self.pid = self.proc.pid if self.proc is not None else 0
        return (self.ip or "127.0.0.1", self.port)

    def _refuse_uncontained(self) -> None:
        """The child refused to run: if its cgroup's folders are missing (the join's
        CgroupMissing, which a preexec step can't hand to the parent), say so."""
        cgroup = self.cgroup
        missing = [f for f in cgroup.folders() if not f.is_dir()] if cgroup else []
        if cgroup is None or (cgroup.folders() and not missing):
            return
        self.log.error(
            "%s not started: its cgroup folder %s is missing (removed or renamed since it "
            "was made); it would have run without its limits",
            self.owner, ", ".join(map(str, missing)) or cgroup.path,
        )  # fmt: skip
        raise SpawnException(Message(UNCONTAINED), reason="uncontained", status_code=500)

    @contextmanager
    def _in_scope(self, account: pwd.struct_passwd | None):
        """With a systemd scope, the session's command starts with `systemd-run --scope`
        (which becomes the user: the preexec function stays root for it)."""
        if not isinstance(self.cgroup, SystemdScope) or account is None:
            yield
            return
        cmd = self.cmd
        self.cmd = [*self.cgroup.command(account.pw_uid, account.pw_gid), *cmd]
        try:
            yield
        finally:
            self.cmd = cmd

    async def poll(self):
        # After a hub restart only the pid is known: a pid no longer in the session's
        # cgroup belongs to someone else now, so the session is gone.
        if self.proc is None and self.pid and self.cgroup is not None:
            if self.cgroup.exists() and self.pid not in self.cgroup.pids():
                self.clear_state()
                return 0
        status = await super().poll()
        if status is None:
            self._note_oom_kills()
        return status

    async def stop(self, now=False):
        """Stop the Lab, then kill whatever else runs in its cgroup and remove it."""
        cgroup = self.cgroup
        await super().stop(now=now)
        if cgroup is not None:
            if self.cgroup is cgroup:  # still alive after the Lab's stop: clear it here
                self.clear_state()
            await cgroup.remove()

    async def _listening(self, ip: str, port: int) -> None:
        """Return once the Lab accepts connections (or its process has ended).

        JupyterHub then finds it up at its first look; left to JupyterHub's own readiness
        poll (exponential backoff with jitter), a Lab that needs 2.5 s to start is found
        up to 2 s later than it was."""
        tries = 0
        while self.proc is not None and self.proc.poll() is None:
            try:
                _, writer = await asyncio.open_connection(ip, port)
            except OSError:
                # From 20 tries a second down to 5: at 50 Labs starting at once, 20 a second
                # each kept the hub's loop busy (py-spy in bench/load.py).
                await asyncio.sleep(min(0.2, 0.05 * 1.25**tries))
                tries += 1
                continue
            writer.close()
            return

    def _session_log(self):
        """The session's stdout and stderr go to a file the hub owns, not the hub's terminal."""
        if not self.log_dir:
            return open(os.devnull, "wb")
        os.makedirs(self.log_dir, mode=0o700, exist_ok=True)
        name = f"{self.user.name}{'-' + self.name if self.name else ''}.log"
        return open(os.path.join(self.log_dir, name), "ab")


# --comment is how the site's dashboard Prolog knows a Lab job (containment.LAB_JOB_COMMENT).
SLURM_SCRIPT = """#!/bin/bash
#SBATCH --job-name=shangzhuang-lab
#SBATCH --comment=shangzhuang-lab
#SBATCH --output={{homedir}}/.shangzhuang/slurm-lab-%j.log
#SBATCH --chdir={{homedir}}
#SBATCH --export={{keepvars}}
#SBATCH --cpus-per-task={{nprocs}}
#SBATCH --mem={{memory}}
#SBATCH --time={{runtime}}
{% if partition %}#SBATCH --partition={{partition}}
{% endif %}{% if account %}#SBATCH --account={{account}}
{% endif %}{% if ngpus %}#SBATCH --gres=gpu:{{ngpus}}
{% endif %}
set -euo pipefail
{{cmd}}
"""


class SlurmSpawner(WorkbenchSpawner, batchspawner.SlurmSpawner):
    """The `slurm` backend: the Lab as a Slurm batch job under the user's Unix account.

    batchspawner 1.3.0 does the submitting and polling; we submit as root with
    `--uid/--gid` (no sudo on the nodes), name the job's node by Slurm's NodeAddr, say why
    a job waits, and charge the job from when it starts running.
    """

    # batchspawner starts from this class default; the hub connects to NodeAddr.
    ip = Unicode("0.0.0.0")
    batch_script = Unicode(SLURM_SCRIPT).tag(config=True)
    exec_prefix = Unicode("").tag(config=True)
    batch_submit_cmd = Unicode("sbatch --parsable --uid={username} --gid={gid}").tag(config=True)
    batch_query_cmd = Unicode("squeue -h -j {job_id} -o '%T %r %B'").tag(config=True)
    req_gid = Unicode("")
    slurm_conf = Unicode("", help="SLURM_CONF for sbatch, squeue, scancel and sessions.").tag(
        config=True
    )
    default_partition = Unicode("", help="Partition for profiles that name none.").tag(
        config=True
    )
    default_walltime = Unicode("08:00:00", help="Wall time for profiles that name none.").tag(
        config=True
    )

    @default("req_username")
    def _unix_name(self):
        return self.unix_name

    @default("req_homedir")
    def _home(self):
        return self.home

    def get_env(self):
        env = super().get_env()
        if self.slurm_conf:
            env["SLURM_CONF"] = self.slurm_conf
        return env

    async def start(self):
        profile = self.profile
        self.apply_profile(profile)
        quota_account = await self.check_quota(profile)
        account = await self.unix_account()
        await self._make_log_folder()
        self.req_gid = str(account.pw_gid)
        self.req_partition = profile.partition or self.default_partition
        self.req_runtime = profile.walltime or self.default_walltime
        self.req_nprocs = str(max(1, int(profile.cores)))
        self.req_memory = f"{profile.memory // 1024**2}M"
        self.req_ngpus = str(profile.gpus) if profile.gpus else ""
        self.req_account = quota_account
        if self.req_account:  # the session's Dask workers are charged to it too
            self.environment["DASK_JOBQUEUE__SLURM__ACCOUNT"] = self.req_account
        try:
            ip, port = await super().start()
        except RuntimeError as e:
            self.note_refusal("slurm", profile)
            # sbatch's own words ("Invalid partition", "Unable to contact slurm controller")
            raise SpawnException(
                f"Slurm refused the session: {e}", reason="slurm", status_code=503
            ) from None
        await self.open_consumer(profile, Consumer.job(self.job_id), time.time())
        return ip, port

    async def _make_log_folder(self) -> None:
        """~/.shangzhuang (the job's --output goes there), made by the user, not by root:
        root following a link the user put there would hand them any folder (#13)."""
        folder = os.path.join(self.home, ".shangzhuang")
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", 'test ! -L "$1" && mkdir -p -m 0700 "$1" && test -d "$1"',
            "sh", folder, stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            preexec_fn=set_user_setuid(self.unix_name),
        )  # fmt: skip
        if await proc.wait() != 0:
            raise SpawnException(
                f"{folder} must be a folder of yours (not a link) for the session's log; "
                "remove or rename it, then start again.",
                reason="home",
                status_code=409,
            )

    async def _get_batch_script(self, **subvars):
        """The batch script from the site's settings and the profile only. batchspawner
        1.3.0 merges `user_options` into these variables: only req_* and the command pass,
        and none may break a line of the script."""
        script_vars = {**self.get_req_subvars(), "cmd": subvars["cmd"]}
        if not os.path.isabs(script_vars["homedir"]):  # --output and --chdir hang off it
            raise SpawnException(f"The user's home {script_vars['homedir']!r} is not absolute.")
        for key, value in script_vars.items():
            if key != "cmd" and ("\n" in str(value) or "\r" in str(value)):
                raise SpawnException(f"The batch script's {key} holds a line break.")
        return batchspawner.format_template(self.batch_script, **script_vars)

    async def query_job_status(self):
        """batchspawner's status query; once the job runs, its node's address is looked up
        here, asynchronously (state_gethost, which batchspawner calls, must not block)."""
        status = await super().query_job_status()
        if self.state_isrunning():
            node = super().state_gethost()
            if node and node not in self._node_addrs:
                self._node_addrs[node] = await self._node_addr(node)
        return status

    _node_addrs: dict[str, str] = {}  # node name -> NodeAddr, shared: nodes keep addresses

    async def _node_addr(self, node: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            "scontrol", "show", "node", "-o", node, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL, env={**os.environ, **self._slurm_env()},
        )  # fmt: skip
        out, _ = await proc.communicate()
        for field in out.decode(errors="replace").split():
            if field.startswith("NodeAddr="):
                return field.split("=", 1)[1]
        return node

    def state_gethost(self):
        """The job's node as the hub can reach it: Slurm's NodeAddr for that node (looked
        up by query_job_status)."""
        node = super().state_gethost()
        return self._node_addrs.get(node, node)

    def _slurm_env(self) -> dict:
        return {"SLURM_CONF": self.slurm_conf} if self.slurm_conf else {}

    async def progress(self):
        """While the job waits, say why (Slurm's reason) and where it is in the queue."""
        while True:
            status = self.job_status or ""
            if self.state_isrunning():
                # str(): in the language of whoever reads the spawn page's progress
                yield {"message": str(Message("The Slurm job is running; starting JupyterLab..."))}
                return
            if self.state_ispending():
                reason = status.split()[1] if len(status.split()) > 1 else "Priority"
                ahead, total = await self._queue_position()
                why = REASONS.get(reason, reason)
                waiting = (
                    Message("Waiting in the Slurm queue: {why}, {n} job(s) ahead of it.",
                            why=why, n=ahead)
                    if total
                    else Message("Waiting in the Slurm queue: {why}.", why=why)
                )  # fmt: skip
                yield {"message": str(waiting)}
            elif self.job_id:
                submitted = Message("Slurm job {job} submitted...", job=self.job_id)
                yield {"message": str(submitted)}
            await asyncio.sleep(1)

    async def _queue_position(self) -> tuple[int, int]:
        """How many pending jobs of the partition come before this one, and how many wait."""
        cmd = ["squeue", "-h", "-t", "PENDING", "-o", "%i", "--sort=-p,i"]
        if self.req_partition:
            cmd += ["-p", self.req_partition]
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            env={**os.environ, **self._slurm_env()},
        )  # fmt: skip
        out, _ = await proc.communicate()
        ids = out.decode().split()
        return (ids.index(self.job_id), len(ids)) if self.job_id in ids else (0, len(ids))


# Slurm's pending reasons, as a person would say them.
REASONS = {
    "Resources": Message("the nodes are busy (waiting for cores, memory or GPUs to free up)"),
    "Priority": Message("jobs with higher priority are ahead of it"),
    "ReqNodeNotAvail": Message("the nodes it needs are not available"),
    "PartitionDown": Message("its partition is down"),
    "AssocGrpGRES": Message("its account's GPU limit is reached"),
    "QOSMaxGRESPerUser": Message("your GPU limit is reached"),
}
