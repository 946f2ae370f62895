"""The supervisor's Slurm transport: each attempt is one srun step over the allocation's nodes (minus excluded ones).

    steps = SlurmSteps(slurm.require_allocation("supervise --via slurm"), drain_bad_nodes=True)
    summary = asyncio.run(Supervisor(cfg, steps).run())     # inside salloc / an sbatch script

SlurmSteps is an AttemptRunner (runner.py). What changes from the SSH path (the loop keeps everything else:
detectors, diagnosis, policy, events):
- launch: orchestrator.launch.slurm.srun_argv(plan) plus `--label --overlap` (STEP_OPTIONS); srun's "N: line"
  output becomes the runner's OutputLine (task N is node rank N: host plan.hosts[N]; the rank from torchrun's
  marker), so detect.parse_rank_exit sees torchrun's "failed (exitcode" line with its host exactly as over SSH.
- failure: srun --kill-on-bad-exit ends the whole step when one node's torchrun fails; srun's exit code follows
  the requeue contract (2 = a configuration error: AttemptResult.config_error, never retried).
- teardown: ending the step is Slurm's job (it kills every process of the step on every node); a stop request
  (hang, Ctrl-C) sends srun SIGINT, which --quit-on-interrupt turns into ending the step. Warm keepers are sent
  SIGUSR1 first, which srun forwards as it is (SIGINT/SIGTERM/SIGHUP to srun kill the step's processes at once),
  so they stop their workers and remove their snapshots from /dev/shm; each srun runs in its own session, so a
  terminal's Ctrl-C reaches the supervisor alone. When the supervisor itself is killed, salloc (or the batch
  script) ends and Slurm ends the job's steps: each keeper gets SIGTERM, KillWait before SIGKILL.
- health: `srun --nodes=1 --nodelist=NODE --overlap <check command or true>` per node, in parallel. Chosen over
  `scontrol show node` state because it proves what the next attempt needs (slurmd starts a process there, the
  check command passes), and a node Slurm already marked down fails it too (the step cannot be created).
- exclusion: with drain_bad_nodes, an excluded node is drained (orchestrator.slurm.drain) with the reason.
- a run dir the nodes do not share (--no-shared-run-dir): each srun task is the forwarder (relay.py) in front of the
  node entry, with a private temp dir of its own for the ranks' heartbeats; its records come back in srun's output
  and are written into the head's run dir before any line reaches the log or the detectors.
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
When scontrol names no address, node 0's keeper hosts the store.

A lost node is repaired warm too, as over SSH, when a spare is left: a running step cannot take in a node, so
each spare's keeper waits in a one-node step of its own (`srun --nodes=1 --nodelist=SPARE`, spare_srun_argv) on
the same store; the head's watch of the keepers' beats hands it the lost node's rank, and it loads that node's
snapshots from the peer copy. The keepers' step runs with --no-kill: when slurmctld declares the node down
(SlurmdTimeout after it went silent) the step goes on without it. Until then srun waits for the lost node's task,
so once every other node's entry has exited 0 (`node_exit` lines, StepEnding) the step is ended here and the
attempt is done. The job itself must outlive the node as well: submit it with --no-kill (salloc/sbatch -k), else
Slurm revokes the whole allocation, the supervisor with it, once it declares the node down. Without a spare left
the watch ends the step (warm_give_up) and the next step runs cold without the node.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from pathlib import Path

from orchestrator.contracts import signal_exit_code
from orchestrator.engine.warm import parse_event
from orchestrator.errors import EXIT_USAGE
from orchestrator.launch.output import OutputLine, Sink
from orchestrator.launch.plan import LaunchPlan
from orchestrator.launch.runner import STOP_SIGNALS
from orchestrator.launch.torchrun import split_rank_prefix
from orchestrator.supervisor.relay import Relay
from orchestrator.supervisor.runner import AttemptResult

__all__ = ["SlurmSteps", "StepEnding", "output_line", "step_result"]

log = logging.getLogger("orchestrator.supervisor.slurm")

STOP_WAIT_S = 30.0
STEP_OPTIONS = ("--overlap",)
"""A step that lost a node stays on slurmctld's books, holding the CPUs of its other nodes, until the node is
declared down (SlurmdTimeout, minutes): the next attempt's step shares them instead of waiting for that."""
KEEPER_STOP_S = 10.0
"""How long the warm keepers get to stop their workers and remove their snapshots before Slurm ends the step."""


def step_result(step_exit: int, stopped_by: int | None) -> AttemptResult:
    """srun's exit code (the step's highest task exit code) as an AttemptResult; 2 is a configuration error."""
    return AttemptResult(exit_code=signal_exit_code(stopped_by) if stopped_by is not None else step_exit, stopped_by=stopped_by,
                         config_error=stopped_by is None and step_exit == EXIT_USAGE)


class SlurmSteps:
    """relay: a run dir the nodes do not share (relay.py, set by plan_supervise): each node's task is the
    forwarder in front of the node entry, and its records are taken out of srun's output into the head's run dir."""

    def __init__(self, alloc, *, srun_options: Sequence[str] = (), drain_bad_nodes: bool = False,
                 relay: Relay | None = None):
        self.alloc, self.srun_options, self.drain_bad_nodes = alloc, tuple(srun_options), drain_bad_nodes
        self.relay = relay

    def _wrap(self, python: str, plan: LaunchPlan) -> list[str]:
        return self.relay.forwarder(python, plan.run_id, own_tmpdir=True) if self.relay is not None else []

    def argv(self, plan: LaunchPlan) -> list[str]:
        """The attempt's srun argv (pure; raises ConfigError when the plan does not fit one step)."""
        from orchestrator.launch.slurm import srun_argv

        return srun_argv(plan, self.alloc, srun_options=("--label", *STEP_OPTIONS, *self.srun_options),
                         wrap=self._wrap(plan.nodes[0].python, plan))

    def spare_argvs(self, plan: LaunchPlan) -> list[list[str]]:
        """Each spare keeper's one-node srun step (pure)."""
        from orchestrator.launch.slurm import spare_srun_argv

        return [spare_srun_argv(n, self.alloc, srun_options=("--label", *STEP_OPTIONS, *self.srun_options),
                                wrap=self._wrap(n.python, plan)) for n in plan.spares]

    async def run_attempt(self, plan: LaunchPlan, *, sink: Sink | None = None,
                          stop: asyncio.Event | None = None) -> AttemptResult:
        """Run the attempt as one srun step (and a one-node step per spare keeper); returns when the step has ended
        (done, failed, or stopped), or when every node but the lost ones is done."""
        from orchestrator.launch.slurm import srun_env

        stopped_by: int | None = None
        stop = stop if stop is not None else asyncio.Event()
        logs = Path(plan.run_dir) / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        ending = StepEnding(plan.hosts)

        def on_signal(signum: int) -> None:
            nonlocal stopped_by
            if stopped_by is None:
                stopped_by = signum
            stop.set()

        env = srun_env(plan, marker=True)
        if self.relay is not None:
            self.relay.mark(plan.run_id)
        steps = [await _Step.start(self.argv(plan), env, plan.hosts)]
        try:
            for spare, argv in zip(plan.spares, self.spare_argvs(plan)):
                steps.append(await _Step.start(argv, env, [spare.host]))
        except BaseException:
            for step in steps:
                step.proc.kill()
            raise
        main, spares = steps[0], steps[1:]
        previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            with open(logs / "step.log", "a", encoding="utf-8") as log_file:
                def emit(line: OutputLine) -> None:
                    if self.relay is not None and line.host is not None and self.relay.take(line.text):
                        return
                    log_file.write(line.formatted() + "\n")
                    ending.see(line)
                    if sink is not None:
                        sink(line)

                for step in steps:
                    step.pump(emit)
                waiter = asyncio.ensure_future(main.proc.wait())
                stopper = asyncio.ensure_future(stop.wait())
                finisher = asyncio.ensure_future(ending.done.wait())
                await asyncio.wait({waiter, stopper, finisher}, return_when=asyncio.FIRST_COMPLETED)
                if not waiter.done() and ending.done.is_set() and not stop.is_set():
                    # srun waits for the lost node's task until slurmctld declares the node down (SlurmdTimeout);
                    # every other node's task is gone, so nothing of the run is left for srun to stop
                    log.warning("ending srun step of %s: every node but the lost %s is done", plan.run_id,
                                ", ".join(sorted(ending.lost)))
                    main.proc.kill()
                elif not waiter.done():
                    log.warning("stopping srun step of %s", plan.run_id)
                    await _stop([main, *spares], warm=plan.launcher == "warm")
                # spares still waiting (or in the run) when it ends or fails: their steps end too
                await _stop([s for s in spares if not ending.exited(s.hosts[0])], warm=True)
                await asyncio.gather(*(step.ended() for step in spares))
                stopper.cancel()
                finisher.cancel()
                step_exit = await waiter
                await main.drained()
        finally:
            for sig in STOP_SIGNALS:
                loop.remove_signal_handler(sig)
                signal.signal(sig, previous[sig])
        if ending.done.is_set() and stopped_by is None and not stop.is_set():
            step_exit = 0
        used = [s.proc.returncode for s in spares if s.hosts[0] in ending.joined]  # nodes of the run now
        if EXIT_USAGE in used or step_exit == 0:
            step_exit = EXIT_USAGE if EXIT_USAGE in used else next((code for code in used if code), 0)
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

    async def dump_stacks(self, pids: dict[str, list[int]], *, python: Callable[[str], str], timeout: float,
                          flight: dict[str, dict[int, str]] | None = None) -> dict[str, dict[int, dict]]:
        """Every rank's Python stack (and flight recorder), dumped on its node as the probe is (health.dump_stacks)."""
        from orchestrator.supervisor.health import dump_stacks

        return await self._on_nodes(dump_stacks, pids, python=python, timeout=timeout, flight=flight)

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


class StepEnding:
    """Whether an attempt whose node was lost is done: every node in the run but the lost ones has exited 0.

        ending = StepEnding(plan.hosts); ending.see(line) for each output line; await ending.done.wait()

    A spare keeper that takes a lost node's place says so (`spare_joined` with the lost host): that host is
    lost, the spare is in the run. Each keeper's node entry says `node_exit` once its node's run is gone
    (launch/slurm.py). srun cannot end the step by itself: it waits for the lost node's task."""

    def __init__(self, hosts: Sequence[str]):
        self.running, self.lost, self.joined = set(hosts), set(), set()
        self.done = asyncio.Event()

    def see(self, line: OutputLine) -> None:
        event = parse_event(line.text) if line.host is not None and line.rank is None else None
        if event is None:
            return
        if event["event"] == "spare_joined" and event.get("lost_host"):
            self.lost.add(event["lost_host"])
            self.joined.add(line.host)
            self.running.add(line.host)
        elif event["event"] == "node_exit" and event.get("code") == 0:
            self.running.discard(line.host)
        if self.lost and self.running <= self.lost:
            self.done.set()

    def exited(self, host: str) -> bool:
        """A spare in the run whose node entry has exited 0 (its srun is about to end 0 by itself)."""
        return host in self.joined and host not in self.running


class _Step:
    """One srun process and the readers of its output (srun --label, task N on hosts[N])."""

    def __init__(self, proc: asyncio.subprocess.Process, hosts: Sequence[str]):
        self.proc, self.hosts, self.readers = proc, list(hosts), []

    @classmethod
    async def start(cls, argv: list[str], env: dict[str, str], hosts: Sequence[str]) -> _Step:
        # its own session: a terminal's Ctrl-C reaches the supervisor alone, which stops the keepers first (_stop)
        proc = await asyncio.create_subprocess_exec(*argv, env=env, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                    start_new_session=True)
        return cls(proc, hosts)

    def pump(self, emit: Callable[[OutputLine], None]) -> None:
        self.readers = [asyncio.ensure_future(_pump(self.proc.stdout, emit, "stdout", self.hosts)),
                        asyncio.ensure_future(_pump(self.proc.stderr, emit, "stderr", self.hosts))]

    async def drained(self) -> None:
        await asyncio.gather(*self.readers)

    async def ended(self) -> None:
        try:
            await asyncio.wait_for(self.proc.wait(), STOP_WAIT_S)
        except asyncio.TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        await self.drained()


async def _stop(steps: list[_Step], *, warm: bool) -> None:
    """End the steps: the warm keepers first get SIGUSR1, which srun forwards to them as it is, so they stop their
    workers and remove their snapshots (SIGINT makes srun kill the step's processes at once); after KEEPER_STOP_S,
    or at once for torchrun, SIGINT (--quit-on-interrupt: Slurm ends the step on every node), then SIGKILL."""
    steps = [s for s in steps if s.proc.returncode is None]
    if warm and steps:
        for step in steps:
            step.proc.send_signal(signal.SIGUSR1)
        _, pending = await asyncio.wait([asyncio.ensure_future(s.proc.wait()) for s in steps], timeout=KEEPER_STOP_S)
        for waiting in pending:
            waiting.cancel()
    for step in steps:
        if step.proc.returncode is None:
            step.proc.send_signal(signal.SIGINT)
    await asyncio.gather(*(step.ended() for step in steps))


def output_line(hosts: Sequence[str], raw: bytes, stream: str) -> OutputLine:
    """One line of srun --label: "N: text" -> host hosts[N] (the step's nodes), rank from torchrun's marker (None
    for torchrun's own lines); srun's own messages -> host None, the line as it came."""
    raw = raw.rstrip(b"\n")
    task, sep, body = raw.partition(b": ")
    task = task.strip()
    if not sep or not task.isdigit() or int(task) >= len(hosts):
        return OutputLine(None, None, stream, raw.decode(errors="replace"), raw)
    line = body.decode(errors="replace")
    rank, _local, text = split_rank_prefix(line)
    return OutputLine(hosts[int(task)], rank, stream, text, body[len(line) - len(text):])  # the marker is ASCII


async def _pump(stream: asyncio.StreamReader, emit: Callable[[OutputLine], None], name: str,
                hosts: Sequence[str]) -> None:
    while line := await stream.readline():
        emit(output_line(hosts, line, name))
