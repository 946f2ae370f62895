"""Which failure came first: the root cause of a failed run, not the cascade that follows it.

    failure = host_failure("node3", exit_code=1, agent_lines=torchrun_lines, rank_lines={5: [...]}, head_time=t)
    first = first_failure([failure, other, ...])
    first.describe()   # 'node3/5 (local rank 1): exit code 1\n  | Traceback ...\n  | RuntimeError: boom'

When one rank dies, every other rank soon fails too ("Connection closed by peer", NCCL aborts, SIGTERM from
its own torchrun); naming the last or the loudest failure sends people after the wrong host. Each node's
torchrun reports its own first failure: the "Root Cause (first observed failure)" block (global rank, local
rank, exit code or signal) and a log line with a microsecond timestamp (`E1123 10:38:33.646000 ... failed
(exitcode: 1) local_rank: 1`). Across nodes we order by:
  1. failures whose last lines look like a consequence of another failure (CASCADE) come after the others;
  2. the node-side failure time (torchrun's timestamp; clocks are assumed NTP-synced), when every failed node
     reported one; otherwise the time the head saw that node's launcher exit.
Under the deepspeed launcher (which logs neither the failed rank nor its pid: it reports the last-spawned
command) each rank runs under rankprefix.py, which reports a failed rank in one line with the same facts
(`orchestrator rank 3 (local rank 1) failed (exitcode: 7) at <ISO time>`); a node's earliest such line is its
first failure. Without either report (torchrun itself failed) the rank comes from torch's own `[rankN]:`
traceback prefix when there is one; otherwise the failure names the host and its launcher's exit code.
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass, field
from datetime import datetime

CASCADE = re.compile(
    r"Connection closed by peer|Connection reset by peer|Broken pipe|Socket Timeout|Connection refused"
    r"|communicator was aborted|ProcessGroupNCCL.*(?:abort|Watchdog)|Timed out waiting|DistNetworkError"
    r"|DistStoreError|recvValue|read from the socket|closing signal SIGTERM",
    re.IGNORECASE,
)
_ROOT_CAUSE = "Root Cause (first observed failure)"
_FIELD = re.compile(r"^\s*(time|host|rank|exitcode|error_file|traceback)\s*:\s*(.*)$")
_RANK_FIELD = re.compile(r"(-?\d+)\s*\(local_rank:\s*(\d+)\)")
_EXIT_FIELD = re.compile(r"(-?\d+)")
_GLOG_FAILED = re.compile(
    r"^E(\d{2})(\d{2}) (\d{2}:\d{2}:\d{2}\.\d+) .*\] failed \(exitcode: (-?\d+)\) local_rank: (\d+)"
)
_TORCH_RANK_PREFIX = re.compile(r"^\[rank(\d+)\]:")
_RANK_FAILED = re.compile(r"^orchestrator rank (\d+) \(local rank (\d+)\) failed \(exitcode: (-?\d+)\) at (\S+)$")
LAST_LINES = 10


@dataclass
class TorchrunReport:
    """What one node's torchrun said about its first failed worker."""

    rank: int | None = None
    local_rank: int | None = None
    exitcode: int | None = None
    time: datetime | None = None
    traceback: str | None = None


def parse_torchrun_report(agent_lines: list[str]) -> TorchrunReport | None:
    """Parse torchrun's ChildFailedError summary and its 'failed (exitcode: N)' log line; None if absent."""
    report, found, in_root = TorchrunReport(), False, False
    glog = None
    for line in agent_lines:
        if m := _GLOG_FAILED.match(line):
            glog = m
            found = True
        if _ROOT_CAUSE in line:
            in_root, found = True, True
            continue
        if not in_root:
            continue
        if line.startswith("====="):
            break
        if not (m := _FIELD.match(line)):
            continue
        key, value = m.group(1), m.group(2).strip()
        if key == "rank" and (r := _RANK_FIELD.match(value)):
            report.rank, report.local_rank = int(r.group(1)), int(r.group(2))
        elif key == "exitcode" and (e := _EXIT_FIELD.match(value)):
            report.exitcode = int(e.group(1))
        elif key == "time":
            try:
                report.time = datetime.strptime(value, "%Y-%m-%d_%H:%M:%S")
            except ValueError:
                pass
        elif key == "traceback":
            report.traceback = value
    if not found:
        return None
    if glog:
        year = report.time.year if report.time else datetime.now().year
        month, day, clock = int(glog.group(1)), int(glog.group(2)), glog.group(3)
        report.time = datetime.strptime(f"{year}-{month:02d}-{day:02d} {clock}", "%Y-%m-%d %H:%M:%S.%f")
        if report.exitcode is None:
            report.exitcode = int(glog.group(4))
        if report.local_rank is None:
            report.local_rank = int(glog.group(5))
    return report


def parse_rank_reports(agent_lines: list[str]) -> TorchrunReport | None:
    """The earliest of rankprefix.py's 'orchestrator rank R ... failed' lines (deepspeed launcher); None if none."""
    reports = []
    for line in agent_lines:
        if m := _RANK_FAILED.match(line):
            try:
                when = datetime.fromisoformat(m.group(4))
            except ValueError:
                continue
            reports.append(TorchrunReport(rank=int(m.group(1)), local_rank=int(m.group(2)),
                                          exitcode=int(m.group(3)), time=when))
    return min(reports, key=lambda r: r.time, default=None)


def signal_name(exitcode: int | None) -> str | None:
    """torchrun reports death by signal N as exitcode -N; a shell-style 128+N is left alone (ambiguous)."""
    if exitcode is None or exitcode >= 0:
        return None
    try:
        return signal.Signals(-exitcode).name
    except ValueError:
        return f"signal {-exitcode}"


@dataclass
class Failure:
    """One failed node: its launcher's exit and, when known, the rank that failed first there."""

    host: str
    exit_code: int
    """The node launcher's exit code (torchrun/deepspeed, as the transport reported it)."""
    rank: int | None = None
    local_rank: int | None = None
    rank_exitcode: int | None = None
    node_time: datetime | None = None
    head_time: float | None = None
    last_lines: list[str] = field(default_factory=list)
    cascade: bool = False

    @property
    def signal(self) -> str | None:
        return signal_name(self.rank_exitcode)

    def headline(self) -> str:
        who = f"{self.host}/{self.rank}" if self.rank is not None else f"{self.host} (launcher)"
        if self.local_rank is not None:
            who += f" (local rank {self.local_rank})"
        if self.signal:
            how = f"killed by {self.signal}"
        elif self.rank_exitcode is not None:
            how = f"exit code {self.rank_exitcode}"
        else:
            how = f"exit code {self.exit_code}"
        return f"{who}: {how}"

    def describe(self) -> str:
        return "\n".join([self.headline(), *(f"  | {line}" for line in self.last_lines)])

    def to_json(self) -> dict:
        return {
            "host": self.host, "rank": self.rank, "local_rank": self.local_rank, "exit_code": self.exit_code,
            "rank_exitcode": self.rank_exitcode, "signal": self.signal,
            "node_time": self.node_time.isoformat() if self.node_time else None,
            "cascade": self.cascade, "last_lines": self.last_lines,
        }


def host_failure(
    host: str,
    *,
    exit_code: int,
    agent_lines: list[str],
    rank_lines: dict[int, list[str]],
    host_lines: list[str] | None = None,
    head_time: float | None = None,
) -> Failure:
    """Build the Failure of one node from its output: torchrun's report, else torch's [rankN] prefixes."""
    report = parse_torchrun_report(agent_lines) or parse_rank_reports(agent_lines)
    failure = Failure(host=host, exit_code=exit_code, head_time=head_time)
    if report:
        failure.rank, failure.local_rank = report.rank, report.local_rank
        failure.rank_exitcode, failure.node_time = report.exitcode, report.time
    if failure.rank is None:
        for line in reversed(host_lines or []):
            if m := _TORCH_RANK_PREFIX.match(line):
                failure.rank = int(m.group(1))
                break
    lines = rank_lines.get(failure.rank) if failure.rank is not None else None
    failure.last_lines = list((lines or host_lines or agent_lines)[-LAST_LINES:])
    failure.cascade = bool(CASCADE.search("\n".join(failure.last_lines))) or failure.signal in ("SIGTERM", "SIGINT")
    return failure


def first_failure(failures: list[Failure]) -> Failure | None:
    """The root cause among the failed nodes (see the module docstring for the order)."""
    if not failures:
        return None
    by_node_time = all(f.node_time is not None for f in failures)

    def key(f: Failure):
        t = f.node_time.timestamp() if by_node_time else (f.head_time if f.head_time is not None else float("inf"))
        return (f.cascade, t)

    return min(failures, key=key)
