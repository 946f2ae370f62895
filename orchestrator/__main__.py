"""`python -m orchestrator ...` is the same as the `orchestrator` console script."""

from orchestrator.cli.main import main

main()
