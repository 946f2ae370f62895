"""How fan-out output is shown: `host: line` prefixes, dshbak-style folding, per-host result tables.

    folder = OutputFolder(hosts)
    run_on(hosts, argv, on_line=folder.add)          # collect instead of streaming
    folder.write(sys.stdout)                         # identical output of many hosts shown once:
    # ----------------
    # node[1-3,5]
    # ----------------
    # Linux 6.1.0
    print(prefixed("node3", "Linux 6.1.0"))          # node3: Linux 6.1.0
    sys.stdout.write(prefixer("node3", "stdout", line))   # the same, a long line's pieces prefixed once

Folding goes by digest, so memory does not grow with the output: each host's output is hashed as it arrives
and spooled to one temporary file (in blocks, with an index of where each host's blocks are); hosts whose
whole output has the same digest share a group, and each group's output is read back from the spool once.
The spool keeps the exact bytes (a long line stays whole); the terminal shows undecodable bytes as U+FFFD.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import tempfile
from collections.abc import Sequence
from typing import IO

from ClusterShell.NodeSet import NodeSet

from orchestrator.remote.fanout import FanoutResult
from orchestrator.remote.session import Line

__all__ = ["LineJoiner", "OutputFolder", "Prefixer", "prefixed", "results_table", "summary"]

RULE = "-" * 16
MAX_JOINED = 1 << 25  # a line up to 32 MiB is shown whole; a longer one goes out in pieces of that size
_BLOCK = 1 << 14  # per-host bytes held before they go to the spool: memory is hosts x 16 KiB at most


def prefixed(host: str, line: str) -> str:
    return f"{host}: {line}"


def _raw(line: str) -> bytes:
    raw = getattr(line, "raw", None)  # remote.session.Line keeps the exact bytes
    return raw if raw is not None else line.encode("utf-8", "surrogateescape")


class LineJoiner:
    """Whole lines from the pieces of a long one (Line.partial), so that another host's lines never land inside it.

        join = LineJoiner()
        line = join((host, stream), line)     # None while the line goes on; then the whole line
    Holds at most MAX_JOINED bytes per open line: past that a piece goes out (still partial), as it came.
    """

    def __init__(self, limit: int = MAX_JOINED) -> None:
        self.limit = limit
        self._open: dict[object, bytearray] = {}

    def __call__(self, key: object, line: str) -> str | None:
        partial = getattr(line, "partial", False)
        pending = self._open.get(key)
        if pending is None and not partial:
            return line
        if pending is None:
            pending = self._open[key] = bytearray()
        pending += _raw(line)
        if partial and len(pending) < self.limit:
            return None
        del self._open[key]
        return Line(bytes(pending), partial)


class Prefixer:
    """`host: line` + newline for a stream; a long line is shown whole (LineJoiner), prefixed once."""

    def __init__(self) -> None:
        self._open: set[tuple[str, str]] = set()
        self._join = LineJoiner()

    def __call__(self, host: str, stream: str, line: str) -> str:
        line = self._join((host, stream), line)
        if line is None:
            return ""
        text = line if (host, stream) in self._open else prefixed(host, line)
        if getattr(line, "partial", False):
            self._open.add((host, stream))
            return text
        self._open.discard((host, stream))
        return text + "\n"


class OutputFolder:
    """Collects one stream's output per host (an on_line callback) and writes it folded like dshbak -c."""

    def __init__(self, hosts: Sequence[str] = (), stream: str = "stdout"):
        self.stream = stream
        self._order = {h: i for i, h in enumerate(hosts)}  # groups are listed in the order hosts were given
        self._spool = tempfile.TemporaryFile()
        self._digests: dict = {}  # host -> a running sha256 of its output
        self._pending: dict[str, bytearray] = {}
        self._blocks: dict[str, list[tuple[int, int]]] = {}  # host -> [(offset, length)] in the spool

    def add(self, host: str, stream: str, line: str) -> None:
        if stream != self.stream:
            return
        data = _raw(line) + (b"" if getattr(line, "partial", False) else b"\n")
        self._digests.setdefault(host, hashlib.sha256()).update(data)
        pending = self._pending.setdefault(host, bytearray())
        pending += data
        if len(pending) >= _BLOCK:
            self._spill(host)

    def _spill(self, host: str) -> None:
        pending = self._pending[host]
        offset = self._spool.seek(0, 2)
        self._spool.write(pending)
        self._blocks.setdefault(host, []).append((offset, len(pending)))
        pending.clear()

    def _groups(self) -> list[tuple[str, str]]:
        """[(folded node set, a host of it)], in the order of each group's first host."""
        by_digest: dict[bytes, list[str]] = {}
        for host, digest in self._digests.items():
            by_digest.setdefault(digest.digest(), []).append(host)
        last = len(self._order)
        firsts = sorted((min((self._order.get(h, last), h) for h in hosts), hosts) for hosts in by_digest.values())
        return [(str(NodeSet.fromlist(hosts)), first[1]) for first, hosts in firsts]

    def write(self, out: IO[str]) -> None:
        """Each group: a rule, its node set, a rule, then its output once (read back from the spool)."""
        for host in self._pending:
            self._spill(host)
        for nodes, host in self._groups():
            out.write(f"{RULE}\n{nodes}\n{RULE}\n")
            decoder = codecs.getincrementaldecoder("utf-8")("replace")  # a block may end inside a character
            for offset, length in self._blocks.get(host, []):
                self._spool.seek(offset)
                out.write(decoder.decode(self._spool.read(length)))
            out.write(decoder.decode(b"", final=True))
            out.flush()

    def render(self) -> str:
        """write() into a string (small outputs, tests)."""
        text = io.StringIO()
        self.write(text)
        return text.getvalue()

    def close(self) -> None:
        self._spool.close()


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
