"""The validation gate's decision logic against recorded tool outputs (tests/fixtures/gate/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import hostfile
from orchestrator.errors import ConfigError
from orchestrator.hosts import Host, HostList
from orchestrator.provision.gate import (
    GateInputs, GateThresholds, ToolRun, admitted, decide, parse_all_reduce_perf, parse_ibv_devinfo, parse_nvidia_smi,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "gate"
H100_NODE = GateThresholds(gpus_per_node=8, min_busbw_gbps=300.0, min_active_ib_ports=4)


def run(name: str, rc: int = 0) -> ToolRun:
    return ToolRun(rc, (FIXTURES / name).read_text())


def healthy(**changes: ToolRun) -> GateInputs:
    inputs = {"nvidia_smi": run("nvidia-smi_8xh100.csv"), "ibv_devinfo": run("ibv_devinfo_4x_active.txt"),
              "all_reduce": run("all_reduce_perf_8xh100.txt")}
    return GateInputs(**(inputs | changes))


def test_parsers_read_the_recorded_outputs():
    gpus = parse_nvidia_smi((FIXTURES / "nvidia-smi_8xh100.csv").read_text())
    assert [g.index for g in gpus] == list(range(8))
    assert gpus[0].name == "NVIDIA H100 80GB HBM3" and gpus[0].memory_mib == 81559 and gpus[0].uncorrected_ecc == 0
    ports = parse_ibv_devinfo((FIXTURES / "ibv_devinfo_port_down.txt").read_text())
    assert [(p.hca, p.port, p.state) for p in ports] == [
        ("mlx5_0", 1, "PORT_ACTIVE"), ("mlx5_1", 1, "PORT_DOWN"), ("mlx5_2", 1, "PORT_ACTIVE"), ("mlx5_3", 1, "PORT_INIT")]
    assert {p.link_layer for p in ports} == {"InfiniBand"}
    rows = parse_all_reduce_perf((FIXTURES / "all_reduce_perf_8xh100.txt").read_text())
    assert [r.size for r in rows] == [8388608 * 2**k for k in range(8)]
    assert rows[-1].busbw_out_of_place == pytest.approx(478.0)


def test_healthy_node_passes_with_its_bandwidth_recorded():
    result = decide("node1", healthy(), H100_NODE)
    assert result.passed, result.reasons
    assert (result.gpus, result.active_ib_ports) == (8, 4)
    assert result.busbw_gbps == pytest.approx(473.27, abs=0.01)  # the worse of out-of-place / in-place at 1 GiB
    assert result.summary == "pass"


def test_low_bus_bandwidth_fails_and_names_the_numbers():
    result = decide("node2", healthy(all_reduce=run("all_reduce_perf_low_busbw.txt")), H100_NODE)
    assert not result.passed
    assert result.reasons == ("all_reduce_perf bus bandwidth 51.49 GB/s < 300 GB/s at 1073741824 B",)


def test_threshold_is_inclusive_and_zero_means_no_bandwidth_test():
    assert decide("n", healthy(), GateThresholds(gpus_per_node=8, min_active_ib_ports=4, min_busbw_gbps=473.2673)).passed
    no_test = decide("n", healthy(all_reduce=ToolRun(None)), GateThresholds(gpus_per_node=8, min_active_ib_ports=4))
    assert no_test.passed and no_test.busbw_gbps is None


def test_missing_gpu_fails():
    result = decide("node3", healthy(nvidia_smi=run("nvidia-smi_7of8.csv")), H100_NODE)
    assert result.reasons == ("7 GPU(s) found, 8 expected",)


def test_driver_not_loaded_fails_with_the_tools_message():
    result = decide("node4", healthy(nvidia_smi=run("nvidia-smi_no_driver.txt", rc=9), all_reduce=ToolRun(None)), H100_NODE)
    assert result.reasons[0].startswith("nvidia-smi failed (exit 9): NVIDIA-SMI has failed because it couldn't communicate")
    assert "all_reduce_perf did not run" in result.reasons


def test_no_gpu_at_all_fails_even_without_an_expected_count():
    result = decide("n", GateInputs(nvidia_smi=ToolRun(2, "", "[Errno 2] No such file or directory: b'nvidia-smi'")),
                    GateThresholds(min_active_ib_ports=0))
    assert result.reasons == ("nvidia-smi failed (exit 2): [Errno 2] No such file or directory: b'nvidia-smi'",)


def test_port_down_fails_and_lists_the_ports():
    result = decide("node5", healthy(ibv_devinfo=run("ibv_devinfo_port_down.txt")), H100_NODE)
    assert result.reasons == ("2 active RDMA port(s), 4 needed (mlx5_1/1 PORT_DOWN, mlx5_3/1 PORT_INIT)",)
    assert decide("node5", healthy(ibv_devinfo=run("ibv_devinfo_port_down.txt")),
                  GateThresholds(gpus_per_node=8, min_busbw_gbps=300.0, min_active_ib_ports=2)).passed


def test_uncorrected_ecc_errors_fail():
    result = decide("node6", healthy(nvidia_smi=run("nvidia-smi_ecc.csv")), H100_NODE)
    assert result.reasons == ("GPU 3 (00000000:5D:00.0) has 12 uncorrected ECC errors",)


def test_every_reason_is_reported_not_only_the_first():
    result = decide("node7", healthy(nvidia_smi=run("nvidia-smi_7of8.csv"), ibv_devinfo=run("ibv_devinfo_port_down.txt"),
                                     all_reduce=run("all_reduce_perf_low_busbw.txt")), H100_NODE)
    assert len(result.reasons) == 3 and result.summary.startswith("FAIL: 7 GPU(s) found")


def test_wrong_results_fail():
    text = (FIXTURES / "all_reduce_perf_8xh100.txt").read_text().replace("      0\n", "      3\n", 1)
    assert decide("n", healthy(all_reduce=ToolRun(0, text)), H100_NODE).reasons == ("all_reduce_perf: 3 wrong result(s)",)


def test_failed_nodes_are_left_out_of_the_hostfile_and_slots_follow_the_gpus_found():
    hosts = HostList([Host("node1", 4), Host("node2", 4), Host("node3", 4), Host("node4", 4)])
    results = {
        "node1": decide("node1", healthy(), H100_NODE),
        "node2": decide("node2", healthy(all_reduce=run("all_reduce_perf_low_busbw.txt")), H100_NODE),
        "node3": decide("node3", healthy(), H100_NODE),
        # node4 has no result: it never reached the gate, so it is not admitted
    }
    kept = admitted(hosts, results)
    assert hostfile.render(kept, "deepspeed") == "node1 slots=8\nnode3 slots=8\n"
    assert hostfile.render(kept, "pdsh") == "node[1,3]\n"


def test_bad_thresholds_are_config_errors():
    with pytest.raises(ConfigError, match="--gate-gpus"):
        GateThresholds(gpus_per_node=0)
    with pytest.raises(ConfigError, match="--gate-busbw"):
        GateThresholds(min_busbw_gbps=-1)
