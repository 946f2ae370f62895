"""orchestrator: start and keep alive multi-node training runs on bare metal or Slurm.

    $ orchestrator hosts render --hosts 'node[1-4]' --format deepspeed
    $ orchestrator run --hosts 'node[1-16]' -- uptime
    $ orchestrator launch --hosts 'node[1-4]' --nproc-per-node 8 -m orchestrator.engine -- --config small
"""

__version__ = "0.1.0"
