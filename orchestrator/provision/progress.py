"""Live per-host progress of an install, and the summary table after it (rich, on stderr).

    with InstallProgress(hosts.names) as view:            # a live table: host, state, ok, changed, failed, task
        result = run_install(plan, on_update=view.update)
    console.print(summary_table(result, gate_results))   # host, ok, changed, failed, skipped (reasons), gate
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from rich.console import Console
from rich.live import Live
from rich.table import Table

from orchestrator.provision.gate import GateResult
from orchestrator.provision.runner import HostReport, InstallResult

__all__ = ["InstallProgress", "summary_table"]

_STATE_STYLE = {"running": "cyan", "done": "green", "failed": "red", "unreachable": "red"}


class InstallProgress:
    """A rich Live table refreshed as runner events arrive (update() may be called from any thread)."""

    def __init__(self, hosts: list[str], *, console: Console | None = None):
        self.reports = {h: HostReport(h) for h in hosts}
        self._lock = threading.Lock()
        self._live = Live(self._table(), console=console or Console(stderr=True), refresh_per_second=4, transient=False)

    def __enter__(self) -> InstallProgress:
        self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._live.update(self._table())
        self._live.__exit__(*exc)

    def update(self, report: HostReport) -> None:
        with self._lock:
            self.reports[report.host] = report
            self._live.update(self._table())

    def _table(self) -> Table:
        table = Table(title="orchestrator install", expand=False)
        for column in ("host", "state", "ok", "changed", "failed", "task"):
            table.add_column(column, justify="right" if column in ("ok", "changed", "failed") else "left")
        for r in self.reports.values():
            style = _STATE_STYLE.get(r.state, "")
            table.add_row(r.host, f"[{style}]{r.state}[/]", str(r.ok), str(r.changed), str(r.failed), r.task[:60])
        return table


def summary_table(result: InstallResult, gate: Mapping[str, GateResult]) -> Table:
    """One row per host: counts, the GPU-only work skipped (with why), failures, and the gate's verdict."""
    table = Table(title=f"install {result.status} in {result.elapsed:.1f} s", show_lines=True)
    for column in ("host", "ok", "changed", "failed", "skipped (why)", "gate"):
        table.add_column(column, justify="right" if column in ("ok", "changed", "failed") else "left", overflow="fold")
    for host, r in result.hosts.items():
        failed = "unreachable" if r.unreachable else str(r.failed)
        notes = "\n".join(r.skips + [f"[red]{f}[/]" for f in r.failures])
        verdict = gate.get(host)
        gate_cell = "-" if verdict is None else ("[green]pass[/]" if verdict.passed else f"[red]{verdict.summary}[/]")
        table.add_row(host, str(r.ok), str(r.changed), failed, notes, gate_cell)
    return table
