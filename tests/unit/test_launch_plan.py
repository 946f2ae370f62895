"""Launch plans and per-node argv builders (pure: no network, no processes)."""

import base64
import json
import shlex

import pytest

from orchestrator.contracts import RUN_TMPDIR, new_run_id
from orchestrator.errors import ConfigError
from orchestrator.hosts import Host, HostList, apply_filter
from orchestrator.selection import resolve_hosts
from orchestrator.launch.deepspeed import rank_prefix_source, world_info_b64
from orchestrator.launch.env import REDACTED, build_env_manifest
from orchestrator.launch.plan import LaunchSpec, build_plan, default_master_port, per_host_values
from orchestrator.launch.rundir import RunDir, log_name
from orchestrator.launch.torchrun import RANK_PREFIX_TEMPLATE, split_rank_prefix, torchrun_argv

HOSTS = resolve_hosts(hosts="node[1-4]", nproc_per_node=2)


def spec(**kw):
    base = dict(program=("train.py", "--lr", "3e-4"), run_id="r1", nproc_per_node=2)
    return LaunchSpec(**(base | kw))


def test_torchrun_plan_static_rendezvous_on_first_host():
    plan = build_plan(spec(master_port=29555, python=("/venv/bin/python",)), HOSTS)
    assert plan.hosts == ["node1", "node2", "node3", "node4"] and plan.world_size == 8
    n2 = plan.nodes[1]
    assert n2.argv == (
        "/venv/bin/python", "-m", "torch.distributed.run", "--nnodes=4", "--node-rank=1", "--nproc-per-node=2",
        "--master-addr=node1", "--master-port=29555", "--tee=3", "--monitor-interval=0.2",
        "train.py", "--lr", "3e-4",
    )
    assert list(n2.ranks) == [2, 3]
    assert plan.rank_location(5) == ("node3", 1) and plan.rank_location(8) is None
    assert plan.node_env(n2)["TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE"] == RANK_PREFIX_TEMPLATE
    assert plan.node_env(n2)[RUN_TMPDIR] == "/tmp"  # the agent's private TMPDIR takes torchrun's per-rank files


def test_module_and_default_port_is_stable_per_run_id():
    plan = build_plan(spec(program=("orchestrator.engine", "--config", "tiny"), module=True), HOSTS)
    assert plan.nodes[0].argv[-4:] == ("--module", "orchestrator.engine", "--config", "tiny")
    assert plan.master_port == default_master_port("r1") == build_plan(spec(), HOSTS).master_port
    assert 29500 <= plan.master_port < 30500
    ports = {default_master_port(f"run-{i}") for i in range(200)}  # concurrent runs seldom share a port
    assert min(ports) >= 29500 and max(ports) < 30500 and len(ports) > 150


def test_per_host_python_and_workdir():
    plan = build_plan(spec(python=("/venv/bin/python", "node[3-4]=/opt/py/bin/python"),
                           workdir=("/srv/job", "node1=/home/u/job")), HOSTS)
    assert [n.python for n in plan.nodes] == ["/venv/bin/python"] * 2 + ["/opt/py/bin/python"] * 2
    assert [n.workdir for n in plan.nodes] == ["/home/u/job", "/srv/job", "/srv/job", "/srv/job"]
    assert plan.nodes[2].argv[0] == "/opt/py/bin/python"


def test_defaults_do_not_assume_the_head():
    plan = build_plan(spec(), HOSTS)
    assert all(n.python == "python3" and n.workdir is None for n in plan.nodes)


def test_per_host_value_for_unknown_host_is_config_error():
    with pytest.raises(ConfigError) as e:
        per_host_values(["node9=/x"], ["node1"], field="--python", default=None)
    assert "--python" in str(e.value) and "node9" in str(e.value)


def test_heterogeneous_slots_from_hostfile_order_ranks():
    hosts = HostList([Host("a", 2), Host("b", 4)])
    plan = build_plan(spec(nproc_per_node=None), hosts)
    assert [list(n.ranks) for n in plan.nodes] == [[0, 1], [2, 3, 4, 5]]
    assert plan.nodes[1].argv[5] == "--nproc-per-node=4"


def test_picked_slots_become_cuda_visible_devices():
    hosts = apply_filter(HostList([Host("node1", 4), Host("node2", 4)]), include="node1:2,3@node2")
    plan = build_plan(spec(nproc_per_node=None), hosts)
    assert plan.nodes[0].env == {"CUDA_VISIBLE_DEVICES": "2,3"} and plan.nodes[1].env == {}


@pytest.mark.parametrize("kw, field", [
    (dict(launcher="mpirun"), "--launcher"),
    (dict(program=()), "SCRIPT_OR_MODULE"),
    (dict(program=("--lr",)), "SCRIPT_OR_MODULE"),
    (dict(program=("not a module",), module=True), "-m"),
    (dict(master_port=70000), "--master-port"),
    (dict(nproc_per_node=0), "--nproc-per-node"),
    (dict(python=("",)), "--python"),
    (dict(program=("a.py", "x\0y")), "SCRIPT_OR_MODULE"),
    (dict(run_id="../etc"), "--run-id"),
    (dict(master_addr="-oProxyCommand=x"), "--master-addr"),
    (dict(master_addr="a b"), "--master-addr"),
])
def test_bad_spec_is_config_error(kw, field):
    with pytest.raises(ConfigError) as e:
        build_plan(spec(**kw), HOSTS)
    assert field in str(e.value)


def test_deepspeed_plan_without_deepspeed_installed():
    plan = build_plan(spec(launcher="deepspeed", python=("/venv/bin/python",), master_port=29600), HOSTS)
    assert plan.hostfile == "node1 slots=2\nnode2 slots=2\nnode3 slots=2\nnode4 slots=2\n"
    argv = plan.nodes[3].argv
    assert argv[:4] == ("/venv/bin/python", "-u", "-m", "deepspeed.launcher.launch")
    assert "--node_rank=3" in argv and "--master_addr=node1" in argv and "--master_port=29600" in argv
    info = next(a for a in argv if a.startswith("--world_info=")).split("=", 1)[1]
    assert json.loads(base64.urlsafe_b64decode(info)) == {f"node{i}": [0, 1] for i in range(1, 5)}
    assert "TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE" not in plan.node_env(plan.nodes[0])
    # each rank runs under rankprefix.py, which puts --local_rank back where DeepSpeed would
    tail = argv[argv.index("--no_python"):]
    assert tail[:6] == ("--no_python", "--no_local_rank", "/venv/bin/python", "-I", "-S", "-c")
    assert tail[6] == rank_prefix_source() and tail[7:] == ("3", "/venv/bin/python", "-u", "train.py", "--lr", "3e-4")
    shown = plan.to_json()["nodes"][3]["argv"]
    assert "$(cat orchestrator/launch/rankprefix.py)" in shown and rank_prefix_source() not in shown
    assert "  node4 slots=2" in plan.describe()


def test_world_info_matches_deepspeed_encoding():
    # DeepSpeed's runner: base64.urlsafe_b64encode(json.dumps(world_info).encode('utf-8'))
    assert world_info_b64([("h", [0, 1])]) == base64.urlsafe_b64encode(b'{"h": [0, 1]}').decode()


def test_json_and_dry_run_redact_secrets_but_node_env_does_not():
    env = build_env_manifest(head_env={"NCCL_DEBUG": "INFO"}, env_args=["HF_TOKEN=hf_secret", "A=1"])
    plan = build_plan(spec(env=env, program=("train.py", "--api-key=k3y")), HOSTS)
    doc = json.dumps(plan.to_json())
    text = "\n".join(plan.describe())
    for printed in (doc, text):
        assert "hf_secret" not in printed and "k3y" not in printed and REDACTED in printed
    assert plan.node_env(plan.nodes[0])["HF_TOKEN"] == "hf_secret"
    assert text.count("would run on ") == 4
    assert json.loads(doc)["nodes"][0]["argv"][-1] == f"--api-key={REDACTED}"


def test_hostile_args_are_data_in_argv():
    hostile = ["node1;touch /tmp/x", "$(touch /tmp/y)", "`id`", "a'b\"c", "line1\nline2"]
    plan = build_plan(spec(program=("train.py", *hostile)), HOSTS)
    assert list(plan.nodes[0].argv[-5:]) == hostile
    assert shlex.split(shlex.join(plan.nodes[0].argv))[-5:] == hostile


def test_torchrun_argv_builder_minimal():
    argv = torchrun_argv(python="py", nnodes=1, node_rank=0, nproc=1, master_addr="h", master_port=1, program=["s.py"])
    assert "--log-dir" not in " ".join(argv) and argv[-1] == "s.py"


def test_split_rank_prefix():
    assert split_rank_prefix("\x1f3/1\x1fhello \x1f") == (3, 1, "hello \x1f")
    assert split_rank_prefix("W1123 torchrun says") == (None, None, "W1123 torchrun says")


def test_run_ids_and_dir(tmp_path):
    a, b = new_run_id(0), new_run_id(0)
    assert a.startswith("19700101-000000-") and a != b
    rd = RunDir(tmp_path / a)
    rd.create()
    with rd.host_logs(["node1", "../evil"]) as logs:
        logs.write("node1", "node1/0: hi")
        logs.write("../evil", "x")
    assert rd.log_path("node1").read_text() == "node1/0: hi\n"
    assert rd.log_path("../evil").parent == tmp_path / a / "logs"
    assert log_name("..") == "_"
    rd.write_json("plan.json", {"env": {"values": {"A": "1"}}})
    for path in (rd.path / "plan.json", rd.log_path("node1")):
        assert path.stat().st_mode & 0o777 == 0o600  # the plan lists the env, logs may echo it


def test_host_logs_keep_the_exact_bytes(tmp_path):
    rd = RunDir(tmp_path)
    rd.create()
    raw = b"caf\xe9 \xff\xfe ok \xe2\x82\xac"
    with rd.host_logs(["n1"]) as logs:
        logs.write("n1", "n1: " + raw.decode("utf-8", "surrogateescape"))
        logs.write("n1", b"a long line, ", end=b"")
        logs.write("n1", b"continued")
    assert rd.log_path("n1").read_bytes() == b"n1: " + raw + b"\na long line, continued\n"
