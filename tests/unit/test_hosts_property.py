"""Property tests: node sets fold/expand back, every hostfile format parses back what it rendered, and no
input makes the parsers fail with anything but ConfigError."""

import os
import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.errors import ConfigError
from orchestrator.hostfile import FORMATS, parse, render
from orchestrator.hosts import Host, HostList, apply_filter, expand, fold

settings.register_profile("orchestrator-unit", max_examples=100, deadline=None)
settings.load_profile("orchestrator-unit")

_prefix = st.sampled_from(["node", "gpu-", "n", "rack1-n", "a.b-", "x_"])
_number = st.from_regex(r"[0-9]{1,3}", fullmatch=True)
_suffix = st.sampled_from(["", "-ib", "-[1]"]).map(lambda s: s.replace("-[1]", "-1"))
host_names = st.builds(lambda p, n, s: f"{p}{n}{s}", _prefix, _number, _suffix) | st.from_regex(
    r"[a-z][a-z0-9]{0,6}", fullmatch=True
)
name_lists = st.lists(host_names, min_size=1, max_size=40, unique=True)


@st.composite
def host_lists(draw):
    names = draw(name_lists)
    hosts = HostList()
    for name in names:
        slots = draw(st.integers(1, 16))
        ids = draw(st.none() | st.lists(st.integers(0, 63), min_size=slots, max_size=slots, unique=True))
        hosts.append(Host(name, slots, tuple(ids) if ids else None))
    return hosts


@given(name_lists)
def test_fold_then_expand_is_the_same_set(names):
    assert sorted(expand(fold(names))) == sorted(names)
    assert sorted(expand(fold(names, last_axis_only=True))) == sorted(names)


@given(name_lists)
def test_comma_list_keeps_user_order(names):
    assert expand(",".join(names)) == names


@given(name_lists, st.data())
def test_set_difference_folds_back(names, data):
    removed = data.draw(st.lists(st.sampled_from(names), unique=True, max_size=len(names) - 1))
    # ClusterShell applies ',' '!' '&' '^' left to right, so 'A!b,c' is (A-b)+c: subtract one name at a time
    expr = fold(names) + "".join(f"!{name}" for name in removed)
    assert set(expand(expr)) == set(names) - set(removed)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@given(hosts=host_lists())
def test_parse_render_round_trip(fmt, hosts):
    back = parse(render(hosts, fmt), fmt, default_slots=3)
    assert set(back.names) == set(hosts.names)
    if fmt in ("deepspeed", "mpi"):
        assert [(h.name, h.slots) for h in back] == [(h.name, h.slots) for h in hosts]
    elif fmt == "json":
        assert back == hosts
    else:  # pdsh/slurm carry no slots
        assert {h.slots for h in back} == {3}


@given(hosts=host_lists(), data=st.data())
def test_exclude_removes_exactly_the_named_hosts(hosts, data):
    dropped = data.draw(st.lists(st.sampled_from(hosts.names), unique=True, max_size=len(hosts) - 1))
    kept = apply_filter(hosts, exclude="@".join(dropped)) if dropped else hosts
    assert kept.names == [n for n in hosts.names if n not in dropped]
    assert apply_filter(hosts, include="@".join(hosts.names)) == hosts


@given(st.text(max_size=40))
def test_any_node_set_text_gives_names_or_config_error(text):
    try:
        names = expand(text)
    except ConfigError:
        return
    assert names and all(n and n[0].isalnum() for n in names)


_hostfile_like_lines = st.lists(st.sampled_from(["a slots=2", "b", "#c", "", "a", "[{", "x slots=", '{"host": "a"}']))
_hostfile_like_lines = _hostfile_like_lines.map("\n".join)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@given(text=st.text(max_size=80) | _hostfile_like_lines)
def test_any_hostfile_text_gives_hosts_or_config_error(fmt, text):
    try:
        hosts = parse(text, fmt)
    except ConfigError:
        return
    assert hosts and len(set(hosts.names)) == len(hosts)


def _expand_with_pdsh(text, tmp):
    out = subprocess.run(["pdsh", "-q", "-w", text], capture_output=True, text=True, check=True, timeout=30).stdout
    return parse(out.split("-- Target nodes --")[1].strip(), "pdsh").names


def _expand_with_slurm(text, tmp):
    conf = os.path.join(tmp, "slurm.conf")  # scontrol wants a config even to expand a hostlist offline
    if not os.path.exists(conf):
        with open(conf, "w") as f:
            f.write("ClusterName=t\nSlurmctldHost=localhost\nNodeName=localhost\nPartitionName=p Nodes=localhost\n")
    out = subprocess.run(["scontrol", "show", "hostnames", text], capture_output=True, text=True, timeout=30,
                         env={"SLURM_CONF": conf, "PATH": "/usr/bin:/bin"})
    assert not out.stderr, out.stderr
    return out.stdout.split()


@pytest.mark.parametrize(
    ("fmt", "tool", "reader"), [("pdsh", "pdsh", _expand_with_pdsh), ("slurm", "scontrol", _expand_with_slurm)]
)
@settings(max_examples=40)
@given(names=name_lists)
def test_the_real_tool_reads_the_rendered_list(tmp_path_factory, fmt, tool, reader, names):
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed")
    text = render(HostList(Host(n) for n in names), fmt).strip()
    assert sorted(reader(text, str(tmp_path_factory.getbasetemp()))) == sorted(names)
