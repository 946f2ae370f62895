"""The sandbox cluster itself, on real namespaces and real sshd: reachable, isolated, and gone after down."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from orch_cli import ORCH

pytestmark = pytest.mark.sandbox


def ssh(config: Path, host: str, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(["ssh", "-F", str(config), host, shlex.join(cmd)], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def alive(pid: int) -> bool:
    """Running (a zombie awaiting its parent's wait() counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


def test_every_host_answers_ssh_with_its_own_hostname(sandbox, ssh_config):
    with ThreadPoolExecutor(16) as pool:
        results = dict(zip(sandbox.hosts, pool.map(lambda h: ssh(ssh_config, h, "hostname"), sandbox.hosts)))
    assert {h: r.stdout.strip() for h, r in results.items()} == {h: h for h in sandbox.hosts}
    assert all(r.returncode == 0 for r in results.values()), {h: r.stderr for h, r in results.items() if r.returncode}


def test_host_key_checking_stays_on(sandbox, ssh_config):
    text = ssh_config.read_text()
    assert "StrictHostKeyChecking yes" in text
    assert sandbox.hosts[0] in sandbox.known_hosts.read_text()


def test_hosts_resolve_each_other_and_reach_by_ssh(sandbox, ssh_config, hosts4):
    a, b = hosts4[:2]
    out = ssh(ssh_config, a, "ssh", "-F", str(ssh_config), b, "hostname")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == b
    hosts_file = sandbox.exec(a, ["cat", "/etc/hosts"]).stdout
    assert f"{sandbox.ip(b)} {b}" in hosts_file


def test_package_install_stays_on_its_host(sandbox, ssh_config, hosts4):
    name = f"/usr/local/lib/orch-test-{uuid.uuid4().hex}"
    a, b = hosts4[:2]
    assert ssh(ssh_config, a, "sh", "-c", f"echo installed > {name}").returncode == 0
    assert sandbox.exec(a, ["cat", name]).stdout == "installed\n"
    assert sandbox.exec(b, ["test", "-e", name]).returncode == 1
    assert not os.path.exists(name)  # nor on the head


def test_root_is_private_per_host(sandbox, hosts4):
    a, b = hosts4[:2]
    sandbox.exec(a, ["sh", "-c", "echo mine > /root/private-marker"], check=True)
    assert sandbox.exec(b, ["test", "-e", "/root/private-marker"]).returncode == 1
    assert not os.path.exists("/root/private-marker")


def test_shared_venv_and_package_work_on_a_host(sandbox, ssh_config, hosts4):
    code = "import orchestrator, torch, socket; print(socket.gethostname(), torch.tensor([2]).item())"
    out = ssh(ssh_config, hosts4[2], sys.executable, "-c", code, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [hosts4[2], "2"]


def test_daemon_started_in_a_host_is_recorded_and_stopped(sandbox, hosts4):
    host = hosts4[3]
    d = sandbox.start_daemon(host, ["sleep", "300"], name="test-sleeper")
    assert d.pid in sandbox.pids(host)
    assert any(x.name == "test-sleeper" for x in type(sandbox).load(sandbox.name).state.daemons)
    assert sandbox.stop_daemon("test-sleeper", host)
    assert d.pid not in sandbox.pids(host)


def test_down_removes_everything_up_created(private_sandbox):
    sb = private_sandbox(nodes=3)
    sb.exec(sb.hosts[0], ["sh", "-c", "setsid sleep 300 >/dev/null 2>&1 < /dev/null &"], check=True)
    sb.start_daemon(sb.hosts[1], ["sleep", "300"], name="sleeper")
    netns_names = [h.netns for h in sb.state.hosts]
    pids = [p for h in sb.hosts for p in sb.pids(h)]
    assert len(pids) >= 5  # 3 sshd + 2 sleeps
    state_dir = sb.state.dir

    sb.down()

    assert not any(Path("/run/netns", n).exists() for n in netns_names)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert sb.state.bridge not in links
    assert not any(h.veth + "@" in links for h in sb.state.hosts)
    assert state_dir not in Path("/proc/self/mountinfo").read_text()
    assert not os.path.exists(state_dir)
    assert not [p for p in pids if alive(p)]
    sb.down()  # idempotent: a second down finds nothing and fails nothing


def test_link_down_cuts_the_host_off_and_link_up_restores_it(private_sandbox):
    sb = private_sandbox(nodes=2)
    a, b = sb.hosts
    probe = ["timeout", "2", "bash", "-c", f"exec 3<>/dev/tcp/{sb.ip(b)}/22"]  # no ping on the image: TCP to sshd
    assert sb.exec(a, probe).returncode == 0
    sb.link_down(b)
    assert sb.exec(a, probe).returncode != 0
    sb.link_up(b)
    assert sb.exec(a, probe).returncode == 0


def test_up_refuses_a_name_that_is_taken(sandbox):
    from orchestrator.errors import ConfigError
    from orchestrator.sandbox import Sandbox

    with pytest.raises(ConfigError, match="already exists"):
        Sandbox.up(sandbox.name, nodes=1)


def test_cli_status_env_and_ssh_config(sandbox):
    run = lambda *a: subprocess.run([*ORCH, "sandbox", *a, "--name", sandbox.name],  # noqa: E731
                                    capture_output=True, text=True, timeout=60)
    status = run("status", "--json")
    assert status.returncode == 0, status.stderr
    assert '"sshd_alive": true' in status.stdout
    assert run("ssh-config").stdout.strip() == str(sandbox.ssh_config)
    assert f"ORCH_SANDBOX_SSH_CONFIG={sandbox.ssh_config}" in run("env").stdout


def test_up_refuses_names_that_exist_and_are_not_its_own():
    from orchestrator.errors import ConfigError
    from orchestrator.sandbox import Sandbox
    from orchestrator.sandbox.plan import plan_sandbox

    name = f"pt{os.getpid()}-taken"
    bridge = plan_sandbox(name, nodes=1).bridge
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    try:
        with pytest.raises(ConfigError, match="not this sandbox's"):
            Sandbox.up(name, nodes=1)
        assert not Path("/tmp/orchestrator-sandbox", name).exists()
    finally:
        subprocess.run(["ip", "link", "del", bridge], check=True)


def test_sigterm_during_up_rolls_back():
    name = f"pt{os.getpid()}-sigterm"
    proc = subprocess.Popen([*ORCH, "sandbox", "up", "--nodes", "16", "--name", name],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    state = Path("/tmp/orchestrator-sandbox", name, "state.json")
    deadline = time.monotonic() + 60
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=120)
    if rc == 0:  # up won the race: nothing to roll back
        from orchestrator.sandbox import Sandbox

        Sandbox.load(name).down()
        pytest.skip("sandbox up finished before SIGTERM arrived")
    assert rc == 130, proc.stderr.read()
    assert not state.parent.exists()
    assert not [n for n in os.listdir("/run/netns") if n.startswith(f"orch-{name}")]


def test_shared_path_under_root_is_visible_and_writable_on_hosts(private_sandbox, tmp_path):
    shared = Path(f"/root/.orch-share-test-{os.getpid()}-{uuid.uuid4().hex[:6]}")  # like a venv under /root
    shared.mkdir()
    try:
        (shared / "from-head").write_text("head\n")
        sb = private_sandbox(nodes=1, shares=[str(shared)])
        host = sb.hosts[0]
        assert sb.exec(host, ["cat", str(shared / "from-head")]).stdout == "head\n"
        sb.exec(host, ["sh", "-c", f"echo host > {shared}/from-host"], check=True)
        assert (shared / "from-host").read_text() == "host\n"
        assert sb.exec(host, ["ls", "-A", "/root"]).stdout.split() == [shared.name]  # the rest of /root stays private
    finally:
        shutil.rmtree(shared)


def test_private_dir_is_a_plain_directory_per_host(sandbox, hosts4):
    a, b = hosts4[:2]
    target = f"/var/lib/orch-test-{uuid.uuid4().hex[:8]}"
    src = sandbox.private_dir(a, target)
    sandbox.exec(a, ["sh", "-c", f"echo x > {target}/f"], check=True)
    assert (src / "f").read_text() == "x\n"
    fstype = sandbox.exec(a, ["findmnt", "-no", "FSTYPE", target]).stdout.strip()
    assert fstype != "overlay"
    assert sandbox.exec(b, ["test", "-e", target]).returncode == 1


def test_two_sandboxes_side_by_side_and_down_spares_the_other(sandbox, ssh_config, private_sandbox):
    other = private_sandbox(nodes=2)
    assert other.state.subnet != sandbox.state.subnet and other.state.bridge != sandbox.state.bridge
    other.down()
    assert ssh(ssh_config, sandbox.hosts[0], "hostname").stdout.strip() == sandbox.hosts[0]
