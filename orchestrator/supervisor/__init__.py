"""Supervised runs: detect failed or hung ranks, drop bad nodes, restart from checkpoints, keep the run alive.

    from orchestrator.supervisor import Supervisor, SuperviseOptions, plan_supervise
    plan = plan_supervise(spec, SuperviseOptions(hosts="node[1-4]", nodes="2:4"))   # see plan.py
    summary = asyncio.run(Supervisor(plan.config, plan.runner).run())               # see loop.py

plan.py: options -> a checked SupervisePlan; loop.py: the run loop; runner.py: how an attempt runs (over SSH;
slurm.py: as srun steps); detect.py: rank exits, hangs, progress; diagnosis.py: the culprit of a failed
attempt; policy.py: pure decisions; health.py: host checks and process probes; events.py: RUN_DIR/events.jsonl
and the summary (time lost, ETTR); preflight.py: a pre-flight gate's failed nodes excluded before attempt 0.
"""

from orchestrator.supervisor.loop import Supervisor
from orchestrator.supervisor.plan import SupervisePlan, SuperviseOptions, SupervisorConfig, plan_supervise

__all__ = ["SupervisePlan", "SuperviseOptions", "Supervisor", "SupervisorConfig", "plan_supervise"]
