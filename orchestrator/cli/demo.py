"""`orchestrator demo`: the README's main job, a multi-node training run on a throw-away cluster.

    $ sudo orchestrator demo                  # 4 sandbox hosts x 2 processes: the engine, pp2 x dp2 x tp2, gloo
    $ sudo orchestrator demo --job allreduce  # the small all-reduce job instead
    $ orchestrator demo                       # non-root: the same job on localhost alone
"""

from __future__ import annotations

import signal
import sys

import click


@click.command("demo")
@click.option("--nodes", type=click.IntRange(1, 64), default=4, show_default=True, help="Sandbox hosts (root).")
@click.option("--nproc-per-node", type=click.IntRange(1, 16), default=2, show_default=True)
@click.option("--name", default="demo", show_default=True, help="Sandbox name.")
@click.option("--run-dir", default="runs", show_default=True)
@click.option("--job", type=click.Choice(["engine", "allreduce"]), default="engine", show_default=True,
              help="engine: the tiny model trained 3D-parallel; allreduce: one torch.distributed all_reduce.")
def demo_command(nodes: int, nproc_per_node: int, name: str, run_dir: str, job: str) -> int:
    """Bring up a sandbox cluster, train on it across hosts, show the result, tear it down."""
    from rich.console import Console

    from orchestrator.cli.lines import line_printer
    from orchestrator.launch.demo import run_demo

    console = Console(stderr=True)

    def interrupt(signum, frame):  # SIGTERM/SIGHUP outside the launch: unwind so the sandbox comes down
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)
    outcome = run_demo(nodes=nodes, nproc=nproc_per_node, sandbox_name=name, run_dir=run_dir, job=job,
                       say=lambda msg: console.print(f"[orch] {msg}", highlight=False),
                       sink=line_printer(err=sys.stdout))
    if outcome.rows:
        Console().print(_allreduce_table(outcome))
    if outcome.metrics:
        Console().print(_training_table(outcome))
        _plot(outcome, console)
    first = outcome.launch.first_failure
    if first is not None:
        click.echo(f"first failure: {first.describe()}", err=True)
    for host, why in outcome.launch.unreachable.items():
        click.echo(f"unreachable: {host}: {why}", err=True)
    stopped = outcome.launch.stopped_by
    verdict = "ok" if outcome.ok else f"stopped by signal {stopped}" if stopped else "FAILED"
    click.echo(f"demo {verdict}: run {outcome.launch.plan.run_id}, logs in {outcome.launch.plan.run_dir}/logs/",
               err=True)
    return 0 if outcome.ok else (outcome.launch.exit_code or 1)


def _allreduce_table(outcome):
    from rich.table import Table

    table = Table(title=f"all_reduce over {outcome.launch.plan.world_size} ranks", title_justify="left")
    for column in ("rank", "host", "local rank", "world size", "sum", "expected", "ok"):
        table.add_column(column)
    for r in outcome.rows:
        table.add_row(str(r["rank"]), r["host"], str(r["local_rank"]), str(r["world_size"]), str(r["sum"]),
                      str(r["expected"]), "yes" if r["sum"] == r["expected"] else "NO")
    return table


def _training_table(outcome, every: int = 4):
    from rich.table import Table

    plan = outcome.launch.plan
    table = Table(title=f"engine, tiny config, {len(plan.nodes)} hosts x {plan.nodes[0].nproc} ranks",
                  title_justify="left")
    for column in ("step", "loss", "tokens/s", "step time"):
        table.add_column(column, justify="right")
    for m in outcome.metrics:
        if m["step"] % every == 0 or m["step"] == 1:
            table.add_row(str(m["step"]), f"{m['loss']:.4f}", f"{m['tokens_per_s']:.0f}", f"{m['step_time_s']:.2f}s")
    return table


def _plot(outcome, console) -> None:
    import os

    from orchestrator.engine.plot import plot_run

    engine_dir = os.path.join(outcome.launch.plan.run_dir, "engine")
    console.print(f"[orch] loss and throughput plot: {plot_run(engine_dir)}", highlight=False)


commands = [demo_command]
