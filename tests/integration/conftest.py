"""Fixtures for integration tests on a real sandbox cluster (namespace hosts with sshd), and the `sandbox` marker.

    @pytest.mark.sandbox
    def test_hostname(sandbox, hosts4, ssh_config):          # 16 hosts for the whole pytest session
        out = subprocess.run(["ssh", "-F", str(ssh_config), hosts4[0], "hostname"], capture_output=True, text=True)
        assert out.stdout.strip() == hosts4[0]

    def test_fault(private_sandbox):                         # a fresh small sandbox, removed after the test
        sb = private_sandbox(nodes=2)
        sb.link_down(sb.hosts[1])

    def test_boxed(docker_sandbox):                          # 2 hosts with dockerd and the test image loaded
        sb, baseline = docker_sandbox

Outside CI (env CI unset) a missing root or a sandbox that fails to start SKIPS with a loud reason; under CI=true
it FAILS. Every sandbox made here is named after this pytest process (pt<pid>...), torn down at the end even on
failure, and leftovers of killed earlier runs (pt<pid> whose process is gone) are removed first.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys

import pytest

SESSION_NODES = 16
_session_error: list[str] = []  # why the session sandbox could not start (asked once, reported to every test)


def _under_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _unavailable(reason: str):
    msg = f"SANDBOX UNAVAILABLE: {reason}"
    if _under_ci():
        pytest.fail(msg + " (CI=true: sandbox tests must run)", pytrace=False)
    pytest.skip(msg + " -- run as root to include these tests")


@contextlib.contextmanager
def slurm_sandbox(suffix: str, *, nodes: int, gpus_per_node: int = 0):
    """(sandbox, SlurmCluster) for a test module: `nodes` hosts with Slurm, SLURM_CONF set while it is open.

        @pytest.fixture(scope="module")
        def cluster(slurm_sandbox_factory):
            with slurm_sandbox_factory("slurm", nodes=4, gpus_per_node=2) as both:
                yield both
    """
    if reason := _root_reason():
        _unavailable(reason)
    missing = [t for t in ("munged", "sbatch", "/usr/sbin/slurmctld", "/usr/sbin/slurmd") if not shutil.which(t)]
    if missing:
        _unavailable(f"missing {missing}: apt-get install slurm-wlm munge (requirements/apt.txt)")
    from orchestrator.sandbox.cluster import Sandbox
    from orchestrator.sandbox.slurm import start_slurm

    sb = Sandbox.up(f"pt{os.getpid()}-{suffix}", nodes=nodes, prefix="node")
    mp = pytest.MonkeyPatch()
    try:
        cluster = start_slurm(sb, gpus_per_node=gpus_per_node)
        for name, value in {**cluster.env(), "OMP_NUM_THREADS": "1", "ORCH_PYTHON": sys.executable}.items():
            mp.setenv(name, value)
        yield sb, cluster
    finally:
        mp.undo()
        sb.down()


@pytest.fixture(scope="session")
def slurm_sandbox_factory():
    """slurm_sandbox, for module-scoped fixtures (test modules do not import conftest)."""
    return slurm_sandbox


def _root_reason() -> str | None:
    return None if os.geteuid() == 0 else f"needs root (uid {os.geteuid()})"


def pytest_configure(config):
    config.addinivalue_line("markers", "sandbox: needs root and the namespace-host sandbox")


def pytest_runtest_setup(item):
    if item.get_closest_marker("sandbox") is not None:
        reason = _root_reason() or (_session_error[0] if _session_error else None)
        if reason:
            _unavailable(reason)


def _remove_stale_sandboxes() -> None:
    """Sandboxes of earlier pytest runs that were killed before their teardown: pt<pid>... with <pid> gone, and
    pt<our pid> itself (a reused pid: only this fixture makes that name). Other pt<our pid>-* are live tests'."""
    from orchestrator.sandbox import Sandbox, list_sandboxes

    for name in list_sandboxes():
        m = re.fullmatch(r"pt(\d+)(?:-.*)?", name)
        if m and (name == f"pt{os.getpid()}" or not os.path.exists(f"/proc/{m.group(1)}")):
            try:
                Sandbox.load(name).down()
            except Exception as exc:  # noqa: BLE001 - a leftover must not block this run
                print(f"warning: could not remove stale sandbox {name}: {exc}")


@pytest.fixture(scope="session")
def sandbox():
    """The session's 16-host sandbox (hosts node1..node16), shared by every test; torn down at session end."""
    reason = _root_reason()
    if reason:
        _unavailable(reason)
    if _session_error:
        _unavailable(_session_error[0])
    from orchestrator.sandbox import Sandbox

    _remove_stale_sandboxes()
    try:
        sb = Sandbox.up(f"pt{os.getpid()}", nodes=SESSION_NODES)
    except Exception as exc:  # noqa: BLE001 - any failure to start is reported the same way
        _session_error.append(f"sandbox up failed: {type(exc).__name__}: {exc}")
        _unavailable(_session_error[0])
    try:
        yield sb
    finally:
        sb.down()


@pytest.fixture(scope="session")
def hosts4(sandbox) -> list[str]:
    return sandbox.hosts[:4]


@pytest.fixture(scope="session")
def ssh_config(sandbox):
    """Path of the session sandbox's OpenSSH client config (for `ssh -F` and `orchestrator run --ssh-config`)."""
    return sandbox.ssh_config


@pytest.fixture
def private_sandbox():
    """Factory for a fresh sandbox owned by one test (for tests that break hosts); removed after the test.

    sb = private_sandbox(nodes=2)     # names pt<pid>-<k>, hosts n1..n2 unless prefix= is given
    """
    reason = _root_reason()
    if reason:
        _unavailable(reason)
    from orchestrator.sandbox import Sandbox

    made = []

    def make(nodes: int = 2, prefix: str = "n", **kwargs):
        name = f"pt{os.getpid()}-{len(made) + 1}-{os.urandom(2).hex()}"
        try:
            sb = Sandbox.up(name, nodes=nodes, prefix=prefix, **kwargs)
        except Exception as exc:  # noqa: BLE001
            _unavailable(f"private sandbox up failed: {type(exc).__name__}: {exc}")
        made.append(sb)
        return sb

    yield make
    for sb in made:
        sb.down()


@pytest.fixture
def docker_sandbox(private_sandbox, tmp_path):
    """(sandbox, pids before any run by host): a private 2-host sandbox with dockerd on each host and the small test
    image `orch-test:torch` loaded (python3 and the system libraries torch needs; the venv is bind-mounted at run
    time). Skips without dockerd."""
    if shutil.which("dockerd") is None:
        pytest.skip("dockerd not installed (apt-get install docker.io)")
    from orchestrator.containers.daemon import start_docker
    from orchestrator.containers.image import build_test_image
    from orchestrator.containers.load import load_image
    from orchestrator.remote.ssh import SshOptions

    image = build_test_image(tmp_path / "img.tar", tag="orch-test:torch", venv=sys.prefix, venv_layer=False)
    sb = private_sandbox(nodes=2)
    start_docker(sb)
    loaded = load_image(image.path, sb.hosts, ssh=SshOptions(config=str(sb.ssh_config)))
    assert all(r.ok for r in loaded.values()), loaded
    return sb, {h: set(sb.pids(h)) for h in sb.hosts}  # sshd, dockerd, containerd


@pytest.fixture
def cpu_load():
    """Keeps this machine's cores busy while the test runs (what a loaded node looks like to the agents): 3 busy
    loops at nice 0, each ending by itself after 120 s, stopped by PID after the test."""
    busy = "import time\nend = time.monotonic() + 120\nwhile time.monotonic() < end: pass"
    procs = [subprocess.Popen([sys.executable, "-c", busy]) for _ in range(3)]
    yield
    for p in procs:
        p.kill()
        p.wait()
