"""`orchestrator train`: run the 3D-parallel engine (one process here; every rank under torchrun).

    $ orchestrator train --config tiny --steps 20 --run-dir runs/t1
    $ torchrun --nproc-per-node 4 -m orchestrator.engine --config tiny --dp-shard 2 --tp 2 --run-dir runs/t2
    $ torchrun --nproc-per-node 2 -m orchestrator.engine --pp 2 --schedule interleaved-1f1b --microbatches 4

A configuration error is printed by rank 0 only; every rank exits 2 before joining the process group.
"""

from __future__ import annotations

import json
import os

import click

from orchestrator.errors import OrchestratorError


@click.command("train")
@click.option("--config", "config_name", default="tiny", show_default=True, metavar="NAME|FILE",
              help="A named config (tiny, small, medium, large, 7b) or a YAML file.")
@click.option("--dp-shard", type=int, help="FSDP2 sharding degree (-1 = infer from the world size).")
@click.option("--dp-replicate", type=int, help="HSDP replicas of the sharded group (-1 = infer).")
@click.option("--tp", type=int, help="Tensor-parallel degree (-1 = infer).")
@click.option("--pp", type=int, help="Pipeline stages (-1 = infer).")
@click.option("--schedule", help="Pipeline schedule: gpipe, 1f1b or interleaved-1f1b.")
@click.option("--microbatches", type=int, help="Pipeline microbatches per step (default: pp).")
@click.option("--steps", type=int, help="Train up to this step.")
@click.option("--seed", type=int, help="Seed for weights and synthetic data.")
@click.option("--run-dir", help="Where metrics.jsonl and checkpoints/ go.")
@click.option("--checkpoint-every", type=int, help="Save every K steps (0 = never).")
@click.option("--keep-checkpoints", type=int, help="Keep the newest K checkpoints (0 = all).")
@click.option("--snapshot-every", type=int,
              help="Snapshot each rank's state into host memory every K steps, for warm restarts (default under "
                   "the warm launcher: 1).")
@click.option("--checkpoint-local", is_flag=True, default=None,
              help="Node-local checkpoints: each rank saves its own state on its node (copied to the next node); for "
                   "a run dir that is not shared. Restarts need the same layout.")
@click.option("--async-checkpoint/--sync-checkpoint", default=None, help="Save checkpoints in the background.")
@click.option("--data", help="synthetic, or a token file from `orchestrator data prepare`.")
@click.option("--engine", help="torch (FSDP2 x TP x PP) or deepspeed (ZeRO).")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.FIELD=VALUE",
              help="Override any config field, e.g. --set train.lr=3e-4 (repeatable).")
@click.option("--print-config", is_flag=True, help="Print the resolved config as JSON and exit.")
# DeepSpeed's launcher appends --local_rank=N to every rank's argv; the engine reads LOCAL_RANK instead.
@click.option("--local_rank", "--local-rank", "local_rank", type=int, hidden=True)
def train_command(config_name: str, overrides: tuple[str, ...], print_config: bool, local_rank: int | None,
                  **flags) -> int | None:
    """Train a decoder-only transformer; resumes from the newest complete checkpoint in --run-dir."""
    from orchestrator.engine.config import load_config

    try:
        cfg = load_config(config_name, overrides=overrides, **flags)
        if print_config:
            click.echo(json.dumps(cfg.to_dict(), indent=1))
            return 0
        from orchestrator.engine.train import train

        summary = train(cfg)
    except OrchestratorError as exc:
        if int(os.environ.get("RANK", 0)) != 0:
            return exc.exit_code  # rank 0 prints the same error once; the others just fail
        raise
    if int(os.environ.get("RANK", 0)) == 0 and summary.get("losses"):
        click.echo(f"trained steps {summary['first_step']}-{summary['last_step']} ({summary['layout']}): "
                   f"final loss {summary['losses'][-1]:.6f}", err=True)
    return 0


commands = [train_command]
