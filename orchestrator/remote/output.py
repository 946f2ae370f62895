"""How fan-out output is shown: `host: line` prefixes, dshbak-style folding, per-host result tables.

    folder = OutputFolder(hosts)
    run_on(hosts, argv, on_line=folder.add)          # collect instead of streaming
    print(folder.render())                           # identical output of many hosts shown once:
    # ----------------
    # node[1-3,5]
    # ----------------
    # Linux 6.1.0
    print(prefixed("node3", "Linux 6.1.0"))          # node3: Linux 6.1.0

Folding is ClusterShell's MsgTree (what `clush -b` uses): hosts whose whole output is identical share a key.
"""

from __future__ import annotations

from collections.abc import Sequence

from ClusterShell.MsgTree import MsgTree
from ClusterShell.NodeSet import NodeSet

from orchestrator.remote.fanout import FanoutResult

__all__ = ["OutputFolder", "prefixed", "results_table", "summary"]

RULE = "-" * 16


def prefixed(host: str, line: str) -> str:
    return f"{host}: {line}"


class OutputFolder:
    """Collects one stream's lines per host (an on_line callback) and renders them folded like dshbak -c."""

    def __init__(self, hosts: Sequence[str] = (), stream: str = "stdout"):
        self.stream = stream
        self._order = {h: i for i, h in enumerate(hosts)}  # groups are listed in the order hosts were given
        self._tree = MsgTree()

    def add(self, host: str, stream: str, line: str) -> None:
        if stream == self.stream:
            self._tree.add(host, line.encode("utf-8", "surrogateescape"))

    def groups(self) -> list[tuple[str, list[str]]]:
        """[(folded node set, lines)], groups in the order of their first host."""
        last = len(self._order)
        out = [(min((self._order.get(h, last), h) for h in keys), str(NodeSet.fromlist(keys)),
                [b.decode("utf-8", "replace") for b in msg.lines()]) for msg, keys in self._tree.walk()]
        return [(nodes, lines) for _, nodes, lines in sorted(out)]

    def render(self) -> str:
        blocks = [f"{RULE}\n{nodes}\n{RULE}\n" + "\n".join(lines) for nodes, lines in self.groups()]
        return "\n".join(blocks)


def summary(result: FanoutResult) -> list[str]:
    """A count line, then the failures grouped: ['64 hosts: 62 ok, 2 failed', 'node[3,7]: exit 255: ...']."""
    failed = result.failed
    head = f"{len(result)} host{'' if len(result) == 1 else 's'}: {len(result) - len(failed)} ok" + (f", {len(failed)} failed" if failed else "")
    return [head, *result.grouped_failures()]


def results_table(result: FanoutResult):
    """A rich Table: host, exit, duration, error/last line (failures first, then by host)."""
    from rich.table import Table

    table = Table(title=f"run {result.run_id}", show_edge=False)
    for col, justify in (("host", "left"), ("exit", "right"), ("seconds", "right"), ("detail", "left")):
        table.add_column(col, justify=justify)
    for r in sorted(result.values(), key=lambda r: (r.ok, r.host)):
        detail = r.error or (f"signal {r.signal}" if r.signal else "") or (r.tail[-1] if r.tail and not r.ok else "")
        style = None if r.ok else "red"
        table.add_row(r.host, str(r.code), f"{r.duration_s:.2f}", detail, style=style)
    return table
