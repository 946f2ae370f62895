"""The node-side agents (agent.py and agent.sh) with real processes on this machine (no sshd: `localhost`
runs locally). Every test runs with both agents: they promise the same.

The dead-man switch over real SSH, and teardown on sandbox hosts, are in test_run.py / the sandbox test below.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import uuid

import pytest

from orchestrator.remote import LocalTransport, plan_commands, run_on, run_on_async, teardown
from orchestrator.remote.fanout import agent_spec, command_argv
from run_tokens import tokened, wait_for
from orch_cli import ORCH

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["python", "sh"])
def agent(request) -> str:
    return request.param

# a command that hides processes from a naive process-group kill: one setsid'd, one double-forked
ESCAPING = ["sh", "-c", "setsid sleep 300 & (sleep 300 &) ; echo started; sleep 300"]


# the same, every process ignoring SIGTERM: only the escalation to SIGKILL ends them (3 processes)
STUBBORN = ["sh", "-c", "trap '' TERM; setsid sleep 300 & (sleep 300 &); echo started; exec sleep 300"]


def rid(tag: str) -> str:
    return f"t-{tag}-{uuid.uuid4().hex[:8]}"


def head(run_id: str, agent: str, command=ESCAPING, *options: str) -> subprocess.Popen:
    return subprocess.Popen([*ORCH, "run", "-w", "localhost", "--run-id", run_id,
                             "--agent", agent, *options, "--", *command], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_head_sigkill_kills_the_whole_run_and_spares_another(agent):
    a, b = rid("a"), rid("b")
    heads = {a: head(a, agent), b: head(b, agent)}
    try:
        assert wait_for(lambda: len(tokened(a)) == 4 and len(tokened(b)) == 4), (tokened(a), tokened(b))
        before_b = sorted(tokened(b))
        heads[a].kill()  # SIGKILL: no cleanup on the head side at all
        assert wait_for(lambda: not tokened(a), timeout=5), tokened(a)
        assert sorted(tokened(b)) == before_b
        heads[b].send_signal(signal.SIGTERM)
        assert wait_for(lambda: not tokened(b), timeout=5), tokened(b)
    finally:
        for p in heads.values():
            p.kill()
            p.wait()


def test_command_exit_kills_what_it_left_behind(agent):
    run_id = rid("exit")
    result = run_on(["localhost"], ["sh", "-c", "setsid sleep 300 & (sleep 300 &); echo bye; exit 7"], run_id=run_id,
                    agent=agent)
    assert (result["localhost"].exit_code, result["localhost"].tail) == (7, ("bye",))
    assert wait_for(lambda: not tokened(run_id), timeout=5)


def test_head_gone_while_the_command_starts_leaves_nothing(agent):
    """The control channel closes at once: the agent stops a command that may not have exec'd yet (no token)."""
    run_id = rid("early")
    (cmd,) = plan_commands(["localhost"], ESCAPING, agent=agent)
    for _ in range(20):
        p = subprocess.Popen(command_argv(cmd, run_id), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        p.stdin.write(agent_spec(cmd) or b"")
        p.stdin.close()
        p.wait(timeout=10)
    assert wait_for(lambda: not tokened(run_id), timeout=5), tokened(run_id)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_agent_signal_kills_the_run(sig, agent):
    run_id = rid("sig")

    async def scenario():
        task = asyncio.ensure_future(run_on_async(["localhost"], ESCAPING, run_id=run_id, transport=LocalTransport(),
                                                  agent=agent))
        while len(tokened(run_id)) < 4:
            await asyncio.sleep(0.05)
        env = open(f"/proc/{tokened(run_id)[0]}/environ", "rb").read().split(b"\0")
        agent_pid = int(next(e for e in env if e.startswith(b"ORCH_RUN_AGENT=")).split(b"=", 1)[1])
        os.kill(agent_pid, sig)
        return await task

    result = asyncio.run(scenario())
    assert result["localhost"].exit_code == 128 + sig
    assert not tokened(run_id)


def test_exit_codes_signals_cwd_args_and_exec_failure(tmp_path, agent):
    result = run_on(["localhost"], ["sh", "-c", "kill -9 $$"], agent=agent)
    assert result["localhost"].exit_code == 137
    result = run_on(["localhost"], ["sh", "-c", 'pwd; printf "%s\\n" "$@" "$ORCH_RUN_ID"', "sh", "$(id)\nx", "`id`;'"],
                    cwd=str(tmp_path), agent=agent, run_id="r-args")
    assert result["localhost"].tail == (str(tmp_path), "$(id)", "x", "`id`;'", "r-args")
    result = run_on(["localhost"], ["/nonexistent/cmd", "a"], agent=agent)
    assert result["localhost"].exit_code == 127
    assert "execute /nonexistent/cmd" in result["localhost"].tail[-1] if agent == "sh" else \
        "cannot run '/nonexistent/cmd'" in result["localhost"].tail[-1]


def test_python_agent_env_travels_as_data():
    result = run_on(["localhost"], ["sh", "-c", 'printf "%s\\n" "$V"'], env={"V": "$(id)\nx"})
    assert result["localhost"].tail == ("$(id)", "x")


def test_stop_event_and_timeout_kill_the_command(agent):
    run_id = rid("stop")

    async def scenario():
        stop = asyncio.Event()
        task = asyncio.ensure_future(run_on_async(["localhost"], ESCAPING, run_id=run_id, stop=stop, agent=agent))
        while len(tokened(run_id)) < 4:
            await asyncio.sleep(0.05)
        stop.set()
        return await task

    assert asyncio.run(scenario())["localhost"].error == "stopped"
    assert wait_for(lambda: not tokened(run_id), timeout=5)
    run_id = rid("timeout")
    result = run_on(["localhost"], ESCAPING, run_id=run_id, timeout=1, agent=agent)
    assert result["localhost"].reason() == "exit 255: timed out after 1 s"
    assert wait_for(lambda: not tokened(run_id), timeout=5)


def test_teardown_kills_by_token_only(agent):
    a, b = rid("tda"), rid("tdb")
    heads = {a: head(a, agent), b: head(b, agent)}
    try:
        assert wait_for(lambda: len(tokened(a)) == 4 and len(tokened(b)) == 4)
        before_b = sorted(tokened(b))
        down = teardown(a, ["localhost"])
        assert down["localhost"].ok, down["localhost"]
        assert json.loads(down["localhost"].tail[-1]) == {"signalled": 4, "remaining": 0}
        assert not tokened(a) and sorted(tokened(b)) == before_b
        assert teardown(b, ["localhost"])["localhost"].ok and not tokened(b)
    finally:
        for p in heads.values():
            p.kill()
            p.wait()


@pytest.mark.usefixtures("cpu_load")
def test_under_load_every_end_of_the_head_leaves_nothing(agent):
    """On a busy machine, all at once: heads (the CLI) ended by SIGKILL, SIGINT and SIGTERM, a -t timeout, a
    command that exits leaving SIGTERM-ignoring processes on the output pipe (the run still returns), and heads
    gone while their command starts: nothing of any run is left, every head that could report did."""
    ends = {rid(tag): how for tag, how in (("kill", signal.SIGKILL), ("int", signal.SIGINT), ("term", signal.SIGTERM))}
    heads = {r: head(r, agent, STUBBORN) for r in ends}
    early = rid("early-load")
    (cmd,) = plan_commands(["localhost"], STUBBORN, agent=agent)
    gone = [subprocess.Popen(command_argv(cmd, early), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL) for _ in range(3)]
    for p in gone:  # the control channel closes before the command may have exec'd
        p.stdin.write(agent_spec(cmd) or b"")
        p.stdin.close()
    timeout, survivor = rid("timeout"), rid("survivor")

    async def in_process():
        return await asyncio.gather(
            run_on_async(["localhost"], STUBBORN, run_id=timeout, timeout=3, agent=agent),
            run_on_async(["localhost"], ["sh", "-c", "trap '' TERM; setsid sleep 300 & (sleep 300 &); echo bye; exit 7"],
                         run_id=survivor, agent=agent))

    try:
        assert wait_for(lambda: all(len(tokened(r)) == 3 for r in ends), timeout=30), {r: tokened(r) for r in ends}
        for r, how in ends.items():
            heads[r].send_signal(how)
        timed_out, exited = asyncio.run(in_process())
        assert timed_out["localhost"].reason() == "exit 255: timed out after 3 s"
        assert (exited["localhost"].exit_code, exited["localhost"].tail) == (7, ("bye",))
        codes = {r: heads[r].wait(timeout=30) for r in ends}
        assert codes == {r: -9 if how == signal.SIGKILL else 130 for r, how in ends.items()}
        for r in ends:
            if ends[r] != signal.SIGKILL:  # the summary, and the reason, are still printed
                assert "1 host: 0 ok, 1 failed" in heads[r].stderr.read()
        assert all(p.wait(timeout=15) is not None for p in gone)
        runs = [*ends, early, timeout, survivor]
        assert wait_for(lambda: not any(tokened(r) for r in runs), timeout=10), {r: tokened(r) for r in runs}
    finally:
        for p in [*heads.values(), *gone]:
            p.kill()
            p.wait()


def test_the_command_starts_with_default_signal_dispositions(agent):
    """sh ignores SIGINT/SIGQUIT in background jobs; the command must not inherit that (nor SIGPIPE's from Python)."""
    result = run_on(["localhost"], ["grep", "^SigIgn:", "/proc/self/status"], agent=agent)
    (line,) = result["localhost"].tail
    ignored = int(line.split()[1], 16)
    assert ignored & (1 << (signal.SIGINT - 1) | 1 << (signal.SIGQUIT - 1) | 1 << (signal.SIGPIPE - 1)) == 0, line


def test_a_stuck_agent_is_killed_with_what_it_started_and_the_close_returns(agent):
    """An agent that cannot clean up (stopped here) is SIGKILLed by the local transport, which then kills the
    command's processes by the agent's token: otherwise they hold the output pipes and the close never returns."""
    run_id = rid("stuck")

    async def go():
        transport = LocalTransport()
        task = asyncio.ensure_future(run_on_async(["localhost"], STUBBORN, transport=transport, timeout=2,
                                                  agent=agent, run_id=run_id))
        assert await asyncio.to_thread(wait_for, lambda: len(tokened(run_id)) == 3, 30)
        for proc in transport._procs:
            os.kill(proc.pid, signal.SIGSTOP)
        result = await task
        await asyncio.wait_for(transport.aclose(), 30)
        return result

    result = asyncio.run(go())
    assert result.exit_code == 255
    assert wait_for(lambda: not tokened(run_id), timeout=5), tokened(run_id)
