"""Programs sent to the nodes inline (`python3 -I -S -c SOURCE`, `sh -c SOURCE`): nothing to install there.

    python_source(Path("orchestrator/remote/agent.py"))   # the code without its docstrings
    python_source(Path("orchestrator/job/receive.py"))    # with the node modules it imports in front of it
    sh_source(Path("orchestrator/remote/agent.sh"))       # the script without comment lines and indentation
    shown_argv(argv)        # for plans: a source sent from here as '$(cat orchestrator/launch/rankprefix.py)'

The source travels as an argument, so it shows in the node's `ps` and every node parses it on every start:
what only people read stays on the head. Worked out once per path and process.

A node program may be split into modules: a top-level `from orchestrator.X import a, b` brings module X's code
(without its `if __name__ == "__main__":` block) in front of the program, once, and is dropped; `as` names
become assignments. The imported modules must be stdlib-only node code too.
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
    """The module at `path` as sent: the node modules it imports in front, docstrings dropped (every node compiles
    it: smaller starts faster)."""
    tree = ast.Module(body=_bundled(path, set(), main=True), type_ignores=[])
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    source = ast.unparse(tree)
    resolved = path.resolve()
    _SHOWN[source] = f"$(cat {resolved.relative_to(_PACKAGE_ROOT) if resolved.is_relative_to(_PACKAGE_ROOT) else path})"
    return source


def _bundled(path: Path, seen: set[Path], *, main: bool) -> list[ast.stmt]:
    """The statements of `path` with those of the orchestrator modules it imports in front (each once)."""
    seen.add(path.resolve())
    body: list[ast.stmt] = []
    own = ast.parse(path.read_text()).body
    if own and isinstance(own[0], ast.Expr) and isinstance(own[0].value, ast.Constant):
        own = own[1:]  # the module docstring: in front of other code it would be a plain expression
    for stmt in own:
        if isinstance(stmt, ast.ImportFrom) and stmt.level == 0 and (stmt.module or "").startswith("orchestrator."):
            dep = _PACKAGE_ROOT.joinpath(*stmt.module.split(".")).with_suffix(".py")
            if dep.resolve() not in seen:
                body += _bundled(dep, seen, main=False)
            body += [ast.Assign(targets=[ast.Name(a.asname, ast.Store())], value=ast.Name(a.name, ast.Load()),
                                lineno=0) for a in stmt.names if a.asname]
        elif main or not _is_main_block(stmt):
            body.append(stmt)
    return body


def _is_main_block(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.If) and ast.unparse(stmt.test) in ("__name__ == '__main__'", '__name__ == "__main__"')


def shown_argv(argv: Sequence[str]) -> list[str]:
    """argv as printed in plans: each inline source made by python_source() as `$(cat its/path.py)`."""
    return [_SHOWN.get(arg, arg) for arg in argv]


@functools.cache
def sh_source(path: Path) -> str:
    """The POSIX sh script at `path` as sent: indentation, blank lines and comment lines dropped."""
    lines = (line.strip() for line in path.read_text().splitlines())
    return "\n".join(line for line in lines if line and not line.startswith("#")) + "\n"
