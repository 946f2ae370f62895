"""The validation gate: decide from nvidia-smi, ibv_devinfo and all_reduce_perf outputs whether a node may run.

    from orchestrator.provision.gate import GateThresholds, GateInputs, ToolRun, decide, admitted
    inputs = GateInputs(nvidia_smi=ToolRun(0, smi_csv), ibv_devinfo=ToolRun(0, devinfo), all_reduce=ToolRun(0, perf))
    result = decide("node3", inputs, GateThresholds(gpus_per_node=8, min_busbw_gbps=150.0))
    result.passed, result.reasons     # False, ["all_reduce_perf bus bandwidth 41.2 GB/s < 150.0 GB/s at 1073741824 B"]
    admitted(hosts, results)           # the HostList without failed nodes, slots = GPUs found

Pure functions, no I/O: the playbook's validate role collects the outputs (playbooks/roles/validate), the
runner hands them here, and the gated inventory/hostfile leave out every node that did not pass. A tool that
did not run (ToolRun(None, ...)) counts as missing. Parsers read the tools' plain-text formats:
  nvidia-smi --query-gpu=index,name,pci.bus_id,memory.total,ecc.errors.uncorrected.volatile.total --format=csv,noheader
  ibv_devinfo                     (hca_id / port / state / link_layer blocks)
  all_reduce_perf -b 8M -e 1G ... (nccl-tests: one row per size, out-of-place then in-place; busbw in GB/s)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from orchestrator.errors import ConfigError
from orchestrator.hosts import Host, HostList

__all__ = [
    "GateThresholds", "ToolRun", "GateInputs", "Gpu", "IbPort", "AllReduceRow", "GateResult",
    "parse_nvidia_smi", "parse_ibv_devinfo", "parse_all_reduce_perf", "decide", "admitted",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class GateThresholds:
    """What a node must show to pass the gate."""

    gpus_per_node: int | None = None
    """GPUs nvidia-smi must list; None = at least one."""
    min_busbw_gbps: float = 0.0
    """all_reduce_perf bus bandwidth (GB/s) at the largest measured size; 0 = do not require the test."""
    min_active_ib_ports: int = 1
    """InfiniBand/RoCE ports in PORT_ACTIVE state; 0 = RDMA not required (socket transport)."""
    max_uncorrected_ecc: int = 0
    """Volatile uncorrected ECC errors tolerated per GPU."""

    def __post_init__(self) -> None:
        if self.gpus_per_node is not None and self.gpus_per_node < 1:
            raise ConfigError("--gate-gpus", self.gpus_per_node, "use a positive GPU count, or leave it out")
        if self.min_busbw_gbps < 0:
            raise ConfigError("--gate-busbw", self.min_busbw_gbps, "use a bandwidth >= 0 GB/s")
        if self.min_active_ib_ports < 0:
            raise ConfigError("--gate-ib-ports", self.min_active_ib_ports, "use a port count >= 0")


@dataclass(frozen=True, slots=True)
class ToolRun:
    """One tool's exit status and output; rc None = the tool did not run (skipped, or never reached)."""

    rc: int | None
    stdout: str = ""
    stderr: str = ""


NOT_RUN = ToolRun(None)


@dataclass(frozen=True, slots=True)
class GateInputs:
    nvidia_smi: ToolRun = NOT_RUN
    ibv_devinfo: ToolRun = NOT_RUN
    all_reduce: ToolRun = NOT_RUN


@dataclass(frozen=True, slots=True)
class Gpu:
    index: int
    name: str
    bus_id: str
    memory_mib: int | None
    uncorrected_ecc: int | None  # None: "[N/A]" (ECC off or unsupported)


@dataclass(frozen=True, slots=True)
class IbPort:
    hca: str
    port: int
    state: str       # PORT_ACTIVE, PORT_DOWN, PORT_INIT, ...
    link_layer: str  # InfiniBand or Ethernet (RoCE)


@dataclass(frozen=True, slots=True)
class AllReduceRow:
    size: int
    busbw_out_of_place: float
    busbw_in_place: float
    wrong: int  # results that failed validation (0, or -1/"N/A" when not checked -> 0 here)


@dataclass(frozen=True, slots=True)
class GateResult:
    host: str
    passed: bool
    reasons: tuple[str, ...] = ()
    gpus: int = 0
    active_ib_ports: int = 0
    busbw_gbps: float | None = None

    @property
    def summary(self) -> str:
        """One cell for the per-host table: 'pass' or 'FAIL: reason; reason'."""
        return "pass" if self.passed else "FAIL: " + "; ".join(self.reasons)


def _int_or_none(text: str) -> int | None:
    match = re.match(r"\s*(\d+)", text)
    return int(match.group(1)) if match else None


def parse_nvidia_smi(text: str) -> list[Gpu]:
    """Rows of `nvidia-smi --query-gpu=index,name,pci.bus_id,memory.total,ecc...volatile.total --format=csv,noheader`."""
    gpus = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) < 5 or not cells[0].isdigit():
            continue  # a warning line, or an error such as "No devices were found"
        gpus.append(Gpu(int(cells[0]), cells[1], cells[2], _int_or_none(cells[3]), _int_or_none(cells[4])))
    return gpus


_HCA = re.compile(r"^hca_id:\s*(\S+)")
_PORT = re.compile(r"^\s+port:\s*(\d+)")
_FIELD = re.compile(r"^\s+(state|link_layer):\s*(\S+)")


def parse_ibv_devinfo(text: str) -> list[IbPort]:
    """Ports of every HCA in `ibv_devinfo` output (port blocks carry state and link_layer)."""
    ports: list[IbPort] = []
    hca, port, values = None, None, {}

    def flush() -> None:
        if hca is not None and port is not None:
            ports.append(IbPort(hca, port, values.get("state", "UNKNOWN"), values.get("link_layer", "UNKNOWN")))

    for line in text.splitlines():
        if m := _HCA.match(line):
            flush()
            hca, port, values = m.group(1), None, {}
        elif m := _PORT.match(line):
            flush()
            port, values = int(m.group(1)), {}
        elif (m := _FIELD.match(line)) and port is not None:
            values[m.group(1)] = m.group(2)
    flush()
    return ports


def parse_all_reduce_perf(text: str) -> list[AllReduceRow]:
    """Data rows of nccl-tests output: size count type redop root time algbw busbw #wrong time algbw busbw #wrong."""
    rows = []
    for line in text.splitlines():
        cells = line.split()
        if len(cells) < 13 or line.lstrip().startswith("#") or not cells[0].isdigit():
            continue
        try:
            rows.append(AllReduceRow(int(cells[0]), float(cells[7]), float(cells[11]), _wrong(cells[8]) + _wrong(cells[12])))
        except ValueError:
            continue  # a malformed row is not evidence of bandwidth
    return rows


def _wrong(cell: str) -> int:
    return int(cell) if cell.lstrip("-").isdigit() and int(cell) > 0 else 0


def _missing(tool: str, run: ToolRun) -> str:
    if run.rc is None:
        return f"{tool} did not run"
    detail = (run.stderr or run.stdout).strip().splitlines()
    return f"{tool} failed (exit {run.rc})" + (f": {detail[0][:160]}" if detail else "")


def decide(host: str, inputs: GateInputs, thresholds: GateThresholds) -> GateResult:
    """Pass/fail for one node with every reason it failed (not only the first)."""
    reasons: list[str] = []

    gpus = parse_nvidia_smi(inputs.nvidia_smi.stdout) if inputs.nvidia_smi.rc == 0 else []
    if inputs.nvidia_smi.rc != 0:
        reasons.append(_missing("nvidia-smi", inputs.nvidia_smi))
    elif not gpus:
        reasons.append("nvidia-smi lists no GPU")
    elif thresholds.gpus_per_node is not None and len(gpus) != thresholds.gpus_per_node:
        reasons.append(f"{len(gpus)} GPU(s) found, {thresholds.gpus_per_node} expected")
    for gpu in gpus:
        if gpu.uncorrected_ecc is not None and gpu.uncorrected_ecc > thresholds.max_uncorrected_ecc:
            reasons.append(f"GPU {gpu.index} ({gpu.bus_id}) has {gpu.uncorrected_ecc} uncorrected ECC errors")

    ports = parse_ibv_devinfo(inputs.ibv_devinfo.stdout) if inputs.ibv_devinfo.rc == 0 else []
    active = [p for p in ports if p.state == "PORT_ACTIVE"]
    if thresholds.min_active_ib_ports:
        if inputs.ibv_devinfo.rc != 0:
            reasons.append(_missing("ibv_devinfo", inputs.ibv_devinfo))
        elif len(active) < thresholds.min_active_ib_ports:
            down = ", ".join(f"{p.hca}/{p.port} {p.state}" for p in ports if p.state != "PORT_ACTIVE")
            reasons.append(f"{len(active)} active RDMA port(s), {thresholds.min_active_ib_ports} needed"
                           + (f" ({down})" if down else ""))

    busbw = None
    if thresholds.min_busbw_gbps:
        rows = parse_all_reduce_perf(inputs.all_reduce.stdout) if inputs.all_reduce.rc == 0 else []
        if inputs.all_reduce.rc != 0:
            reasons.append(_missing("all_reduce_perf", inputs.all_reduce))
        elif not rows:
            reasons.append("all_reduce_perf printed no result rows")
        else:
            largest = max(rows, key=lambda r: r.size)
            busbw = min(largest.busbw_out_of_place, largest.busbw_in_place)
            if busbw < thresholds.min_busbw_gbps:
                reasons.append(f"all_reduce_perf bus bandwidth {busbw:g} GB/s < {thresholds.min_busbw_gbps:g} GB/s "
                               f"at {largest.size} B")
            if wrong := sum(r.wrong for r in rows):
                reasons.append(f"all_reduce_perf: {wrong} wrong result(s)")

    return GateResult(host, not reasons, tuple(reasons), len(gpus), len(active), busbw)


def admitted(hosts: Iterable[Host], results: Mapping[str, GateResult]) -> HostList:
    """The hosts that passed, in their order; slots become the GPUs found (when any), so the hostfile is true.

    A host without a result (not validated) is left out: the gate admits only what it saw pass.
    """
    kept = HostList()
    for host in hosts:
        result = results.get(host.name)
        if result is not None and result.passed:
            kept.append(replace(host, slots=result.gpus, slot_ids=None) if result.gpus else host)
    return kept
