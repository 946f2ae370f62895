"""A job's `setup`: its commands once per node, skipped while the code and the commands are unchanged there.

    argv = setup_argv(script="pip install -r requirements.txt", digest=tree.digest)
    run_on(hosts, argv, cwd=code_dirs, python=job.python, run_id=f"{run_id}-setup", ...)   # under the node agent

The commands run in `sh -e` in the copied workdir (they are shell commands by nature: pip, make, ln). The user's
text travels as one argument of a fixed wrapper, never spliced into it. After a success the wrapper leaves a
marker, $HOME/.cache/orchestrator/setup/<sha256 of digest + commands>; while it exists the node skips setup and
prints SKIPPED.
"""

from __future__ import annotations

import hashlib

MARKER_DIR = ".cache/orchestrator/setup"
SKIPPED = "setup unchanged since its last success here: skipped"
# $1: the marker (relative to $HOME), $2: the user's commands
_WRAPPER = ('m="$HOME/$1"; if [ -e "$m" ]; then echo "%s"; exit 0; fi; '
            'sh -ec "$2" && mkdir -p "${m%%/*}" && : > "$m"') % SKIPPED


def setup_key(script: str, digest: str) -> str:
    return hashlib.sha256(f"{digest}\0{script}".encode()).hexdigest()


def setup_argv(*, script: str, digest: str) -> list[str]:
    return ["sh", "-c", _WRAPPER, "orch-setup", f"{MARKER_DIR}/{setup_key(script, digest)}", script]
