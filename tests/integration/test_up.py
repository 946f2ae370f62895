"""`orchestrator up` on real sandbox hosts: the smallest job file, re-runs that skip sync and setup, `jobs`,
`logs`, and `stop` from a second process (nothing of the run left on the hosts). 2 hosts x 2 ranks."""

from __future__ import annotations

import hashlib
import json
import re
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from run_tokens import tokened, wait_for
from orch_cli import ORCH, orch

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(240)]

TRAIN = textwrap.dedent("""\
    import os, sys, time
    print(f"hello rank={os.environ['RANK']} cwd={os.getcwd()} marker={open('data.txt').read().strip()}", flush=True)
    time.sleep(float(sys.argv[sys.argv.index('--sleep') + 1]) if '--sleep' in sys.argv else 0)
""")


@pytest.fixture(scope="module")
def job(sandbox, tmp_path_factory) -> Path:
    """A job dir on the head: job.yaml (the README's smallest job file, with this venv's python) + code/."""
    root = tmp_path_factory.mktemp("up")
    code = root / "code"
    code.mkdir()
    (code / "train.py").write_text(TRAIN)
    (code / "data.txt").write_text(f"{os.urandom(4).hex()}\n")
    (code / "skip.log").write_text("excluded\n")
    hosts = ",".join(sandbox.hosts[:2])
    (root / "job.yaml").write_text(textwrap.dedent(f"""\
        name: hello
        hosts: {hosts}
        nproc_per_node: 2
        python: {sys.executable}
        workdir: code
        run: train.py --steps 3
        env: {{OMP_NUM_THREADS: "1"}}
        sync: {{exclude: ["*.log"]}}
        setup: echo setup-ran-here
    """))
    return root


def ssh(sandbox):
    return ["--ssh-config", str(sandbox.ssh_config), "--connect-timeout", "5"]


def test_up_syncs_runs_and_records(sandbox, job):
    first = orch("up", "job.yaml", *ssh(sandbox), "--run-id", "up-first", cwd=job)
    assert first.returncode == 0, first.stderr[-3000:]
    lines = [ln for ln in first.stdout.splitlines() if "hello rank=" in ln]
    assert sorted(ln.split(":", 1)[0] for ln in lines) == sorted(
        [f"{h}/{r}" for h, rs in zip(sandbox.hosts[:2], ([0, 1], [2, 3])) for r in rs])
    marker = (job / "code" / "data.txt").read_text().strip()
    assert all(f"marker={marker}" in ln and "/.cache/orchestrator/code/" in ln for ln in lines)
    assert "sent" in first.stderr and first.stdout.count(": setup: setup-ran-here") == 2
    # the excluded file never reached a node
    cwd = lines[0].split("cwd=")[1].split()[0]
    assert sandbox.exec(sandbox.hosts[0], ["test", "-e", f"{cwd}/skip.log"]).returncode != 0

    second = orch("up", "job.yaml", *ssh(sandbox), "--run-id", "up-second", cwd=job)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "unchanged" in second.stderr and "sent" not in second.stderr.split("[orch] sync", 1)[1].splitlines()[0]
    assert "setup-ran-here" not in second.stdout and second.stdout.count("skipped") == 2
    (job / "code" / "data.txt").write_text("changed\n")  # one file: only it travels, the rest is linked
    third = orch("up", "job.yaml", *ssh(sandbox), "--run-id", "up-third", cwd=job)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "changed files only" in third.stderr and third.stdout.count("marker=changed") == 4

    listed = json.loads(orch("jobs", "--json", cwd=job).stdout)
    rows = {r["id"]: r for r in listed}
    assert rows["up-first"]["name"] == "hello" and rows["up-first"]["state"] == "done"
    assert rows["up-second"]["exit"] == "0"
    table = orch("jobs", cwd=job)
    assert "up-first" in table.stdout and "done" in table.stdout

    host = sandbox.hosts[1]
    logs = orch("logs", "up-first", "--host", host, cwd=job)
    assert logs.returncode == 0 and f"{host}/2: hello rank=2" in logs.stdout and sandbox.hosts[0] not in logs.stdout
    assert logs.stdout.splitlines()[0] == f"{host}: setup: setup-ran-here"  # the setup first, host-prefixed
    one = orch("logs", "up-first", "--rank", "3", cwd=job)
    assert [ln.split(":")[0] for ln in one.stdout.splitlines()] == [f"{host}/3"]


def test_stop_from_another_process_leaves_nothing(sandbox, job, tmp_path):
    run_id = "up-stop"
    proc = subprocess.Popen([*ORCH, "up", "job.yaml", *ssh(sandbox), "--run-id", run_id,
                             "--set", "run=train.py --sleep 300"], cwd=job, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        hosts = sandbox.hosts[:2]
        assert wait_for(lambda: all(tokened(run_id, pids=sandbox.pids(h)) for h in hosts), timeout=60)
        assert wait_for(lambda: b"hello rank=3" in b"".join(
            p.read_bytes() for p in (job / "runs" / run_id / "logs").glob("*.log")), timeout=60)
        running = json.loads(orch("jobs", "--json", cwd=job).stdout)
        assert {r["id"]: r["state"] for r in running}[run_id] == "running"
        _newer_version_leaves_the_running_copy_alone(sandbox, job, tmp_path, hosts)
        follow = subprocess.Popen([*ORCH, "logs", run_id, "--follow"], cwd=job,
                                  stdout=subprocess.PIPE, text=True)
        stopped = orch("stop", run_id, "--timeout", "30", cwd=job)
        assert stopped.returncode == 0, stopped.stderr
        assert "stopped" in stopped.stdout
        assert proc.wait(timeout=30) == 128 + 15
        assert "hello rank=3" in follow.communicate(timeout=30)[0]  # --follow ends with the run
        assert wait_for(lambda: not any(tokened(run_id, pids=sandbox.pids(h)) for h in hosts), timeout=10)
        again = orch("stop", run_id, cwd=job)
        assert again.returncode == 2 and "not running" in again.stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _newer_version_leaves_the_running_copy_alone(sandbox, job, tmp_path, hosts):
    """Another version synced while the run goes on, its sync's pin long expired: the run's agent holds the copy,
    so the new one is linked from it and the run's copy stays as it is."""
    from orchestrator.job.sync import read_tree, sync_tree
    from orchestrator.remote.ssh import SshOptions

    running, marker = read_tree(job / "code", exclude=("*.log",), cache=None), (job / "code" / "data.txt").read_text()
    shutil.copytree(job / "code", tmp_path / "newer")
    (tmp_path / "newer" / "data.txt").write_text("newer\n")
    copy = f"/root/.cache/orchestrator/code/{running.digest}"
    for host in hosts:
        assert sandbox.exec(host, ["touch", "-d", "1 hour ago", f"{copy}.pin"]).returncode == 0
    results = sync_tree(read_tree(tmp_path / "newer", exclude=("*.log",), cache=None), hosts, pin=False,
                        ssh=SshOptions(config=str(sandbox.ssh_config), connect_timeout=5), python=sys.executable)
    assert {(r.status, r.delta_from) for r in results.values()} == {("sent", running.digest)}, results
    for host in hosts:
        assert sandbox.exec(host, ["cat", f"{copy}/data.txt", f"{results[host].path}/data.txt"]).stdout \
            == f"{marker}newer\n"


def test_supervised_job_file(sandbox, job):
    out = orch("up", "job.yaml", *ssh(sandbox), "--run-id", "up-supervised", "--set", "supervise.max_restarts=1",
               cwd=job)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("hello rank=") == 4 and "outcome: done" in out.stderr
    rows = {r["id"]: r for r in json.loads(orch("jobs", "--json", cwd=job).stdout)}
    assert rows["up-supervised"]["state"] == "done" and rows["up-supervised"]["restarts"] == "0"
    logs = orch("logs", "up-supervised", "--rank", "2", cwd=job)
    assert "hello rank=2" in logs.stdout
    host = sandbox.hosts[1]
    lines = orch("logs", "up-supervised", "--host", host, cwd=job).stdout.splitlines()
    assert lines[0].startswith(f"{host}: setup: ") and "skipped" in lines[0]  # setup ran before attempt 0
    assert any(f"{host}/2: hello rank=2" in ln for ln in lines[1:])


def test_unreachable_host_fails_the_sync_and_starts_nothing(sandbox, job):
    out = orch("up", "job.yaml", *ssh(sandbox), "--run-id", "up-unreachable", "--set",
               f"hosts={sandbox.hosts[0]},nosuchhost.invalid", cwd=job)
    assert out.returncode == 255, out.stderr[-2000:]
    assert "nosuchhost.invalid failed" in out.stderr and "hello rank=" not in out.stdout
    rows = {r["id"]: r for r in json.loads(orch("jobs", "--json", cwd=job).stdout)}
    assert rows["up-unreachable"]["state"] == "failed" and rows["up-unreachable"]["exit"] == "255"


LISTING = "import hashlib, os, sys; r = sys.argv[1]; print(sorted((os.path.relpath(os.path.join(d, f), r), " \
    "hashlib.sha256(open(os.path.join(d, f), 'rb').read()).hexdigest()) for d, _, fs in os.walk(r) for f in fs))"


def test_sync_relays_node_to_node_with_deltas_and_a_lost_node(sandbox, tmp_path):
    """sync_tree's relay chain on 4 hosts: the tree arrives identical everywhere, a fifth host that joins is the only
    one sent anything, an edit travels as a delta through the chain, and a receiver killed mid-stream fails itself
    and the nodes behind it (no partial copy left there) while the node before it finishes."""
    from orchestrator.job.sync import read_tree, sync_tree
    from orchestrator.remote.ssh import SshOptions

    chain, dest = sandbox.hosts[2:6], "/root/relay-test-code"
    src = tmp_path / "src"
    for i in range(40):
        (src / f"d{i % 4}").mkdir(parents=True, exist_ok=True)
        (src / f"d{i % 4}" / f"f{i}.py").write_text(f"x = {i}\n" * 50)
    opts = dict(ssh=SshOptions(config=str(sandbox.ssh_config), connect_timeout=5), python=sys.executable, dest=dest)

    def listing(host, digest):
        done = sandbox.exec(host, [sys.executable, "-c", LISTING, f"{dest}/{digest}"])
        assert done.returncode == 0, done.stderr
        return done.stdout

    try:
        first = read_tree(src, cache=None)
        results = sync_tree(first, chain, **opts)
        assert {h: r.status for h, r in results.items()} == {h: "sent" for h in chain}, results
        assert len({listing(h, first.digest) for h in chain}) == 1 and "d3/f39.py" in listing(chain[0], first.digest)
        joined = sync_tree(first, [*chain, sandbox.hosts[6]], **opts)
        assert [r.status for r in joined.values()] == ["unchanged"] * 4 + ["sent"], joined

        (src / "d1" / "f1.py").write_text("edited\n")
        (src / "d2" / "f2.py").unlink()
        second = read_tree(src, cache=None)
        results = sync_tree(second, chain, **opts, pin=False)
        assert {(r.status, r.delta_from) for r in results.values()} == {("sent", first.digest)}, results
        assert {listing(h, second.digest) for h in chain} == {str(sorted(
            (f, hashlib.sha256((src / f).read_bytes()).hexdigest()) for f in second.files)) + "\n"}
        inodes = sandbox.exec(chain[3], ["stat", "-c", "%i", f"{dest}/{first.digest}/d3/f3.py",
                                         f"{dest}/{second.digest}/d3/f3.py"]).stdout.split()
        assert inodes[0] == inodes[1]  # linked from the node's previous copy (pinned by its sync), not sent

        (src / "d0" / "f0.py").write_text("edited again\n")
        fourth = read_tree(src, cache=None)
        results = sync_tree(fourth, chain, **opts, pin=False)  # the last copy: nothing runs in it, nothing pinned it
        assert {(r.status, r.delta_from) for r in results.values()} == {("sent", second.digest)}, results
        assert {listing(h, fourth.digest) for h in chain} == {str(sorted(
            (f, hashlib.sha256((src / f).read_bytes()).hexdigest()) for f in fourth.files)) + "\n"}
        left = sandbox.exec(chain[3], ["ls", "-A", dest]).stdout.split()
        assert second.digest not in left and f"{second.digest}.files" not in left, left  # turned into the new one
        assert sandbox.exec(chain[3], ["stat", "-c", "%i", f"{dest}/{fourth.digest}/d3/f3.py"]).stdout.split() \
            == inodes[:1]  # the same file, moved: no new link

        (src / "big.bin").write_bytes(os.urandom(32 << 20))  # long enough a stream to cut in the middle
        third, killed = read_tree(src, cache=None), []

        def kill_second_node(host, done, total):
            if host == chain[1] and done < total and not killed:
                killed.extend(pid for pid in sandbox.pids(host) if b"TreeSink" in _cmdline(pid))
                for pid in killed:
                    os.kill(pid, 9)

        results = sync_tree(third, chain, **opts, on_progress=kill_second_node)
        assert killed and results[chain[0]].status == "sent", results
        assert results[chain[1]].status == "failed", results[chain[1]]
        for host in chain[2:]:
            assert results[host].status == "failed" and f"upstream {chain[1]} lost" in results[host].error, results
            left = sandbox.exec(host, ["ls", "-A", dest]).stdout.split()
            assert third.digest not in left and not [n for n in left if n.startswith(".partial")], left
        assert wait_for(lambda: not any(b"TreeSink" in _cmdline(p) for h in chain for p in sandbox.pids(h)), 10)
        assert [n for n in sandbox.exec(chain[1], ["ls", "-A", dest]).stdout.split() if n.startswith(".partial")]
        assert sync_tree(third, chain[1:2], **opts)[chain[1]].ok  # the next receiver removes the killed one's
        left = sandbox.exec(chain[1], ["ls", "-A", dest]).stdout.split()
        assert third.digest in left and not [n for n in left if n.startswith((".partial", ".stale"))], left
    finally:
        for host in sandbox.hosts[2:7]:
            sandbox.exec(host, ["rm", "-rf", dest])


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.fixture(scope="module")
def slurm_cluster(slurm_sandbox_factory):
    with slurm_sandbox_factory("up", nodes=2) as both:
        yield both


@pytest.mark.slow
def test_slurm_section_inside_salloc(slurm_cluster, job):
    """The same job file with `slurm:` instead of `hosts:`: synced over SSH, run as one srun step."""
    sb, _ = slurm_cluster
    text = (job / "job.yaml").read_text()
    hosts_line = next(ln for ln in text.splitlines() if ln.startswith("hosts:"))
    (job / "slurm.yaml").write_text(text.replace(hosts_line, "slurm: {nodes: 2}"))
    out = subprocess.run(["salloc", "--nodes=2", *ORCH, "up", "slurm.yaml", *ssh(sb),
                          "--run-id", "up-slurm"], cwd=job, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    ranks = sorted(re.findall(r"hello rank=(\d) cwd=\S*/\.cache/orchestrator/code/", out.stdout + out.stderr))
    assert ranks == ["0", "1", "2", "3"], out.stdout[-3000:]
