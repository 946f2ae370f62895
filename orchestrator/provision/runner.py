"""Run playbooks/install.yml (the bundled one, or --playbook) through ansible-runner; collect, per host, what happened.

    from orchestrator.provision.runner import plan_install, run_install
    plan = plan_install(hosts, ssh_config="ssh_config", tags=["common", "rdma"], check=False, workdir="runs/install")
    plan.argv()                              # the equivalent ansible-playbook command line (--dry-run prints it)
    result = run_install(plan, on_update=view.update)   # view.update(HostReport) after every event of a host
    result.hosts["node1"].changed, result.hosts["node1"].skips, result.rc

Collected per host: ok/changed/failed/skipped counts, the task it is on, the messages of failed tasks, the
"SKIP ..." reasons the GPU-only roles state, and the outputs of the validate role's "Gate input: ..." tasks,
which orchestrator.provision.gate judges.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator import bundled
from orchestrator.errors import ConfigError
from orchestrator.hosts import HostList
from orchestrator.provision.gate import GateInputs, ToolRun

log = logging.getLogger("orchestrator.provision.runner")

__all__ = ["PLAYBOOK", "ROLES", "InstallPlan", "HostReport", "InstallResult", "plan_install", "run_install", "gate_inputs"]

PLAYBOOK = bundled.path("playbooks") / "install.yml"  # roles/ next to it; `install --export-playbooks` copies both
ROLES = ("common", "nvidia_driver", "cuda_toolkit", "rdma", "nccl", "rootless_docker", "nvidia_container_toolkit",
         "validate", "gpu", "verify")  # tags install.yml knows (roles, plus the gpu and verify groups)
GATE_TASKS = {"Gate input: nvidia-smi": "nvidia_smi", "Gate input: ibv_devinfo": "ibv_devinfo",
              "Gate input: all_reduce_perf": "all_reduce"}


@dataclass(frozen=True, kw_only=True)
class InstallPlan:
    """Everything a run needs, decided before anything connects."""

    hosts: HostList
    inventory: dict | str
    """A generated inventory (dict) or the path of the user's --inventory."""
    workdir: Path
    """ansible-runner's private data dir: artifacts, ControlPath sockets, the generated inventory."""
    playbook: Path = PLAYBOOK
    tags: tuple[str, ...] = ()
    skip_tags: tuple[str, ...] = ()
    check: bool = False
    forks: int = 16
    pipelining: bool = True
    extra_vars: Mapping[str, Any] = field(default_factory=dict)

    def envvars(self) -> dict[str, str]:
        venv_bin = str(Path(sys.executable).parent)  # ansible-playbook lives next to this interpreter
        return {
            "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
            "ANSIBLE_ROLES_PATH": str(self.playbook.parent / "roles"),
            "ANSIBLE_PIPELINING": str(self.pipelining),
            "ANSIBLE_HOST_KEY_CHECKING": "True",  # ssh_config decides (StrictHostKeyChecking); never switched off here
            "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=60s",
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(self.workdir / "cp"),
            "ANSIBLE_LOCAL_TEMP": str(self.workdir / "tmp"),
            "ANSIBLE_GATHER_TIMEOUT": "60",  # a busy host answers slowly; a timed-out fact is silently missing
            "ANSIBLE_DEPRECATION_WARNINGS": "False",
            "ANSIBLE_NOCOLOR": "True",
        }

    def argv(self) -> list[str]:
        """The ansible-playbook command this plan amounts to (inventory: the file run_install writes)."""
        inventory = self.inventory if isinstance(self.inventory, str) else str(self.workdir / "inventory" / "hosts.json")
        argv = ["ansible-playbook", "-i", inventory, "--forks", str(self.forks), str(self.playbook)]
        if self.tags:
            argv += ["--tags", ",".join(self.tags)]
        if self.skip_tags:
            argv += ["--skip-tags", ",".join(self.skip_tags)]
        if self.check:
            argv.append("--check")
        if self.extra_vars:
            argv += ["-e", json.dumps(dict(self.extra_vars), sort_keys=True)]
        return argv


def _split_tags(values: Sequence[str], field_name: str) -> tuple[str, ...]:
    tags = tuple(t.strip() for v in values for t in v.split(",") if t.strip())
    unknown = [t for t in tags if t not in ROLES and t not in ("all", "always", "never")]
    if unknown:
        raise ConfigError(field_name, ",".join(unknown), f"use tags of playbooks/install.yml: {', '.join(ROLES)}")
    return tags


def plan_install(hosts: HostList, *, inventory: dict | str, workdir: str | os.PathLike, tags: Sequence[str] = (),
                 skip_tags: Sequence[str] = (), check: bool = False, forks: int = 16, pipelining: bool = True,
                 extra_vars: Mapping[str, Any] | None = None, playbook: str | os.PathLike = PLAYBOOK) -> InstallPlan:
    if forks < 1:
        raise ConfigError("--forks", forks, "use a positive number of parallel hosts")
    if not Path(playbook).is_file():
        raise ConfigError("--playbook", os.fspath(playbook),
                          "give an existing playbook (`orchestrator install --export-playbooks DIR` writes DIR/install.yml)")
    return InstallPlan(hosts=hosts, inventory=inventory, workdir=Path(workdir).resolve(), playbook=Path(playbook).resolve(),
                       tags=_split_tags(tags, "--tags"), skip_tags=_split_tags(skip_tags, "--skip-tags"), check=check,
                       forks=forks, pipelining=pipelining, extra_vars=dict(extra_vars or {}))


@dataclass
class HostReport:
    host: str
    ok: int = 0
    changed: int = 0
    failed: int = 0
    skipped: int = 0
    unreachable: bool = False
    task: str = ""
    done: bool = False
    failures: list[str] = field(default_factory=list)
    changed_tasks: list[str] = field(default_factory=list)
    skips: list[str] = field(default_factory=list)
    gate: dict[str, ToolRun] = field(default_factory=dict)

    @property
    def state(self) -> str:
        if self.unreachable:
            return "unreachable"
        if self.failed:
            return "failed"
        return "done" if self.done else "running"


@dataclass
class InstallResult:
    status: str
    rc: int
    elapsed: float
    hosts: dict[str, HostReport]

    @property
    def failed_hosts(self) -> list[str]:
        return [h for h, r in self.hosts.items() if r.failed or r.unreachable]


def _task_name(data: dict) -> str:
    task = data.get("task", "")
    return f"{data['role']} : {task}" if data.get("role") else task


class _Collector:
    """Turns ansible-runner events into HostReports (runner calls it from its event thread)."""

    def __init__(self, hosts: HostList, on_update: Callable[[HostReport], None] | None):
        self.reports = {h.name: HostReport(h.name) for h in hosts}
        self.on_update = on_update

    def __call__(self, event: dict) -> bool:
        kind, data = event.get("event", ""), event.get("event_data") or {}
        host = data.get("host")
        if host is None or not kind.startswith("runner_on_"):
            return True
        report = self.reports.setdefault(host, HostReport(host))
        res = data.get("res") or {}
        if kind == "runner_on_start":
            report.task = _task_name(data)
        elif kind == "runner_on_ok":
            report.ok += 1
            if res.get("changed"):
                report.changed += 1
                report.changed_tasks.append(_task_name(data))
            if isinstance(res.get("msg"), str) and res["msg"].startswith("SKIP "):
                report.skips.append(res["msg"][5:])
        elif kind == "runner_on_skipped":
            report.skipped += 1
        elif kind == "runner_on_failed" and not data.get("ignore_errors"):
            report.failed += 1
            report.failures.append(f"{_task_name(data)}: {_failure_text(res)}")
        elif kind == "runner_on_unreachable":
            report.unreachable = True
            report.failures.append(f"unreachable: {str(res.get('msg', ''))[:300]}")
        if data.get("task") in GATE_TASKS and kind in ("runner_on_ok", "runner_on_failed"):
            report.gate[GATE_TASKS[data["task"]]] = ToolRun(res.get("rc"), res.get("stdout", ""), res.get("stderr", "") or res.get("msg", ""))
        if self.on_update:
            self.on_update(report)
        return True


def _failure_text(res: dict) -> str:
    """The useful part of a failed task: its stderr tail when the message is only 'non-zero return code'."""
    msg, stderr = str(res.get("msg") or ""), str(res.get("stderr") or "").strip()
    if stderr and (not msg or msg == "non-zero return code"):
        msg = f"{msg}: {stderr.splitlines()[-1]}" if msg else stderr.splitlines()[-1]
    return msg[:300]


def gate_inputs(report: HostReport) -> GateInputs:
    return GateInputs(**report.gate)


def run_install(plan: InstallPlan, *, on_update: Callable[[HostReport], None] | None = None) -> InstallResult:
    """Run the plan; returns when every host finished. Never raises for a failed host: see InstallResult."""
    import ansible_runner

    for sub in ("cp", "tmp", "inventory"):
        (plan.workdir / sub).mkdir(parents=True, exist_ok=True)
    collector = _Collector(plan.hosts, on_update)
    cmdline = ["--check"] if plan.check else []
    started = time.monotonic()
    runner = ansible_runner.run(
        private_data_dir=str(plan.workdir), project_dir=str(plan.playbook.parent), playbook=str(plan.playbook),
        inventory=plan.inventory, envvars=plan.envvars(), extravars=dict(plan.extra_vars), forks=plan.forks,
        tags=",".join(plan.tags) or None, skip_tags=",".join(plan.skip_tags) or None,
        cmdline=shlex.join(cmdline) or None, quiet=True, event_handler=collector, rotate_artifacts=3,
    )
    elapsed = time.monotonic() - started
    if runner.status == "canceled":  # ansible-runner took the SIGINT and stopped ansible-playbook: pass it on
        raise KeyboardInterrupt
    for name, report in collector.reports.items():
        report.done, report.task = True, ""
        if on_update:
            on_update(report)
    log.info("ansible-runner %s rc=%s in %.1f s (artifacts in %s)", runner.status, runner.rc, elapsed, plan.workdir)
    return InstallResult(runner.status, runner.rc, elapsed, collector.reports)
