"""`--preflight` (launch, supervise) and `preflight: true` (job files): option parsing, --dry-run, bad input, and
what the supervisor does with a gate's result before attempt 0 (over a scripted runner: no hosts here; the gate
on real hosts is tests/integration/test_preflight_launch.py)."""

import asyncio
import json

import pytest

from orchestrator.check.runner import CheckReport, NodeReport
from orchestrator.cli.main import main
from orchestrator.hosts import Host, HostList
from orchestrator.launch.plan import LaunchSpec
from orchestrator.supervisor import Supervisor, SupervisorConfig
from orchestrator.supervisor.policy import Limits, replace_or_shrink
from orchestrator.supervisor.runner import AttemptResult


def cli(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def test_launch_dry_run_says_a_preflight_would_run_and_runs_nothing(capsys, tmp_path):
    code, out, _ = cli(capsys, "launch", "--hosts", "n[1-3]", "--nproc-per-node", "1", "--preflight",
                       "--run-dir", str(tmp_path), "--dry-run", "--", "train.py")
    assert code == 0
    assert "preflight: would check n[1-3] first" in out and "a failed node stops the run" in out
    assert not any(tmp_path.iterdir())  # nothing written, nothing connected


def test_launch_dry_run_json_has_the_gate_with_the_runs_python_and_workdir(capsys):
    code, out, _ = cli(capsys, "launch", "--hosts", "n[1-2]", "--nproc-per-node", "1", "--preflight", "--python",
                       "/opt/py/bin/python", "--python", "n2=/opt/py2/bin/python", "--workdir", "/srv/job",
                       "--run-id", "r1", "--dry-run", "--json", "--", "train.py")
    assert code == 0
    gate = json.loads(out)["preflight"]
    assert gate == {"hosts": ["n1", "n2"], "check_id": "r1-preflight", "network": True, "on_failure": "refuse",
                    "python": {"n1": "/opt/py/bin/python", "n2": "/opt/py2/bin/python"},
                    "workdir": {"n1": "/srv/job", "n2": "/srv/job"}}


def test_without_the_flag_there_is_no_preflight(capsys):
    code, out, _ = cli(capsys, "launch", "--hosts", "n1", "--nproc-per-node", "1", "--dry-run", "--json", "--", "t.py")
    assert code == 0 and "preflight" not in json.loads(out)


def test_supervise_dry_run_checks_the_spares_too_and_excludes(capsys, tmp_path):
    code, out, _ = cli(capsys, "supervise", "--hosts", "n[1-3]", "--nodes", "1:2", "--spare-hosts", "s1",
                       "--nproc-per-node", "1", "--preflight", "--dry-run", "--json", "--", "train.py")
    assert code == 0
    gate = json.loads(out)["preflight"]
    assert gate["hosts"] == ["n1", "n2", "s1", "n3"] and gate["on_failure"] == "exclude"
    code, out, _ = cli(capsys, "supervise", "--hosts", "n[1-2]", "--nproc-per-node", "1", "--preflight",
                       "--dry-run", "--", "train.py")
    assert code == 0 and "preflight: would check n[1-2] first" in out and "excluded before attempt 0" in out


@pytest.mark.parametrize("args, needle", [
    (["launch", "--container", "img:1"], "--preflight=True: not with a container"),
    (["launch", "--workdir", "job"], "--workdir='job': give an absolute path"),
    (["supervise", "--via", "slurm"], "--preflight=True: not under Slurm"),
    (["launch", "--via", "slurm"], "--preflight=True: not under Slurm"),
])
def test_what_the_gate_cannot_do_is_exit_2_before_anything(capsys, args, needle):
    command, *rest = args
    code, _, err = cli(capsys, command, "--hosts", "n[1-2]", "--nproc-per-node", "1", "--preflight", *rest,
                       "--dry-run", "--", "train.py")
    assert code == 2 and needle in err and "Traceback" not in err


JOB = """\
name: pf
hosts: n[1-2]
nproc_per_node: 1
python: /opt/venv/bin/python
run: train.py
preflight: true
"""


def test_job_file_preflight_field(capsys, tmp_path):
    (tmp_path / "job.yaml").write_text(JOB)
    code, out, _ = cli(capsys, "up", str(tmp_path / "job.yaml"), "--dry-run")
    assert code == 0 and out.splitlines()[1].startswith("preflight: would check n[1-2] first")
    code, out, _ = cli(capsys, "up", str(tmp_path / "job.yaml"), "--dry-run", "--json", "--set",
                       "supervise.spares=s1")
    gate = json.loads(out)["preflight"]
    assert gate["hosts"] == ["n1", "n2", "s1"] and gate["on_failure"] == "exclude"
    assert gate["workdir"] == {"n1": "~", "n2": "~", "s1": "~"}  # before the sync: the login directory
    code, out, _ = cli(capsys, "up", str(tmp_path / "job.yaml"), "--dry-run", "--json", "--set", "preflight=false")
    assert code == 0 and json.loads(out)["preflight"] is None
    schema = json.loads(cli(capsys, "up", "--schema")[1])
    assert schema["properties"]["preflight"]["type"] == "boolean"


@pytest.mark.parametrize("sets, needle", [
    (["preflight=maybe"], "job.yaml:preflight='maybe'"),
    (["container=img:1"], "job.yaml:preflight=True: not with a container"),
])
def test_bad_preflight_in_a_job_file_names_the_field(capsys, tmp_path, sets, needle):
    (tmp_path / "job.yaml").write_text(JOB)
    code, _, err = cli(capsys, "up", str(tmp_path / "job.yaml"), "--dry-run", *[a for s in sets for a in ("--set", s)])
    assert code == 2 and needle in err, err


# ---- the supervisor with a gate's result ---------------------------------------------------------------------

class Runner:
    """Every attempt succeeds; records the plans and the exclusions (pure unit: the loop's bookkeeping only)."""

    def __init__(self):
        self.plans, self.excluded = [], []

    async def run_attempt(self, plan, *, sink, stop):
        self.plans.append(plan)
        return AttemptResult(exit_code=0)

    def exclude(self, host, reason):
        self.excluded.append(host)
        return False


def report(passed, failed) -> CheckReport:
    nodes = {h: NodeReport(h) for h in passed}
    for host, why in failed.items():
        nodes[host] = NodeReport(host)
        nodes[host].fail(why)
    return CheckReport("r1-preflight", HostList(Host(h, 1) for h in nodes), nodes, timings={"total_s": 1.0})


def supervise(tmp_path, gate, hosts, spares=(), **limits):
    runner = Runner()
    cfg = SupervisorConfig(spec=LaunchSpec(program=("train.py",), run_id="r1", nproc_per_node=1),
                           hosts=[Host(h, 1) for h in hosts], spares=[Host(s, 1) for s in spares], run_dir=tmp_path,
                           limits=Limits(backoff_s=0.0, max_nodes=len(hosts), **limits), poll_s=0.01)
    summary = asyncio.run(Supervisor(cfg, runner, preflight=gate).run())
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    return summary, events, runner


def test_failed_nodes_are_excluded_before_attempt_0_and_spares_replace_them(tmp_path):
    gate = report(["n1", "n3", "s2"], {"n2": "disk: cannot write in /srv: No space left on device",
                                       "s1": "unreachable: connection timed out"})
    summary, events, runner = supervise(tmp_path, gate, ["n1", "n2", "n3"], ["s1", "s2"], min_nodes=3)
    assert summary["exit_code"] == 0 and summary["excluded"] == ["n2", "s1"]
    assert [e["event"] for e in events] == ["start", "preflight", "exclude", "exclude", "replace", "launch", "done"]
    assert events[1]["verdicts"]["n2"].startswith("FAIL: disk:") and events[1]["exit_code"] == 1
    assert events[2] | {"time": 0} == {"event": "exclude", "time": 0, "host": "n2", "spare": False,
                                       "reason": "preflight: disk: cannot write in /srv: No space left on device"}
    assert events[3]["host"] == "s1" and events[3]["spare"] is True
    assert events[4]["host"] == "n2" and events[4]["spare"] == "s2"  # s1 failed: the next spare that passed
    assert runner.plans[0].hosts == ["n1", "s2", "n3"] and runner.excluded == ["n2", "s1"]


def test_without_a_spare_the_run_shrinks_within_min_max(tmp_path):
    summary, events, runner = supervise(tmp_path, report(["n1", "n3"], {"n2": "cpu: loop 900 ms"}),
                                        ["n1", "n2", "n3"], min_nodes=1)
    assert summary["exit_code"] == 0 and runner.plans[0].hosts == ["n1", "n3"]
    shrink = next(e for e in events if e["event"] == "shrink")
    assert (shrink["from_nodes"], shrink["to_nodes"]) == (3, 2)


def test_too_few_nodes_pass_gives_up_before_any_attempt(tmp_path):
    summary, events, runner = supervise(tmp_path, report(["n1"], {"n2": "cpu: loop 900 ms"}), ["n1", "n2"],
                                        min_nodes=2)
    assert summary["exit_code"] == 1 and runner.plans == []
    assert [e["event"] for e in events] == ["start", "preflight", "exclude", "gave_up"]
    assert events[-1]["reason"].startswith("preflight: n2 failed; 1 healthy hosts left")
    assert events[-1]["reason"].endswith("nothing was started")


def test_a_clean_gate_changes_nothing(tmp_path):
    summary, events, runner = supervise(tmp_path, report(["n1", "n2"], {}), ["n1", "n2"], ["s1"])
    assert summary["exit_code"] == 0 and runner.plans[0].hosts == ["n1", "n2"]
    assert [e["event"] for e in events] == ["start", "preflight", "launch", "done"]


def test_replace_or_shrink():
    limits = Limits(min_nodes=2, max_nodes=4, nproc_per_node=2, model_parallel=4)
    assert replace_or_shrink(["a", "b", "c", "d"], excluded={"b": "x"}, spares=["s"], limits=limits) == (
        ["a", "s", "c", "d"], {"b": "s"}, None, None)
    # 3 left: world 6 is no multiple of 4, so 2 nodes
    assert replace_or_shrink(["a", "b", "c", "d"], excluded={"b": "x"}, spares=[], limits=limits) == (
        ["a", "c"], {}, (4, 2), None)
    hosts, _, _, short = replace_or_shrink(["a", "b"], excluded={"b": "x"}, spares=[], limits=limits)
    assert hosts == ["a"] and short.startswith("1 healthy hosts left")

