"""Click commands only: parse, call the library, print. One module per command group.

Each module here exposes `commands`, a list of click commands that main.py adds to the root group.
Modules must import heavy libraries (torch, asyncssh, docker) inside the command functions, so that
`orchestrator --help` stays fast.
"""
