"""Transports and fan-out: run argv lists on many hosts, every process owned by its run.

    from orchestrator.remote import SshOptions, run_on, teardown
    result = run_on(["node1", "node2"], ["hostname"], ssh=SshOptions(config="ssh_config"))
    print(result.exit_code, result.grouped_failures())

ssh.py: the asyncssh transport and SshOptions; local.py: localhost without sshd; fanout.py: run_on /
teardown and their results; agent.py: the node-side dead-man switch; output.py: host prefixes, dshbak folding.
"""

from orchestrator.contracts import new_run_id
from orchestrator.remote.fanout import (
    DEFAULT_FANOUT, FanoutResult, HostCommand, HostResult, Transport, plan_commands, run_on,
    run_on_async, teardown, teardown_async,
)
from orchestrator.remote.local import LocalTransport
from orchestrator.remote.ssh import SshOptions, SshTransport

__all__ = ["DEFAULT_FANOUT", "FanoutResult", "HostCommand", "HostResult", "LocalTransport", "SshOptions",
           "SshTransport", "Transport", "new_run_id", "plan_commands", "run_on", "run_on_async", "teardown",
           "teardown_async"]
