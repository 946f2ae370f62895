"""Run the health gate on hosts: per-node probes, then the network test by bisection; one CheckReport back.

    from orchestrator.check import CheckSpec, run_check
    report = run_check(resolve_hosts(hosts="node[1-16]"), CheckSpec(python=("/opt/venv/bin/python",),
                       workdir=("/srv/job",)), ssh=SshOptions(config="ssh_config"))
    report.exit_code          # 0 every node passed, 1 some node failed, 255 some node unreachable / timed out
    report.admitted()         # the HostList without the failed nodes (what --out-hostfile writes)
    report.nodes["node7"].reasons   # ['network: bandwidth 0.0012 GB/s < 0.5 x median 0.41 GB/s (with node1, ...)']

Inside an event loop use `run_check_async`. This is the entry point for a pre-flight before launch or between a
supervisor's attempts: it needs the hosts, how to reach them, and the run's interpreter and workdir.

Phase 1 runs probe.py `node` on every host (at most `fanout` at a time): disk, clock, interpreter, CPU loop,
nvidia-smi; a node whose CPU loop was slow is measured again beside nodes of median speed and fails only if it
is slow again. Phase 2 tests the network between the nodes that passed, with the run's backend (gloo on CPU,
NCCL on GPU) and the run's interpreter, in rounds of concurrent pairs (bisect.Bisection). Every remote process
runs under the node agent with the check's run id, so a timeout or Ctrl-C kills it on the node.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import statistics
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from orchestrator.check.bisect import Bisection, Pair, round_robin
from orchestrator.check.judge import CheckThresholds, Link, clock_skew, gpu_count, judge_node, slow_relative
from orchestrator.errors import EXIT_FAILURE, EXIT_OK, EXIT_UNREACHABLE, ConfigError
from orchestrator.hosts import HostList
from orchestrator.inline import python_source
from orchestrator.launch.plan import DEFAULT_PYTHON, per_host_values
from orchestrator.contracts import new_run_id
from orchestrator.remote.fanout import DEFAULT_FANOUT, run_on_async

__all__ = ["CheckSpec", "NodeReport", "CheckReport", "run_check", "run_check_async", "measure_pairs"]

log = logging.getLogger("orchestrator.check")

PROBE = Path(__file__).with_name("probe.py")
BACKENDS = ("auto", "gloo", "nccl")
PORT_BASE, PORT_SPAN = 31000, 900  # away from launch's rendezvous ports (29500-30499)


@dataclass(frozen=True, kw_only=True)
class CheckSpec:
    """What to check and how (validated by `validate`, which raises ConfigError)."""

    python: tuple[str, ...] = ()
    """Interpreter on the nodes, `PATH` or `NODESET=PATH` entries like launch's --python (default python3)."""
    workdir: tuple[str, ...] = ()
    """Where the run writes, `DIR` or `NODESET=DIR` (default: the login directory)."""
    thresholds: CheckThresholds = field(default_factory=CheckThresholds)
    network: bool = True
    backend: str = "auto"
    """auto: nccl when every node has GPUs, else gloo."""
    size_mb: float = 4.0
    """all_reduce message size for bandwidth."""
    budget_s: float = 1.0
    """Seconds of bandwidth measurement per pair (at least one message)."""
    port: int | None = None
    """First TCP port for the pairs' rendezvous (two per round); default 31000-31899 from the check id."""
    fanout: int = DEFAULT_FANOUT
    """Node probes running at once (the network rounds start all their pairs together)."""
    timeout: float = 60.0
    """Seconds per host and phase; a pair's rendezvous and collectives get half of it."""
    check_id: str = field(default_factory=lambda: new_run_id() + "-check")

    def validate(self, hosts: HostList) -> tuple[dict[str, str], dict[str, str | None]]:
        """ConfigError on bad input; else (python per host, workdir per host)."""
        if not hosts:
            raise ConfigError("--hosts", "", "give at least one host")
        if self.backend not in BACKENDS:
            raise ConfigError("--backend", self.backend, f"use one of {', '.join(BACKENDS)}")
        for name, value, ok, fix in (("--size-mb", self.size_mb, self.size_mb > 0, "use a size in MB > 0, e.g. 4"),
                                     ("--budget", self.budget_s, self.budget_s > 0, "use seconds > 0, e.g. 1"),
                                     ("--fanout", self.fanout, self.fanout >= 1, "use a positive number, e.g. 64"),
                                     ("--timeout", self.timeout, self.timeout >= 10, "use at least 10 seconds"),
                                     ("--net-port", self.port, self.port is None or 1024 <= self.port <= 65000,
                                      "use a TCP port 1024-65000")):
            if not ok:
                raise ConfigError(name, value, fix)
        names = hosts.names
        pythons = per_host_values(self.python, names, field="--python", default=DEFAULT_PYTHON)
        workdirs = per_host_values(self.workdir, names, field="--workdir", default=None)
        for host, wd in workdirs.items():
            if wd is not None and not wd.startswith("/"):
                raise ConfigError("--workdir", wd, f"give an absolute path on {host}, e.g. /srv/job")
        return pythons, workdirs


@dataclass
class NodeReport:
    """One node's figures and verdict. status: pass, fail, or unreachable (no answer, or timed out)."""

    host: str
    status: str = "pass"
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    python: str | None = None
    torch: str | None = None
    import_s: float | None = None
    free_gb: float | None = None
    skew_s: float | None = None
    cpu_ms: float | None = None
    gpus: int | None = None
    """GPUs nvidia-smi listed; None: no nvidia-smi there (GPU checks skipped)."""
    bw_gbps: float | None = None
    lat_us: float | None = None
    peer: str | None = None
    """The node it was measured with in round 1."""

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def fail(self, reason: str, *, unreachable: bool = False) -> None:
        self.reasons.append(reason)
        if unreachable or self.status != "unreachable":
            self.status = "unreachable" if unreachable else "fail"

    @property
    def verdict(self) -> str:
        """One cell: 'pass', or the status and every reason."""
        return "pass" if self.passed else f"{self.status.upper()}: " + "; ".join(self.reasons)


@dataclass
class CheckReport:
    check_id: str
    hosts: HostList
    nodes: dict[str, NodeReport]
    network: dict = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def failed(self) -> list[str]:
        return [h for h, n in self.nodes.items() if not n.passed]

    @property
    def exit_code(self) -> int:
        """255 when a node was unreachable or timed out, else 1 when a node failed, else 0."""
        statuses = {n.status for n in self.nodes.values()}
        return EXIT_UNREACHABLE if "unreachable" in statuses else EXIT_FAILURE if "fail" in statuses else EXIT_OK

    def admitted(self) -> HostList:
        """The hosts that passed, in order; slots = GPUs found where there are any (the install gate's rule)."""
        from orchestrator.provision.gate import admitted

        return admitted(self.hosts, self.nodes)

    def to_json(self) -> dict:
        failed = self.failed
        return {"check_id": self.check_id, "exit_code": self.exit_code,
                "passed": [h for h in self.nodes if h not in failed], "failed": failed,
                "nodes": [asdict(n) | {"passed": n.passed} for n in self.nodes.values()],
                "network": self.network, "timings": self.timings}


def _probe(python: str, *args: str) -> list[str]:
    return [python, "-c", python_source(PROBE), *args]


def _collector(docs: dict[str, dict], arrival: dict[str, float]) -> Callable[[str, str, str], None]:
    """on_line for the fan-out: keep each host's JSON line and when it arrived (for the clock skew)."""

    def on_line(host: str, stream: str, line: str) -> None:
        if stream == "stdout" and line.startswith("{"):
            try:
                docs[host] = json.loads(line)
            except ValueError:
                return
            arrival[host] = time.time()

    return on_line


async def _node_phase(report: CheckReport, spec: CheckSpec, pythons, workdirs, *, ssh, transport) -> None:
    docs: dict[str, dict] = {}
    arrival: dict[str, float] = {}
    ended: dict[str, float] = {}  # with the session's duration: when the head started it (for the clock window)
    result = await run_on_async(
        list(report.nodes), lambda h: _probe(pythons[h], "node", *(["--workdir", workdirs[h]] if workdirs[h] else [])),
        python=lambda h: pythons[h], ssh=ssh, transport=transport, fanout=spec.fanout, timeout=spec.timeout,
        on_line=_collector(docs, arrival), on_result=lambda r: ended.__setitem__(r.host, time.time()),
        run_id=f"{spec.check_id}-node", tail_lines=5)
    th = spec.thresholds
    for host, r in result.items():
        node = report.nodes[host]
        doc = docs.get(host)
        if r.error is not None:
            node.fail(f"unreachable: {r.error}", unreachable=True)
            continue
        if doc is None or r.exit_code != 0:
            last = next((line for line in reversed(r.tail) if line.strip()), "")
            hint = f" (is {pythons[host]} the interpreter there? see --python)" if r.exit_code == 127 else ""
            node.fail(f"probe failed: {r.reason()}{': ' + last if last else ''}{hint}")
            continue
        node.python = doc["python"]
        node.skew_s = round(clock_skew(doc["time"], ended[host] - r.duration_s, arrival[host]), 3)
        node.cpu_ms = round(doc["cpu_s"] * 1e3, 1)
        node.gpus = None if doc["nvidia_smi"] is None else gpu_count(doc)
        if "free_bytes" in doc["disk"]:
            node.free_gb = round(doc["disk"]["free_bytes"] / 1e9, 2)
        for reason in judge_node(doc, skew_s=node.skew_s, thresholds=th):
            node.fail(reason)
    cpu = {h: n.cpu_ms for h, n in report.nodes.items() if n.cpu_ms is not None}
    slow = slow_relative(cpu, ratio=th.cpu_ratio)
    if slow:
        await _cpu_again(report, spec, pythons, cpu, slow, ssh=ssh, transport=transport)


async def _cpu_again(report: CheckReport, spec: CheckSpec, pythons, cpu: dict[str, float], slow: dict[str, float],
                     *, ssh, transport) -> None:
    """Measure slow nodes again, each beside a node of median speed (interleaved, so at about the same moment):
    a node fails only when it is slow again against those. A busy moment is not a slow node."""
    th = spec.thresholds
    median = next(iter(slow.values()))
    peers = sorted((h for h in cpu if h not in slow), key=lambda h: abs(cpu[h] - median))[:len(slow)]
    order = [h for pair in itertools.zip_longest(slow, peers) for h in pair if h is not None]
    again: dict[str, dict] = {}
    await run_on_async(order, lambda h: _probe(pythons[h], "node", "--cpu-reps", "3"), python=lambda h: pythons[h],
                       ssh=ssh, transport=transport, fanout=spec.fanout, timeout=spec.timeout,
                       on_line=_collector(again, {}), run_id=f"{spec.check_id}-cpu")
    ms = {h: round(doc["cpu_s"] * 1e3, 1) for h, doc in again.items()}
    ref = statistics.median([ms[h] for h in peers if h in ms] or [median])
    for host in slow:
        node = report.nodes[host]
        if host not in ms:  # no second figure: the first one stands
            node.fail(f"cpu: loop {cpu[host]:.0f} ms > {th.cpu_ratio:g} x median {median:.0f} ms")
        elif ms[host] > th.cpu_ratio * ref:
            node.cpu_ms = ms[host]
            node.fail(f"cpu: loop {ms[host]:.0f} ms > {th.cpu_ratio:g} x {ref:.0f} ms of median nodes beside it "
                      f"(before: {cpu[host]:.0f} vs median {median:.0f} ms)")


async def measure_pairs(pairs: list[Pair], spec: CheckSpec, pythons: dict[str, str], *, backend: str, port: int,
                        round_id: str, ssh=None, transport=None,
                        ) -> tuple[dict[Pair, Link], dict[str, dict], dict[str, str]]:
    """Run every pair's test at once: ({pair: Link}, {host: its probe document}, {host: why it failed by itself})."""
    first = pairs[0][0]
    roles = {a: (0, a) for a, _ in pairs} | {b: (1, a) for a, b in pairs}
    barrier = f"{first}:{port + 1}:{2 * len(pairs)}"

    def argv(host: str) -> list[str]:
        rank, master = roles[host]
        return _probe(pythons[host], "net", "--rank", str(rank), "--master", master, "--port", str(port),
                      "--backend", backend, "--size-mb", f"{spec.size_mb:g}", "--budget-s", f"{spec.budget_s:g}",
                      "--timeout-s", f"{spec.timeout / 2:g}", "--barrier", f"{barrier}:{int(host == first)}")

    docs: dict[str, dict] = {}
    result = await run_on_async(list(roles), argv, python=lambda h: pythons[h], ssh=ssh, transport=transport,
                                fanout=len(roles), timeout=spec.timeout, on_line=_collector(docs, {}),
                                run_id=f"{spec.check_id}-{round_id}", tail_lines=5)
    failed = {h: f"python: import torch failed: {d['import_error']}" for h, d in docs.items() if "import_error" in d}
    links = {}
    for a, b in pairs:
        ends = [(h, docs.get(h), result[h]) for h in (a, b)]
        errors = [f"{h}: {d['error'] if d and 'error' in d else r.reason()}" for h, d, r in ends
                  if d is None or "error" in d or "import_error" in d]
        doc = docs.get(a) or {}
        links[(a, b)] = (Link(error="; ".join(errors)) if errors
                         else Link(bw_gbps=doc["bw_gbps"], lat_us=doc["lat_us"]))
    return links, docs, failed


def _port(spec: CheckSpec) -> int:
    return spec.port or PORT_BASE + zlib.crc32(spec.check_id.encode()) % PORT_SPAN


async def _network_phase(report: CheckReport, spec: CheckSpec, pythons, *, ssh, transport,
                         progress: Callable[[str], None]) -> None:
    nodes = [h for h, n in report.nodes.items() if n.passed]
    backend = spec.backend
    if backend == "auto":
        backend = "nccl" if nodes and all(report.nodes[h].gpus for h in nodes) else "gloo"
    net = report.network = {"backend": backend, "nodes": len(nodes), "rounds": 0, "pairs": [],
                            "all_pairs_rounds": len(round_robin(nodes)), "reference": None, "links": {},
                            "untested": [], "skipped": None}
    if len(nodes) < 2:
        net["skipped"] = "fewer than 2 nodes passed the node checks"
        return
    bisection = Bisection(nodes, spec.thresholds)
    base = _port(spec)
    while pairs := bisection.next_round():
        k = len(bisection.rounds)
        t = time.monotonic()
        links, docs, failed = await measure_pairs(pairs, spec, pythons, backend=backend, port=base + 2 * (k - 1),
                                                  round_id=f"net{k}", ssh=ssh, transport=transport)
        bisection.record(links, failed)
        for host, doc in docs.items():
            node = report.nodes[host]
            if node.torch is None and "torch" in doc:
                node.torch, node.import_s = doc["torch"], doc["import_s"]
        for (a, b), link in links.items():
            net["pairs"].append({"round": k, "pair": [a, b], **asdict(link)})
            if k == 1:
                for host, peer in ((a, b), (b, a)):
                    report.nodes[host].bw_gbps, report.nodes[host].lat_us, report.nodes[host].peer = \
                        link.bw_gbps, link.lat_us, peer
        progress(f"network round {k}: {len(pairs)} pair(s) in {time.monotonic() - t:.1f} s, "
                 f"{len(bisection.suspects)} suspect(s) left")
    net["rounds"] = len(bisection.rounds)
    if bisection.reference is not None:
        net["reference"] = asdict(bisection.reference)
    for host, why in bisection.bad.items():
        report.nodes[host].fail(why)
    for (a, b), why in bisection.links.items():
        net["links"][f"{a}-{b}"] = why
        for host, peer in ((a, b), (b, a)):
            report.nodes[host].warnings.append(f"network: with {peer}: {why}")
    net["untested"] = bisection.unresolved
    for host in bisection.unresolved:
        report.nodes[host].warnings.append("network: not resolved (no node known good to test it with)")


async def run_check_async(hosts: HostList, spec: CheckSpec, *, ssh=None, transport=None,
                          progress: Callable[[str], None] | None = None) -> CheckReport:
    """Validate (ConfigError, nothing started), probe every node, test the network; the report of every node."""
    pythons, workdirs = spec.validate(hosts)
    say = progress or (lambda msg: log.info("%s", msg))
    report = CheckReport(spec.check_id, hosts, {h: NodeReport(h) for h in hosts.names})
    start = time.monotonic()
    await _node_phase(report, spec, pythons, workdirs, ssh=ssh, transport=transport)
    report.timings["nodes_s"] = round(time.monotonic() - start, 2)
    say(f"node checks: {len(hosts)} host(s) in {report.timings['nodes_s']:.1f} s, {len(report.failed)} failed")
    if spec.network:
        t = time.monotonic()
        await _network_phase(report, spec, pythons, ssh=ssh, transport=transport, progress=say)
        report.timings["network_s"] = round(time.monotonic() - t, 2)
    report.timings["total_s"] = round(time.monotonic() - start, 2)
    return report


def run_check(hosts: HostList, spec: CheckSpec, **kwargs) -> CheckReport:
    """Blocking run_check_async, for callers without an event loop (the CLI, launch --preflight, scripts)."""
    return asyncio.run(run_check_async(hosts, spec, **kwargs))
