"""Supervised runs: detect failed or hung ranks, drop bad nodes, restart from checkpoints, keep the run alive.

    from orchestrator.supervisor import Supervisor, SupervisorConfig
    summary = asyncio.run(Supervisor(cfg, ssh=ssh).run())      # see loop.py

policy.py: pure decisions; detect.py: rank exits, hangs, progress; health.py: host checks and process probes;
events.py: RUN_DIR/events.jsonl and the summary (time lost, ETTR); loop.py: the run loop.
"""

from orchestrator.supervisor.loop import Supervisor, SupervisorConfig

__all__ = ["Supervisor", "SupervisorConfig"]
