"""The `Sandbox`: N namespace hosts with their own sshd on this machine, brought up and taken down from state.

    sb = Sandbox.up("default", nodes=16)          # root only; ~1-3 s for 16 hosts
    sb.hosts, sb.ip("node3"), sb.ssh_config       # ['node1', ...], '10.80.0.3', Path(.../ssh/config)
    sb.exec("node3", ["hostname"]).stdout         # 'node3\\n'  (nsenter into the host, no ssh)
    sb.start_daemon("node3", ["slurmd", "-D"], name="slurmd")   # recorded, stopped by PID on down
    sb.link_down("node3"); sb.link_up("node3")    # fault injection: cable pulled / plugged back
    sb.lose("node3")                               # the whole node gone: link down, its processes killed
    sb.private_dir("node3", "/var/lib/docker")    # a plain per-host dir there (not the overlay)
    Sandbox.load("default").down()                # removes exactly what up created

A host is: a network namespace on bridge `orchbr-<short>`, a UTS namespace (hostname), a mount namespace with
copy-on-write overlays over /etc /opt /usr /var, a private /root, /run and /dev/shm, and everything else of the
head's filesystem shared (like an NFS home). Paths under /root that must stay visible (the active venv, this
checkout, `shares=`) are bind-mounted at the same path.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orchestrator
from orchestrator.errors import ConfigError, RemoteError
from orchestrator.procstat import process_start
from orchestrator.sandbox import netns
from orchestrator.sandbox.plan import (OVERLAY_DIRS, plan_sandbox, render_etc_hosts, render_nsswitch,
                                       validate_name)
from orchestrator.sandbox.sshd import read_pidfile, ssh_paths, wait_for_sshd, write_ssh_files
from orchestrator.sandbox.state import (DaemonState, HostState, SandboxState, global_lock, list_sandboxes,
                                        state_dir)

log = logging.getLogger("orchestrator.sandbox")

HIDDEN_ON_HOSTS = ("/root", *OVERLAY_DIRS)


def default_shares(extra: Iterable[str] = ()) -> list[str]:
    """Paths bind-mounted into every host: `extra`, plus the interpreter/venv/checkout when the hosts would not
    see them (under the private /root or a copy-on-write overlay)."""
    auto = {sys.prefix, sys.base_prefix, str(Path(orchestrator.__file__).resolve().parents[1])}
    wanted = [os.path.realpath(p) for p in auto if _is_under(os.path.realpath(p), ("/root",))]
    for p in extra:
        real = os.path.realpath(p)
        if not os.path.exists(real):
            raise ConfigError("--share", p, "name an existing file or directory")
        wanted.append(real)
    wanted = sorted(set(wanted))
    return [p for p in wanted if not any(p != q and _is_under(p, (q,)) for q in wanted)]  # outermost only


def _is_under(path: str, roots: Iterable[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM/SIGHUP during `up` raise KeyboardInterrupt, so the half-built sandbox is rolled back, not leaked."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


class Sandbox:
    """A running sandbox, backed by its state file. Build one with `Sandbox.up(...)` or `Sandbox.load(name)`."""

    _children: list[subprocess.Popen] = []  # foreground daemons started by this process, reaped on stop

    def __init__(self, state: SandboxState):
        self.state = state
        self.timings: dict[str, float] = {}

    # ---- life cycle -------------------------------------------------------------------------------------
    @classmethod
    def up(cls, name: str = "default", *, nodes: int = 4, prefix: str = "node", shares: Iterable[str] = (),
           progress: Callable[[str], None] | None = None, ready_timeout: float | None = None) -> Sandbox:
        validate_name(name)
        netns.check_host_tools()
        with _terminate_as_interrupt():
            return cls._up(name, nodes=nodes, prefix=prefix, shares=shares, progress=progress, ready_timeout=ready_timeout)

    @classmethod
    def _up(cls, name, *, nodes, prefix, shares, progress, ready_timeout) -> Sandbox:
        say = progress or (lambda msg: log.info("%s", msg))
        t0 = time.monotonic()
        sdir = state_dir(name)
        with global_lock():
            if (sdir / "state.json").exists():
                old = SandboxState.load(sdir)
                raise ConfigError("--name", name, f"sandbox already exists (status {old.status}, {len(old.hosts)} hosts);"
                                  f" run `orchestrator sandbox down --name {name}` first")
            taken = netns.used_subnets() | {cls._peek_subnet(other) for other in list_sandboxes()}
            plan = plan_sandbox(name, nodes=nodes, prefix=prefix, taken_subnets=taken - {""})
            conflicts = netns.existing_conflicts(plan)
            if conflicts:
                raise ConfigError("--name", name, f"{', '.join(conflicts[:4])}{' ...' if len(conflicts) > 4 else ''}"
                                  " already exist and are not this sandbox's; pick another --name")
            if sdir.exists():  # leftover of a crashed run without state: safe to clear only if nothing is mounted there
                if netns.mounts_under(sdir):
                    raise ConfigError("--name", name, f"{sdir} still has mounts; unmount them or pick another --name")
                shutil.rmtree(sdir)
            sdir.mkdir(parents=True)
            hosts = [HostState(name=h.name, ip=h.ip, netns=h.netns, veth=h.veth, dir=str(sdir / "hosts" / h.name),
                               uts_ns=str(sdir / "ns" / f"{h.name}.uts"), mnt_ns=str(sdir / "ns" / f"{h.name}.mnt"))
                     for h in plan.hosts]
            state = SandboxState(name=name, dir=str(sdir), prefix=prefix, bridge=plan.bridge, subnet=plan.subnet,
                                 head_ip=plan.head_ip, hosts=hosts, shares=default_shares(shares), owner_pid=os.getpid())
            state.save()
            sb = cls(state)
            try:
                say(f"network: bridge {plan.bridge}, {plan.subnet}, {nodes} namespaces")
                netns.make_private_mount(state.ns_dir)
                netns.create_network(plan)
            except BaseException:
                sb._down_quietly()
                raise
        sb.timings["network"] = time.monotonic() - t0
        try:
            sb._start_hosts(plan, say, ready_timeout or 20 + 0.2 * nodes)
        except BaseException:
            sb._down_quietly()
            raise
        sb.timings["total"] = time.monotonic() - t0
        return sb

    def _start_hosts(self, plan, say, ready_timeout: float) -> None:
        state, t = self.state, time.monotonic()
        say(f"keys and configs for {len(state.hosts)} hosts")
        sshd_configs = write_ssh_files(state, plan)
        nsswitch = Path("/etc/nsswitch.conf")
        etc = {"hosts": render_etc_hosts(plan),
               "nsswitch.conf": render_nsswitch(nsswitch.read_text() if nsswitch.exists() else "")}
        for h in state.hosts:
            netns.prepare_host_dirs(state, h, {**etc, "hostname": h.name + "\n"})
        self.timings["files"] = time.monotonic() - t
        say(f"starting {len(state.hosts)} hosts (namespaces, overlays, sshd)")
        t = time.monotonic()
        errors = netns.start_hosts([netns.host_spec(state, h, sshd_config=sshd_configs[h.name]) for h in state.hosts])
        failed = {h: e for h, e in errors.items() if e}
        if failed or len(errors) != len(state.hosts):
            first = next(iter(failed.items()), ("?", "no result"))
            raise RemoteError(f"sandbox {state.name}: {len(failed) or 'some'} hosts failed to start; {first[0]}: {first[1]}")
        self.timings["hosts"] = time.monotonic() - t
        say("waiting for sshd on every host")
        t = time.monotonic()
        wait_for_sshd(state, timeout=ready_timeout)
        for h in state.hosts:
            h.sshd_pid = read_pidfile(Path(h.dir) / "sshd.pid")
        self.timings["ready"] = time.monotonic() - t
        state.status = "up"
        state.save()

    @staticmethod
    def _peek_subnet(name: str) -> str:
        try:
            return SandboxState.load(state_dir(name)).subnet
        except (ConfigError, ValueError, TypeError, KeyError):
            return ""

    @classmethod
    def load(cls, name: str = "default") -> Sandbox:
        validate_name(name)
        return cls(SandboxState.load(state_dir(name)))

    def reload(self) -> None:
        self.state = SandboxState.load(Path(self.state.dir))

    def down(self) -> dict[str, int]:
        """Stop recorded daemons by PID, kill what is left in the hosts' namespaces, remove namespaces, mounts,
        links and the state dir. Returns counts of what was removed. Safe to call on a half-built sandbox."""
        netns.check_host_tools()
        with contextlib.suppress(ConfigError):
            self.reload()
        state, t = self.state, time.monotonic()
        stopped = self._stop_daemons(state.daemons)
        names = [h.netns for h in state.hosts]
        survivors = netns.kill_namespace_processes(names)
        if survivors:
            raise RemoteError(f"sandbox {state.name}: processes {survivors[:10]} survived SIGKILL; not removing it")
        self.timings["down_kill"] = time.monotonic() - t
        netns.unmount_files([p for h in state.hosts for p in (h.mnt_ns, h.uts_ns)])
        self.timings["down_umount"] = time.monotonic() - t
        netns.delete_network(state)
        self.timings["down_network"] = time.monotonic() - t
        netns.unmount_files([str(state.ns_dir)])
        left = netns.mounts_under(Path(state.dir))
        if left:  # never delete through a mount (a share could be someone's venv)
            raise RemoteError(f"sandbox {state.name}: {left[:5]} still mounted; not deleting {state.dir}")
        with ThreadPoolExecutor(max_workers=8) as pool:  # per host in parallel: overlay dirs are many small trees
            list(pool.map(lambda h: shutil.rmtree(h.dir, ignore_errors=True), state.hosts))
        shutil.rmtree(state.dir, ignore_errors=True)
        self.timings["down_total"] = time.monotonic() - t
        return {"hosts": len(state.hosts), "daemons": stopped}

    def _down_quietly(self) -> None:
        try:
            self.down()
        except Exception as exc:  # keep the original error; this one only explains leftovers
            log.error("sandbox %s: clean-up after a failed up: %s", self.state.name, exc)

    # ---- facts ------------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.state.name

    @property
    def hosts(self) -> list[str]:
        return [h.name for h in self.state.hosts]

    def ip(self, host: str) -> str:
        return self.state.host(host).ip

    @property
    def head_ip(self) -> str:
        return self.state.head_ip

    @property
    def ssh_config(self) -> Path:
        return ssh_paths(self.state)["config"]

    @property
    def known_hosts(self) -> Path:
        return ssh_paths(self.state)["known_hosts"]

    @property
    def identity(self) -> Path:
        return ssh_paths(self.state)["identity"]

    def host_dir(self, host: str) -> Path:
        """Per-host scratch on the head (logs, pidfiles, data dirs for daemons); visible from every host."""
        return Path(self.state.host(host).dir)

    def env(self) -> dict[str, str]:
        return {"ORCH_SANDBOX_NAME": self.name, "ORCH_SANDBOX_SSH_CONFIG": str(self.ssh_config),
                "ORCH_SANDBOX_HOSTS": ",".join(self.hosts), "ORCH_SANDBOX_DIR": self.state.dir}

    def status(self) -> list[dict]:
        pids = netns.netns_pids([h.netns for h in self.state.hosts])
        return [{"host": h.name, "ip": h.ip, "sshd_pid": h.sshd_pid,
                 "sshd_alive": bool(h.sshd_pid and h.sshd_pid in pids.get(h.netns, [])),
                 "processes": len(pids.get(h.netns, [])), "daemons": [d.name for d in self.state.daemons if d.host == h.name]}
                for h in self.state.hosts]

    def pids(self, host: str) -> list[int]:
        h = self.state.host(host)
        return netns.netns_pids([h.netns]).get(h.netns, [])

    # ---- acting inside hosts ----------------------------------------------------------------------------
    def nsenter_argv(self, host: str, argv: list[str], *, cwd: str | None = None) -> list[str]:
        """argv that runs `argv` inside `host` (network, hostname, mounts), for Popen callers."""
        wd = [f"--wd={cwd}"] if cwd else []
        return ["nsenter", *self.state.host(host).nsenter_args(), *wd, "--", *argv]

    def exec(self, host: str, argv: list[str], *, cwd: str | None = None, **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(self.nsenter_argv(host, argv, cwd=cwd), **kwargs)

    def start_daemon(self, host: str | None, argv: list[str], *, name: str, pidfile: str | Path | None = None,
                     log_file: str | Path | None = None, env: dict[str, str] | None = None) -> DaemonState:
        """Start a daemon in `host` (None: on the head, root namespaces) and record it; `down` stops it by PID.

        With `pidfile`, argv daemonizes itself (sshd, slurmd, munged) and the PID is read from the file;
        without, argv stays in the foreground (`dockerd`, `slurmd -D`) and runs detached in its own session.
        """
        full = self.nsenter_argv(host, argv) if host else list(argv)
        if host:
            self.state.host(host)
        log_path = Path(log_file) if log_file else Path(self.state.dir) / "daemons" / f"{host or 'head'}-{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as out:
            proc_env = {**os.environ, **(env or {})}
            if pidfile:
                done = subprocess.run(full, stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=proc_env, timeout=60)
                pid = read_pidfile(Path(pidfile), timeout=10)
                if done.returncode or pid is None:
                    raise RemoteError(f"sandbox: daemon {name} on {host or 'head'} failed to start (exit {done.returncode});"
                                      f" see {log_path}")
            else:
                proc = subprocess.Popen(full, stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=proc_env,
                                        start_new_session=True)
                Sandbox._children.append(proc)
                pid = proc.pid
                if host:
                    self._wait_entered(host, proc)
        record = DaemonState(host=host, name=name, pid=pid, starttime=process_start(pid) or 0, argv=list(argv),
                             log=str(log_path), pidfile=str(pidfile) if pidfile else None)
        with self._locked_state() as state:
            state.daemons.append(record)
        return record

    def _wait_entered(self, host: str, proc: subprocess.Popen, timeout: float = 5.0) -> None:
        """Return once `proc` lives in the host's network namespace, so `pids(host)` shows it right away."""
        deadline = time.monotonic() + timeout
        while proc.pid not in self.pids(host) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)

    def stop_daemon(self, name: str, host: str | None = None, *, timeout: float = 5.0) -> bool:
        with self._locked_state() as state:
            mine = [d for d in state.daemons if d.name == name and d.host == host]
            state.daemons = [d for d in state.daemons if d not in mine]
        return self._stop_daemons(mine, timeout=timeout) > 0

    def _stop_daemons(self, daemons: list[DaemonState], *, timeout: float = 5.0) -> int:
        alive = [d for d in reversed(daemons) if d.pid and process_start(d.pid) == d.starttime]
        for d in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(d.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(process_start(d.pid) == d.starttime for d in alive):
            self._reap()
            time.sleep(0.05)
        for d in alive:
            if process_start(d.pid) == d.starttime:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(d.pid, signal.SIGKILL)
        self._reap()
        return len(alive)

    def _reap(self) -> None:
        """Collect exit statuses of foreground daemons this process started (no zombies in a long pytest run)."""
        for proc in list(self._children):
            if proc.poll() is not None:
                self._children.remove(proc)

    @contextlib.contextmanager
    def _locked_state(self):
        """Read-modify-write of state.json under a lock (several processes may add daemons)."""
        with open(Path(self.state.dir) / ".state.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            self.reload()
            yield self.state
            self.state.save()

    def private_dir(self, host: str, target: str) -> Path:
        """Give `host` its own plain directory at `target` (e.g. /var/lib/docker, whose overlay2 driver cannot
        sit on the copy-on-write /var): a directory on the head bind-mounted there; gone with the sandbox."""
        if not target.startswith("/") or ".." in Path(target).parts:
            raise ConfigError("target", target, "use an absolute path without '..'")
        source = self.host_dir(host) / "dirs" / target.strip("/").replace("/", "_")
        source.mkdir(parents=True, exist_ok=True)
        self.exec(host, ["sh", "-c", 'mkdir -p "$1" && mount --bind "$0" "$1"', str(source), target], check=True)
        return source

    def link_down(self, host: str) -> None:
        """Pull the host's cable: its bridge-side veth goes down; processes and sockets on the host stay."""
        netns.set_link(self.state.host(host).veth, up=False)

    def link_up(self, host: str) -> None:
        netns.set_link(self.state.host(host).veth, up=True)

    def lose(self, host: str) -> None:
        """The node is gone: cable pulled first (so no FIN/RST reaches its peers), then every process on it but
        its sshd SIGKILLed (the sandbox's own daemon stays, so `down` finds what it recorded)."""
        self.link_down(host)
        sshd = self.state.host(host).sshd_pid
        for pid in self.pids(host):
            if pid != sshd:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
