"""dshbak-style folding, prefixes and summaries (pure)."""

from __future__ import annotations

from orchestrator.remote.fanout import FanoutResult, HostResult
from orchestrator.remote.output import OutputFolder, Prefixer, prefixed, results_table, summary
from orchestrator.remote.session import MAX_LINE, Line, lines


def test_fold_identical_output_once_per_node_set():
    folder = OutputFolder(["n2", "n1", "n3", "n10"])
    for host in ["n1", "n2", "n3", "n10"]:
        folder.add(host, "stdout", "Linux")
        folder.add(host, "stdout", "odd" if host == "n3" else "even")
        folder.add(host, "stderr", "not folded")
    assert folder.render() == "----------------\nn[1-2,10]\n----------------\nLinux\neven\n" \
                              "----------------\nn3\n----------------\nLinux\nodd\n"


def test_fold_keeps_hostile_text_literal():
    folder = OutputFolder(["a"])
    folder.add("a", "stdout", "$(rm -rf /) `x` \x1b[31m")
    assert folder.render() == "----------------\na\n----------------\n$(rm -rf /) `x` \x1b[31m\n"


def test_prefix_and_summary():
    assert prefixed("node3", "hello") == "node3: hello"
    result = FanoutResult("r", [HostResult("n1", 0), HostResult("n2", None, error="connection timed out")])
    assert summary(result) == ["2 hosts: 1 ok, 1 failed", "n2: exit 255: connection timed out"]
    assert summary(FanoutResult("r", [HostResult("n1", 0)])) == ["1 host: 1 ok"]


def test_results_table_lists_every_host():
    table = results_table(FanoutResult("r", [HostResult("n1", 0), HostResult("n2", 3, tail=("boom",))]))
    assert table.row_count == 2


def test_fold_spools_by_digest_and_keeps_a_long_line_whole():
    folder = OutputFolder(["a", "b", "c"])
    big = b"x" * (3 * (1 << 14) + 5)  # spans several spool blocks
    for host in "abc":
        folder.add(host, "stdout", Line(big[:20000], partial=True))
        folder.add(host, "stdout", Line(big[20000:] + (b"\xff" if host == "c" else b"")))
    rule = "-" * 16
    assert folder.render() == f"{rule}\na,b\n{rule}\n{big.decode()}\n{rule}\nc\n{rule}\n{big.decode()}\ufffd\n"


def test_prefixer_shows_a_long_line_whole_and_prefixed_once_while_other_hosts_print():
    prefix = Prefixer()
    pieces = [prefix("n1", "stdout", Line(b"aaa", partial=True)), prefix("n1", "stdout", Line(b"bbb", partial=True)),
              prefix("n2", "stdout", Line(b"other")), prefix("n1", "stdout", Line(b"ccc"))]
    assert pieces == ["", "", "n2: other\n", "n1: aaabbbccc\n"]


def test_a_line_longer_than_the_join_limit_goes_out_in_pieces_prefixed_once():
    from orchestrator.remote.output import LineJoiner

    prefix = Prefixer()
    prefix._join = LineJoiner(limit=4)
    pieces = [prefix("n1", "stdout", Line(b"aaa", partial=True)), prefix("n1", "stdout", Line(b"bbb", partial=True)),
              prefix("n1", "stdout", Line(b"c"))]
    assert pieces == ["", "n1: aaabbb", "c\n"]


class Reader:
    """A stream's read(n), over bytes held in memory."""

    def __init__(self, data):
        self.data = data

    async def read(self, n):
        chunk, self.data = self.data[:n], self.data[n:]
        return chunk


def test_lines_keep_bytes_and_split_an_overlong_line_into_partial_pieces():
    import asyncio

    long = "a" + "é" * MAX_LINE  # 2 bytes a character, odd offset: the pieces must not cut one
    data = b"ok \xff\n" + long.encode() + b"\ntail"

    async def collect():
        return [line async for line in lines(Reader(data))]

    got = asyncio.run(collect())
    assert got[0] == "ok \ufffd" and got[0].raw == b"ok \xff" and not got[0].partial
    assert [g.partial for g in got[1:-1]] == [True, False] and "".join(got[1:-1]) == long
    assert len(got[1].raw) == MAX_LINE - 1  # cut before the character that would straddle the limit
    assert b"".join(g.raw for g in got[1:-1]) == long.encode() and got[-1] == "tail"


def test_a_line_of_exactly_max_line_bytes():
    import asyncio

    async def collect(data):
        return [line async for line in lines(Reader(data))]

    got = asyncio.run(collect(b"a" * (10 * MAX_LINE)))
    assert [len(g.raw) for g in got] == [MAX_LINE] * 10 and [g.partial for g in got] == [True] * 9 + [False]
