"""`orchestrator launch` on real sandbox hosts: real sshd, real torchrun, gloo, 4 hosts x 2 processes.

Runs are reused between assertions (torchrun start-up costs seconds on 2 cores): one good run checks ranks,
the all_reduce, per-host logs, redaction and hostile strings; one run with a failing rank; five concurrent runs
for teardown (SIGINT, SIGTERM, SIGHUP, SIGKILL of four launchers while a fifth run on the same hosts survives);
one run with an unreachable host; Ctrl-C of `launch` and of `run` with one host's sshd hung; DeepSpeed runs (2 hosts x 2), a good one and one with a failing rank. After
each, nothing of the run is left in the nodes' temp dir either.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from orch_cli import ORCH

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(300)]

MODULE = "orchestrator.launch.examples.allreduce"
HOSTILE = ["node1;touch /tmp/{m}-a", "$(touch /tmp/{m}-b)", "`touch /tmp/{m}-c`", "a'b\"c d", "line1\nline2",
           "--x=$HOME", "*"]


@pytest.fixture(scope="module")
def cluster(sandbox, hosts4):
    """The session sandbox, restricted to its first 4 hosts (conftest.py owns its life cycle)."""
    return Cluster(sandbox, hosts4)


class Cluster:
    def __init__(self, sb, hosts: list[str]):
        self.sb, self.hosts, self.ssh_config = sb, hosts, sb.ssh_config

    def pids(self, host: str) -> list[int]:
        return self.sb.pids(host)

    def exec(self, host: str, argv: list[str]):
        return self.sb.exec(host, argv)


def launch_argv(cluster, tmp_path: Path, run_id: str, *args: str, nproc: int = 2) -> list[str]:
    return [*ORCH, "launch", "--hosts", ",".join(cluster.hosts), "--nproc-per-node", str(nproc),
            "--ssh-config", str(cluster.ssh_config), "--connect-timeout", "3", "--python", sys.executable,
            "--run-dir", str(tmp_path), "--run-id", run_id, "--env", "OMP_NUM_THREADS=1", *args]


def results(stdout: str) -> list[dict]:
    rows = []
    for line in stdout.splitlines():
        _, _, rest = line.partition(": ")
        if rest.startswith("RESULT "):
            rows.append(json.loads(rest[len("RESULT "):]))
    return sorted(rows, key=lambda r: r["rank"])


def run_pids(cluster, run_id: str) -> dict[str, list[int]]:
    """Processes carrying this run's token, per sandbox host."""
    token = f"ORCH_RUN_ID={run_id}".encode()
    found = {}
    for host in cluster.hosts:
        mine = []
        for pid in cluster.pids(host):
            try:
                if token in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    mine.append(pid)
            except OSError:
                pass
        found[host] = mine
    return found


def wait_gone(cluster, run_id: str, timeout: float = 10.0) -> dict[str, list[int]]:
    deadline = time.monotonic() + timeout
    while True:
        left = {h: p for h, p in run_pids(cluster, run_id).items() if p}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def temp_dirs(cluster, run_id: str) -> dict[str, list[str]]:
    """The run's private temp dirs (orch-<run id>-<agent pid>, torchrun's per-rank files in them), per host."""
    found = {h: [n for n in cluster.exec(h, ["ls", "/tmp"]).stdout.split() if n.startswith(f"orch-{run_id}-")]
             for h in cluster.hosts}
    return {h: names for h, names in found.items() if names}


def wait_temp_gone(cluster, run_id: str, timeout: float = 10.0) -> dict[str, list[str]]:
    """temp_dirs once they are gone or at the timeout (the agents remove them just after the run's processes)."""
    deadline = time.monotonic() + timeout
    while (left := temp_dirs(cluster, run_id)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def test_ranks_allreduce_logs_redaction_and_hostile_strings(cluster, tmp_path):
    marker = f"orch-hostile-{uuid.uuid4().hex[:8]}"
    hostile = [h.format(m=marker) for h in HOSTILE]
    env_value = f"$(touch /tmp/{marker}-env); `id` 'q\" \n;x"
    env_file = tmp_path / "job.env"
    env_file.write_text(f"FROM_FILE=literal $(touch /tmp/{marker}-file)\n")
    out = subprocess.run(
        launch_argv(cluster, tmp_path, "t-good", "--env", f"EVIL={env_value}", "--env", "HF_TOKEN=sekrit-123",
                    "--env-file", str(env_file), "-m", MODULE, "--", "--show-env", "EVIL", "--show-env", "FROM_FILE",
                    "--show-env", "HF_TOKEN", "--", *hostile),
        capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = results(out.stdout)
    assert [r["rank"] for r in rows] == list(range(8))
    for r in rows:
        assert r["env_rank"] == r["rank"] and r["world_size"] == 8
        assert r["local_rank"] == r["rank"] % 2
        assert r["host"] == cluster.hosts[r["rank"] // 2]  # static rendezvous: node rank i = i-th host
        assert r["sum"] == r["expected"] == 36
        assert r["extra"] == hostile
        assert r["env"] == {"EVIL": env_value, "FROM_FILE": f"literal $(touch /tmp/{marker}-file)",
                            "HF_TOKEN": "sekrit-123"}
    for host in cluster.hosts:  # nothing a shell would have run was run, on any host or the head
        listing = cluster.exec(host, ["ls", "/tmp"]).stdout
        assert marker not in listing
    assert not list(Path("/tmp").glob(f"{marker}*"))
    run = tmp_path / "t-good"
    for i, host in enumerate(cluster.hosts):
        log = (run / "logs" / f"{host}.log").read_text()
        assert f"{host}/{2 * i}: RESULT " in log and f"{host}/{2 * i + 1}: RESULT " in log
    assert f"{cluster.hosts[2]}/5: RESULT " in out.stdout
    plan = (run / "plan.json").read_text()
    assert "sekrit-123" not in plan and '"HF_TOKEN": "***"' in plan
    assert (run / "plan.json").stat().st_mode & 0o777 == 0o600  # owner only, whatever the umask
    assert json.loads((run / "result.json").read_text())["exit_code"] == 0
    assert wait_temp_gone(cluster, "t-good") == {}


def test_failing_rank_is_named_as_first_failure(cluster, tmp_path):
    out = subprocess.run(
        launch_argv(cluster, tmp_path, "t-fail", "--failure-grace", "5", "-m", MODULE, "--", "--fail-rank", "5",
                    "--exit-code", "7"),
        capture_output=True, text=True, timeout=240)
    assert out.returncode == 1, out.stderr[-3000:]
    assert f"first failure: {cluster.hosts[2]}/5 (local rank 1): exit code 7" in out.stderr
    assert "failing on purpose" in out.stderr.split("first failure:", 1)[1]
    result = json.loads((tmp_path / "t-fail" / "result.json").read_text())
    assert result["first_failure"]["host"] == cluster.hosts[2] and result["first_failure"]["rank"] == 5
    assert wait_gone(cluster, "t-fail") == {}
    assert wait_temp_gone(cluster, "t-fail") == {}


class Launch:
    """A launcher subprocess whose stdout is read in the background (to see when its ranks are up)."""

    def __init__(self, argv: list[str]):
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.err: list[str] = []
        threading.Thread(target=self._read, args=(self.proc.stdout, self.lines), daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True).start()

    @staticmethod
    def _read(stream, into):
        for line in stream:
            into.append(line)

    def running_ranks(self) -> int:
        return len(results("".join(self.lines)))


STOPS = {"int": signal.SIGINT, "term": signal.SIGTERM, "hup": signal.SIGHUP, "kill": signal.SIGKILL}


def test_teardown_on_every_stop_signal_spares_another_run(cluster, tmp_path):
    """One launcher per signal in STOPS, all at once (one torchrun start-up, not one per signal), and a survivor."""
    runs = {name: Launch(launch_argv(cluster, tmp_path, f"t-{name}", "-m", MODULE, "--",
                                     "--sleep", "600", nproc=1))
            for name in ("survivor", *STOPS)}
    try:
        deadline = time.monotonic() + 180
        while any(r.running_ranks() < 4 for r in runs.values()):
            assert time.monotonic() < deadline, {n: (r.running_ranks(), "".join(r.err)[-1500:]) for n, r in runs.items()}
            assert all(r.proc.poll() is None for r in runs.values()), {n: "".join(r.err)[-1500:] for n, r in runs.items()}
            time.sleep(0.5)
        survivor_before = run_pids(cluster, "t-survivor")
        assert all(survivor_before.values())
        for name, sig in STOPS.items():
            assert all(run_pids(cluster, f"t-{name}").values())
            runs[name].proc.send_signal(sig)
        codes = {name: runs[name].proc.wait(timeout=30) for name in STOPS}
        assert codes == {name: -9 if sig == signal.SIGKILL else 128 + sig for name, sig in STOPS.items()}
        for name in STOPS:
            assert wait_gone(cluster, f"t-{name}") == {}, name
            assert wait_temp_gone(cluster, f"t-{name}") == {}, name
        for name in STOPS.keys() - {"kill"}:
            assert "teardown: clean on every host" in "".join(runs[name].err), name
        assert temp_dirs(cluster, "t-survivor").keys() == set(cluster.hosts)  # its own temp dirs are still there
        assert runs["survivor"].proc.poll() is None
        assert run_pids(cluster, "t-survivor") == survivor_before  # not one process of the other run was touched
    finally:
        for r in runs.values():
            if r.proc.poll() is None:
                r.proc.send_signal(signal.SIGTERM)
        for r in runs.values():
            r.proc.wait(timeout=30)
    assert wait_gone(cluster, "t-survivor") == {}
    assert wait_temp_gone(cluster, "t-survivor") == {}


def test_unreachable_host_exits_255_and_leaves_nothing(private_sandbox, tmp_path):
    sb = private_sandbox(nodes=3)  # its own hosts: this test pulls a cable
    cluster = Cluster(sb, sb.hosts)
    sb.link_down(sb.hosts[2])
    out = subprocess.run(launch_argv(cluster, tmp_path, "t-unreach", "-m", MODULE, "--", "--sleep", "600"),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 255, out.stderr[-3000:]
    assert f"unreachable: {sb.hosts[2]}:" in out.stderr
    assert wait_gone(cluster, "t-unreach") == {}


def sshd_pids(sb, host: str) -> list[int]:
    """The host's sshd: its listener and the per-connection children serving the sessions."""
    return [pid for pid in sb.pids(host) if Path(f"/proc/{pid}/comm").read_text().strip() == "sshd"]


def test_a_hung_sshd_holds_ctrl_c_of_launch_and_of_run_for_seconds_only(private_sandbox, tmp_path):
    """One host's sshd SIGSTOPped (listener and sessions): Ctrl-C of `launch` and of `run` ends with 130 in
    seconds, not the 30-60 s of the SSH timeouts; the host is named in one folded line (no dict); once its sshd
    runs again, the connection it finds closed ends the run there (the agent's dead-man switch)."""
    sb = private_sandbox(nodes=2)
    cluster, hung = Cluster(sb, sb.hosts), sb.hosts[1]
    cases = {
        "t-hung-launch": (launch_argv(cluster, tmp_path, "t-hung-launch", "-m", MODULE, "--", "--sleep", "600", nproc=1),
                          f"{hung}: teardown not verified: no answer within 5 s (the node agent kills the run"),
        "t-hung-run": ([*ORCH, "run", "-w", ",".join(sb.hosts), "--ssh-config",
                        str(sb.ssh_config), "--run-id", "t-hung-run", "--", "sleep", "600"],
                       f"{hung}: exit 255: stopped, not verified: no answer within 5 s (the node agent kills the run"),
    }
    for run_id, (argv, expected) in cases.items():
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while not all(run_pids(cluster, run_id).values()) and time.monotonic() < deadline:
                time.sleep(0.2)
            stopped = sshd_pids(sb, hung)
            for pid in stopped:
                os.kill(pid, signal.SIGSTOP)
            try:
                proc.send_signal(signal.SIGINT)
                _, err = proc.communicate(timeout=20)  # a generous bound: the SSH timeouts alone are 30 s
            finally:
                for pid in stopped:
                    os.kill(pid, signal.SIGCONT)
            assert proc.returncode == 130, err[-3000:]
            assert expected in err, err[-3000:]
            assert "{" not in err[max(0, err.index(expected) - 200):], err[-3000:]  # the report, not a dict's repr
            assert wait_gone(cluster, run_id) == {}
        finally:
            proc.kill()
            proc.wait()


def deepspeed_argv(cluster, tmp_path: Path, run_id: str, *args: str) -> list[str]:
    """2 hosts x 2 processes under --launcher deepspeed."""
    if importlib.util.find_spec("deepspeed") is None:  # only a missing extra skips: a broken install fails
        pytest.skip("deepspeed not installed (optional extra)")
    argv = launch_argv(cluster, tmp_path, run_id, "--launcher", "deepspeed", *args)
    argv[argv.index("--hosts") + 1] = ",".join(cluster.hosts[:2])
    return argv


def test_deepspeed_launcher_one_per_host(cluster, tmp_path):
    hosts = cluster.hosts[:2]
    out = subprocess.run(deepspeed_argv(cluster, tmp_path, "t-ds", "-m", MODULE), capture_output=True, text=True,
                         timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = results(out.stdout)
    assert [(r["rank"], r["host"], r["local_rank"]) for r in rows] == [
        (0, hosts[0], 0), (1, hosts[0], 1), (2, hosts[1], 0), (3, hosts[1], 1)]
    assert all(r["sum"] == r["expected"] == 10 for r in rows)
    assert (tmp_path / "t-ds" / "hostfile").read_text() == f"{hosts[0]} slots=2\n{hosts[1]} slots=2\n"
    for i, host in enumerate(hosts):  # every rank line marked like torchrun's: streamed and in the host's log
        log = (tmp_path / "t-ds" / "logs" / f"{host}.log").read_text()
        for rank in (2 * i, 2 * i + 1):
            assert f"{host}/{rank}: RESULT " in out.stdout and f"{host}/{rank}: RESULT " in log
    assert "\x1f" not in out.stdout + out.stderr
    assert wait_temp_gone(cluster, "t-ds") == {}


def test_deepspeed_failing_rank_is_named_as_first_failure(cluster, tmp_path):
    """DeepSpeed's launcher does not say which rank failed; rankprefix.py does, so the root cause is named."""
    out = subprocess.run(deepspeed_argv(cluster, tmp_path, "t-dsfail", "--failure-grace", "5", "-m", MODULE, "--",
                                        "--fail-rank", "3", "--exit-code", "7"),
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 1, out.stderr[-3000:]
    assert f"first failure: {cluster.hosts[1]}/3 (local rank 1): exit code 7" in out.stderr
    assert "failing on purpose" in out.stderr.split("first failure:", 1)[1]
    assert wait_gone(cluster, "t-dsfail") == {}
    assert wait_temp_gone(cluster, "t-dsfail") == {}
