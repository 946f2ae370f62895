"""Hostfiles: DeepSpeed/plain/JSON parsing with file:line errors, rendering per format, `orchestrator hosts`."""

import json
import shutil
import subprocess

import pytest
from click.testing import CliRunner

from orchestrator.cli.main import cli
from orchestrator.errors import ConfigError
from orchestrator.hostfile import FORMATS, load, parse, render
from orchestrator.hosts import Host, HostList
from orch_cli import orch

HOSTS = HostList([Host("node2", 8), Host("node1", 4), Host("gpu-1-1", 2, (1, 3))])


def test_deepspeed_with_comments_blank_lines_plain_lines_and_node_sets():
    text = "# pool\n\nnode1 slots=4   # fast one\n  node2\nn[1-2] slots=2\nb max_slots=9 slots=3\n"
    hosts = parse(text, "deepspeed", default_slots=8)
    assert hosts == [Host("node1", 4), Host("node2", 8), Host("n1", 2), Host("n2", 2), Host("b", 3)]


@pytest.mark.parametrize(
    ("text", "line", "expected"),
    [
        ("a slots=2\nb slots=x\n", 2, "bad field 'slots=x'"),
        ("a slots=2\n\nb slots=0\n", 3, "bad field 'slots=0'"),
        ("a slotz=2\n", 1, "bad field 'slotz=2'"),
        ("a slots=2 slots=3\n", 1, "slots= given 2 times"),
        ("# c\na slots=1\nb[1- slots=1\n", 3, "bad part 'b[1-'"),
        ("a;rm slots=1\n", 1, "not a host name"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path, text, line, expected):
    path = tmp_path / "hostfile"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load(path)
    assert str(err.value).startswith(f"{path}:{line}=")
    assert expected in str(err.value)


def test_crlf_and_bom_are_fine(tmp_path):
    path = tmp_path / "hostfile"
    path.write_bytes("\ufeffa slots=2\r\nb slots=2\r\n".encode())
    assert load(path) == [Host("a", 2), Host("b", 2)]


def test_duplicate_host_names_both_lines(tmp_path):
    path = tmp_path / "hostfile"
    path.write_text("node1 slots=8\n# x\nnode[0-2] slots=8\n")
    with pytest.raises(ConfigError) as err:
        load(path)
    assert str(err.value) == f"{path}:3='node[0-2] slots=8': host node1 is already on line 1; list each host once"


@pytest.mark.parametrize("text", ["", "# only comments\n\n"])
def test_empty_hostfile(tmp_path, text):
    path = tmp_path / "hostfile"
    path.write_text(text)
    with pytest.raises(ConfigError, match="no host in it"):
        load(path)


def test_missing_hostfile():
    with pytest.raises(ConfigError, match="--hostfile='/nonexistent/h': cannot read it"):
        load("/nonexistent/h")


def test_render_each_format():
    assert render(HOSTS, "deepspeed") == "node2 slots=8\nnode1 slots=4\ngpu-1-1 slots=2\n"
    assert render(HOSTS, "mpi") == render(HOSTS, "deepspeed")
    assert render(HOSTS, "pdsh") == "gpu-1-1,node[1-2]\n"
    assert render(HostList([Host(n) for n in ("gpu-1-1", "gpu-1-2", "gpu-2-1")]), "slurm") == "gpu-1-[1-2],gpu-2-1\n"
    assert json.loads(render(HOSTS, "json")) == [
        {"host": "node2", "slots": 8},
        {"host": "node1", "slots": 4},
        {"host": "gpu-1-1", "slots": 2, "slot_ids": [1, 3]},
    ]


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_parse_gives_back_what_render_wrote(fmt):
    back = parse(render(HOSTS, fmt), fmt, default_slots=1)
    assert set(back.names) == set(HOSTS.names)
    if fmt != "pdsh" and fmt != "slurm":
        assert [(h.name, h.slots) for h in back] == [(h.name, h.slots) for h in HOSTS]


def test_json_file_is_loaded_by_extension(tmp_path):
    path = tmp_path / "hosts.json"
    path.write_text(render(HOSTS, "json"))
    assert load(path) == HOSTS


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[", "<hostfile>:1="),
        ("{}", "not a non-empty list"),
        ('[{"host": "a", "slots": "8"}]', "<hostfile>[0]="),
        ('[{"name": "a"}]', "<hostfile>[0]="),
        ('[{"host": "a"}, {"host": "a"}]', "host a is already entry 0"),
        ('[{"host": "a[1-2]"}]', "one host per entry"),
        ('[{"host": "a", "slot_ids": [0, "1"]}]', "slot_ids is a list of integers"),
        ('[{"host": "a", "slots": 0}]', "slots is an integer from 1 to"),
    ],
)
def test_bad_json(text, expected):
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[")):
        parse(text, "json")


def test_unknown_format():
    with pytest.raises(ConfigError, match="--format='yaml'"):
        render(HOSTS, "yaml")


@pytest.mark.skipif(shutil.which("pdsh") is None, reason="pdsh not installed")
def test_real_pdsh_reads_the_rendered_list():
    names = [f"gpu-{a}-{b}" for a in (1, 2) for b in (1, 2, 3)] + ["node07", "node08", "x", "n0-ib", "n1-ib"]
    text = render(HostList(Host(n) for n in names), "pdsh").strip()
    out = subprocess.run(["pdsh", "-q", "-w", text], capture_output=True, text=True, check=True).stdout
    targets = out.split("-- Target nodes --")[1].strip()
    assert set(parse(targets, "pdsh").names) == set(names)


@pytest.mark.skipif(shutil.which("scontrol") is None, reason="slurm-wlm (scontrol) not installed")
def test_real_slurm_reads_the_rendered_nodelist(tmp_path):
    names = [f"gpu-{a}-{b}" for a in (1, 2) for b in (1, 2, 3)] + ["node07", "node1", "n0-ib", "n1-ib", "x.y"]
    conf = tmp_path / "slurm.conf"  # scontrol wants a config even to expand a hostlist offline
    conf.write_text("ClusterName=t\nSlurmctldHost=localhost\nNodeName=localhost\nPartitionName=p Nodes=localhost\n")
    text = render(HostList(Host(n) for n in names), "slurm").strip()
    out = subprocess.run(["scontrol", "show", "hostnames", text], capture_output=True, text=True,
                         env={"SLURM_CONF": str(conf), "PATH": "/usr/bin:/bin"}, timeout=30)
    assert out.returncode == 0 and not out.stderr, out.stderr
    assert sorted(out.stdout.split()) == sorted(names)


# --- the CLI ---------------------------------------------------------------------------------------


def invoke(*args):
    return CliRunner().invoke(cli, list(args), standalone_mode=False, catch_exceptions=True)


def test_cli_expand_and_render_to_stdout():
    out = invoke("hosts", "expand", "-w", "b,a[1-2]", "--slots", "--nproc-per-node", "2")
    assert out.exception is None and out.output == "b 2\na1 2\na2 2\n"
    out = invoke("hosts", "render", "--hosts", "n[1-4]", "--exclude", "n2", "--format", "pdsh", "-o", "-")
    assert out.output == "n[1,3-4]\n"


def test_cli_render_default_path_creates_hostfiles(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = invoke("hosts", "render", "-w", "n[1-2]", "--nproc-per-node", "8")
    assert out.exception is None
    assert (tmp_path / "hostfiles" / "deepspeed.rendered.txt").read_text() == "n1 slots=8\nn2 slots=8\n"
    invoke("hosts", "render", "-w", "n1", "--format", "json", "-o", str(tmp_path / "x" / "h.json"))
    assert json.loads((tmp_path / "x" / "h.json").read_text()) == [{"host": "n1", "slots": 1}]


def test_cli_hostfile_with_include(tmp_path):
    path = tmp_path / "hf"
    path.write_text("a slots=4\nb slots=4\n")
    out = invoke("hosts", "render", "--hostfile", str(path), "--include", "b:0,1@a", "--format", "json", "-o", "-")
    assert json.loads(out.output) == [{"host": "a", "slots": 4}, {"host": "b", "slots": 2, "slot_ids": [0, 1]}]


@pytest.mark.parametrize(
    ("args", "hostfile_text", "expected"),
    [
        (["hosts", "expand", "-w", "node[1-"], None, "--hosts='node[1-': bad part 'node[1-'"),
        (["hosts", "expand", "--hostfile", "{hf}"], "a slots=1\nb slots=x\n", "{hf}:2="),
        (["hosts", "expand", "--hostfile", "{hf}"], "a slots=1\na slots=1\n", "already on line 1"),
        (["hosts", "render", "-w", "n[1-2]", "--include", "n3"], None, "host n3 is not in the host list"),
        (["hosts", "render", "--hostfile", "{hf}", "--nproc-per-node", "8"], "a slots=4\n", "a has only 4 slot"),
    ],
)
def test_cli_bad_input_exits_2_without_traceback(tmp_path, args, hostfile_text, expected):
    hf = tmp_path / "hf"
    if hostfile_text is not None:
        hf.write_text(hostfile_text)
    out = orch(*[a.format(hf=hf) for a in args], env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert out.stderr.startswith("orchestrator: config error: ")
    assert expected.format(hf=hf) in out.stderr


def test_cli_uses_the_slurm_job_when_no_hosts_are_given():
    env = {"SLURM_JOB_ID": "1", "SLURM_JOB_NODELIST": "gpu[07-09]", "SLURM_GPUS_PER_NODE": "4"}
    out = CliRunner().invoke(cli, ["hosts", "render", "--format", "deepspeed", "-o", "-"], env=env)
    assert out.exit_code == 0 and out.output == "gpu07 slots=4\ngpu08 slots=4\ngpu09 slots=4\n"
