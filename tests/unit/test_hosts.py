"""Host sets: node-set expansion and order, --include/--exclude (DeepSpeed semantics), Slurm, slot checks."""

import pytest

from orchestrator.errors import ConfigError
from orchestrator.hosts import MAX_HOSTS, MAX_SLOTS, Host, HostList, HostSetError, apply_filter, expand, fold
from orchestrator.selection import resolve_hosts


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("node[01-03]", ["node01", "node02", "node03"]),
        ("gpu-[1-2]-[1-2]", ["gpu-1-1", "gpu-1-2", "gpu-2-1", "gpu-2-2"]),
        ("a,b", ["a", "b"]),
        ("b,a", ["b", "a"]),  # user order kept
        ("n[3,1],m1", ["n3", "n1", "m1"]),  # ranges in a bracket and parts in the order written (Slurm's)
        ("n[01-3]", ["n01", "n02", "n03"]),  # width from the range's start, as Slurm reads it
        ("n[1-9/4]", ["n1", "n5", "n9"]),  # a step: ClusterShell's syntax
        ("a, b,a", ["a", "b"]),  # duplicates keep their first place
        ("node[1-4]!node3", ["node1", "node2", "node4"]),
        ("n[1-5]&n[4-9]", ["n4", "n5"]),
        ("10.0.0.[1-2]", ["10.0.0.1", "10.0.0.2"]),
        ("node[0-1]-ib", ["node0-ib", "node1-ib"]),
        ("rack1-200000,r[7-8]-1-900000", ["rack1-200000", "r7-1-900000", "r8-1-900000"]),
    ],
)
def test_expand(expr, names):
    assert expand(expr) == names


def test_fold_is_clustershell_order_and_last_axis_for_hostlist_readers():
    assert fold(["node3", "node1", "node2"]) == "node[1-3]"
    assert fold(expand("node[1-8]!node3")) == "node[1-2,4-8]"
    assert fold(expand("gpu-[1-2]-[1-4]"), last_axis_only=True) == "gpu-1-[1-4],gpu-2-[1-4]"
    assert fold(["n1-ib", "n0-ib", "m2", "m1", "m1"], last_axis_only=True) == "m[1-2],n0-ib,n1-ib"
    assert fold([], last_axis_only=True) == fold([]) == ""


@pytest.mark.parametrize(
    ("expr", "part"),
    [
        ("node[1-", "node[1-"),
        ("node[a-b]", None),
        ("node[3-1]", None),
        ("a,,b", None),
        ("@rack1", "@rack1"),
        ("node1;touch /tmp/x", "node1;touch /tmp/x"),
        ("$(reboot)", "$(reboot)"),
        ("-oProxyCommand=x", "-oProxyCommand=x"),
        ("a`id`", "a`id`"),
        ("a'b", "a'b"),
    ],
)
def test_malformed_node_set_names_field_value_part_and_fix(expr, part):
    with pytest.raises(HostSetError) as err:
        expand(expr)
    msg = str(err.value)
    assert msg.startswith(f"--hosts={expr!r}: bad part ")
    assert err.value.field == "--hosts" and err.value.exit_code == 2
    if part is not None:
        assert err.value.part == part
    assert "; " in msg  # the fix follows the diagnosis


def test_huge_sets_are_refused_before_expanding():
    with pytest.raises(HostSetError, match="bad part '1-999999999': a range of at most"):
        expand("n[1-999999999]")
    with pytest.raises(HostSetError, match="1000000 hosts; at most"):
        expand("gpu-[1-1000]-[1-1000]")
    with pytest.raises(HostSetError, match="operands name 1000001 hosts; at most"):
        expand("gpu-[1-1000]-[1-1000]!gpu-1-1")  # ClusterShell would take minutes to subtract


def test_the_host_cap_is_for_the_whole_expression():
    """Three parts of 65536 hosts each: refused by counting, not after expanding 196608 names."""
    parts = ",".join(f"{p}[1-{MAX_HOSTS}]" for p in "abc")
    with pytest.raises(HostSetError, match=f"{3 * MAX_HOSTS} hosts; at most {MAX_HOSTS}"):
        expand(parts)
    assert len(expand(f"a[1-{MAX_HOSTS // 2}],b[1-{MAX_HOSTS // 2}]")) == MAX_HOSTS


@pytest.mark.parametrize("slots", ["99999999999999999999", "100000000", str(MAX_SLOTS + 1), "0", "\u00b2", "-1"])
def test_hostfile_slots_out_of_range_name_file_line_value_and_limit(tmp_path, slots):
    path = tmp_path / "hosts.txt"
    path.write_text(f"node1 slots=8\nnode2 slots={slots}\n")
    with pytest.raises(ConfigError) as err:
        resolve_hosts(hostfile=path)
    assert str(err.value).startswith(f"{path}:2=")
    assert "slots=" in str(err.value) and f"from 1 to {MAX_SLOTS}" in str(err.value)
    assert err.value.exit_code == 2


def test_slot_limit_holds_for_every_source(tmp_path):
    (tmp_path / "h.json").write_text('[{"host": "a", "slots": 100000000}]')
    with pytest.raises(ConfigError, match=f"from 1 to {MAX_SLOTS}"):
        resolve_hosts(hostfile=tmp_path / "h.json")
    with pytest.raises(ConfigError, match="--nproc-per-node"):
        resolve_hosts(hosts="a", nproc_per_node=MAX_SLOTS + 1)
    with pytest.raises(ConfigError, match=f"1 to {MAX_SLOTS}"):
        resolve_hosts(environ={"SLURM_JOB_NODELIST": "a", "SLURM_GPUS_PER_NODE": "99999999999999999999"})
    assert resolve_hosts(hosts="a", nproc_per_node=MAX_SLOTS)[0].slots == MAX_SLOTS


@pytest.mark.parametrize("expr", ["", "  ", "n[1-2]!n[1-2]"])
def test_empty_selection_is_an_error(expr):
    with pytest.raises(ConfigError, match="--hosts"):
        expand(expr)


def _pool(**slots):
    return HostList(Host(name, n) for name, n in slots.items())


def _as_dict(hosts):
    return {h.name: list(h.devices) for h in hosts}


# Cases follow DeepSpeed's tests of runner.parse_resource_filter (tests/unit/launcher/test_run.py).
def test_include_whole_host_and_slots():
    pool = _pool(worker0=4, worker1=4)
    assert _as_dict(apply_filter(pool, include="worker0@worker1:0,2")) == {"worker0": [0, 1, 2, 3], "worker1": [0, 2]}
    assert _as_dict(apply_filter(pool, include="worker1:1")) == {"worker1": [1]}


def test_include_keeps_pool_order_and_last_spec_wins():
    pool = _pool(worker0=4, worker1=4)
    assert list(_as_dict(apply_filter(pool, include="worker1@worker0"))) == ["worker0", "worker1"]
    assert _as_dict(apply_filter(pool, include="worker0:0@worker0:1,1")) == {"worker0": [1]}


def test_exclude_whole_host_and_slots():
    pool = _pool(worker0=4, worker1=4)
    assert _as_dict(apply_filter(pool, exclude="worker1:0")) == {"worker0": [0, 1, 2, 3], "worker1": [1, 2, 3]}
    assert _as_dict(apply_filter(pool, exclude="worker0")) == {"worker1": [0, 1, 2, 3]}
    assert _as_dict(apply_filter(pool, exclude="worker1:0,1,2,3")) == {"worker0": [0, 1, 2, 3]}


def test_filter_names_may_be_node_sets():
    pool = _pool(n1=2, n2=2, n3=2, n4=2)
    assert _as_dict(apply_filter(pool, exclude="n[2-3]")) == {"n1": [0, 1], "n4": [0, 1]}
    assert _as_dict(apply_filter(pool, include="n[1,4]:1")) == {"n1": [1], "n4": [1]}


def test_filtered_host_carries_slot_ids_and_untouched_host_stays_equal():
    pool = _pool(a=4, b=4)
    result = apply_filter(pool, exclude="b:1")
    assert result[0] == Host("a", 4)
    assert result[1] == Host("b", 3, (0, 2, 3))


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"include": "ghost"}, "host ghost is not in the host list"),
        ({"include": "a@ghost[1-2]:0"}, "host ghost[1-2] is not in the host list"),
        ({"exclude": "ghost"}, "host ghost is not in the host list"),
        ({"include": "a:7"}, "host a has no slot 7"),
        ({"include": "a:x"}, "bad slot list 'x'"),
        ({"include": "a:"}, "bad slot list ''"),
        ({"include": "a", "exclude": "b"}, "mutually exclusive"),
        ({"exclude": "a@b"}, "no host is left"),
    ],
)
def test_bad_filters(kwargs, expected):
    with pytest.raises(ConfigError) as err:
        apply_filter(_pool(a=2, b=2), **kwargs)
    assert expected in str(err.value)
    assert err.value.exit_code == 2


def test_unknown_host_in_include_through_resolve():
    with pytest.raises(ConfigError) as err:
        resolve_hosts(hosts="node[1-4]", include="node9")
    assert str(err.value).startswith("--include='node9': host node9 is not in the host list (node[1-4])")


def test_resolve_from_hosts_gives_nproc_slots_in_order():
    hosts = resolve_hosts(hosts="b,a[1-2]", nproc_per_node=4, environ={})
    assert hosts == [Host("b", 4), Host("a1", 4), Host("a2", 4)]
    assert hosts.names == ["b", "a1", "a2"] and hosts.folded == "a[1-2],b" and hosts.total_slots == 12
    assert resolve_hosts(hosts="x", environ={}) == [Host("x", 1)]


def test_slots_fewer_than_nproc_per_node(tmp_path):
    path = tmp_path / "hf"
    path.write_text("n1 slots=8\nn2 slots=2\nn3 slots=2\n")
    with pytest.raises(ConfigError) as err:
        resolve_hosts(hostfile=str(path), nproc_per_node=4)
    msg = str(err.value)
    assert msg.startswith("--nproc-per-node=4: n[2-3] have only 2 slot(s)")
    assert str(path) in msg and "use --nproc-per-node 2" in msg
    with pytest.raises(ConfigError, match="n1 has only 2 slot"):
        resolve_hosts(hostfile=str(path), include="n1:0,1", nproc_per_node=4)
    assert resolve_hosts(hostfile=str(path), include="n1", nproc_per_node=4).names == ["n1"]


def test_slurm_job_nodelist_when_no_hosts_given():
    env = {"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "gpu-[1-2]-[1-2]", "SLURM_GPUS_PER_NODE": "a100:4"}
    hosts = resolve_hosts(environ=env)
    assert hosts.names == ["gpu-1-1", "gpu-1-2", "gpu-2-1", "gpu-2-2"] and {h.slots for h in hosts} == {4}
    assert resolve_hosts(hosts="x", environ=env).names == ["x"]  # explicit hosts win
    fancy = dict(env, SLURM_GPUS_PER_NODE="a100:4,v100:2")  # not a plain count: ignored
    assert {h.slots for h in resolve_hosts(environ=fancy, nproc_per_node=2)} == {2}


def test_bad_slurm_nodelist_names_the_variable():
    with pytest.raises(ConfigError, match="SLURM_JOB_NODELIST="):
        resolve_hosts(environ={"SLURM_JOB_NODELIST": "n[1-"})


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, "--hosts=None: give --hosts"),
        ({"hosts": "a", "hostfile": "f"}, "give one of them"),
        ({"hosts": "a", "nproc_per_node": 0}, "--nproc-per-node=0"),
    ],
)
def test_bad_resolve_arguments(kwargs, expected):
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[")):
        resolve_hosts(environ={}, **kwargs)


def test_host_checks_its_slots():
    with pytest.raises(ConfigError):
        Host("a", 0)
    for ids in [(0,), (1, 1), (-1, 0)]:
        with pytest.raises(ConfigError):
            Host("a", 2, ids)
    assert Host("a", 2, (3, 5)).devices == (3, 5) and Host("a", 2).devices == (0, 1)


@pytest.mark.parametrize(("env", "gpus"), [
    ({"SLURM_GPUS_ON_NODE": "8", "SLURM_GPUS_PER_NODE": "4"}, 8),  # what this node got wins
    ({"SLURM_GPUS_PER_NODE": "gpu:a100:4"}, 4),
    ({"SLURM_GPUS_PER_NODE": "a100:4,v100:2"}, None),
    ({"SLURM_GPUS_PER_NODE": "²"}, None),
    ({"SLURM_GPUS_PER_NODE": "0"}, None),
    ({}, None),
])
def test_one_slurm_gpu_parser_for_host_slots_and_the_allocation(env, gpus):
    from orchestrator import slurm

    env = {"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "n[1-2]", **env}
    assert slurm.gpus_per_node(env) == gpus
    assert slurm.allocation(env, check=False).gpus_per_node == gpus
    assert {h.slots for h in resolve_hosts(environ=env)} == {gpus or 1}
