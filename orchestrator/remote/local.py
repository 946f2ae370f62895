"""Local transport: the same sessions as SshTransport, for `localhost` without sshd (non-root, one machine).

    transport = LocalTransport()
    session = await transport.open("localhost", ["hostname"])   # exec'd directly: no shell, nothing to quote
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence

from orchestrator.remote.session import ProcessStreams

__all__ = ["LocalTransport", "SrunTransport"]

log = logging.getLogger("orchestrator.remote.local")

_LINE_LIMIT = 1 << 20  # asyncio's default (64 KiB) would fail on long progress lines
_AGENT_CLEANUP_S = 6.0


class LocalSession(ProcessStreams):
    """A child process whose stdin is the control channel: closing it (or our death) trips the agent."""

    def __init__(self, proc: asyncio.subprocess.Process):
        self._proc = proc

    async def wait(self) -> tuple[int | None, str | None]:
        code = await self._proc.wait()
        return (code, None) if code >= 0 else (None, signal.Signals(-code).name.removeprefix("SIG"))

    def close(self) -> None:
        if self._proc.stdin and not self._proc.stdin.is_closing():
            self._proc.stdin.close()


class LocalTransport:
    """Runs every session as a child of this process; `host` is only a label."""

    def __init__(self) -> None:
        self._procs: list[asyncio.subprocess.Process] = []

    def prepare(self, hosts: Sequence[str]) -> None:
        pass  # nothing to work out ahead: no connections

    async def open(self, host: str, argv: Sequence[str]) -> LocalSession:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, limit=_LINE_LIMIT)
        self._procs.append(proc)
        return LocalSession(proc)

    async def aclose(self) -> None:
        """Wait for closed sessions' agents to finish their cleanup (bounded: they promise 5 s)."""
        for proc in self._procs:
            if proc.returncode is None:
                LocalSession(proc).close()
                try:
                    await asyncio.wait_for(proc.wait(), _AGENT_CLEANUP_S)
                except asyncio.TimeoutError:
                    proc.kill()
                    await _kill_leftovers(proc)
        self._procs.clear()


class SrunTransport(LocalTransport):
    """Inside a Slurm allocation: each session is a one-task srun step on node `host` (slurm.on_node), so the
    fan-out reaches the nodes without SSH. srun forwards the control channel (stdin); ending srun ends the step."""

    async def open(self, host: str, argv: Sequence[str]) -> LocalSession:
        from orchestrator import slurm

        return await super().open(host, [*slurm.on_node(host), *argv])


async def _kill_leftovers(agent: asyncio.subprocess.Process) -> None:
    """After SIGKILL of an agent that could not finish its cleanup: kill what it started (its token), then wait.

    Without this the wait never ends: asyncio waits for the output pipes too, and a process the agent left
    (one that ignores SIGTERM) holds them open."""
    try:
        await asyncio.wait_for(agent.wait(), 1.0)
        return
    except asyncio.TimeoutError:
        pass
    from orchestrator.contracts import AGENT_TOKEN
    from orchestrator.remote.agent import kill_run

    left = await asyncio.to_thread(kill_run, [f"{AGENT_TOKEN}={agent.pid}".encode()], scan=True)
    try:
        await asyncio.wait_for(agent.wait(), 2.0)
    except asyncio.TimeoutError:  # a pipe still held (by a process we cannot see): give up on the streams
        log.warning("local agent %d: %d process(es) of the command left; its output pipes stay open", agent.pid, left)
