"""A real cluster on one Linux machine: namespace hosts with their own hostname, mounts and sshd (root only).

    from orchestrator.sandbox import Sandbox
    sb = Sandbox.up("demo", nodes=4)       # node1..node4, each with sshd; sb.ssh_config for `ssh -F`
    sb.exec("node2", ["hostname"])          # CompletedProcess(stdout='node2\\n')
    Sandbox.load("demo").down()             # removes exactly what up created

Modules: plan (pure names/addresses/config text), state (state.json), netns (kernel plumbing),
sshd (keys, configs, readiness), cluster (the Sandbox API).
"""

from orchestrator.sandbox.cluster import Sandbox
from orchestrator.sandbox.state import list_sandboxes

__all__ = ["Sandbox", "list_sandboxes"]
