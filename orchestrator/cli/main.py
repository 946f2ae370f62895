"""The `orchestrator` entry point: the root click group and the one place errors become exit codes.

    $ orchestrator --help
    $ orchestrator -v run --hosts 'node[1-4]' -- hostname
    $ orchestrator --version
    $ eval "$(_ORCHESTRATOR_COMPLETE=bash_source orchestrator)"     # click's completion (zsh_source, fish_source)
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from orchestrator import __version__
from orchestrator.errors import EXIT_INTERRUPTED, OrchestratorError

log = logging.getLogger("orchestrator")


# command name -> the orchestrator.cli module whose `commands` list holds it. Imported when the command runs:
# importing every command's module costs ~40 ms of start-up, paid by every `orchestrator run` on a head.
COMMAND_MODULES = {
    "check": "check", "data": "data", "demo": "demo", "events": "status", "hosts": "hosts", "images": "images", "install": "install",
    "launch": "launch", "plot": "plot", "run": "run", "sandbox": "sandbox", "slurm-launch": "submit",
    "status": "status", "submit": "submit", "supervise": "supervise", "train": "train",
    "up": "up", "jobs": "jobs", "logs": "jobs", "stop": "jobs",
}


class LazyGroup(click.Group):
    """The root group: lists COMMAND_MODULES, imports a command's module only when it is looked up.

    Shell completion looks up only the commands whose names match what was typed, so completing `la` imports
    the launch module alone.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMAND_MODULES:
            return None
        module = importlib.import_module(f"orchestrator.cli.{COMMAND_MODULES[name]}")
        return next((c for c in module.commands if c.name == name), None)


def _version() -> str:
    """The installed distribution's version (a wheel, pipx, or a checkout's editable install), else __version__."""
    from importlib import metadata  # here, not at the top: ~30 ms that only --version needs

    try:
        return metadata.version("orchestrator")
    except metadata.PackageNotFoundError:  # a checkout imported without being installed (PYTHONPATH)
        return __version__


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(f"orchestrator {_version()}")
        ctx.exit()


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show the version and exit.")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
def cli(verbose: int) -> None:
    """Start, watch and keep alive multi-node training runs on bare metal or Slurm."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="[orch] %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; OrchestratorError -> 'orchestrator: <kind>: <msg>' and its exit code, no traceback.

    A command returns its exit code (an int) or None for 0.
    """
    try:
        rc = cli.main(args=argv, prog_name="orchestrator", standalone_mode=False)
    except OrchestratorError as exc:
        click.echo(f"orchestrator: {exc.kind}: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("orchestrator: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("orchestrator: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:
        sys.exit(1)
    sys.exit(rc if isinstance(rc, int) else 0)
