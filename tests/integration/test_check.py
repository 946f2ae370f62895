"""`orchestrator check` on real sandbox hosts: a clean gate passes; three injected faults are each named.

Faults (orchestrator.sandbox.faults, undone after the test): a 10 Mbit/s token bucket on one host's link, a 5%
CPU quota on another's sshd (what it starts inherits it), a full 1 MiB tmpfs over the workdir of a third. The
node probes run two at a time (--fanout 2): the sandbox's hosts share this machine's cores, and a CPU loop
measured while every other host runs its own would be measuring the neighbours (separate machines do not
need it). The network test imports torch on every node, so each gate costs a few seconds of CPU per host.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time

import pytest

from orchestrator.sandbox.faults import cap_cpu, fill_disk, slow_link
from orch_cli import orch

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(240)]


def check(sb, hosts: str, *args: str, workdir) -> tuple[int, dict, str]:
    out = orch("check", "--hosts", hosts, "--ssh-config", sb.ssh_config, "--connect-timeout", "5",
               "--python", sys.executable, "--workdir", workdir, "--fanout", "2", "--json", *args, timeout=200)
    return out.returncode, json.loads(out.stdout) if out.stdout.strip() else {}, out.stderr


def nodes(doc: dict) -> dict[str, dict]:
    return {n["host"]: n for n in doc["nodes"]}


def test_clean_gate_passes_every_node(sandbox, hosts4, tmp_path):
    hostfile = tmp_path / "ok.txt"
    rc, doc, err = check(sandbox, ",".join(hosts4), "--out-hostfile", str(hostfile), workdir=tmp_path)
    assert rc == 0, err
    assert doc["failed"] == [] and doc["passed"] == hosts4
    for host, n in nodes(doc).items():
        assert n["python"] and n["torch"] and n["free_gb"] > 0 and n["cpu_ms"] > 0 and abs(n["skew_s"]) < 1, n
        assert n["bw_gbps"] > 0 and n["lat_us"] > 0 and n["peer"] in hosts4 and n["gpus"] is None
    assert doc["network"]["backend"] == "gloo" and doc["network"]["rounds"] == 1
    assert hostfile.read_text().splitlines() == [f"{h} slots=1" for h in hosts4]
    assert "4 node(s): 4 passed" in err and "check " in err  # the table and the summary went to stderr


def test_three_faults_are_each_named_and_left_out_of_the_hostfile(private_sandbox, tmp_path):
    sb = private_sandbox(nodes=8, prefix="c")  # 6 in the network test: round 2 has a control pair to spare
    link, cpu, disk = "c2", "c4", "c5"
    hostfile = tmp_path / "ok.txt"
    workdir = tmp_path / "job"
    workdir.mkdir()
    with contextlib.ExitStack() as undo:
        undo.callback(slow_link(sb, link, rate="10mbit"))
        undo.callback(cap_cpu(sb, cpu, quota=0.05))
        undo.callback(fill_disk(sb, disk, str(workdir)))
        rc, doc, err = check(sb, "c[1-8]", "--out-hostfile", str(hostfile), workdir=workdir)
    assert rc == 1, err
    found = nodes(doc)
    assert sorted(doc["failed"]) == [link, cpu, disk], err
    assert found[link]["reasons"][0].startswith("network: ") and "a good peer" in found[link]["reasons"][0], err
    assert len(found[cpu]["reasons"]) == 1 and found[cpu]["reasons"][0].startswith("cpu: loop"), err
    assert found[disk]["reasons"] == [f"disk: cannot write in {workdir}: No space left on device"], err
    assert doc["network"]["rounds"] == 2 and doc["network"]["nodes"] == 6, err  # cpu and disk failures sit it out
    assert hostfile.read_text().splitlines() == [f"{h} slots=1" for h in ("c1", "c3", "c6", "c7", "c8")]
    time.sleep(0.5)
    leftovers = {h: [p for p in sb.pids(h) if p != sb.state.host(h).sshd_pid] for h in sb.hosts}
    assert not any(leftovers.values()), leftovers  # every probe died with its session


def test_unreachable_node_exits_255(private_sandbox, tmp_path):
    sb = private_sandbox(nodes=2, prefix="u")
    sb.link_down("u2")
    rc, doc, err = check(sb, "u[1-2]", "--no-network", workdir=tmp_path)
    assert rc == 255, err
    assert nodes(doc)["u1"]["status"] == "pass" and nodes(doc)["u2"]["status"] == "unreachable"
    assert nodes(doc)["u2"]["reasons"][0].startswith("unreachable: ")
