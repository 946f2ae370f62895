"""orchestrator/contracts.py: the shared formats, and the copies the inline node agent must keep equal to them."""

import ast
import re
import signal
from pathlib import Path

import pytest

from orchestrator import contracts
from orchestrator.remote import agent
from orchestrator.remote.fanout import sh_agent_source
from orchestrator.supervisor import forwarder, relay

ENGINE = Path(contracts.__file__).parent / "engine"


def test_the_inline_agents_keep_the_contracts_values():
    assert (agent.RUN_TOKEN, agent.AGENT_TOKEN, agent.RUN_TMPDIR, agent.CODE_PIN_ENV) == \
        (contracts.RUN_TOKEN, contracts.AGENT_TOKEN, contracts.RUN_TMPDIR, contracts.CODE_PIN_ENV)
    assert f"{contracts.RUN_TOKEN}=$r {contracts.AGENT_TOKEN}=$$ " in sh_agent_source()
    assert all(agent.signal_exit_code(s) == contracts.signal_exit_code(s) for s in signal.valid_signals())
    assert (forwarder.HEARTBEAT_ENV, forwarder.RUN_TMPDIR, forwarder.RELAY_KEY_ENV) == \
        (contracts.HEARTBEAT_ENV, contracts.RUN_TMPDIR, contracts.RELAY_KEY_ENV)
    assert forwarder.MARK.decode() == relay.MARK


def test_run_ids():
    a, b = contracts.new_run_id(0), contracts.new_run_id(0)
    assert re.fullmatch(r"19700101-000000-[0-9a-f]{6}", a) and a != b
    assert contracts.new_run_id() > a and contracts.RUN_ID.match(contracts.new_run_id())


@pytest.mark.parametrize("run_id, ok", [("a", True), ("t1-a0", True), ("x" * 64, True), ("x" * 65, False),
                                         ("-x", False), (".x", False), ("x\n", False), ("a b", False), ("", False)])
def test_run_id_pattern_is_anchored(run_id, ok):
    assert bool(contracts.RUN_ID.match(run_id)) is ok and bool(contracts.RUN_ID.fullmatch(run_id)) is ok


def test_step_dirs():
    assert contracts.step_dir_name(40) == "step-40" and contracts.parse_step_dir("step-40") == 40
    assert [contracts.parse_step_dir(n) for n in (".step-5.partial", "step-", "step-4x", "step-4\n")] == [None] * 4


def _imports(path: Path) -> set[str]:
    """Every orchestrator.engine module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {name for name in found if (ENGINE / f"{name.rsplit('.', 1)[-1]}.py").is_file()
            and name.startswith("orchestrator.engine.")}


def test_the_engine_has_no_import_cycle():
    graph = {f"orchestrator.engine.{p.stem}": _imports(p) for p in ENGINE.glob("*.py") if p.stem != "__init__"}

    def reach(start, seen):
        for nxt in graph.get(start, ()):
            if nxt not in seen:
                seen.add(nxt)
                reach(nxt, seen)
        return seen

    assert [m for m in graph if m in reach(m, set())] == []
