"""`orchestrator images load/ls/rm` against real docker daemons, one per sandbox host.

    sudo .venv/bin/python -m pytest tests/integration/test_images.py -q

One module sandbox of 5 hosts (n1..n5), each with its own dockerd; n5's data root is a 16 MiB tmpfs (a full
disk). A small real image tar (python3 + its libraries, ~60 MB) built by orchestrator.containers.image.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from orch_cli import ORCH, orch

pytestmark = pytest.mark.sandbox


def _skip_or_fail(reason: str):
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"SANDBOX UNAVAILABLE: {reason} (CI=true: sandbox tests must run)", pytrace=False)
    pytest.skip(f"SANDBOX UNAVAILABLE: {reason}")


@pytest.fixture(scope="module")
def docker_hosts(tmp_path_factory):
    if os.geteuid() != 0:
        _skip_or_fail(f"needs root (uid {os.geteuid()})")
    if shutil.which("dockerd") is None:
        _skip_or_fail("dockerd not installed (apt-get install docker.io)")
    from orchestrator.containers.daemon import start_docker
    from orchestrator.containers.image import build_test_image
    from orchestrator.sandbox import Sandbox

    image = build_test_image(tmp_path_factory.mktemp("img") / "orch-test.tar", tag="orch-test:cpu")
    sb = Sandbox.up(f"pt{os.getpid()}-img", nodes=5, prefix="n")
    try:
        tiny = sb.host_dir("n5") / "tiny-docker"
        tiny.mkdir(parents=True)
        sb.exec("n5", ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(tiny)], check=True)
        start_docker(sb, data_roots={"n5": tiny})
        yield sb, image
    finally:
        sb.down()


def cli(sb, *args: str) -> subprocess.CompletedProcess:
    return orch("images", *args, "--ssh-config", sb.ssh_config)


def load(sb, image_path, hosts: str, *extra: str) -> tuple[int, dict]:
    done = cli(sb, "load", str(image_path), "--hosts", hosts, "--json", *extra)
    assert done.stdout, done.stderr
    doc = json.loads(done.stdout)
    return done.returncode, {h["host"]: h for h in doc["hosts"]}


def image_id_on(sb, host: str, ref: str) -> str | None:
    done = sb.exec(host, ["docker", "image", "inspect", "--format", "{{.Id}}", ref])
    return done.stdout.strip() if done.returncode == 0 else None


def assert_nothing_left(sb, host: str) -> None:
    """No image and no layer: overlay2 keeps one dir per layer beside `l` (its short-name links)."""
    from orchestrator.containers.daemon import data_root

    assert sb.exec(host, ["docker", "images", "-aq"]).stdout.strip() == "", host
    assert sorted(p.name for p in (data_root(sb, host) / "overlay2").iterdir()) == ["l"], host


def relays_on(sb, host: str) -> list[int]:
    """PIDs of image relays (relay.py runs as `python3 -c SOURCE`) still alive in `host`."""
    found = []
    for pid in sb.pids(host):
        try:
            if b"watch_stdin_eof" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            pass
    return found


def test_load_on_four_hosts_then_skip(docker_hosts):
    sb, image = docker_hosts
    rc, hosts = load(sb, image.path, "n[1-4]")
    assert rc == 0, hosts
    assert {h: r["status"] for h, r in hosts.items()} == {f"n{i}": "loaded" for i in range(1, 5)}
    for h in hosts:
        assert image_id_on(sb, h, "orch-test:cpu") == image.image_id
    from orchestrator.containers.daemon import docker_host  # the head reaches a host's daemon too (DOCKER_HOST)

    seen = subprocess.run(["docker", "-H", docker_host(sb, "n2"), "image", "inspect", "--format", "{{.Id}}",
                           "orch-test:cpu"], capture_output=True, text=True)
    assert seen.stdout.strip() == image.image_id, seen.stderr
    rc, again = load(sb, image.path, "n[1-4]")
    assert rc == 0 and {r["status"] for r in again.values()} == {"skipped"}
    listed = json.loads(cli(sb, "ls", "--hosts", "n[1-4]", "--json").stdout)
    assert sorted(r["host"] for r in listed["images"] if r["id"] == image.image_id) == ["n1", "n2", "n3", "n4"]


def test_corrupt_tar_fails_per_host_and_leaves_no_image(docker_hosts, tmp_path):
    sb, image = docker_hosts
    assert cli(sb, "rm", image.image_id, "--hosts", "n[1-2]", "--force").returncode == 0
    bad = tmp_path / "corrupt.tar"
    shutil.copy(image.path, bad)
    with open(bad, "r+b") as f:  # flip bytes inside the layer: the tar still parses, the layer digest does not
        f.seek(image.size // 2)
        chunk = f.read(4096)
        f.seek(image.size // 2)
        f.write(bytes(b ^ 0xFF for b in chunk))
    rc, hosts = load(sb, bad, "n[1-2]")
    assert rc == 1
    for h, r in hosts.items():
        assert r["status"] == "failed" and "docker load" in r["error"], r
        assert image_id_on(sb, h, image.image_id) is None
        assert_nothing_left(sb, h)


def test_sha256_mismatch_fails_per_host_and_removes_what_was_loaded(docker_hosts):
    """The tar docker accepts, but not the digest the user expects (a stream changed on the way, a wrong file)."""
    sb, image = docker_hosts
    digest = hashlib.sha256(Path(image.path).read_bytes()).hexdigest()
    assert cli(sb, "rm", image.image_id, "--hosts", "n[1-2]", "--force").returncode == 0
    rc, hosts = load(sb, image.path, "n[1-2]", "--sha256", "0" * 64)
    assert rc == 1
    for h, r in hosts.items():
        assert r["status"] == "failed" and f"sha256 mismatch: received {digest}, expected {'0' * 64}" in r["error"]
        assert r["error"].endswith("image removed"), r
        assert_nothing_left(sb, h)
    rc, hosts = load(sb, image.path, "n1", "--sha256", f"sha256:{digest}")
    assert rc == 0 and hosts["n1"]["status"] == "loaded", hosts


def test_unreachable_daemon_and_full_disk_leave_other_hosts_loaded(docker_hosts):
    from orchestrator.containers.daemon import start_docker, stop_docker

    sb, image = docker_hosts
    assert cli(sb, "rm", image.image_id, "--hosts", "n[1-2]", "--force").returncode == 0
    stop_docker(sb, "n3")
    try:
        rc, hosts = load(sb, image.path, "n[1-3,5]")
    finally:
        start_docker(sb, ["n3"])
    assert rc == 1
    assert hosts["n1"]["status"] == hosts["n2"]["status"] == "loaded", hosts
    assert hosts["n3"]["status"] == "failed" and "not reachable" in hosts["n3"]["error"]
    assert hosts["n5"]["status"] == "failed" and "space" in hosts["n5"]["error"], hosts["n5"]
    assert image_id_on(sb, "n5", image.image_id) is None
    for h in ("n1", "n2"):
        assert image_id_on(sb, h, image.image_id) == image.image_id


def test_relay_checks_host_keys_like_every_ssh_session(docker_hosts, tmp_path):
    """The relay goes through the SSH transport: a host whose key is not known fails, the others load."""
    sb, image = docker_hosts
    known = tmp_path / "known_hosts"
    known.write_text("".join(line + "\n" for line in sb.known_hosts.read_text().splitlines()
                             if "n2" not in line.split()[0].split(",")))
    assert cli(sb, "rm", image.image_id, "--hosts", "n[1-2]", "--force").returncode == 0
    rc, hosts = load(sb, image.path, "n[1-2]", "--ssh-option", f"UserKnownHostsFile={known}")
    assert rc == 1 and hosts["n1"]["status"] == "loaded", hosts
    assert hosts["n2"]["status"] == "failed" and "host key verification failed" in hosts["n2"]["error"], hosts


def test_node_lost_mid_chain_fails_it_and_downstream_while_upstream_loads(docker_hosts):
    """n2 vanishes (cable pulled, processes killed) while the chain n1 > n2 > n3 > n4 streams: n1 still loads;
    n2 fails, and n3, n4 fail naming n2; no relay is left on any host and no partial image downstream."""
    from orchestrator.containers.daemon import start_docker, stop_docker
    from orchestrator.containers.load import load_image
    from orchestrator.remote.ssh import SshOptions

    sb, image = docker_hosts
    chain = ["n1", "n2", "n3", "n4"]
    assert cli(sb, "rm", image.image_id, "--hosts", "n[1-4]", "--force").returncode == 0
    lost_at = []

    def lose_n2_midway(host: str, done: int, total: int) -> None:
        if host == "n2" and not lost_at and done < total:
            lost_at.append(done)
            sb.lose("n2")

    try:
        results = load_image(image.path, chain, ssh=SshOptions(config=str(sb.ssh_config)), on_progress=lose_n2_midway)
    finally:
        sb.link_up("n2")
        stop_docker(sb, "n2")  # reaps the killed daemon: its zombie would hold the pid in its pidfile
        start_docker(sb, ["n2"])
    assert lost_at, "n2 never reported progress"
    assert results["n1"].status == "loaded" and image_id_on(sb, "n1", image.image_id) == image.image_id
    assert results["n2"].status == "failed", results["n2"]
    for h in ("n3", "n4"):
        assert results[h].status == "failed" and "upstream n2 lost" in results[h].error, results[h]
        assert_nothing_left(sb, h)
    deadline = time.monotonic() + 10  # a relay exits right after its last line; the head closed its session
    while any(relays_on(sb, h) for h in chain) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert {h: relays_on(sb, h) for h in chain} == {h: [] for h in chain}


def test_rootless_daemons_load_and_skip(private_sandbox, tmp_path):
    """dockerd-rootless.sh as an unprivileged user in each host; the relay writes to that user's socket."""
    from orchestrator.containers.daemon import rootless_socket, start_docker
    from orchestrator.containers.image import _write_archive

    if shutil.which("rootlesskit") is None:
        _skip_or_fail("rootlesskit not installed (apt-get install rootlesskit uidmap)")
    sb = private_sandbox(nodes=2)
    start_docker(sb, rootless=True)
    socket = rootless_socket(sb, sb.hosts[0])
    image = _write_archive(tmp_path / "tiny.tar", "orch-tiny:1", [b"\0" * 10240])  # one empty layer: fast
    for expected in ("loaded", "skipped"):
        done = cli(sb, "load", image.path, "--hosts", ",".join(sb.hosts), "--docker-socket", socket, "--json")
        assert done.returncode == 0, done.stdout + done.stderr
        assert {h["status"] for h in json.loads(done.stdout)["hosts"]} == {expected}
    for h in sb.hosts:
        info = sb.exec(h, ["docker", "-H", f"unix://{socket}", "info", "--format", "{{.SecurityOptions}}"]).stdout
        assert "rootless" in info
        assert sb.exec(h, ["docker", "-H", f"unix://{socket}", "image", "inspect", image.image_id]).returncode == 0


def retagged(image, out: Path, tag: str) -> Path:
    """The same image (same config, same id) saved under another tag: only manifest.json differs."""
    with tarfile.open(image.path) as src, tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as dst:
        for member in src:
            data = src.extractfile(member).read()
            if member.name == "manifest.json":
                manifest = json.loads(data)
                manifest[0]["RepoTags"] = [tag]
                data = json.dumps(manifest).encode()
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    return out


def test_node_with_the_id_under_another_tag_gets_the_new_tag(docker_hosts, tmp_path):
    """n1, n2 have the image as orch-test:cpu; the same image saved as orch-test:v2 is tagged there, loaded on
    n3, and runs by its new tag. The result table and `images ls` are the command's output: on stdout."""
    sb, image = docker_hosts
    assert cli(sb, "rm", image.image_id, "--hosts", "n[1-3]", "--force").returncode == 0
    rc, hosts = load(sb, image.path, "n[1-2]")
    assert rc == 0 and {r["status"] for r in hosts.values()} == {"loaded"}, hosts
    v2 = retagged(image, tmp_path / "v2.tar", "orch-test:v2")
    done = cli(sb, "load", str(v2), "--hosts", "n[1-3]")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {line.split()[0]: line.split()[1] for line in done.stdout.splitlines()[1:] if line.startswith("n")}
    assert rows == {"n1": "tagged", "n2": "tagged", "n3": "loaded"}, done.stdout
    assert "1 loaded, 2 tagged, 0 skipped, 0 failed" in done.stdout
    for h in ("n1", "n2", "n3"):
        assert image_id_on(sb, h, "orch-test:v2") == image.image_id, h
    assert image_id_on(sb, "n1", "orch-test:cpu") == image.image_id  # the old tag stays
    ran = sb.exec("n1", ["docker", "run", "--rm", "--network", "host", "orch-test:v2", "python3", "-c", "print(6*7)"])
    assert ran.stdout.strip() == "42", ran.stderr
    rc, hosts = load(sb, v2, "n[1-3]")
    assert rc == 0 and {r["status"] for r in hosts.values()} == {"skipped"}, hosts

    listed = cli(sb, "ls", "--hosts", "n[1-3]")
    assert listed.returncode == 0, listed.stderr
    mine = [line.split() for line in listed.stdout.splitlines() if image.image_id[:19] in line]
    assert sorted(row[0] for row in mine) == ["n1", "n1", "n2", "n2", "n3"], listed.stdout
    assert {row[-1] for row in mine} == {"orch-test:cpu", "orch-test:v2"}
    assert image.image_id[:19] not in listed.stderr
    removed = cli(sb, "rm", "orch-test:v2", "--hosts", "n[1-3]")
    assert sorted(removed.stdout.split()) == ["n1:", "n2:", "n3:", "removed", "removed", "removed"], removed.stdout


def _relay_listeners(sb, host: str) -> list[tuple[str, int]]:
    """TCP listeners in `host` other than its sshd: the image relay's."""
    out = sb.exec(host, ["ss", "-Hltn"], check=True).stdout
    found = []
    for line in out.splitlines():
        address, _, port = line.split()[3].rpartition(":")
        if port != "22":
            found.append((address, int(port)))
    return found


def test_relay_listens_on_its_route_address_and_outlasts_bad_connections(docker_hosts):
    """A user on the cluster connects to n2's relay before its upstream n1 does: once with a wrong token, once
    saying nothing. Both are dropped; n1's stream is taken and every node loads. n1's connection is held back
    (its SYNs dropped in n2) until the wrong one has been refused, so the order is certain."""
    sb, image = docker_hosts
    assert cli(sb, "rm", image.image_id, "--hosts", "n[1-3]", "--force").returncode == 0
    hold = ["INPUT", "-p", "tcp", "--syn", "-s", sb.ip("n1"), "-j", "DROP"]
    sb.exec("n2", ["iptables", "-I", *hold], check=True)
    held = True
    proc = subprocess.Popen([*ORCH, "images", "load", image.path, "--hosts", "n[1-3]",
                             "--json", "--ssh-config", str(sb.ssh_config)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    bad = []
    try:
        deadline = time.monotonic() + 60
        while not (listeners := _relay_listeners(sb, "n2")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert listeners == [(sb.ip("n2"), listeners[0][1])], listeners  # not 0.0.0.0 / *
        address = (sb.ip("n2"), listeners[0][1])
        bad = [socket.create_connection(address, timeout=10) for _ in range(2)]
        bad[0].sendall(b"0" * 32 + b"\n")
        assert bad[0].recv(1) == b""  # refused: the relay closed it and is still listening
        assert _relay_listeners(sb, "n2") == listeners
        sb.exec("n2", ["iptables", "-D", *hold], check=True)
        held = False
        out, err = proc.communicate(timeout=120)
    finally:
        if held:
            sb.exec("n2", ["iptables", "-D", *hold])
        for conn in bad:
            conn.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out + err
    assert {h["host"]: h["status"] for h in json.loads(out)["hosts"]} == {"n1": "loaded", "n2": "loaded", "n3": "loaded"}
    for h in ("n1", "n2", "n3"):
        assert image_id_on(sb, h, image.image_id) == image.image_id
