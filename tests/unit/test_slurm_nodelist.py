"""Node lists: our expansion (ClusterShell, via orchestrator.slurm.nodelist) against `scontrol show hostnames`.

scontrol needs only a slurm.conf naming a cluster and a controller to expand host lists: no daemon is asked.
"""

from __future__ import annotations

import shutil

import pytest

from orchestrator import slurm
from orchestrator.errors import ConfigError

pytestmark = pytest.mark.skipif(shutil.which("scontrol") is None, reason="needs scontrol (Debian: slurm-client)")

CORPUS = [
    "node1",
    "node[1-4]",
    "gpu[001-012]",                     # zero padding
    "gpu[08-11]",                       # padding kept across a decade
    "n[9-11]",                          # no padding, width grows
    "n[1,3-5,7]",                       # commas inside brackets
    "a[1-2],b[3-4],c",                  # commas outside brackets, order kept
    "b1,a1,a[2-3]",                     # Slurm's order is the list's order, not sorted
    "n[8-10],n[01-02]",                 # two groups of one prefix, different padding
    "a[1-2]b[3-4]",                     # several bracket groups
    "rack[1-2]-n[01-03]",               # a suffix after a bracket, before the next
    "a[1,3]b[2]",
    "n1-ib,n2-ib",                      # suffixes without brackets
    "x[1-2],y[007-008],z",
    "gpu-[1-2]-[1-2]",
    "node[3,1-2]",                      # ranges inside one bracket keep the written order
    "n[5-6,1]",
    "n[10,2-3,1]",
    "n[3-4,1]x[2,1]",
    "r[2,1]n[2,1]c[2,1]",               # three bracket groups: Slurm's walk, not lexicographic
    "r[1-2]n[01-02]c[1-2]",
    "a[1-2]b[3-4]c[5-6]d[7-8]",
    "n[01-3]",                          # width from the start of the range
    "n[9-011]",
    "n[1-03],m[001-2]",
    "z[2-3],a[1-2]",
    "[1-2]",
    "n[0-0]",
]


@pytest.fixture(scope="module", autouse=True)
def client_conf(tmp_path_factory):
    conf = tmp_path_factory.mktemp("slurm") / "slurm.conf"
    conf.write_text("ClusterName=corpus\nSlurmctldHost=localhost\n")
    mp = pytest.MonkeyPatch()
    mp.setenv("SLURM_CONF", str(conf))
    yield
    mp.undo()


@pytest.mark.parametrize("expr", CORPUS)
def test_clustershell_matches_scontrol(expr):
    ours = slurm.nodelist(expr, check=False)
    assert ours == slurm.scontrol_hostnames(expr)
    assert slurm.nodelist(expr) == ours


@pytest.mark.parametrize("expr", ["n[1-2]-ib", "a[1-2]b[3-4]c"])
def test_suffix_after_last_bracket_slurm_rejects_clustershell_expands(expr):
    """Slurm 22.05 refuses a suffix after the last bracket; it never writes one, so ClusterShell's reading stands."""
    with pytest.raises(ConfigError, match="Slurm rejects"):
        slurm.scontrol_hostnames(expr)
    assert slurm.nodelist(expr, check=False)[0].endswith(expr[-2:] if expr.endswith("ib") else "c")


@pytest.mark.parametrize("expr", ["n[1-3", "n[3-1]", "n[a-b]", "n[1-2],,n3", ""])
def test_malformed_lists_are_config_errors(expr):
    with pytest.raises(ConfigError):
        slurm.nodelist(expr)


def test_allocation_from_env():
    env = {"SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "node[2-3],node1", "SLURM_GPUS_ON_NODE": "2"}
    alloc = slurm.allocation(env)
    assert alloc == slurm.Allocation(job_id="42", nodes=["node2", "node3", "node1"], gpus_per_node=2)
    assert alloc.first_node == "node2"
    assert slurm.allocation({"SLURM_JOB_ID": "1", "SLURM_JOB_NODELIST": "n1", "SLURM_GPUS_PER_NODE": "a100:4"}).gpus_per_node == 4
    assert slurm.allocation({}) is None


def test_require_allocation_outside_a_job():
    with pytest.raises(ConfigError, match="salloc"):
        slurm.require_allocation("--via slurm", {})


@pytest.mark.parametrize(("raw", "code"), [(0, 0), (512, 2), (256, 1), (15, 143), (9, 137)])
def test_exit_code_from_wait_status(raw, code):
    assert slurm.exit_code_from_status(raw) == code


def test_backend_falls_back_to_the_cli_when_pyslurm_cannot_load():
    try:
        import pyslurm  # noqa: F401
    except Exception:
        assert slurm.backend() == "cli"
    else:
        pytest.skip("pyslurm loads here")
