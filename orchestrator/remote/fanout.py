"""Run a command on many hosts at once; every host gets a result, never first-error-wins.

    from orchestrator.remote import SshOptions, run_on, teardown
    result = run_on(["node1", "node2"], ["nvidia-smi", "-L"], ssh=SshOptions(config="ssh_config"),
                    on_line=lambda host, stream, line: print(f"{host}: {line}"))
    result.exit_code            # highest remote exit code; 255 when a host was unreachable or timed out
    result.grouped_failures()   # ['node[03,07]: exit 255: connection refused']
    teardown(result.run_id, ["node1", "node2"], ssh=...)   # kill whatever of the run is left, and verify

Inside an event loop use `run_on_async` (same arguments, plus `stop=asyncio.Event()` to end every session
early and `on_result=` to hear about each host as it finishes). Every remote process runs under the node-side
agent (agent.py, sent inline; agent.sh with `agent="sh"`) with the run id as its token, so closing a session, a
timeout, a stop, or the death of this process kills the remote command and everything it started.
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from ClusterShell.NodeSet import NodeSet

from orchestrator.contracts import RUN_ID, new_run_id, signal_exit_code
from orchestrator.errors import EXIT_UNREACHABLE, ConfigError
from orchestrator.remote.agent import encode_spec
from orchestrator.inline import python_source, sh_source
from orchestrator.remote.ssh import SshOptions, SshTransport, describe_error

__all__ = ["FanoutResult", "HostCommand", "HostResult", "NoAnswer", "STOP_ANSWER_S", "STOPPED_UNVERIFIED",
           "Transport", "default_transport", "fold_hosts", "plan_commands", "run_on", "run_on_async", "teardown",
           "teardown_async"]

log = logging.getLogger("orchestrator.remote.fanout")

DEFAULT_FANOUT = 64
STOP_ANSWER_S = 5.0
"""Seconds a host gets to answer a stop (its agent's exit) or a teardown (the connection) before the head stops
waiting and reports it as not verified: a hung sshd or a dead link must not hold a Ctrl-C for the 30-60 s of
the SSH timeouts. Nothing is left running for it: the agent kills the run when its SSH channel drops."""
STOPPED_UNVERIFIED = "stopped, not verified"  # the error of a host that did not confirm a stop (run_on_async stop_wait)


def agent_source() -> str:
    """agent.py as sent (worked out on first use: `run` with the sh agent never needs it)."""
    return python_source(Path(__file__).with_name("agent.py"))


def sh_agent_source() -> str:
    """agent.sh as sent."""
    return sh_source(Path(__file__).with_name("agent.sh"))


AGENTS = ("python", "sh")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

T = TypeVar("T")
PerHost = T | Callable[[str], T]
LineCallback = Callable[[str, str, str], None]  # (host, "stdout" | "stderr", line without newline)


class Session(Protocol):
    stdout: object  # AsyncIterator[str] of lines
    stderr: object

    def send(self, data: bytes) -> None: ...
    def end_input(self) -> None: ...
    async def wait(self) -> tuple[int | None, str | None]: ...
    def close(self) -> None: ...


class Transport(Protocol):
    """SshTransport and LocalTransport: open(host, argv) starts argv there with stdin as the control channel;
    prepare(hosts) does the CPU-only set-up for all hosts before the first connection starts."""

    def prepare(self, hosts: Sequence[str]) -> None: ...
    async def open(self, host: str, argv: Sequence[str]) -> Session: ...
    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class HostCommand:
    """One host's part of the plan: what the agent will exec there."""

    host: str
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    python: str = "python3"
    agent: str = "python"
    """"python" (agent.py: argv and env on stdin) or "sh" (agent.sh: no Python needed on the host, starts in a
    third of the time; argv as arguments, so no env)."""


@dataclass
class HostResult:
    host: str
    exit_code: int | None = None
    """The remote exit code (128+N when killed by signal N); None when the command never reported one."""
    signal: str | None = None
    """Signal name ("KILL") when the remote agent itself was killed by a signal."""
    duration_s: float = 0.0
    error: str | None = None
    """Why the host has no exit code of its own: "connection refused", "timed out after 5 s", "stopped"."""
    tail: tuple[str, ...] = ()
    """The last lines of output (stdout and stderr interleaved)."""

    @property
    def ok(self) -> bool:
        return self.error is None and self.exit_code == 0

    @property
    def code(self) -> int:
        """The exit code this host contributes: 255 for unreachable / timed out / no status, like pdsh."""
        return EXIT_UNREACHABLE if self.error is not None or self.exit_code is None else self.exit_code

    def reason(self) -> str:
        if self.error is not None:
            return f"exit {self.code}: {self.error}"
        if self.signal:
            return f"exit {self.code}: killed by signal {self.signal}"
        return f"exit {self.code}"


class FanoutResult(Mapping[str, HostResult]):
    """Every host -> its HostResult, in the order the hosts were given."""

    def __init__(self, run_id: str, results: Iterable[HostResult]):
        self.run_id = run_id
        self._results = {r.host: r for r in results}

    def __getitem__(self, host: str) -> HostResult:
        return self._results[host]

    def __iter__(self) -> Iterator[str]:
        return iter(self._results)

    def __len__(self) -> int:
        return len(self._results)

    @property
    def succeeded(self) -> list[str]:
        return [h for h, r in self._results.items() if r.ok]

    @property
    def failed(self) -> list[str]:
        return [h for h, r in self._results.items() if not r.ok]

    @property
    def exit_code(self) -> int:
        """The highest remote exit code; 255 when any host was unreachable or timed out; 0 for no hosts."""
        return max((r.code for r in self._results.values()), default=0)

    def grouped_failures(self) -> list[str]:
        """Failed hosts folded by identical reason: ['node[03,07]: exit 255: connection refused', ...]."""
        return fold_hosts({h: r.reason() for h, r in self._results.items() if not r.ok})

    def to_json(self) -> dict:
        return {"run_id": self.run_id, "exit_code": self.exit_code,
                "hosts": [asdict(r) | {"ok": r.ok} for r in self._results.values()]}


def fold_hosts(reasons: Mapping[str, str], what: str = "") -> list[str]:
    """host -> reason, folded by identical reason in first-seen order: ['node[03,07]: <what>connection refused']."""
    groups: dict[str, list[str]] = {}
    for host, reason in reasons.items():
        groups.setdefault(reason, []).append(host)
    return [f"{NodeSet.fromlist(hosts)}: {what}{reason}" for reason, hosts in groups.items()]


def _check_run_id(run_id: str) -> str:
    if not RUN_ID.match(run_id):
        raise ConfigError("--run-id", run_id, "use 1-64 characters from A-Z a-z 0-9 . _ -")
    return run_id


def _for(value: PerHost[T], host: str) -> T:
    return value(host) if callable(value) else value


def plan_commands(hosts: Sequence[str], argv: PerHost[Sequence[str]], *, env: PerHost[Mapping[str, str] | None] = None,
                  cwd: PerHost[str | None] = None, python: PerHost[str] = "python3",
                  agent: str = "python") -> list[HostCommand]:
    """The per-host commands (pure); ConfigError for an empty argv, a bad env name, or env with the sh agent.
    Each argument but `agent` may be a value for every host or a function host -> value."""
    if agent not in AGENTS:
        raise ConfigError("--agent", agent, f"use one of {', '.join(AGENTS)}")
    plan = []
    for host in hosts:
        host_argv = tuple(_for(argv, host))
        if not host_argv or not all(isinstance(a, str) for a in host_argv):
            raise ConfigError("command", list(host_argv), f"give the command for {host} as a non-empty list of strings")
        host_env = dict(_for(env, host) or {})
        for name, value in host_env.items():
            if not _ENV_NAME.fullmatch(name) or not isinstance(value, str):
                raise ConfigError("env", name, "use NAME=VALUE with NAME of letters, digits, _ (not starting with a digit)")
        if host_env and agent == "sh":
            raise ConfigError("--agent", agent, "env travels with the python agent only (with the sh agent its "
                              "values would show in the host's process list): use --agent python")
        plan.append(HostCommand(host, host_argv, host_env, _for(cwd, host), _for(python, host), agent))
    return plan


def agent_argv(python: str, run_id: str, *, teardown: bool = False) -> list[str]:
    """The remote command line: the agent's source inline (-I -S: ignore the node's PYTHON* env and site)."""
    return [python, "-I", "-S", "-c", agent_source(), "--run-id", run_id] + (["--teardown"] if teardown else [])


def command_argv(command: HostCommand, run_id: str) -> list[str]:
    """The remote command line for one planned command: the python agent's, or the sh agent with the command
    as its arguments (quoted once, by the transport; the agent never re-evaluates them)."""
    if command.agent == "sh":
        return ["sh", "-c", sh_agent_source(), "orch-agent", run_id, command.cwd or "", *command.argv]
    return agent_argv(command.python, run_id)


def agent_spec(command: HostCommand) -> bytes | None:
    """What the python agent reads on stdin: user data travels here, never through a remote shell."""
    return encode_spec(command.argv, command.env, command.cwd) if command.agent == "python" else None


def default_transport(hosts: Sequence[str], ssh: SshOptions | None) -> Transport:
    """SSH, except `localhost` alone with no SSH option given: then a local child process (no sshd needed)."""
    if list(hosts) == ["localhost"] and (ssh is None or ssh == SshOptions()):
        from orchestrator.remote.local import LocalTransport

        return LocalTransport()
    return SshTransport(ssh or SshOptions())


def _signal_code(name: str | None) -> int | None:
    try:
        return signal_exit_code(signal.Signals[f"SIG{name}"].value) if name else None
    except KeyError:
        return None


class NoAnswer(Exception):
    """A host that did not answer within a bound (STOP_ANSWER_S); its str() is the reason shown for it."""

    def __init__(self, seconds: float):
        super().__init__(f"no answer within {seconds:g} s (the node agent kills the run when its SSH channel drops)")


async def _open(transport: Transport, host: str, argv: list[str], answer: float | None) -> Session:
    """transport.open, or NoAnswer when the connection is not up within `answer` seconds."""
    opening = asyncio.ensure_future(transport.open(host, argv))
    done, _ = await asyncio.wait({opening}, timeout=answer)
    if not done:
        opening.cancel()
        await asyncio.wait({opening})  # our own cancellation still propagates from here
        if not opening.cancelled() and opening.exception() is None:
            opening.result().close()  # it came up just now: not wanted any more
        raise NoAnswer(answer)
    return opening.result()


async def _session(transport: Transport, host: str, argv: list[str], spec: bytes | None,
                   emit: Callable[[str, str], None], opened: list[Session],
                   answer: float | None) -> tuple[int | None, str | None]:
    session = await _open(transport, host, argv, answer)
    opened.append(session)
    try:
        if spec is not None:
            session.send(spec)

        async def pump(lines, stream: str) -> None:
            async for line in lines:
                emit(stream, line)

        await asyncio.gather(pump(session.stdout, "stdout"), pump(session.stderr, "stderr"))
        return await session.wait()
    finally:
        session.close()  # also on cancel (timeout, stop, Ctrl-C): the agent sees its stdin close and kills


async def _run_host(transport: Transport, host: str, argv: list[str], spec: bytes | None, *,
                    limit: asyncio.Semaphore, timeout: float | None, stop: asyncio.Event | None,
                    on_line: LineCallback | None, tail_lines: int, answer: float | None = None,
                    stop_wait: float | None = None) -> HostResult:
    tail: deque[str] = deque(maxlen=tail_lines)
    opened: list[Session] = []

    def emit(stream: str, line: str) -> None:
        tail.append(line)
        if on_line is not None:
            on_line(host, stream, line)

    async with limit:
        start = time.monotonic()
        if stop is not None and stop.is_set():
            return HostResult(host, error="stopped")
        work = asyncio.ensure_future(_session(transport, host, argv, spec, emit, opened, answer))
        waiters = {work} | ({asyncio.ensure_future(stop.wait())} if stop is not None else set())
        confirming = unanswered = False
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if stop_wait is not None and stop is not None and stop.is_set() and opened and not work.done():
                # a confirmed stop: EOF on the agent's control channel, then its exit (it kills the command first)
                confirming = True
                opened[0].end_input()
                unanswered = not (await asyncio.wait({work}, timeout=stop_wait))[0]
        finally:
            for w in waiters:
                w.cancel()
        error = None
        try:
            code, sig = await work
            if confirming:  # the agent's exit code says how it ended the command, not what the command did
                code, sig, error = None, None, "stopped"
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if not work.cancelled() or getattr(me, "cancelling", lambda: 0)():  # our caller cancels: pass it on
                raise
            code, sig = None, None
            if unanswered:
                error = f"{STOPPED_UNVERIFIED}: {NoAnswer(stop_wait)}"
            else:
                error = f"timed out after {timeout:g} s" if stop is None or not stop.is_set() else "stopped"
        except Exception as exc:  # noqa: BLE001 - any failure is this host's result, the others go on
            log.debug("%s: session failed", host, exc_info=True)
            code, sig, error = None, None, describe_error(exc)
        if error is None and code is None:
            code = _signal_code(sig)
            if code is None:
                error = "connection closed before the command exited"
        return HostResult(host, code, sig, round(time.monotonic() - start, 3), error, tuple(tail))


async def _fan(hosts: Sequence[str], argv_for: Callable[[str], list[str]], spec_for: Callable[[str], bytes | None], *,
               run_id: str, ssh: SshOptions | None, transport: Transport | None, fanout: int,
               timeout: float | None, stop: asyncio.Event | None, on_line: LineCallback | None,
               on_result: Callable[[HostResult], None] | None, tail_lines: int, answer: float | None = None,
               stop_wait: float | None = None) -> FanoutResult:
    if fanout < 1:
        raise ConfigError("--fanout", fanout, "use a positive number of parallel sessions, e.g. 64")
    if timeout is not None and not timeout > 0:
        raise ConfigError("--timeout", timeout, "use a positive number of seconds")
    own = transport is None
    transport = transport or default_transport(hosts, ssh)
    limit = asyncio.Semaphore(fanout)
    if hasattr(transport, "prepare"):  # plan, then act: no connect timer runs while the head does per-host set-up
        transport.prepare(hosts)

    async def one(host: str) -> HostResult:
        result = await _run_host(transport, host, argv_for(host), spec_for(host), limit=limit, timeout=timeout,
                                 stop=stop, on_line=on_line, tail_lines=tail_lines, answer=answer,
                                 stop_wait=stop_wait)
        if on_result is not None:
            on_result(result)
        return result

    try:
        return FanoutResult(run_id, await asyncio.gather(*(one(h) for h in hosts)))
    finally:
        if own:
            await transport.aclose()


async def run_on_async(hosts: Sequence[str], argv: PerHost[Sequence[str]], *, ssh: SshOptions | None = None,
                       transport: Transport | None = None, fanout: int = DEFAULT_FANOUT,
                       env: PerHost[Mapping[str, str] | None] = None, cwd: PerHost[str | None] = None,
                       python: PerHost[str] = "python3", agent: str = "python", run_id: str | None = None,
                       timeout: float | None = None, on_line: LineCallback | None = None,
                       on_result: Callable[[HostResult], None] | None = None, stop: asyncio.Event | None = None,
                       tail_lines: int = 20, stop_wait: float | None = None) -> FanoutResult:
    """Run `argv` (or argv(host)) on every host under the agent, at most `fanout` sessions at a time.

    ssh/transport: how to reach hosts (default_transport(hosts, ssh)); a transport passed in stays open.
    env, cwd, python: per run or per host (a function host -> value); env reaches the command, not the shell.
    agent: "python" (agent.py) or "sh" (agent.sh: no Python on the hosts, faster start, no env).
    timeout: seconds per host, then the session is closed (the agent kills the command): exit 255.
    stop: when set, every running session is closed and hosts not started get error "stopped".
    stop_wait: with stop, first close only each agent's stdin and give it this long to confirm (its exit: the
    command is gone); a host that does not answer gets "stopped, not verified: no answer within N s".
    """
    run_id = _check_run_id(run_id or new_run_id())
    plan = {c.host: c for c in plan_commands(hosts, argv, env=env, cwd=cwd, python=python, agent=agent)}
    return await _fan(list(plan), lambda h: command_argv(plan[h], run_id), lambda h: agent_spec(plan[h]),
                      run_id=run_id, ssh=ssh, transport=transport, fanout=fanout, timeout=timeout, stop=stop,
                      on_line=on_line, on_result=on_result, tail_lines=tail_lines, stop_wait=stop_wait)


def run_on(hosts: Sequence[str], argv: PerHost[Sequence[str]], **kwargs) -> FanoutResult:
    """Blocking run_on_async, for callers without an event loop (the CLI, scripts)."""
    return asyncio.run(run_on_async(hosts, argv, **kwargs))


async def teardown_async(run_id: str, hosts: Sequence[str], *, ssh: SshOptions | None = None,
                         transport: Transport | None = None, fanout: int = DEFAULT_FANOUT,
                         python: PerHost[str] = "python3", timeout: float | None = 30.0,
                         answer: float | None = STOP_ANSWER_S) -> FanoutResult:
    """Kill every process carrying ORCH_RUN_ID=run_id on every host, and verify: a host is ok when none remains.

    Processes of other runs (another id) are left alone; nothing is matched by name or pattern. A host whose
    connection is not up within `answer` seconds (hung sshd, dead link) gets NoAnswer's reason as its error."""
    _check_run_id(run_id)
    return await _fan(list(hosts), lambda h: agent_argv(_for(python, h), run_id, teardown=True), lambda h: None,
                      run_id=run_id, ssh=ssh, transport=transport, fanout=fanout, timeout=timeout, stop=None,
                      on_line=None, on_result=None, tail_lines=5, answer=answer)


def teardown(run_id: str, hosts: Sequence[str], **kwargs) -> FanoutResult:
    """Blocking teardown_async."""
    return asyncio.run(teardown_async(run_id, hosts, **kwargs))
