"""The `orchestrator` entry point: the root click group and the one place errors become exit codes.

    $ orchestrator --help
    $ orchestrator -v run --hosts 'node[1-4]' -- hostname
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import sys

import click

from orchestrator import __version__
from orchestrator.errors import EXIT_INTERRUPTED, OrchestratorError

log = logging.getLogger("orchestrator")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="orchestrator")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
def cli(verbose: int) -> None:
    """Start, watch and keep alive multi-node training runs on bare metal or Slurm."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="[orch] %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _register_commands() -> None:
    import orchestrator.cli as pkg

    for mod in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if mod.name == "main":
            continue
        module = importlib.import_module(f"orchestrator.cli.{mod.name}")
        for command in getattr(module, "commands", []):
            cli.add_command(command)


_register_commands()


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
