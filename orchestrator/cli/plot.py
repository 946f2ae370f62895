"""`orchestrator plot RUN_DIR`: a PNG of a training run's loss and throughput, restarts marked.

    $ orchestrator plot runs/t1                  # -> runs/t1/training.png
    $ orchestrator plot runs/t1 -o loss.png
"""

from __future__ import annotations

import click


@click.command("plot")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("-o", "--output", metavar="PNG", default=None, help="Where to write (default: RUN_DIR/training.png).")
def plot_command(run_dir: str, output: str | None) -> None:
    """PNG of loss and tokens/s over steps, restarts marked.

    Reads RUN_DIR/metrics.jsonl, and RUN_DIR/events.jsonl when the supervisor wrote one.
    """
    from orchestrator.engine.plot import plot_run

    click.echo(str(plot_run(run_dir, output)))


commands = [plot_command]
