"""The health gate as a pre-flight of a run (`launch`/`supervise --preflight`, `preflight: true` in a job file).

    check = preflight_spec(launch_spec)                  # the run's --python and --workdir, the check's defaults
    preflight_plan(hosts, check, on_failure="refuse")    # what --dry-run shows (and validates: ConfigError)
    report = run_check(hosts, check, ssh=ssh)            # the same gate as `orchestrator check`

`on_failure` is what the run does with a failed node: "refuse" (launch: start nothing, exit with the gate's
code) or "exclude" (supervise: leave it out before attempt 0, like a node that failed a health check).
"""

from __future__ import annotations

from orchestrator.check.runner import CheckSpec
from orchestrator.errors import ConfigError
from orchestrator.hosts import HostList, fold
from orchestrator.launch.plan import LaunchSpec

__all__ = ["ON_FAILURE", "describe", "preflight_plan", "preflight_spec"]

ON_FAILURE = {"refuse": "a failed node stops the run before anything starts",
              "exclude": "failed nodes are excluded before attempt 0 (spares replace them, else the run shrinks)"}


def preflight_spec(launch: LaunchSpec, *, via: str = "ssh", container: str | None = None) -> CheckSpec:
    """The gate for this launch: its interpreter and workdir per host, its run id in the check's id.

    Not with Slurm steps or containers (ConfigError): the gate reaches nodes over SSH and tests the network with
    the nodes' own interpreter, which is not the one a container runs."""
    if via != "ssh":
        raise ConfigError("--preflight", True, "not under Slurm yet; run `orchestrator check` over SSH first")
    if container:
        raise ConfigError("--preflight", True, "not with a container yet (the gate would test the nodes' own "
                                               "interpreter, not the image's); run `orchestrator check` first")
    return CheckSpec(python=launch.python, workdir=launch.workdir, check_id=f"{launch.run_id}-preflight")


def preflight_plan(hosts: HostList, check: CheckSpec, *, on_failure: str) -> dict:
    """The pre-flight as --dry-run shows it (ConfigError on bad input, like the check itself)."""
    pythons, workdirs = check.validate(hosts)
    return {"hosts": hosts.names, "check_id": check.check_id, "python": pythons,
            "workdir": {h: w or "~" for h, w in workdirs.items()}, "network": check.network,
            "on_failure": on_failure}


def describe(plan: dict) -> str:
    """One --dry-run line: would check these hosts, and what a failure does."""
    return (f"preflight: would check {fold(plan['hosts'])} first (orchestrator check: disk, clock, "
            f"interpreter, CPU, GPUs, network); {ON_FAILURE[plan['on_failure']]}")
