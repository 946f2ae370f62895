"""`python -m orchestrator.engine ARGS` = `orchestrator train ARGS`, the form torchrun and deepspeed launch.

    $ torchrun --nproc-per-node 4 -m orchestrator.engine --config tiny --dp-shard 2 --tp 2 --steps 20
"""

import sys

from orchestrator.cli.main import main

main(["train", *sys.argv[1:]])
