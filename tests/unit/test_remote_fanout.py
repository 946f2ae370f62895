"""Plans, agent argv quoting, results and grouping of orchestrator.remote.fanout (pure; no network)."""

from __future__ import annotations

import json
import shlex

import pytest

from orchestrator.errors import ConfigError
from orchestrator.remote.fanout import (
    FanoutResult, HostResult, agent_argv, agent_source, agent_spec, command_argv, default_transport, plan_commands,
)
from orchestrator.remote.agent import decode_spec
from orchestrator.remote.local import LocalTransport
from orchestrator.remote.ssh import SshOptions, SshTransport

HOSTILE = ["node1;touch /tmp/x", "$(touch /tmp/y)", "`id`", "a'b\"c", "line1\nline2", "--x=$HOME", "*", ""]


def test_plan_per_host_values():
    plan = plan_commands(["n1", "n2"], lambda h: ["echo", h], env={"A": "1"}, cwd=lambda h: f"/w/{h}",
                         python=lambda h: "/opt/py" if h == "n2" else "python3")
    assert [(c.host, c.argv, c.env, c.cwd, c.python) for c in plan] == [
        ("n1", ("echo", "n1"), {"A": "1"}, "/w/n1", "python3"),
        ("n2", ("echo", "n2"), {"A": "1"}, "/w/n2", "/opt/py")]


@pytest.mark.parametrize("argv, env", [([], None), (["x", 3], None), (["x"], {"1BAD": "v"}), (["x"], {"A B": "v"}),
                                       (["x"], {"A": 1})])
def test_plan_rejects_bad_input(argv, env):
    with pytest.raises(ConfigError):
        plan_commands(["n1"], argv, env=env)


def test_user_data_travels_as_data_not_through_a_shell():
    (cmd,) = plan_commands(["n1"], ["printf", "%s\n", *HOSTILE], env={"EVIL": HOSTILE[1] + HOSTILE[4], "B": "x=y"},
                           cwd="/w d")
    size, payload = agent_spec(cmd).split(b"\n", 1)
    assert int(size) == len(payload)
    assert decode_spec(payload) == {"argv": [a.encode() for a in ["printf", "%s\n", *HOSTILE]], "cwd": b"/w d",
                                    "env": {b"EVIL": (HOSTILE[1] + HOSTILE[4]).encode(), b"B": b"x=y"}}


def test_agent_argv_quoted_once_round_trips():
    argv = agent_argv("/opt/my python/bin/python3", "r-1")
    assert argv[:5] == ["/opt/my python/bin/python3", "-I", "-S", "-c", agent_source()]
    assert shlex.split(shlex.join(argv)) == argv  # what the remote shell will hand to exec
    assert agent_argv("python3", "r-1", teardown=True)[-3:] == ["--run-id", "r-1", "--teardown"]


def test_sh_agent_argv_quoted_once_round_trips_and_refuses_env():
    (cmd,) = plan_commands(["n1"], ["printf", "%s\n", *HOSTILE], cwd="/w d", agent="sh")
    argv = command_argv(cmd, "r-1")
    assert argv[:2] == ["sh", "-c"] and argv[3:] == ["orch-agent", "r-1", "/w d", "printf", "%s\n", *HOSTILE]
    assert shlex.split(shlex.join(argv)) == argv and agent_spec(cmd) is None
    assert "#" not in argv[2].splitlines()[0]  # sent without its comment lines
    with pytest.raises(ConfigError, match="--agent"):
        plan_commands(["n1"], ["true"], env={"TOKEN": "s3cret"}, agent="sh")
    with pytest.raises(ConfigError, match="--agent"):
        plan_commands(["n1"], ["true"], agent="perl")


def test_default_transport():
    assert isinstance(default_transport(["localhost"], None), LocalTransport)
    assert isinstance(default_transport(["localhost"], SshOptions(user="root")), SshTransport)
    assert isinstance(default_transport(["localhost", "n1"], None), SshTransport)


def _result():
    return FanoutResult("r1", [
        HostResult("node01", 0), HostResult("node03", None, error="connection refused"),
        HostResult("node02", 3), HostResult("node07", None, error="connection refused"),
        HostResult("node04", 143, signal="TERM"), HostResult("node05", 3)])


def test_result_accessors():
    result = _result()
    assert list(result) == ["node01", "node03", "node02", "node07", "node04", "node05"]  # the order given
    assert result.succeeded == ["node01"]
    assert result.failed == ["node03", "node02", "node07", "node04", "node05"]
    assert result.exit_code == 255  # an unreachable host wins over remote codes
    assert FanoutResult("r", [HostResult("a", 0), HostResult("b", 3)]).exit_code == 3
    assert FanoutResult("r", []).exit_code == 0


def test_grouped_failures_fold_hosts_with_the_same_reason():
    assert _result().grouped_failures() == [
        "node[03,07]: exit 255: connection refused", "node[02,05]: exit 3", "node04: exit 143: killed by signal TERM"]


def test_host_without_exit_status_counts_as_255():
    r = HostResult("n1", None)
    assert (r.ok, r.code) == (False, 255)


def test_to_json_is_serialisable():
    doc = json.loads(json.dumps(_result().to_json()))
    assert doc["exit_code"] == 255 and doc["hosts"][1] == {
        "host": "node03", "exit_code": None, "signal": None, "duration_s": 0.0, "error": "connection refused",
        "tail": [], "ok": False}


def test_a_host_that_never_answers_a_teardown_is_not_waited_for():
    """A transport whose open() hangs (a stopped sshd accepts TCP, then says nothing): NoAnswer after `answer` s."""
    import asyncio

    from orchestrator.remote.fanout import teardown_async

    class Hung:
        def prepare(self, hosts):
            pass

        async def open(self, host, argv):
            await asyncio.sleep(3600)

        async def aclose(self):
            pass

    result = asyncio.run(teardown_async("r1", ["n1", "n2"], transport=Hung(), answer=0.05))
    assert result.grouped_failures() == [
        "n[1-2]: exit 255: no answer within 0.05 s (the node agent kills the run when its SSH channel drops)"]


def test_teardown_report_folds_hosts_by_reason_never_a_dict():
    from orchestrator.launch.runner import LaunchResult

    why = "no answer within 5 s (the node agent kills the run when its SSH channel drops)"
    result = LaunchResult(None, teardown={"n1": "clean", "n2": why, "n3": "clean", "n4": why, "n5": "exit 1"})
    assert result.teardown_lines() == ["teardown: clean on n[1,3]", f"n[2,4]: teardown not verified: {why}",
                                       "n5: teardown not verified: exit 1"]
    assert LaunchResult(None, teardown={"n1": "clean"}).teardown_lines() == ["teardown: clean on every host"]
    assert LaunchResult(None).teardown_lines() == []
