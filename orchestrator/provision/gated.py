"""Apply the gate to an install's results and write what the next steps use: the gated inventory and hostfile.

    verdicts = judge(result, GateThresholds(gpus_per_node=8, min_busbw_gbps=150))   # host -> GateResult
    paths = write_gated(hosts, verdicts, inventory, "runs/install")
    # {"inventory": "runs/install/inventory.gated.yml", "hostfile": "runs/install/hostfile"} without the failed nodes

Only hosts the validate role ran on are judged; a host whose playbook run failed (or that was unreachable)
fails the gate whatever its tools printed. Without a validate run there is no verdict and nothing is written.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from orchestrator import hostfile
from orchestrator.hosts import HostList
from orchestrator.provision.gate import GateResult, GateThresholds, admitted, decide
from orchestrator.provision.inventory import write_inventory
from orchestrator.provision.runner import InstallResult, gate_inputs

__all__ = ["judge", "write_gated", "filter_inventory"]


def judge(result: InstallResult, thresholds: GateThresholds) -> dict[str, GateResult]:
    verdicts = {}
    for host, report in result.hosts.items():
        if not report.gate and not (report.failed or report.unreachable):
            continue  # validate did not run here (not selected by --tags)
        verdict = decide(host, gate_inputs(report), thresholds)
        if report.failed or report.unreachable:
            why = "unreachable" if report.unreachable else f"{report.failed} task(s) failed"
            verdict = GateResult(host, False, (f"install: {why}", *verdict.reasons), verdict.gpus,
                                 verdict.active_ib_ports, verdict.busbw_gbps)
        verdicts[host] = verdict
    return verdicts


def filter_inventory(inventory: dict | str, keep: HostList) -> dict:
    """The run's inventory (generated dict, or an inventory file) reduced to `keep`, with each host's vars."""
    names = set(keep.names)
    slots = {h.name: h.slots for h in keep}
    if isinstance(inventory, dict):
        group = inventory["all"]
        return {"all": {"hosts": {n: {**v, "gpu_slots": slots[n]} for n, v in group["hosts"].items() if n in names},
                        "vars": dict(group.get("vars", {}))}}
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader

    manager = InventoryManager(loader=DataLoader(), sources=[inventory])
    hosts = {}
    for host in manager.get_hosts():
        if host.name in names:
            merged = {}
            for grp in sorted(host.get_groups(), key=lambda g: g.depth):  # all first, then deeper groups win
                merged.update(grp.get_vars())
            merged.update(host.vars)
            hosts[host.name] = {k: v for k, v in merged.items() if not k.startswith("inventory_")} | {"gpu_slots": slots[host.name]}
    return {"all": {"hosts": hosts}}


def write_gated(hosts: HostList, verdicts: Mapping[str, GateResult], inventory: dict | str,
                out_dir: str | os.PathLike) -> dict[str, str]:
    """Write inventory.gated.yml and hostfile (DeepSpeed format) with only the admitted hosts."""
    if not verdicts:
        return {}
    keep = admitted(hosts, verdicts)
    out = Path(out_dir)
    inv_path = write_inventory(filter_inventory(inventory, keep), out / "inventory.gated.yml")
    hf_path = hostfile.write(keep, "deepspeed", out / "hostfile")  # empty when every node failed: nothing launches
    return {"inventory": str(inv_path), "hostfile": hf_path}
