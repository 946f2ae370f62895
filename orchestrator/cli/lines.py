"""A run's output lines on the terminal: `host/rank: text`, stdout lines to `out`, stderr lines to stderr.

    run_plan(plan, sink=line_printer())                 # or Supervisor(cfg, runner, sink=line_printer(sys.stderr))
    line_printer(err=sys.stdout)                        # everything on stdout (the demo)
"""

from __future__ import annotations

import sys
from typing import IO

from orchestrator.launch.output import OutputLine, Sink


def line_printer(out: IO[str] | None = None, err: IO[str] | None = None) -> Sink:
    """A Sink printing each line formatted; None picks sys.stdout / sys.stderr at each line (as click's tests swap them)."""

    def show(line: OutputLine) -> None:
        to = (err or sys.stderr) if line.stream == "stderr" else (out or sys.stdout)
        print(line.formatted(), file=to, end="" if line.partial else "\n", flush=True)  # a long line comes in pieces

    return show
