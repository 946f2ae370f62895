"""Programs sent to the nodes inline (`python3 -I -S -c SOURCE`, `sh -c SOURCE`): nothing to install there.

    python_source(Path("orchestrator/remote/agent.py"))   # the code without its docstrings
    sh_source(Path("orchestrator/remote/agent.sh"))       # the script without comment lines and indentation
    shown_argv(argv)        # for plans: a source sent from here as '$(cat orchestrator/launch/rankprefix.py)'

The source travels as an argument, so it shows in the node's `ps` and every node parses it on every start:
what only people read stays on the head. Worked out once per path and process.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Sequence
from pathlib import Path

_SHOWN: dict[str, str] = {}  # source as sent -> how plans show it
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def python_source(path: Path) -> str:
    """The module at `path` as sent: docstrings dropped (every node compiles it: smaller starts faster)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    source = ast.unparse(tree)
    resolved = path.resolve()
    _SHOWN[source] = f"$(cat {resolved.relative_to(_PACKAGE_ROOT) if resolved.is_relative_to(_PACKAGE_ROOT) else path})"
    return source


def shown_argv(argv: Sequence[str]) -> list[str]:
    """argv as printed in plans: each inline source made by python_source() as `$(cat its/path.py)`."""
    return [_SHOWN.get(arg, arg) for arg in argv]


@functools.cache
def sh_source(path: Path) -> str:
    """The POSIX sh script at `path` as sent: indentation, blank lines and comment lines dropped."""
    lines = (line.strip() for line in path.read_text().splitlines())
    return "\n".join(line for line in lines if line and not line.startswith("#")) + "\n"
