"""Sandbox planning and state, pure: names, subnets, addresses, generated files, state.json round trip."""

from __future__ import annotations

import ipaddress
import os
import subprocess
from pathlib import Path

import pytest

from orchestrator.errors import ConfigError
from orchestrator.sandbox.netns import host_spec
from orchestrator.sandbox.plan import (HEAD_NAME, choose_subnet, host_ip, plan_sandbox, render_etc_hosts,
                                       render_nsswitch, render_ssh_config, short_id)
from orchestrator.sandbox.state import DaemonState, HostState, SandboxState
from orch_cli import ORCH


def test_subnet_skips_the_lab_other_sandboxes_and_overlaps():
    assert choose_subnet(set()) == "10.80.0.0/16"
    assert choose_subnet({"10.77.0.0/24", "10.76.0.0/16"}) == "10.80.0.0/16"
    assert choose_subnet({"10.80.0.0/16", "10.81.3.7/32"}) == "10.82.0.0/16"


def test_subnet_exhausted_is_a_config_error():
    with pytest.raises(ConfigError, match="no free subnet"):
        choose_subnet({"10.0.0.0/8"})


def test_256_hosts_get_distinct_addresses_inside_the_subnet_and_not_the_head():
    plan = plan_sandbox("big", nodes=256, taken_subnets=set())
    ips = [h.ip for h in plan.hosts]
    net = ipaddress.ip_network(plan.subnet)
    assert len(set(ips)) == 256 and plan.head_ip not in ips
    assert all(ipaddress.ip_address(ip) in net for ip in ips + [plan.head_ip])
    assert not any(ip.endswith((".0", ".255")) for ip in ips)
    assert host_ip("10.80.0.0/16", 0) == "10.80.0.1" and host_ip("10.80.0.0/16", 250) == "10.80.1.1"


def test_interface_names_fit_the_kernel_limit():
    plan = plan_sandbox("pt1234567-3-abcd", nodes=1000, taken_subnets=set())
    assert len(plan.bridge) <= 15
    assert max(len(h.veth) for h in plan.hosts) <= 15
    assert len({h.veth for h in plan.hosts}) == 1000
    assert short_id("pt123") == "pt123" and len(short_id("a-much-longer-name")) == 8


@pytest.mark.parametrize("field,kwargs", [("--name", {"name": "Bad Name"}), ("--name", {"name": "x;rm"}),
                                          ("--prefix", {"prefix": "1node"}), ("--nodes", {"nodes": 0}),
                                          ("--nodes", {"nodes": 5000})])
def test_bad_input_names_the_field(field, kwargs):
    args = {"name": "ok", "nodes": 2, "prefix": "node", **kwargs}
    with pytest.raises(ConfigError) as err:
        plan_sandbox(args.pop("name"), **args)
    assert err.value.field == field


def test_generated_files_list_every_host_and_keep_host_keys_checked():
    plan = plan_sandbox("demo", nodes=3, prefix="gpu", taken_subnets=set())
    hosts = render_etc_hosts(plan)
    assert f"{plan.head_ip} {HEAD_NAME}" in hosts and "10.80.0.3 gpu3" in hosts
    cfg = render_ssh_config(plan, identity="/k/id", known_hosts="/k/kh")
    assert "Host gpu2\n    HostName 10.80.0.2" in cfg
    assert "StrictHostKeyChecking yes" in cfg and "UserKnownHostsFile /k/kh" in cfg


def test_hosts_resolve_names_from_etc_hosts_only():
    head = "passwd:  files\nhosts:          files mdns4_minimal [NOTFOUND=return] dns\nnetworks: files\n"
    assert render_nsswitch(head) == "passwd:  files\nnetworks: files\nhosts: files\n"
    assert render_nsswitch("") == "hosts: files\n"


def _state(tmp_path: Path, shares=()) -> SandboxState:
    h = HostState(name="node1", ip="10.80.0.1", netns="orch-x-node1", veth="ovx-1", dir=str(tmp_path / "node1"),
                  uts_ns=str(tmp_path / "u"), mnt_ns=str(tmp_path / "m"), sshd_pid=42)
    return SandboxState(name="x", dir=str(tmp_path), prefix="node", bridge="orchbr-x", subnet="10.80.0.0/16",
                        head_ip="10.80.255.254", hosts=[h], shares=list(shares),
                        daemons=[DaemonState(host="node1", name="slurmd", pid=7, starttime=9, argv=["slurmd", "-D"])])


def test_state_round_trip(tmp_path):
    state = _state(tmp_path)
    state.save()
    again = SandboxState.load(tmp_path)
    assert again == state
    assert again.host("node1").nsenter_args()[0] == "--net=/run/netns/orch-x-node1"
    with pytest.raises(ConfigError):
        again.host("node9")


def test_missing_state_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no sandbox recorded"):
        SandboxState.load(tmp_path / "nothing")


def test_host_spec_mounts_shares_and_drops_namespace_dirs(tmp_path):
    state = _state(tmp_path / "x", shares=["/root/my venv"])
    spec = host_spec(state, state.hosts[0], sshd_config=tmp_path / "sshd_config")
    assert spec["shares"] == [["/root/my venv", str(Path(state.hosts[0].dir) / "share" / "0")]]
    assert [o[0] for o in spec["overlays"]] == ["/etc", "/opt", "/usr", "/var"]
    assert spec["drop_mounts"][0] == "/run/netns"
    assert "addr add 10.80.0.1/16 dev eth0" in spec["ip_batch"]
    assert spec["sshd_argv"][:3] == ["/usr/sbin/sshd", "-f", str(tmp_path / "sshd_config")]


def test_cli_refuses_non_root_with_exit_2():
    argv = [*ORCH, "sandbox", "up", "--nodes", "2", "--name", "nonroot"]
    if os.geteuid() == 0:
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd="/")
    assert out.returncode == 2, out.stderr
    assert "needs root" in out.stderr and "Traceback" not in out.stderr


def test_cli_down_of_an_unknown_sandbox_is_a_config_error(tmp_path):
    env = {**os.environ, "ORCH_SANDBOX_ROOT": str(tmp_path)}
    out = subprocess.run([*ORCH, "sandbox", "down", "--name", "nothing-here"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 2
    assert "no sandbox recorded" in out.stderr and "Traceback" not in out.stderr
