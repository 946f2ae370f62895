"""Execute a LaunchPlan over the remote layer: stream every rank's output, keep per-host logs, tear down.

    result = run_plan(plan, ssh=SshOptions(config="ssh_config"), sink=lambda line: print(line.formatted()))
    result.exit_code        # 0 ok, 1 a rank failed, 255 a host unreachable, 128+N stopped by signal N
    result.first_failure    # Failure(host="node3", rank=5, ...): the root cause, see failures.py

One agent-wrapped launcher (torchrun / deepspeed.launcher.launch) per node through
orchestrator.remote.run_on_async, all under the plan's run id (ORCH_RUN_ID). Lines arrive per host; each goes to
the sink as an OutputLine (output.py: its host, its rank from torchrun's tee prefix or None for the launcher's
own lines, stream, text) and to runs/<run_id>/logs/<host>.log as `host/rank: text` or `host: text`.

Stopping: SIGINT, SIGTERM or SIGHUP of this process close every session (each node's agent then kills its
process group and every process carrying the run id, within 5 s), then teardown(run_id) runs on every reachable
host and verifies nothing of the run is left; a host that does not answer it within STOP_ANSWER_S (a hung sshd)
is reported as not verified instead of holding the stop for the SSH timeouts. SIGKILL of this process closes
the connections, which trips the same agent dead-man switch on each node. A node that exits non-zero gives the
others `failure_grace` seconds to fail on their own (their errors are the cascade; first_failure picks the root
cause), then the rest is stopped. An unreachable host stops the run at once: the other nodes would only wait for
it in the rendezvous; except in a plan with spare keepers (warm restarts), where the keepers replace a lost node
in-run: the host is recorded as unreachable and the others go on.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.contracts import signal_exit_code
from orchestrator.errors import EXIT_FAILURE, EXIT_OK, EXIT_UNREACHABLE, ConfigError
from orchestrator.launch.failures import LAST_LINES, Failure, first_failure, host_failure
from orchestrator.launch.output import OutputLine, Sink
from orchestrator.launch.plan import LaunchPlan
from orchestrator.launch.rundir import HostLogs, RunDir
from orchestrator.launch.torchrun import split_rank_prefix
from orchestrator.remote.output import LineJoiner

log = logging.getLogger("orchestrator.launch.runner")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass
class LaunchResult:
    plan: LaunchPlan
    hosts: dict = field(default_factory=dict)
    """host -> orchestrator.remote HostResult."""
    failures: list[Failure] = field(default_factory=list)
    unreachable: dict[str, str] = field(default_factory=dict)
    """host -> why it could not be reached."""
    stopped_by: int | None = None
    """The signal that stopped the launcher, if any."""
    teardown: dict[str, str] | None = None
    """host -> 'clean' or why not, when a teardown ran."""

    def teardown_lines(self) -> list[str]:
        """The teardown in a few readable lines, hosts folded by reason:
        ['teardown: clean on n1', 'n2: teardown not verified: no answer within 5 s (...)'], or
        ['teardown: clean on every host']; [] when no teardown ran."""
        from ClusterShell.NodeSet import NodeSet

        from orchestrator.remote.fanout import fold_hosts

        if self.teardown is None:
            return []
        clean = [h for h, why in self.teardown.items() if why == "clean"]
        left = {h: why for h, why in self.teardown.items() if why != "clean"}
        if not left:
            return ["teardown: clean on every host"]
        return ([f"teardown: clean on {NodeSet.fromlist(clean)}"] if clean else []) + \
            fold_hosts(left, "teardown not verified: ")

    @property
    def first_failure(self) -> Failure | None:
        return first_failure(self.failures)

    @property
    def exit_code(self) -> int:
        if self.stopped_by is not None:
            return signal_exit_code(self.stopped_by)
        if self.unreachable:
            return EXIT_UNREACHABLE
        return EXIT_FAILURE if self.failures else EXIT_OK

    def to_json(self) -> dict:
        first = self.first_failure
        return {
            "run_id": self.plan.run_id,
            "exit_code": self.exit_code,
            "stopped_by": signal.Signals(self.stopped_by).name if self.stopped_by else None,
            "first_failure": first.to_json() if first else None,
            "failures": [f.to_json() for f in self.failures],
            "unreachable": self.unreachable,
            "teardown": self.teardown,
            "hosts": [
                {"host": h, "exit_code": r.exit_code, "error": r.error, "duration_s": r.duration_s}
                for h, r in self.hosts.items()
            ],
        }


class _Collector:
    """Per-host line handling: rank, log, hand to the sink, and keep the tails the failure analysis needs."""

    def __init__(self, plan: LaunchPlan, logs: HostLogs, sink: Sink | None):
        self.logs, self.sink = logs, sink
        hosts = [n.host for n in plan.started]
        self.agent_lines = {h: deque(maxlen=200) for h in hosts}
        self.host_lines = {h: deque(maxlen=50) for h in hosts}
        self.rank_lines: dict[str, dict[int, deque]] = {h: {} for h in hosts}
        self.open_lines: dict[tuple[str, str], int | None] = {}  # (host, stream) in a long line -> its rank
        self.join = LineJoiner()

    def on_line(self, host: str, stream: str, line: str) -> None:
        line = self.join((host, stream), line)  # a long line whole: no other line lands inside it
        if line is None:
            return
        raw = getattr(line, "raw", None)  # remote.session.Line: the exact bytes, for the log
        raw = raw if raw is not None else line.encode("utf-8", "surrogateescape")
        continued = (host, stream) in self.open_lines
        if continued:  # the rest of a long line: no rank parsing, its start's rank
            rank, text = self.open_lines[host, stream], line
        else:
            rank, _local, text = split_rank_prefix(line)
            raw = raw[len(line) - len(text):]  # the rank marker is ASCII: as many bytes as characters
            (self.agent_lines[host] if rank is None
             else self.rank_lines[host].setdefault(rank, deque(maxlen=LAST_LINES))).append(text)
            self.host_lines[host].append(text)
        partial = getattr(line, "partial", False)
        if partial:
            self.open_lines[host, stream] = rank
        else:
            self.open_lines.pop((host, stream), None)
        out = OutputLine(host, rank, stream, text, raw, partial, continued)
        self.logs.write(host, out.prefix().encode() + raw, end=b"" if partial else b"\n")
        if self.sink is not None:
            try:
                self.sink(out)
            except OSError:  # terminal gone (SIGHUP, closed pipe): keep logging to the run dir, keep the run
                self.sink = None

    def failure(self, host: str, exit_code: int, head_time: float) -> Failure:
        return host_failure(
            host, exit_code=exit_code, agent_lines=list(self.agent_lines[host]),
            rank_lines={r: list(d) for r, d in self.rank_lines[host].items()},
            host_lines=list(self.host_lines[host]), head_time=head_time,
        )


async def run_plan_async(plan: LaunchPlan, *, ssh=None, transport=None, sink: Sink | None = None,
                         failure_grace: float = 10.0, handle_signals: bool = True,
                         stop: asyncio.Event | None = None) -> LaunchResult:
    """Run the plan to completion (or stop); never raises for remote failures: they are in the result.

    stop: an event the caller may set to end the run early (the supervisor's hang detector); teardown follows."""
    from orchestrator.remote.fanout import run_on_async, teardown_async

    rundir = RunDir(Path(plan.run_dir))
    rundir.create()
    try:
        rundir.write_json("plan.json", plan.to_json())
        if plan.hostfile:
            rundir.write_text("hostfile", plan.hostfile)
    except OSError as exc:  # nothing has started yet
        raise ConfigError("--run-dir", plan.run_dir, f"cannot write {exc.filename} ({exc.strerror}); "
                          "free some space or pick another directory") from None
    result = LaunchResult(plan)
    loop = asyncio.get_running_loop()
    stop = stop if stop is not None else asyncio.Event()
    nodes = {n.host: n for n in plan.started}
    hosts = list(nodes)

    def on_signal(signum: int) -> None:
        if result.stopped_by is None:
            log.warning("%s: stopping run %s on every host", signal.Signals(signum).name, plan.run_id)
            result.stopped_by = signum
        stop.set()

    with rundir.host_logs(hosts) as logs:
        collector = _Collector(plan, logs, sink)

        def on_result(r) -> None:
            now = time.time()
            if r.error is not None:
                if r.error != "stopped":
                    result.unreachable[r.host] = r.error
                    if not plan.spares:  # the others would wait for it in the rendezvous until they time out
                        stop.set()
                return
            if r.exit_code != 0:
                result.failures.append(collector.failure(r.host, r.exit_code, now))
                if not stop.is_set():
                    loop.call_later(failure_grace, stop.set)

        previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
        if handle_signals:
            for sig in STOP_SIGNALS:
                loop.add_signal_handler(sig, on_signal, sig)
        try:
            fan = await run_on_async(
                hosts, lambda h: nodes[h].argv, ssh=ssh, transport=transport, fanout=max(64, len(hosts)),
                env=lambda h: plan.node_env(nodes[h]), cwd=lambda h: nodes[h].workdir,
                python=lambda h: nodes[h].python, run_id=plan.run_id, on_line=collector.on_line,
                on_result=on_result, stop=stop,
            )
            result.hosts = dict(fan)
            if stop.is_set() or result.failures:
                reachable = [h for h in hosts if h not in result.unreachable]
                down = await teardown_async(plan.run_id, reachable, ssh=ssh, transport=transport,
                                            python=lambda h: nodes[h].python)
                result.teardown = {h: "clean" if r.ok else r.error or r.reason() for h, r in down.items()}
        finally:
            if handle_signals:
                for sig in STOP_SIGNALS:
                    loop.remove_signal_handler(sig)
                    signal.signal(sig, previous[sig])  # the caller's handlers (e.g. demo: tear the sandbox down)
    try:
        rundir.write_json("result.json", result.to_json())
    except OSError as exc:  # the run is over: its exit code stands, the result is on the terminal
        log.warning("cannot write %s (%s); the run's result is only what is shown here",
                    exc.filename or rundir.path / "result.json", exc.strerror)
    return result


def run_plan(plan: LaunchPlan, **kwargs) -> LaunchResult:
    """Blocking run_plan_async (installs SIGINT/SIGTERM/SIGHUP handlers for its duration)."""
    return asyncio.run(run_plan_async(plan, **kwargs))
