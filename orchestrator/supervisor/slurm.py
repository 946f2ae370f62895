"""The supervisor's Slurm transport: each attempt is one srun step over the allocation's nodes (minus excluded ones).

    steps = SlurmSteps(slurm.require_allocation("supervise --via slurm"), drain_bad_nodes=True)
    summary = asyncio.run(Supervisor(cfg, steps).run())     # inside salloc / an sbatch script

SlurmSteps is an AttemptRunner (runner.py). What changes from the SSH path (the loop keeps everything else:
detectors, diagnosis, policy, events):
- launch: orchestrator.launch.slurm.srun_argv(plan) plus `--label`; srun's "N: line" output becomes the runner's
  OutputLine (task N is node rank N: host plan.hosts[N]; the rank from torchrun's marker), so
  detect.parse_rank_exit sees torchrun's "failed (exitcode" line with its host exactly as over SSH.
- failure: srun --kill-on-bad-exit ends the whole step when one node's torchrun fails; srun's exit code follows
  the requeue contract (2 = a configuration error: AttemptResult.config_error, never retried).
- teardown: ending the step is Slurm's job (it kills every process of the step on every node); a stop request
  (hang) sends srun SIGINT, which --quit-on-interrupt turns into ending the step.
- health: `srun --nodes=1 --nodelist=NODE --overlap <check command or true>` per node, in parallel. Chosen over
  `scontrol show node` state because it proves what the next attempt needs (slurmd starts a process there, the
  check command passes), and a node Slurm already marked down fails it too (the step cannot be created).
- exclusion: with drain_bad_nodes, an excluded node is drained (orchestrator.slurm.drain) with the reason.
- hang probes, stack dumps and kills: one-task srun steps beside the run's (`--overlap`; no SSH to the nodes needed),
  running health.py's scripts as on the SSH path: the stalled ranks' /proc state and every
  rank's py-spy dump are read on their nodes.

Warm restarts (the engine; supervisor/warm.py): the step runs one keeper per node (launch/slurm.py's node entry
gives it SLURM_NODEID as its node rank and a private temp dir on /dev/shm for its snapshots, removed with the
step), so a killed rank is repaired inside the step and srun never sees it. A hung rank is SIGKILLed on its node
(kill_pids, like the probe), which turns it into a rank exit the keepers repair. The keepers' store is on the
head, i.e. wherever the supervisor runs inside the allocation (the salloc shell, or the batch step on the first
node): head_address() is this machine's address on the route to the node's NodeAddr, the address slurmctld reaches
the node's slurmd at, so the nodes can dial it back (a sandbox Slurm's nodes reach the head over its bridge).
When scontrol names no address, node 0's keeper hosts the store. A lost node stays cold: srun ends the whole step
when one of its nodes fails, and a running step cannot take in a spare node, so there is no spare keeper to take
its place; the head's watch of the keepers' beats ends the step (warm_give_up) and the next step runs without it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from pathlib import Path

from orchestrator.contracts import signal_exit_code
from orchestrator.errors import EXIT_USAGE
from orchestrator.launch.output import OutputLine, Sink
from orchestrator.launch.plan import LaunchPlan
from orchestrator.launch.runner import STOP_SIGNALS
from orchestrator.launch.torchrun import split_rank_prefix
from orchestrator.supervisor.runner import AttemptResult

__all__ = ["SlurmSteps", "output_line", "step_result"]

log = logging.getLogger("orchestrator.supervisor.slurm")

STOP_WAIT_S = 30.0


def step_result(step_exit: int, stopped_by: int | None) -> AttemptResult:
    """srun's exit code (the step's highest task exit code) as an AttemptResult; 2 is a configuration error."""
    return AttemptResult(exit_code=signal_exit_code(stopped_by) if stopped_by is not None else step_exit, stopped_by=stopped_by,
                         config_error=stopped_by is None and step_exit == EXIT_USAGE)


class SlurmSteps:
    def __init__(self, alloc, *, srun_options: Sequence[str] = (), drain_bad_nodes: bool = False):
        self.alloc, self.srun_options, self.drain_bad_nodes = alloc, tuple(srun_options), drain_bad_nodes

    def argv(self, plan: LaunchPlan) -> list[str]:
        """The attempt's srun argv (pure; raises ConfigError when the plan does not fit one step)."""
        from orchestrator.launch.slurm import srun_argv

        return srun_argv(plan, self.alloc, srun_options=("--label", *self.srun_options))

    async def run_attempt(self, plan: LaunchPlan, *, sink: Sink | None = None,
                          stop: asyncio.Event | None = None) -> AttemptResult:
        """Run the attempt as one srun step; returns when the step has ended (done, failed, or stopped)."""
        from orchestrator.launch.slurm import srun_env

        argv = self.argv(plan)
        stopped_by: int | None = None
        stop = stop if stop is not None else asyncio.Event()
        logs = Path(plan.run_dir) / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()

        def on_signal(signum: int) -> None:
            nonlocal stopped_by
            if stopped_by is None:
                stopped_by = signum
            stop.set()

        proc = await asyncio.create_subprocess_exec(*argv, env=srun_env(plan, marker=True), stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            with open(logs / "step.log", "a", encoding="utf-8") as log_file:
                def emit(raw: bytes, stream: str) -> None:
                    line = output_line(plan, raw, stream)
                    log_file.write(line.formatted() + "\n")
                    if sink is not None:
                        sink(line)

                readers = [asyncio.ensure_future(_pump(proc.stdout, emit, "stdout")),
                           asyncio.ensure_future(_pump(proc.stderr, emit, "stderr"))]
                waiter = asyncio.ensure_future(proc.wait())
                stopper = asyncio.ensure_future(stop.wait())
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if not waiter.done():
                    log.warning("stopping srun step of %s", plan.run_id)
                    proc.send_signal(signal.SIGINT)  # --quit-on-interrupt: Slurm ends the step on every node
                    try:
                        await asyncio.wait_for(asyncio.shield(waiter), STOP_WAIT_S)
                    except asyncio.TimeoutError:
                        proc.kill()
                stopper.cancel()
                step_exit = await waiter
                await asyncio.gather(*readers)
        finally:
            for sig in STOP_SIGNALS:
                loop.remove_signal_handler(sig)
                signal.signal(sig, previous[sig])
        return step_result(step_exit, stopped_by)

    async def check_hosts(self, hosts: Sequence[str], *, command: Sequence[str] | None = None,
                          timeout: float = 20.0) -> dict[str, str]:
        """host -> "ok", or why not: one single-node srun step per host running the check (default `true`)."""
        results = await asyncio.gather(*(self._check(h, list(command) if command else ["true"], timeout)
                                         for h in hosts))
        return dict(zip(hosts, results))

    async def _check(self, host: str, argv: list[str], timeout: float) -> str:
        from orchestrator import slurm

        proc = await asyncio.create_subprocess_exec(
            *slurm.on_node(host), *argv,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            return f"unreachable: srun check timed out after {timeout:g} s"
        if proc.returncode == 0:
            return "ok"
        lines = out.decode(errors="replace").strip().splitlines()
        own = [line for line in lines if not line.startswith("srun: ")]  # the check's words over srun's notes
        last = (own or lines or [""])[-1]
        return f"check failed: exit {proc.returncode}" + (f": {last}" if last else "")

    async def probe_pids(self, pids: dict[str, list[int]], *, timeout: float) -> dict[str, dict[int, str]]:
        """The stalled ranks' process states, read on their nodes (health.probe_pids through srun steps)."""
        from orchestrator.supervisor.health import probe_pids

        return await self._on_nodes(probe_pids, pids, timeout=timeout)

    async def kill_pids(self, pids: dict[str, list[int]], *, timeout: float) -> list[str]:
        """SIGKILL hung ranks (warm restarts) on their nodes, as the probe (health.kill_pids); the nodes reached."""
        from orchestrator.supervisor.health import kill_pids

        return await self._on_nodes(kill_pids, pids, timeout=timeout)

    async def _on_nodes(self, action, pids: dict[str, list[int]], **kwargs):
        """A health.py action through one-task srun steps beside the run's step: the allocation reaches its nodes
        without SSH (many Slurm sites allow none)."""
        from orchestrator.remote.local import SrunTransport

        transport = SrunTransport()
        try:
            return await action(pids, transport=transport, **kwargs)
        finally:
            await transport.aclose()

    def head_address(self, host: str) -> str:
        """This machine's address on the route to the node's NodeAddr: where the warm keepers dial the store."""
        from orchestrator import slurm
        from orchestrator.engine.replica import local_address

        return local_address(slurm.node_address(host), 6818)  # slurmd's port: only the route is looked up

    async def dump_stacks(self, pids: dict[str, list[int]], *, python: Callable[[str], str],
                          timeout: float) -> dict[str, dict[int, list | str]]:
        """Every rank's Python stack, dumped on its node as the probe is (health.dump_stacks)."""
        from orchestrator.supervisor.health import dump_stacks

        return await self._on_nodes(dump_stacks, pids, python=python, timeout=timeout)

    def exclude(self, host: str, reason: str) -> bool:
        """Drain an excluded node when asked to (so later jobs avoid it too); True when drained."""
        if not self.drain_bad_nodes:
            return False
        from orchestrator import slurm

        try:
            slurm.drain([host], reason=f"orchestrator supervise: {reason}"[:200])
        except Exception as exc:  # noqa: BLE001 - the run goes on without the node either way
            log.warning("could not drain %s: %s", host, exc)
            return False
        return True


def output_line(plan: LaunchPlan, raw: bytes, stream: str) -> OutputLine:
    """One line of srun --label: "N: text" -> host plan.hosts[N], rank from torchrun's marker (None for
    torchrun's own lines); srun's own messages -> host None, the line as it came."""
    raw = raw.rstrip(b"\n")
    task, sep, body = raw.partition(b": ")
    task = task.strip()
    if not sep or not task.isdigit() or int(task) >= len(plan.hosts):
        return OutputLine(None, None, stream, raw.decode(errors="replace"), raw)
    line = body.decode(errors="replace")
    rank, _local, text = split_rank_prefix(line)
    return OutputLine(plan.hosts[int(task)], rank, stream, text, body[len(line) - len(text):])  # the marker is ASCII


async def _pump(stream: asyncio.StreamReader, emit: Callable[[bytes, str], None], name: str) -> None:
    while line := await stream.readline():
        emit(line, name)
