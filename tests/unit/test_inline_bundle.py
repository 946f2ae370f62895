"""python_source: a node program split into modules travels as one source, the imported node modules in front."""

import subprocess
import sys
from pathlib import Path

from orchestrator.inline import python_source
from orchestrator.job.sync import RECEIVER


def test_imported_node_modules_come_in_front_once_without_their_main_block():
    source = python_source(RECEIVER)
    assert "from orchestrator" not in source and "import orchestrator" not in source
    assert source.count("def serve(") == 1 and source.count("if __name__ == '__main__':") == 1
    assert source.index("def serve(") < source.index("class TreeSink")
    assert "Node side of a relay chain" not in source and "Node-side code receiver" not in source  # docstrings stay here


def test_an_alias_becomes_an_assignment_and_the_program_runs_without_the_package(tmp_path):
    program = tmp_path / "prog.py"
    program.write_text("from orchestrator.remote.chain_node import emit as say\n\n"
                       "if __name__ == '__main__':\n    say(event='hi')\n")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", python_source(Path(program))], capture_output=True,
                         text=True, cwd=tmp_path, timeout=30)
    assert out.stdout == '{"event": "hi"}\n', out.stderr
