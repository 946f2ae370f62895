"""The root command's lazy table (orchestrator.cli.main.COMMAND_MODULES) matches the modules' `commands` lists."""

from __future__ import annotations

import importlib
import pkgutil

import orchestrator.cli as cli_pkg
from orchestrator.cli.main import COMMAND_MODULES, cli


def test_every_command_is_listed_under_its_module():
    found = {}
    for mod in pkgutil.iter_modules(cli_pkg.__path__):
        module = importlib.import_module(f"orchestrator.cli.{mod.name}")
        found.update({c.name: mod.name for c in getattr(module, "commands", [])})
    assert found == COMMAND_MODULES


def test_lookup_imports_only_on_demand():
    ctx = cli.make_context("orchestrator", ["run", "--help"], resilient_parsing=True)
    assert cli.get_command(ctx, "run").name == "run"
    assert cli.get_command(ctx, "no-such-command") is None
    assert cli.list_commands(ctx) == sorted(COMMAND_MODULES)
