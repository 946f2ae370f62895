"""The root CLI: help works, errors map to exit codes without tracebacks, and the lazy command table
(orchestrator.cli.main.COMMAND_MODULES) matches the modules' `commands` lists."""

from __future__ import annotations

import importlib
import pkgutil

import orchestrator.cli as cli_pkg
from orchestrator.cli.main import COMMAND_MODULES, cli
from orch_cli import orch


def test_help_lists_commands():
    out = orch("--help")
    assert out.returncode == 0, out.stderr
    assert "Usage: orchestrator" in out.stdout
    assert all(name in out.stdout for name in COMMAND_MODULES)


def test_unknown_command_is_usage_error():
    out = orch("no-such-command")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr


def test_every_command_is_listed_under_its_module():
    found = {}
    for mod in pkgutil.iter_modules(cli_pkg.__path__):
        module = importlib.import_module(f"orchestrator.cli.{mod.name}")
        found.update({c.name: mod.name for c in getattr(module, "commands", [])})
    assert found == COMMAND_MODULES


def test_lookup_imports_only_what_it_needs():
    ctx = cli.make_context("orchestrator", ["run", "--help"], resilient_parsing=True)
    assert cli.get_command(ctx, "run").name == "run"
    assert cli.get_command(ctx, "no-such-command") is None
    assert cli.list_commands(ctx) == sorted(COMMAND_MODULES)
