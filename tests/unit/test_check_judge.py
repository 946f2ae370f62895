"""Per-node verdicts of `orchestrator check` from probe documents and recorded figures (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.check.judge import (CheckThresholds, Link, Reference, clock_problems, clock_skew, judge_node,
                                      link_problem, slow_relative)
from orchestrator.errors import ConfigError

GATE = Path(__file__).resolve().parents[1] / "fixtures" / "gate"
TH = CheckThresholds()


def doc(**changes) -> dict:
    """A healthy node probe document (probe.py `node`), as a sandbox host printed it."""
    base = {"python": "3.11.2",
            "disk": {"path": "/srv/job", "free_bytes": 75_000_000_000, "total_bytes": 270_000_000_000},
            "cpu_s": 0.112, "nvidia_smi": None, "clocks": None, "time": 1796413522.9}
    return base | changes


def smi(name: str, rc: int = 0) -> dict:
    return {"rc": rc, "stdout": (GATE / name).read_text(), "stderr": ""}


def test_a_healthy_node_without_gpus_passes():
    assert judge_node(doc(), skew_s=-0.01, thresholds=TH) == []


def test_disk_full_or_unwritable_or_too_small():
    full = doc(disk={"path": "/srv/job", "free_bytes": 0, "total_bytes": 1 << 20, "error": "No space left on device"})
    assert judge_node(full, skew_s=0, thresholds=TH) == ["disk: cannot write in /srv/job: No space left on device"]
    small = doc(disk={"path": "/srv/job", "free_bytes": 400_000_000, "total_bytes": 1 << 40})
    assert judge_node(small, skew_s=0, thresholds=TH) == ["disk: 0.40 GB free in /srv/job < 1 GB"]
    assert judge_node(small, skew_s=0, thresholds=CheckThresholds(min_free_gb=0.1)) == []


def test_clock_skew_is_the_distance_outside_the_probes_round_trip():
    # the head started the probe at 100.0 and its line arrived at 101.5 (a busy head: 64 sessions, load 60)
    assert clock_skew(100.8, 100.0, 101.5) == 0.0   # a right clock read a time inside the window
    assert clock_skew(98.5, 100.0, 101.5) == -1.5   # behind: before the probe could have started
    assert clock_skew(104.0, 100.0, 101.5) == 2.5   # ahead: after its line had arrived


def test_clock_skew_either_way():
    assert judge_node(doc(), skew_s=-3.5, thresholds=TH) == ["clock: -3.50 s off the head's (limit 1 s)"]
    assert judge_node(doc(), skew_s=0.9, thresholds=TH) == []


def test_gpu_output_is_judged_by_the_install_gates_rules():
    eight = CheckThresholds(gpus_per_node=8)
    assert judge_node(doc(nvidia_smi=smi("nvidia-smi_8xh100.csv")), skew_s=0, thresholds=eight) == []
    missing = judge_node(doc(nvidia_smi=smi("nvidia-smi_7of8.csv")), skew_s=0, thresholds=eight)
    assert missing == ["gpu: 7 GPU(s) found, 8 expected"]
    ecc = judge_node(doc(nvidia_smi=smi("nvidia-smi_ecc.csv")), skew_s=0, thresholds=TH)
    assert len(ecc) == 1 and ecc[0].startswith("gpu: GPU") and "uncorrected ECC" in ecc[0]
    driver = judge_node(doc(nvidia_smi=smi("nvidia-smi_no_driver.txt", rc=9)), skew_s=0, thresholds=TH)
    assert driver[0].startswith("gpu: nvidia-smi failed (exit 9): NVIDIA-SMI has failed")
    assert judge_node(doc(), skew_s=0, thresholds=CheckThresholds(gpus_per_node=8)) == [
        "gpu: no nvidia-smi on PATH, 8 GPU(s) expected"]


def test_hardware_clock_slowdown_fails_the_gpu():
    # nvidia-smi --query-gpu=index,clocks.sm,clocks.max.sm,clocks_throttle_reasons.active --format=csv,noheader,nounits
    text = "0, 1980, 1980, 0x0000000000000000\n1, 1980, 1980, 0x0000000000000001\n2, 1035, 1980, 0x0000000000000048\n"
    assert clock_problems(text) == ["GPU 2 clock 1035/1980 MHz: HW slowdown, HW thermal slowdown"]
    assert clock_problems("0, [N/A], [N/A], [N/A]\n") == []
    clocks = {"rc": 0, "stdout": text, "stderr": ""}
    reasons = judge_node(doc(nvidia_smi=smi("nvidia-smi_8xh100.csv"), clocks=clocks), skew_s=0, thresholds=TH)
    assert reasons == ["gpu: GPU 2 clock 1035/1980 MHz: HW slowdown, HW thermal slowdown"]


def test_cpu_is_slow_relative_to_the_median_node():
    # the CPU loop on 8 sandbox hosts, one of them in a 5% CFS quota (the node probes two at a time)
    loop = {"c1": 116, "c2": 142, "c3": 102, "c4": 117, "c5": 788, "c6": 108, "c7": 66, "c8": 102}
    assert slow_relative(loop, ratio=2.0) == {"c5": 112.0}
    fast_machines = {h: v / 20 for h, v in loop.items()}  # the same fleet on CPUs 20x faster: the same verdict
    assert list(slow_relative(fast_machines, ratio=2.0)) == ["c5"]
    assert slow_relative({"a": 1.0, "b": 9.0}, ratio=2.0) == {}  # two nodes: which one is off?


def test_links_are_slow_relative_to_the_median_link():
    ref = Reference.of([Link(0.35, 209.0), Link(0.367, 206.0), Link(0.0012, 180.0)])
    assert ref == Reference(0.35, 206.0)
    assert link_problem(Link(0.0013, 184.0), ref, TH) == "bandwidth 0.0013 GB/s < 0.5 x median 0.35 GB/s"
    assert link_problem(Link(0.2, 206.0), ref, TH) is None
    assert link_problem(Link(0.35, 1000.0), ref, TH) == "latency 1000 us > 2 x median 206 us + 500 us"
    assert link_problem(Link(0.35, 900.0), ref, TH) is None  # within 2 x median + the floor
    assert link_problem(Link(error="n3: timed out after 60 s"), ref, TH) == "test failed: n3: timed out after 60 s"
    h100 = Reference.of([Link(370.0, 35.0), Link(360.0, 33.0), Link(372.0, 36.0)])  # NVLink/IB scale figures
    assert link_problem(Link(95.0, 34.0), h100, CheckThresholds(lat_floor_us=20)).startswith("bandwidth 95 GB/s")
    assert Reference.of([Link(0.3, 200.0)]) is None and link_problem(Link(0.001, 200.0), None, TH) is None


@pytest.mark.parametrize("field,kwargs", [("--bw-ratio", {"bw_ratio": 1.5}), ("--cpu-ratio", {"cpu_ratio": 1.0}),
                                          ("--max-skew", {"max_skew_s": 0}), ("--gpus-per-node", {"gpus_per_node": 0}),
                                          ("--min-free-gb", {"min_free_gb": -1})])
def test_bad_thresholds_name_their_option(field, kwargs):
    with pytest.raises(ConfigError, match=field):
        CheckThresholds(**kwargs)
