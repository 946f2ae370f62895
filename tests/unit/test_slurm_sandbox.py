"""The sandbox's generated Slurm configs (pure)."""

from __future__ import annotations

from pathlib import Path

from orchestrator.sandbox.slurm import SlurmLayout, render_gres_conf, render_slurm_conf

LAYOUT = SlurmLayout(Path("/tmp/sb/slurm"))
HOSTS = [(f"node{i}", f"10.80.0.{i}") for i in range(1, 5)]


def conf(**kw):
    args = dict(hosts=HOSTS, head_ip="10.80.255.254", ctld_port=40123, cpus=4, gpus_per_node=2, cluster_name="sb-x")
    return render_slurm_conf(LAYOUT, **{**args, **kw}).splitlines()


def test_controller_nodes_partition_and_gpus():
    lines = conf()
    assert "SlurmctldHost=sandbox-head(10.80.255.254)" in lines and "SlurmctldPort=40123" in lines
    assert "NodeName=node3 NodeAddr=10.80.0.3 CPUs=4 RealMemory=1000 Gres=gpu:2 State=UNKNOWN" in lines
    assert "PartitionName=debug Nodes=node[1-4] Default=YES MaxTime=INFINITE State=UP" in lines
    assert "GresTypes=gpu" in lines and "AuthInfo=socket=/tmp/sb/slurm/munge/munge.socket.2" in lines
    assert render_gres_conf(LAYOUT, 2) == "Name=gpu File=/tmp/sb/slurm/dev/nvidia[0-1]\n"


def test_no_gpus_no_gres():
    lines = conf(gpus_per_node=0)
    assert "GresTypes=gpu" not in lines and not any("Gres=" in line for line in lines)
    assert render_gres_conf(LAYOUT, 0) == ""
