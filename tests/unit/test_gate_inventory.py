"""Pure parts of `orchestrator install`: the generated inventory, the plan, event collection, the gated inventory."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from orchestrator.errors import ConfigError
from orchestrator.hosts import Host, HostList
from orchestrator.provision.gate import GateThresholds
from orchestrator.provision.gated import filter_inventory, judge, write_gated
from orchestrator.provision.inventory import build_inventory, ssh_args_from
from orchestrator.provision.runner import InstallResult, _Collector, plan_install
from orchestrator.remote.ssh import SshOptions

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "gate"
HOSTS = HostList([Host("node1", 8), Host("node2", 8)])


def test_inventory_carries_ssh_config_user_port_and_slots(tmp_path):
    config = tmp_path / "ssh config"
    config.write_text("")
    args, host_vars = ssh_args_from(SshOptions(config=str(config), options=("Ciphers=aes128-ctr",), user="ops", port=2222,
                                               connect_timeout=7.5))
    inv = build_inventory(HOSTS, ssh_args=args, extra_vars=host_vars)
    group = inv["all"]["vars"]
    assert shlex.split(group["ansible_ssh_common_args"]) == ["-F", str(config), "-o", "Ciphers=aes128-ctr", "-o", "ConnectTimeout=7"]
    assert (group["ansible_user"], group["ansible_port"], group["ansible_python_interpreter"]) == ("ops", 2222, "/usr/bin/python3")
    assert inv["all"]["hosts"] == {"node1": {"gpu_slots": 8}, "node2": {"gpu_slots": 8}}
    with pytest.raises(ConfigError, match="--hosts"):
        build_inventory(HostList(), ssh_args=[])


def test_plan_argv_and_env_keep_host_key_checking_on(tmp_path):
    plan = plan_install(HOSTS, inventory=build_inventory(HOSTS), workdir=tmp_path, tags=["common,rdma"], check=True,
                        forks=4, pipelining=False, extra_vars={"rootless_docker_net": "host"})
    argv = plan.argv()
    assert argv[argv.index("--tags") + 1] == "common,rdma" and "--check" in argv
    assert argv[argv.index("--forks") + 1] == "4" and argv[-1] == '{"rootless_docker_net": "host"}'
    env = plan.envvars()
    assert env["ANSIBLE_HOST_KEY_CHECKING"] == "True" and env["ANSIBLE_PIPELINING"] == "False"


@pytest.mark.parametrize("kwargs, field", [({"tags": ["commn"]}, "--tags"), ({"forks": 0}, "--forks"),
                                           ({"playbook": "nope.yml"}, "--playbook")])
def test_bad_plan_input_is_a_config_error(tmp_path, kwargs, field):
    with pytest.raises(ConfigError, match=field):
        plan_install(HOSTS, inventory={}, workdir=tmp_path, **kwargs)


def _event(kind: str, host: str, task: str, role: str = "", **res) -> dict:
    return {"event": kind, "event_data": {"host": host, "task": task, "role": role, "res": res}}


def test_collector_counts_skips_failures_and_gate_inputs():
    seen = []
    collect = _Collector(HOSTS, seen.append)
    smi = (FIXTURES / "nvidia-smi_8xh100.csv").read_text()
    for event in [
        _event("runner_on_start", "node1", "Install the base packages (apt)", "common"),
        _event("runner_on_ok", "node1", "Install the base packages (apt)", "common", changed=True),
        _event("runner_on_ok", "node1", "Say why the driver is not installed", "nvidia_driver",
               msg="SKIP nvidia_driver: no NVIDIA GPU (0 NVIDIA GPU(s) under /sys/bus/pci/devices)"),
        _event("runner_on_ok", "node1", "Gate input: nvidia-smi", "validate", rc=0, stdout=smi, stderr=""),
        _event("runner_on_failed", "node2", "Start the rootless daemon", "rootless_docker", msg="non-zero return code",
               stderr="rootless dockerd exited\nfailed to start daemon: permission denied"),
        _event("runner_on_unreachable", "node2", "Gathering Facts", msg="ssh: connect to host node2 port 22: No route"),
        {"event": "playbook_on_stats", "event_data": {}},
    ]:
        collect(event)
    n1, n2 = collect.reports["node1"], collect.reports["node2"]
    assert (n1.ok, n1.changed, n1.changed_tasks) == (3, 1, ["common : Install the base packages (apt)"])
    assert n1.skips == ["nvidia_driver: no NVIDIA GPU (0 NVIDIA GPU(s) under /sys/bus/pci/devices)"]
    assert n1.gate["nvidia_smi"].stdout == smi and n1.task == "common : Install the base packages (apt)"
    assert n2.failures[0] == "rootless_docker : Start the rootless daemon: non-zero return code: failed to start daemon: permission denied"
    assert n2.unreachable and n2.state == "unreachable" and len(seen) == 6

    verdicts = judge(InstallResult("failed", 2, 1.0, collect.reports), GateThresholds(min_active_ib_ports=0))
    assert verdicts["node1"].passed and verdicts["node1"].gpus == 8
    assert verdicts["node2"].reasons[0] == "install: unreachable"


def test_gated_inventory_and_hostfile_leave_failed_nodes_out(tmp_path):
    collect = _Collector(HOSTS, None)
    collect(_event("runner_on_ok", "node1", "Gate input: nvidia-smi", "validate", rc=0,
                   stdout=(FIXTURES / "nvidia-smi_7of8.csv").read_text()))
    collect(_event("runner_on_ok", "node2", "Gate input: nvidia-smi", "validate", rc=0,
                   stdout=(FIXTURES / "nvidia-smi_8xh100.csv").read_text()))
    verdicts = judge(InstallResult("successful", 0, 1.0, collect.reports), GateThresholds(gpus_per_node=8, min_active_ib_ports=0))
    inventory = build_inventory(HOSTS, ssh_args=["-F", "cfg"])
    written = write_gated(HOSTS, verdicts, inventory, tmp_path)
    assert Path(written["hostfile"]).read_text() == "node2 slots=8\n"
    assert filter_inventory(inventory, HostList([Host("node2", 8)]))["all"]["hosts"] == {"node2": {"gpu_slots": 8}}
    assert "node1" not in Path(written["inventory"]).read_text()


def test_gated_inventory_from_an_inventory_file_keeps_group_and_host_vars(tmp_path):
    source = tmp_path / "site.ini"
    source.write_text("[gpu]\nnode1 ansible_host=10.0.0.1\nnode2 ansible_host=10.0.0.2\n[gpu:vars]\nansible_user=ops\n")
    kept = filter_inventory(str(source), HostList([Host("node2", 8)]))
    assert kept == {"all": {"hosts": {"node2": {"ansible_user": "ops", "ansible_host": "10.0.0.2", "gpu_slots": 8}}}}


def test_install_dry_run_json_prints_the_plan_and_connects_nowhere(tmp_path):
    import json

    from click.testing import CliRunner

    from orchestrator.cli.main import cli

    config = tmp_path / "ssh_config"
    config.write_text("")
    out = CliRunner().invoke(cli, ["install", "-w", "node[1-2]", "--ssh-config", str(config), "-t", "rdma",
                                   "-e", "rootless_docker_net=host", "--out", str(tmp_path / "o"), "--dry-run", "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    assert doc["hosts"] == ["node1", "node2"] and "--tags" in doc["argv"]
    assert doc["inventory"]["all"]["vars"]["ansible_ssh_common_args"] == f"-F {config}"
    assert not (tmp_path / "o").exists()
