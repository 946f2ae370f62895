"""`launch --container` plans: docker run argv around torchrun (pure)."""

import pytest

from orchestrator.containers.run import ContainerSpec, cleanup_argv, container_argv, containerize
from orchestrator.errors import ConfigError
from orchestrator.selection import resolve_hosts
from orchestrator.launch.env import build_env_manifest
from orchestrator.launch.plan import LaunchSpec, build_plan

HOSTS = resolve_hosts(hosts="node[1-2]", nproc_per_node=2)


def plan(**kw):
    env = build_env_manifest(head_env={}, env_files=(), env_args=("HF_TOKEN=s3cret", "OMP_NUM_THREADS=1"), forward=False)
    return build_plan(LaunchSpec(program=("train.py",), run_id="r1", nproc_per_node=2, env=env,
                                 workdir=("/srv/job",), python=("/opt/venv/bin/python",), **kw), HOSTS)


def test_docker_run_wraps_torchrun_with_label_host_network_and_env_names_only():
    p = plan()
    argv = container_argv(p, p.nodes[1], ContainerSpec(image="train:1", mounts=("/data:/data:ro",), gpus=True))
    image_at = argv.index("train:1")
    docker, inner = argv[:image_at], argv[image_at + 1:]
    assert docker[:3] == ["docker", "run", "--rm"]
    for pair in (["--network", "host"], ["--ipc", "host"], ["--gpus", "all"], ["--label", "orch.run=r1"],
                 ["-v", "/srv/job:/srv/job"], ["-w", "/srv/job"], ["-v", "/data:/data:ro"], ["-e", "HF_TOKEN"],
                 ["-e", "ORCH_RUN_ID"]):
        assert any(docker[i:i + 2] == pair for i in range(len(docker))), pair
    assert not any("s3cret" in a for a in argv)  # values cross through the environment, never the command line
    assert "ORCH_RUN_TMPDIR" not in docker and "/tmp:exec,mode=1777" in docker  # the container has its own /tmp
    assert inner[:3] == ["python3", "-m", "torch.distributed.run"] and "--node-rank=1" in inner


def test_no_gpus_flag_without_gpus_and_names_are_per_host():
    p = plan()
    a1, a2 = (container_argv(p, n, ContainerSpec(image="img")) for n in p.nodes)
    assert "--gpus" not in a1
    assert a1[a1.index("--name") + 1] == "orch-r1-node1" and a2[a2.index("--name") + 1] == "orch-r1-node2"


def test_containerize_keeps_the_agent_python_and_checks_the_spec():
    p = containerize(plan(), ContainerSpec(image="img"))
    assert all(n.python == "/opt/venv/bin/python" and n.argv[0] == "docker" for n in p.nodes)
    for bad in (ContainerSpec(image=""), ContainerSpec(image="--privileged"), ContainerSpec(image="i", shm_size="lots"),
                ContainerSpec(image="i", mounts=("data:/data",)), ContainerSpec(image="i", mounts=("/a:/b:rx",))):
        with pytest.raises(ConfigError):
            containerize(plan(), bad)


def test_cleanup_passes_the_run_id_as_data():
    argv = cleanup_argv("r1; rm -rf /")
    assert argv[:2] == ["sh", "-c"] and argv[-1] == "r1; rm -rf /" and "r1" not in argv[2]
