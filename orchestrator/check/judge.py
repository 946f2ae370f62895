"""Verdicts of `orchestrator check` from measured figures: per-node limits, and "slow" relative to the fleet.

    th = CheckThresholds(min_free_gb=10)
    judge_node(facts, skew_s=0.02, thresholds=th)    # ['disk: 0.00 GB free in /srv/job < 10 GB']
    slow_relative({"n1": 0.04, "n2": 0.05, "n3": 0.31}, ratio=2.0)       # {"n3": 0.045}: > 2x the median
    link = Link(bw_gbps=0.01, lat_us=900.0)
    link_problem(link, Reference.of([link, ...]), th)                     # "bandwidth 0.01 GB/s < 0.5 x median ..."

Pure functions, no I/O. Speed is judged against the median of the nodes measured in the same check, never
against a number written for one kind of machine, so the same gate works on sandbox hosts and on H100s. Free
disk and clock skew are the job's needs and the head's clock, so those limits are absolute (and options).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from orchestrator.errors import ConfigError
from orchestrator.provision.gate import GateInputs, GateThresholds, ToolRun, decide, parse_nvidia_smi

__all__ = ["CheckThresholds", "Link", "Reference", "clock_problems", "clock_skew", "gpu_count", "judge_node", "link_problem",
           "slow_relative"]

GB = 1e9
# clocks_throttle_reasons.active bits that mean the hardware itself slows the GPU (nvml.h: HW slowdown, HW thermal,
# HW power brake); idle, application-clock and software power-cap reasons are normal operation
HW_THROTTLE = {0x8: "HW slowdown", 0x40: "HW thermal slowdown", 0x80: "HW power brake"}


@dataclass(frozen=True, kw_only=True, slots=True)
class CheckThresholds:
    """When a node fails `orchestrator check` (every figure is shown either way)."""

    min_free_gb: float = 1.0
    """Free space (GB) the workdir needs."""
    max_skew_s: float = 1.0
    """|node clock - head clock| allowed, seconds (see clock_skew)."""
    cpu_ratio: float = 2.0
    """A node's CPU loop slower than this x the median fails."""
    bw_ratio: float = 0.5
    """A link with bandwidth below this x the median fails."""
    lat_ratio: float = 2.0
    lat_floor_us: float = 500.0
    """A link with latency above lat_ratio x the median + lat_floor_us fails (the floor keeps jitter of
    microsecond-scale medians from counting)."""
    gpus_per_node: int | None = None
    """GPUs each node must show (None: any number, including none)."""
    max_uncorrected_ecc: int = 0

    def __post_init__(self) -> None:
        checks = (("--min-free-gb", self.min_free_gb, self.min_free_gb >= 0, "use a size in GB >= 0"),
                  ("--max-skew", self.max_skew_s, self.max_skew_s > 0, "use seconds > 0, e.g. 1"),
                  ("--cpu-ratio", self.cpu_ratio, self.cpu_ratio > 1, "use a ratio > 1, e.g. 2"),
                  ("--bw-ratio", self.bw_ratio, 0 < self.bw_ratio < 1, "use a ratio between 0 and 1, e.g. 0.5"),
                  ("--lat-ratio", self.lat_ratio, self.lat_ratio > 1, "use a ratio > 1, e.g. 2"),
                  ("--lat-floor-us", self.lat_floor_us, self.lat_floor_us >= 0, "use microseconds >= 0"),
                  ("--gpus-per-node", self.gpus_per_node, self.gpus_per_node is None or self.gpus_per_node >= 1,
                   "use a positive GPU count, or leave it out"))
        for field, value, ok, fix in checks:
            if not ok:
                raise ConfigError(field, value, fix)


def judge_node(facts: Mapping, *, skew_s: float | None, thresholds: CheckThresholds) -> list[str]:
    """Every reason one node fails, from its probe's document (probe.py `node`) and its clock skew."""
    reasons: list[str] = []
    disk = facts.get("disk") or {}
    if "error" in disk:
        reasons.append(f"disk: cannot write in {disk.get('path')}: {disk['error']}")
    elif "free_bytes" in disk and disk["free_bytes"] < thresholds.min_free_gb * GB:
        reasons.append(f"disk: {disk['free_bytes'] / GB:.2f} GB free in {disk['path']} < {thresholds.min_free_gb:g} GB")
    if skew_s is not None and abs(skew_s) > thresholds.max_skew_s:
        reasons.append(f"clock: {skew_s:+.2f} s off the head's (limit {thresholds.max_skew_s:g} s)")
    smi = facts.get("nvidia_smi")
    if smi is None:
        if thresholds.gpus_per_node:
            reasons.append(f"gpu: no nvidia-smi on PATH, {thresholds.gpus_per_node} GPU(s) expected")
    else:
        gate = decide("", GateInputs(nvidia_smi=ToolRun(smi["rc"], smi["stdout"], smi["stderr"])),
                      GateThresholds(gpus_per_node=thresholds.gpus_per_node, min_active_ib_ports=0,
                                     max_uncorrected_ecc=thresholds.max_uncorrected_ecc))
        reasons += [f"gpu: {r}" for r in gate.reasons]
        clocks = facts.get("clocks") or {}
        if clocks.get("rc") == 0:
            reasons += [f"gpu: {p}" for p in clock_problems(clocks["stdout"])]
    return reasons


def clock_skew(node_time: float, started: float, arrived: float) -> float:
    """How far the node's clock is at least off the head's: its reading `node_time` was taken after the head
    started the probe (`started`) and before its line arrived (`arrived`), so a right clock read a time inside
    that window. 0 inside it; else the distance to it (negative: the node is behind). A slow session widens the
    window, never makes a right clock look wrong."""
    if node_time < started:
        return node_time - started
    return max(0.0, node_time - arrived)


def gpu_count(facts: Mapping) -> int:
    smi = facts.get("nvidia_smi")
    return len(parse_nvidia_smi(smi["stdout"])) if smi and smi.get("rc") == 0 else 0


def clock_problems(text: str) -> list[str]:
    """GPUs the hardware is slowing down, from `nvidia-smi --query-gpu=index,clocks.sm,clocks.max.sm,
    clocks_throttle_reasons.active --format=csv,noheader,nounits` rows."""
    problems = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) < 4 or not cells[0].isdigit():
            continue
        try:
            active = int(cells[3], 16) if cells[3].lower().startswith("0x") else int(cells[3])
        except ValueError:
            continue  # [N/A] on GPUs without the field
        causes = [name for bit, name in HW_THROTTLE.items() if active & bit]
        if causes:
            problems.append(f"GPU {cells[0]} clock {cells[1]}/{cells[2]} MHz: {', '.join(causes)}")
    return problems


def slow_relative(values: Mapping[str, float], *, ratio: float) -> dict[str, float]:
    """Hosts whose figure (a time: higher is worse) is above ratio x the median of all hosts -> that median.

    Fewer than 3 figures: nothing is slow (a median of two cannot tell which one is off)."""
    if len(values) < 3:
        return {}
    median = statistics.median(values.values())
    return {host: median for host, value in values.items() if value > ratio * median}


@dataclass(frozen=True, slots=True)
class Link:
    """What one pair measured: bus bandwidth (GB/s) and small-message all_reduce latency (us); or why nothing."""

    bw_gbps: float | None = None
    lat_us: float | None = None
    error: str | None = None

    def describe(self) -> str:
        if self.error:
            return self.error
        return f"{self.bw_gbps:.3g} GB/s, {self.lat_us:.0f} us"


@dataclass(frozen=True, slots=True)
class Reference:
    """The fleet's typical link: medians over the links of round 1 (or of a later round's control pair)."""

    bw_gbps: float
    lat_us: float

    @classmethod
    def of(cls, links: Iterable[Link], *, minimum: int = 2) -> Reference | None:
        """Medians of the measured links; None with fewer than `minimum` (one link of unknown health is its own
        median: nothing to compare with; one of two known-good nodes is a reference)."""
        good = [link for link in links if link.error is None and link.bw_gbps is not None]
        if len(good) < minimum:
            return None
        return cls(statistics.median(link.bw_gbps for link in good), statistics.median(link.lat_us for link in good))


def link_problem(link: Link, ref: Reference | None, th: CheckThresholds) -> str | None:
    """Why this link is bad compared with the fleet's reference, or None."""
    if link.error is not None:
        return f"test failed: {link.error}"
    if ref is None:
        return None
    if link.bw_gbps < th.bw_ratio * ref.bw_gbps:
        return f"bandwidth {link.bw_gbps:.3g} GB/s < {th.bw_ratio:g} x median {ref.bw_gbps:.3g} GB/s"
    if link.lat_us > th.lat_ratio * ref.lat_us + th.lat_floor_us:
        return (f"latency {link.lat_us:.0f} us > {th.lat_ratio:g} x median {ref.lat_us:.0f} us "
                f"+ {th.lat_floor_us:.0f} us")
    return None
