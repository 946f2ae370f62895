"""The root CLI: help works, errors map to exit codes without tracebacks."""

import subprocess
import sys


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True)


def test_help_lists_commands():
    out = run_cli("--help")
    assert out.returncode == 0, out.stderr
    assert "Usage: orchestrator" in out.stdout


def test_unknown_command_is_usage_error():
    out = run_cli("no-such-command")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
