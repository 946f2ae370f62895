"""`orchestrator check`: a health gate before launch; per-node checks, then a network test by bisection.

    from orchestrator.check import CheckSpec, run_check, write_hostfile
    report = run_check(hosts, CheckSpec(python=("/opt/venv/bin/python",)), ssh=ssh)
    report.exit_code, report.failed, report.admitted()

probe.py: the node-side program; judge.py: verdicts from figures (pure); bisect.py: the pair rounds (pure);
runner.py: run_check; report.py: the table, the JSON and the gated hostfile; preflight.py: the gate as a
run's pre-flight (`launch`/`supervise --preflight`, `preflight: true` in a job file).
"""

from orchestrator.check.judge import CheckThresholds
from orchestrator.check.runner import CheckReport, CheckSpec, NodeReport, run_check, run_check_async

__all__ = ["CheckReport", "CheckSpec", "CheckThresholds", "NodeReport", "run_check", "run_check_async"]
