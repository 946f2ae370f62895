"""The network bisection on recorded pair figures (sandbox hosts, gloo): which node, which link, how many rounds."""

from __future__ import annotations

import itertools

import pytest

from orchestrator.check.bisect import Bisection, round_robin
from orchestrator.check.judge import CheckThresholds, Link

# Figures measured on sandbox hosts (gloo, 4 MB all_reduce, 3-4 pairs at once on 2 cores): healthy pairs
# 0.2-0.46 GB/s and 170-340 us; a host behind a 10 Mbit/s token bucket measured 0.0012 GB/s with any peer.
HEALTHY = [Link(0.35, 209.0), Link(0.367, 206.0), Link(0.203, 303.0), Link(0.208, 344.0), Link(0.457, 193.0),
           Link(0.256, 170.0)]
SLOW_LINK = Link(0.0012, 180.0)


def fleet(n: int) -> list[str]:
    return [f"n{i}" for i in range(1, n + 1)]


def simulate(nodes, *, bad=(), bad_links=(), failed_import=()):
    """Drive a Bisection: a pair is slow when it has a bad node or is a bad link; healthy figures cycle."""
    b = Bisection(nodes, CheckThresholds())
    healthy = itertools.cycle(HEALTHY)
    while pairs := b.next_round():
        results = {p: SLOW_LINK if set(p) & set(bad) or set(p) in [set(link) for link in bad_links] else next(healthy)
                   for p in pairs}
        failed = {n: "python: import torch failed" for p in pairs for n in p if n in failed_import}
        b.record(results, failed)
    return b


def test_round_one_pairs_each_node_with_the_one_half_a_fleet_away():
    b = Bisection(fleet(8), CheckThresholds())
    assert b.next_round() == [("n1", "n5"), ("n2", "n6"), ("n3", "n7"), ("n4", "n8")]


@pytest.mark.parametrize("n", [4, 8, 16, 64, 128])
def test_one_bad_node_is_found_in_two_rounds(n):
    bad = f"n{n // 2 + 1}"  # the second end of round 1's first pair
    b = simulate(fleet(n), bad=[bad])
    assert list(b.bad) == [bad] and "bandwidth" in b.bad[bad] and "a good peer" in b.bad[bad]
    assert len(b.rounds) == 2
    controls = 1 if n >= 6 else 0  # two good nodes to spare measure beside the tests
    assert sum(len(r) for r in b.rounds) == n // 2 + 2 + controls  # vs n(n-1)/2 for all pairs
    assert not b.links and not b.unresolved


def test_three_bad_nodes_of_sixteen_in_two_rounds():
    b = simulate(fleet(16), bad=["n2", "n11", "n16"])
    assert sorted(b.bad) == ["n11", "n16", "n2"]
    assert len(b.rounds) == 2 and len(b.rounds[1]) == 7  # each suspect with its own good peer + a control, at once


def test_more_suspects_than_good_nodes_take_more_rounds_but_still_resolve():
    # 6 of 8 pairs fail outright (errors are absolute, not median-relative): 12 suspects, 4 good nodes
    dead = [f"n{i}" for i in (1, 2, 3, 4, 5, 6)]
    b = Bisection(fleet(16), CheckThresholds())
    while pairs := b.next_round():
        b.record({p: Link(error="refused") if set(p) & set(dead) else HEALTHY[0] for p in pairs})
    assert sorted(b.bad) == sorted(dead)
    assert [len(r) for r in b.rounds] == [8, 4, 6, 2 + 1]  # cleared suspects join the good nodes: the pool grows


def test_slow_pairs_are_judged_against_the_median_of_round_one():
    b = Bisection(fleet(8), CheckThresholds())
    b.record({p: link for p, link in zip(b.next_round(), [HEALTHY[0], HEALTHY[1], HEALTHY[2], SLOW_LINK])})
    assert b.reference.bw_gbps == pytest.approx((0.35 + 0.203) / 2)
    assert b.suspects == ["n4", "n8"]


def test_later_rounds_are_judged_against_a_control_pair_measured_at_the_same_moment():
    b = Bisection(fleet(8), CheckThresholds())
    b.record(dict(zip(b.next_round(), [HEALTHY[0], HEALTHY[1], HEALTHY[2], SLOW_LINK])))  # n4-n8 slow
    pairs = b.next_round()
    assert pairs == [("n1", "n4"), ("n5", "n8"), ("n2", "n6")]  # two tests, one control
    busy = Link(0.03, 900.0)  # the whole machine ten times slower for a moment (other work): not n4's fault
    b.record({("n1", "n4"): busy, ("n5", "n8"): SLOW_LINK, ("n2", "n6"): Link(0.035, 850.0)})
    assert list(b.bad) == ["n8"] and "n4" in b.good


def test_a_bad_link_between_two_good_nodes_fails_neither():
    b = simulate(fleet(8), bad_links=[("n3", "n7")])
    assert not b.bad
    assert list(b.links) == [("n3", "n7")] and "each end is fine with a good peer" in b.links[("n3", "n7")]


def test_the_odd_node_out_is_tested_in_round_two():
    b = simulate(fleet(7), bad=["n7"])
    assert b.rounds[0] == [("n1", "n4"), ("n2", "n5"), ("n3", "n6")]
    assert b.rounds[1] == [("n1", "n7"), ("n4", "n2")]  # the test and a control pair of good nodes
    assert list(b.bad) == ["n7"]
    clean = simulate(fleet(7))
    assert not clean.bad and "n7" in clean.good


def test_a_node_that_cannot_import_torch_fails_and_its_peer_is_retested():
    b = simulate(fleet(8), failed_import=["n6"])
    assert b.bad == {"n6": "python: import torch failed"}
    assert ("n1", "n2") in b.rounds[1] or any("n2" in p for p in b.rounds[1])  # n2, n6's peer, tested again
    assert "n2" in b.good


def test_a_failed_collective_counts_as_a_slow_pair():
    b = Bisection(fleet(4), CheckThresholds())
    assert b.next_round() == [("n1", "n3"), ("n2", "n4")]
    b.record({("n1", "n3"): Link(error="n3: timed out after 60 s"), ("n2", "n4"): HEALTHY[0]})
    assert b.suspects == ["n1", "n3"] and b.good == ["n2", "n4"]
    assert b.next_round() == [("n2", "n1"), ("n4", "n3")]


def test_two_nodes_cannot_be_told_apart_by_speed():
    b = simulate(fleet(2), bad=["n2"])  # one pair is its own median: no relative verdict
    assert not b.bad and len(b.rounds) == 1


def test_no_good_node_leaves_suspects_unresolved():
    b = simulate(fleet(4), bad=["n1", "n2", "n3", "n4"])
    assert not b.bad and b.unresolved == []  # all equally slow: the median is slow too, nothing stands out
    b = Bisection(fleet(4), CheckThresholds())
    b.next_round()
    b.record({("n1", "n3"): Link(error="refused"), ("n2", "n4"): Link(error="refused")})
    assert b.next_round() == [] and b.unresolved == ["n1", "n3", "n2", "n4"]


@pytest.mark.parametrize("n", [2, 5, 8, 16])
def test_round_robin_covers_every_pair_once_in_disjoint_rounds(n):
    rounds = round_robin(fleet(n))
    assert len(rounds) == (n - 1 if n % 2 == 0 else n)
    pairs = [frozenset(p) for r in rounds for p in r]
    assert len(pairs) == len(set(pairs)) == n * (n - 1) // 2
    for r in rounds:
        ends = [x for p in r for x in p]
        assert len(ends) == len(set(ends))
