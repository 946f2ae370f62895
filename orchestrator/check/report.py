"""How `orchestrator check` shows its result: the per-node table and the gated hostfile.

    console.print(check_table(report))     # host, python/torch, disk, clock, cpu, gpus, bandwidth, latency, verdict
    write_hostfile(report, "hostfiles/checked.txt")   # DeepSpeed format, the failed nodes left out

The JSON form is CheckReport.to_json(). The hostfile is the install gate's (provision.gate.admitted): slots
become the GPUs found on nodes that have any.
"""

from __future__ import annotations

import os

from orchestrator import hostfile
from orchestrator.check.runner import CheckReport
from orchestrator.hosts import fold

__all__ = ["check_table", "network_summary", "write_hostfile"]


def _fmt(value, spec: str, unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def check_table(report: CheckReport):
    """A rich Table: one row per node with its figures, verdict and causes (failures in red)."""
    from rich.table import Table

    table = Table(title=f"check {report.check_id}", title_justify="left", show_edge=False)
    for col, justify in (("host", "left"), ("python / torch", "left"), ("import", "right"), ("free", "right"),
                         ("skew", "right"), ("cpu", "right"), ("gpus", "right"), ("bw GB/s", "right"),
                         ("lat", "right"), ("peer", "left"), ("verdict", "left")):
        table.add_column(col, justify=justify, overflow="fold")
    for n in report.nodes.values():
        notes = "" if not n.warnings else ("\n" if not n.passed else " ") + "(" + "; ".join(n.warnings) + ")"
        table.add_row(n.host, f"{n.python or '-'} / {n.torch or '-'}", _fmt(n.import_s, ".1f", " s"),
                      _fmt(n.free_gb, ".1f", " GB"), _fmt(n.skew_s, "+.2f", " s"), _fmt(n.cpu_ms, ".0f", " ms"),
                      _fmt(n.gpus, "d"), _fmt(n.bw_gbps, ".3g"), _fmt(n.lat_us, ".0f", " us"), n.peer or "-",
                      n.verdict + notes, style=None if n.passed else "red")
    return table


def network_summary(report: CheckReport) -> list[str]:
    """Lines under the table: the verdict count, then how the network test went."""
    failed = report.failed
    lines = [f"{len(report.nodes)} node(s): {len(report.nodes) - len(failed)} passed"
             + (f", {len(failed)} failed: {fold(failed)}" if failed else "")]
    no_smi = [h for h, n in report.nodes.items() if n.gpus is None and n.python is not None]
    if no_smi:
        lines.append(f"GPU checks skipped (no nvidia-smi on PATH): {fold(no_smi)}")
    net = report.network
    if net.get("skipped"):
        lines.append(f"network: skipped ({net['skipped']})")
    elif net:
        ref = net.get("reference")
        lines.append(f"network ({net['backend']}): {net['nodes']} node(s) in {net['rounds']} round(s) of pair tests, "
                     f"{len(net['pairs'])} pair test(s) (all pairs: {net['all_pairs_rounds']} round(s))"
                     + (f"; median {ref['bw_gbps']:.3g} GB/s, {ref['lat_us']:.0f} us" if ref else ""))
        lines += [f"link {pair}: {why}" for pair, why in net["links"].items()]
    lines.append("time: " + ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in report.timings.items()))
    return lines


def write_hostfile(report: CheckReport, path: str | os.PathLike) -> str:
    """The hosts that passed, DeepSpeed format (`host slots=N`); empty when none passed: nothing launches."""
    return hostfile.write(report.admitted(), "deepspeed", path)
