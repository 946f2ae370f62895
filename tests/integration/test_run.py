"""`orchestrator run` and the remote layer against real sshd on sandbox hosts (no mocks).

16 hosts with host prefixes and dshbak folding; unreachable and refusing hosts (per-host errors, exit 255,
nothing left behind); hostile strings; the dead-man switch after SIGKILL of the head, with another run on the
same hosts surviving, then teardown by token; host key checking.
"""

from __future__ import annotations

import ipaddress
import logging
import subprocess
import uuid

import pytest

from orchestrator.remote import SshOptions, run_on, teardown
from run_tokens import tokened, wait_for
from orch_cli import ORCH, orch

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(120)]


def orch_run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return orch("run", *args, timeout=timeout)


def on_hosts(sb, hosts, run_id: str) -> dict[str, int]:
    """How many processes of the run live on each sandbox host."""
    return {h: len(tokened(run_id, sb.pids(h))) for h in hosts}


def test_run_on_16_hosts_prefixed_and_folded(sandbox, ssh_config):
    hosts = sandbox.hosts[:16]
    out = orch_run("-w", "node[1-16]", "--ssh-config", str(ssh_config), "--", "hostname")
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.splitlines()) == sorted(f"{h}: {h}" for h in hosts)
    assert "16 hosts: 16 ok" in out.stderr
    out = orch_run("-w", "node[1-16]", "--ssh-config", str(ssh_config), "-b", "--", "uname", "-s")
    assert (out.returncode, out.stdout) == (0, "----------------\nnode[1-16]\n----------------\nLinux\n"), out.stderr


def test_long_lines_and_raw_bytes_over_ssh(sandbox, ssh_config):
    """A 3 MB line without a newline arrives whole, prefixed once; -b folds it by digest, shown once."""
    spam = "head -c 3000000 /dev/zero | tr '\\0' a; printf '\\377'"
    argv = ("-w", "node[1-2]", "--ssh-config", str(ssh_config), "--", "sh", "-c", spam)
    out = subprocess.run([*ORCH, "run", *argv], capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.splitlines()) == [f"{h}: {'a' * 3000000}\ufffd".encode() for h in ("node1", "node2")]
    folded = subprocess.run([*ORCH, "run", "-b", *argv], capture_output=True,
                            timeout=60)
    assert folded.stdout == f"{'-' * 16}\nnode[1-2]\n{'-' * 16}\n{'a' * 3000000}\ufffd\n".encode(), folded.stderr


def test_unreachable_and_refusing_hosts_get_their_own_errors(sandbox, ssh_config, tmp_path):
    unused_ip = ipaddress.ip_address(sandbox.ip("node1")) + 200  # inside the sandbox subnet, nobody there
    config = tmp_path / "ssh_config"
    config.write_text(f"Host ghost\n    HostName {unused_ip}\nHost refused\n    HostName {sandbox.ip('node1')}\n"
                      f"    Port 2\n" + ssh_config.read_text())
    run_id = f"t-unreach-{uuid.uuid4().hex[:6]}"
    out = orch_run("-w", "node[1-2],ghost,refused", "--ssh-config", str(config), "--connect-timeout", "2",
                   "--run-id", run_id, "--", "sh", "-c", "setsid sleep 300 & echo ran")
    assert out.returncode == 255, out.stderr
    assert sorted(out.stdout.splitlines()) == ["node1: ran", "node2: ran"]
    assert "4 hosts: 2 ok, 2 failed" in out.stderr
    assert "refused: exit 255: connection refused" in out.stderr
    assert any(line.startswith("ghost: exit 255: ") for line in out.stderr.splitlines()), out.stderr
    assert on_hosts(sandbox, ["node1", "node2"], run_id) == {"node1": 0, "node2": 0}  # the setsid'd sleep too


def test_hostile_strings_stay_inert(sandbox, ssh_config, tmp_path):
    m = tmp_path / "pwn"  # /tmp is shared with the sandbox hosts: a file made there would show here
    hostile = [f"node1;touch {m}-a", f"$(touch {m}-b)", f"`touch {m}-c`", "a'b\"c d", "line1\nline2", "--x=$HOME", "*"]
    env_value = f"$(touch {m}-d);`touch {m}-e`'\"\nx"
    out = orch_run("-w", "node[1-2]", "--ssh-config", str(ssh_config), "--env", f"EVIL={env_value}", "--",
                   "sh", "-c", 'printf "%s\\n" "$@" "$EVIL"', "sh", *hostile)
    assert out.returncode == 0, out.stderr
    expected = "\n".join([*hostile, env_value]).splitlines()
    for host in ("node1", "node2"):
        assert [line.split(": ", 1)[1] for line in out.stdout.splitlines() if line.startswith(f"{host}: ")] == expected
    out = orch_run("-w", "node[1-2]", "--ssh-config", str(ssh_config), "--", "printf", "%s\\n", *hostile)  # sh agent
    assert out.returncode == 0, out.stderr
    for host in ("node1", "node2"):
        assert [line.split(": ", 1)[1] for line in out.stdout.splitlines() if line.startswith(f"{host}: ")] == \
            "\n".join(hostile).splitlines()
    for bad in ([f"node1;touch {m}-f"], ["node1", "--run-id", f"x;touch {m}-g"]):
        out = orch_run("-w", *bad, "--ssh-config", str(ssh_config), "--", "true")
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    hostile_hosts = [f"-oProxyCommand=touch {m}-h", f"node1;touch {m}-i", f"$(touch {m}-j)"]  # through the API
    result = run_on(hostile_hosts, ["true"], ssh=SshOptions(config=str(ssh_config), connect_timeout=2))
    assert result.exit_code == 255 and all(r.error for r in result.values()), result.grouped_failures()
    assert not list(tmp_path.glob("pwn*"))


def test_dead_man_switch_on_head_sigkill_spares_another_run(sandbox, ssh_config):
    hosts = sandbox.hosts[:4]
    a, b = (f"t-dm{x}-{uuid.uuid4().hex[:6]}" for x in "ab")
    heads = {r: subprocess.Popen([*ORCH, "run", "-w", ",".join(hosts), "--ssh-config",
                                  str(ssh_config), "--run-id", r, "--", "sh", "-c", "setsid sleep 300 & sleep 300"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for r in (a, b)}
    try:
        both = {h: 3 for h in hosts}  # sh, its setsid sleep, its sleep
        assert wait_for(lambda: on_hosts(sandbox, hosts, a) == both and on_hosts(sandbox, hosts, b) == both), \
            (on_hosts(sandbox, hosts, a), on_hosts(sandbox, hosts, b))
        before = {h: sorted(tokened(b, sandbox.pids(h))) for h in hosts}
        heads[a].kill()
        assert wait_for(lambda: not any(on_hosts(sandbox, hosts, a).values()), timeout=5), on_hosts(sandbox, hosts, a)
        assert {h: sorted(tokened(b, sandbox.pids(h))) for h in hosts} == before
        down = teardown(b, hosts, ssh=SshOptions(config=str(ssh_config)))
        assert (down.exit_code, down.failed) == (0, []), down.grouped_failures()
        assert not any(on_hosts(sandbox, hosts, b).values())
        assert heads[b].wait(timeout=30) == 143  # its commands were SIGTERMed by the teardown
    finally:
        for p in heads.values():
            p.kill()
            p.wait()


def test_host_keys_are_checked(sandbox, ssh_config, tmp_path, caplog):
    lines = sandbox.known_hosts.read_text().splitlines()
    key = {line.split()[0].split(",")[0]: " ".join(line.split()[1:3]) for line in lines}
    bad = tmp_path / "known_hosts_bad"
    bad.write_text(f"node1,{sandbox.ip('node1')} {key['node2']}\n")  # node1 presenting node2's key = mismatch
    text = ssh_config.read_text()
    config = tmp_path / "ssh_config"
    config.write_text(text.replace(str(sandbox.known_hosts), str(bad)))
    marker = tmp_path / "ran"
    out = orch_run("-w", "node1", "--ssh-config", str(config), "--", "touch", str(marker))
    assert out.returncode == 255 and "node1: exit 255: host key verification failed" in out.stderr, out.stderr
    assert not marker.exists()

    new = tmp_path / "known_hosts_new"
    config.write_text(text.replace(str(sandbox.known_hosts), str(new)))
    unknown = run_on(["node1"], ["true"], ssh=SshOptions(config=str(config)))
    assert unknown["node1"].error.startswith("host key verification failed")
    accept = SshOptions(config=str(config), options=("StrictHostKeyChecking=accept-new",))
    assert run_on(["node1"], ["true"], ssh=accept).exit_code == 0  # recorded ...
    assert key["node1"] in new.read_text()
    new.write_text(bad.read_text())
    assert run_on(["node1"], ["true"], ssh=accept)["node1"].error.startswith("host key verification failed")  # ... a change is not

    with caplog.at_level(logging.WARNING, logger="orchestrator.remote.ssh"):
        insecure = SshOptions(config=str(config), options=("StrictHostKeyChecking=no",))
        assert run_on(["node1"], ["true"], ssh=insecure).exit_code == 0  # the user's explicit choice ...
    assert "host key checking is OFF" in caplog.text  # ... never a silent one


def test_a_dead_link_is_noticed_by_keepalive_and_odd_bytes_and_signals_pass(private_sandbox):
    """A host whose cable is pulled ends with 255 once keepalive gives up (here -o ServerAlive*: 1 s x 2), not
    never; an argument that is no UTF-8 reaches the host as its bytes; the command has default SIGINT/SIGQUIT."""
    sb = private_sandbox(nodes=2)
    cfg = ["--ssh-config", str(sb.ssh_config)]
    out = subprocess.run([*ORCH, "run", "-w", "n1", *cfg, "--", "sh", "-c",
                          'printf %s "$1" | od -An -tx1; grep ^SigIgn: /proc/self/status', "sh", b"a\xffb"],
                         capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.decode().splitlines()
    assert lines[0].split() == ["n1:", "61", "ff", "62"], lines
    assert int(lines[1].split()[-1], 16) & 0b110 == 0, lines  # bits of SIGINT (2) and SIGQUIT (3)
    p = subprocess.Popen([*ORCH, "run", "-w", "n2", "-t", "50", *cfg, "-o",
                          "ServerAliveInterval=1", "-o", "ServerAliveCountMax=2", "--", "sh", "-c",
                          "echo up; exec sleep 600"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline() == "n2: up\n"
        sb.link_down("n2")
        _, err = p.communicate(timeout=45)
        assert p.returncode == 255 and "n2: exit 255" in err and "timed out" not in err, err
    finally:
        sb.link_up("n2")
        p.kill()
        p.wait()
