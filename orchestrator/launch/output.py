"""A run's output lines as data: who printed the line, on which stream, and what.

    sink = lambda line: print(line.formatted())      # a Sink: run_plan(plan, sink=sink), Supervisor(..., sink=sink)
    line = OutputLine("node2", 3, "stdout", "loss 0.31", b"loss 0.31")
    line.formatted()                                  # 'node2/3: loss 0.31'
    OutputLine("node2", None, "stderr", "W1123 torchrun says", b"...").formatted()   # 'node2: W1123 torchrun says'

The runners (launch.runner over SSH, supervisor.slurm under srun --label) build these; consumers read the fields
(the supervisor's rank-exit detector wants torchrun's own lines: host set, rank None). Only what shows a line to
a person formats it: the CLI, and the per-host logs, which keep the `host/rank: text` form.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["OutputLine", "Sink"]


@dataclass(frozen=True, slots=True)
class OutputLine:
    host: str | None
    """The node that printed it; None for the launching side's own lines (srun's messages)."""
    rank: int | None
    """The global rank that printed it; None for the node's launcher (torchrun) itself."""
    stream: str
    """"stdout" or "stderr"."""
    text: str
    """The line without prefix, rank marker and newline; undecodable bytes as U+FFFD."""
    raw: bytes
    """The exact bytes of `text` (what the per-host log keeps)."""
    partial: bool = False
    """The line goes on in the next OutputLine of this host and stream (longer than the runner joins)."""
    continued: bool = False
    """The rest of a long line whose start came before: shown without a prefix."""

    def prefix(self) -> str:
        """'node2/3: ', 'node2: ', or '' (a continued piece, a line of no host)."""
        if self.continued or self.host is None:
            return ""
        return f"{self.host}: " if self.rank is None else f"{self.host}/{self.rank}: "

    def formatted(self) -> str:
        """The line as shown: 'node2/3: text' (no newline; a partial line's end comes in the next one)."""
        return self.prefix() + self.text


Sink = Callable[[OutputLine], None]
