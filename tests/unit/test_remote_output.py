"""dshbak-style folding, prefixes and summaries (pure)."""

from __future__ import annotations

from orchestrator.remote.fanout import FanoutResult, HostResult
from orchestrator.remote.output import OutputFolder, prefixed, results_table, summary


def test_fold_identical_output_once_per_node_set():
    folder = OutputFolder(["n2", "n1", "n3", "n10"])
    for host in ["n1", "n2", "n3", "n10"]:
        folder.add(host, "stdout", "Linux")
        folder.add(host, "stdout", "odd" if host == "n3" else "even")
        folder.add(host, "stderr", "not folded")
    assert folder.groups() == [("n[1-2,10]", ["Linux", "even"]), ("n3", ["Linux", "odd"])]
    assert folder.render() == "----------------\nn[1-2,10]\n----------------\nLinux\neven\n" \
                              "----------------\nn3\n----------------\nLinux\nodd"


def test_fold_keeps_hostile_text_literal():
    folder = OutputFolder(["a"])
    folder.add("a", "stdout", "$(rm -rf /) `x` \x1b[31m")
    assert folder.groups() == [("a", ["$(rm -rf /) `x` \x1b[31m"])]


def test_prefix_and_summary():
    assert prefixed("node3", "hello") == "node3: hello"
    result = FanoutResult("r", [HostResult("n1", 0), HostResult("n2", None, error="connection timed out")])
    assert summary(result) == ["2 hosts: 1 ok, 1 failed", "n2: exit 255: connection timed out"]
    assert summary(FanoutResult("r", [HostResult("n1", 0)])) == ["1 host: 1 ok"]


def test_results_table_lists_every_host():
    table = results_table(FanoutResult("r", [HostResult("n1", 0), HostResult("n2", 3, tail=("boom",))]))
    assert table.row_count == 2
