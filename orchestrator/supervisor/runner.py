"""How the supervisor runs an attempt and checks hosts: one interface, over SSH (here) or as Slurm steps (slurm.py).

    runner = SshAttempts(ssh=SshOptions(config="ssh_config"), failure_grace=2.0)    # or slurm.SlurmSteps(alloc)
    result = await runner.run_attempt(plan, sink=show, stop=stop_event)             # show(OutputLine); AttemptResult
    result.exit_code, result.first_failure, result.config_error                      # 1, Failure(...), False
    health = await runner.check_hosts(["n1", "n2"], command=None, timeout=20)        # {"n1": "ok", ...}
    stacks = await runner.dump_stacks({"n2": [4242]}, python=lambda h: "python3", timeout=20)
    stacks                                                     # {"n2": {4242: {"threads": [...]}}} (health.py)

The loop (loop.py) only talks to an AttemptRunner: it never asks which kind it has. A runner ends the attempt
when `stop` is set (a hang), tears it down on every host, and reports what it saw in one AttemptResult.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from orchestrator.launch.failures import Failure, first_failure
from orchestrator.launch.plan import LaunchPlan
from orchestrator.launch.output import Sink

__all__ = ["AttemptResult", "AttemptRunner", "SshAttempts"]



@dataclass(kw_only=True)
class AttemptResult:
    """How one attempt ended, whichever runner ran it."""

    exit_code: int
    """0 done; 128+N stopped by signal N; otherwise failed (the launcher's or srun's code)."""
    stopped_by: int | None = None
    """The signal that stopped the supervisor itself (SIGINT/SIGTERM/SIGHUP), if any."""
    failures: list[Failure] = field(default_factory=list)
    """The launcher's failure analysis per failed node (empty under Slurm: srun reports one exit code)."""
    unreachable: dict[str, str] = field(default_factory=dict)
    """host -> why its control connection was lost."""
    teardown: dict[str, str] = field(default_factory=dict)
    """host -> 'clean' or why not, for the hosts a verified teardown reached."""
    config_error: bool = False
    """The program reported a configuration error (Slurm's requeue contract: exit 2): never retried."""

    @property
    def first_failure(self) -> Failure | None:
        return first_failure(self.failures)

    @classmethod
    def from_launch(cls, result) -> AttemptResult:
        """From orchestrator.launch.runner's LaunchResult."""
        return cls(exit_code=result.exit_code, stopped_by=result.stopped_by, failures=list(result.failures),
                   unreachable=dict(result.unreachable), teardown=dict(result.teardown or {}))


class AttemptRunner(Protocol):
    async def run_attempt(self, plan: LaunchPlan, *, sink: Sink, stop: asyncio.Event) -> AttemptResult:
        """Run the plan until it ends or `stop` is set; every process of the attempt is gone on return."""

    async def check_hosts(self, hosts: Sequence[str], *, command: Sequence[str] | None,
                          timeout: float) -> dict[str, str]:
        """host -> "ok", or why not ("unreachable: ...", "check failed: exit 1: <last line>")."""

    async def probe_pids(self, pids: dict[str, list[int]], *, timeout: float) -> dict[str, dict[int, str]]:
        """host -> {pid: /proc state letter} of stalled ranks; hosts that did not answer are left out."""

    async def kill_pids(self, pids: dict[str, list[int]], *, timeout: float) -> list[str]:
        """SIGKILL the processes (a hung rank under warm restarts); the hosts reached."""

    async def dump_stacks(self, pids: dict[str, list[int]], *, python: Callable[[str], str], timeout: float,
                          flight: dict[str, dict[int, str]] | None = None) -> dict[str, dict[int, dict]]:
        """host -> {pid: {"threads": py-spy's JSON} or {"error": why none}, plus "flight" or "flight_error" for the
        PIDs in flight (host -> {pid: its flight recorder dump path})}, for a hang's report (health.dump_stacks);
        python(host): the node's interpreter (py-spy is looked up next to it, then on PATH)."""

    def exclude(self, host: str, reason: str) -> bool:
        """The supervisor stopped using `host`; True when the runner also fenced it off (Slurm: drained)."""

    def head_address(self, host: str) -> str:
        """This machine's address as `host` can dial it (the warm keepers' store on the head)."""


class SshAttempts:
    """Attempts as orchestrator.launch runs over SSH; health checks, probes and stack dumps through the same fan-out.

    relay: a run dir the nodes do not share (relay.py): the nodes' heartbeat and metrics records are taken out of
    the attempt's output and written into the head's run dir."""

    def __init__(self, *, ssh=None, transport=None, failure_grace: float = 2.0, relay=None):
        self.ssh, self.transport, self.failure_grace, self.relay = ssh, transport, failure_grace, relay

    async def run_attempt(self, plan: LaunchPlan, *, sink: Sink, stop: asyncio.Event) -> AttemptResult:
        from orchestrator.launch.runner import run_plan_async
        from orchestrator.remote.fanout import default_transport
        from orchestrator.supervisor.relay import RelayTransport

        transport = self.transport
        if self.relay is not None:
            self.relay.mark(plan.run_id)
            transport = RelayTransport(self.transport or default_transport(plan.hosts, self.ssh), self.relay)
        try:
            result = await run_plan_async(plan, ssh=self.ssh, transport=transport, sink=sink,
                                          failure_grace=self.failure_grace, stop=stop)
        finally:
            if self.transport is None and transport is not None:  # made here: closed here
                await transport.aclose()
        return AttemptResult.from_launch(result)

    async def check_hosts(self, hosts: Sequence[str], *, command: Sequence[str] | None,
                          timeout: float) -> dict[str, str]:
        from orchestrator.supervisor.health import check_hosts

        return await check_hosts(hosts, ssh=self.ssh, transport=self.transport, command=command, timeout=timeout)

    async def probe_pids(self, pids: dict[str, list[int]], *, timeout: float) -> dict[str, dict[int, str]]:
        from orchestrator.supervisor.health import probe_pids

        return await probe_pids(pids, ssh=self.ssh, transport=self.transport, timeout=timeout)

    async def kill_pids(self, pids: dict[str, list[int]], *, timeout: float) -> list[str]:
        from orchestrator.supervisor.health import kill_pids

        return await kill_pids(pids, ssh=self.ssh, transport=self.transport, timeout=timeout)

    async def dump_stacks(self, pids: dict[str, list[int]], *, python: Callable[[str], str], timeout: float,
                          flight: dict[str, dict[int, str]] | None = None) -> dict[str, dict[int, dict]]:
        from orchestrator.supervisor.health import dump_stacks

        return await dump_stacks(pids, ssh=self.ssh, transport=self.transport, python=python, timeout=timeout,
                                 flight=flight)

    def exclude(self, host: str, reason: str) -> bool:
        return False  # nothing to fence off: the supervisor simply stops using the host

    def head_address(self, host: str) -> str:
        """This machine's address on the route to `host` (as its SSH config resolves it): the nodes dial it back."""
        from orchestrator.engine.replica import local_address
        from orchestrator.remote.ssh import ssh_hostname

        return local_address(ssh_hostname(host, self.ssh), 22)
