"""Find the bad node (or link) among N nodes in a few rounds of concurrent pair tests, not N-1 rounds of all pairs.

    b = Bisection(["n1", ..., "n8"], CheckThresholds())
    while pairs := b.next_round():           # round 1: (n1,n5) (n2,n6) (n3,n7) (n4,n8), all at once
        b.record({pair: measure(pair) for pair in pairs})   # Link(bw_gbps, lat_us) or Link(error=...)
    b.bad        # {"n7": "network: bandwidth 0.001 GB/s < 0.5 x median 0.4 GB/s (with n1, a good peer)"}
    b.links      # {("n2", "n6"): "..."}: a pair slow together while each end is fine with a good peer
    len(b.rounds)  # 2: round 1, then each suspect re-paired with a known-good node, all at once

Round 1 pairs node i with node i+N/2, so every node is in exactly one test; a pair below the fleet's median
(judge.link_problem) makes both ends suspects. Each later round pairs every suspect it can with a distinct node
already known good, concurrently: a suspect that is slow again with a good peer is the bad node; one that is fine
is cleared. Where two good nodes are left over, they run beside the tests as a control pair: a test is judged
against the more lenient of round 1's median and the control (the same moment's fabric and load), so a busy
moment fails no one. Speed is relative, so fewer than half of round 1's pairs can be slow, the good nodes
outnumber the suspects, and two rounds settle it; pairs that fail outright (errors are absolute) can outnumber
them, and then each further round re-pairs as many suspects as there are good nodes. An odd node out of round 1
is a suspect until it has been tested. Pure: the caller measures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from orchestrator.check.judge import CheckThresholds, Link, Reference, link_problem

__all__ = ["Bisection", "round_robin"]

Pair = tuple[str, str]


class Bisection:
    def __init__(self, nodes: Sequence[str], thresholds: CheckThresholds):
        self.nodes = list(nodes)
        self.th = thresholds
        self.rounds: list[list[Pair]] = []
        self.results: dict[Pair, Link] = {}
        self.reference: Reference | None = None
        self.good: list[str] = []
        self.suspects: list[str] = []
        self.bad: dict[str, str] = {}
        self.links: dict[Pair, str] = {}
        self._slow_pairs: dict[Pair, str] = {}
        self._controls: list[Pair] = []

    def next_round(self) -> list[Pair]:
        """The pairs to measure next, all at once ([] when done). Each pair is (rank 0, rank 1)."""
        if not self.rounds:
            half = len(self.nodes) // 2
            pairs = [(self.nodes[i], self.nodes[i + half]) for i in range(half)]
            self.suspects = self.nodes[2 * half:]  # the odd one out has not been tested yet
        else:
            pairs = list(zip(self.good, self.suspects))  # the good node leads: it hosts the rendezvous
            spare = self.good[len(pairs):]
            # a control: two good nodes measured in the same moment, the yardstick for this round's tests
            self._controls = [(spare[0], spare[1])] if pairs and len(spare) >= 2 else []
            pairs += self._controls
        if pairs:
            self.rounds.append(pairs)
        return pairs

    def record(self, results: Mapping[Pair, Link], failed: Mapping[str, str] | None = None) -> None:
        """The round's measurements; `failed`: nodes that failed on their own (e.g. `import torch`) -> why.
        A pair with such a node says nothing about its other end, which stays a suspect."""
        failed = dict(failed or {})
        self.results.update(results)
        for node, why in failed.items():
            self.bad.setdefault(node, why)
        first = len(self.rounds) == 1
        reference = self.reference = Reference.of(link for pair, link in results.items()
                                                  if not set(pair) & failed.keys()) if first else self.reference
        if not first and reference is not None:
            control = Reference.of([results[p] for p in self._controls if p in results and not set(p) & failed.keys()],
                                   minimum=1)
            if control is not None:  # the more lenient of the two: a busy moment fails no one, nor a fast control
                reference = Reference(min(reference.bw_gbps, control.bw_gbps), max(reference.lat_us, control.lat_us))
        for pair, link in results.items():
            if pair in self._controls:
                continue
            ends = [n for n in pair if n not in failed]
            if len(ends) < 2:
                if first:
                    self.suspects += ends
                continue
            problem = link_problem(link, reference, self.th)
            if first:
                if problem:
                    self._slow_pairs[pair] = problem
                    self.suspects += ends
                else:
                    self.good += ends
                continue
            peer, suspect = pair
            self.suspects.remove(suspect)
            if problem:
                self.bad[suspect] = f"network: {problem} (with {peer}, a good peer)"
            else:
                self.good.append(suspect)
        self.good = [n for n in self.good if n not in self.bad]
        self.suspects = [n for n in self.suspects if n not in self.bad]
        for pair, problem in self._slow_pairs.items():
            if all(n in self.good for n in pair):
                self.links[pair] = f"{problem} together; each end is fine with a good peer"

    @property
    def unresolved(self) -> list[str]:
        """Suspects no good node was left to test them with (too many bad nodes, or fewer than 4 nodes)."""
        return [] if self.good else list(self.suspects)


def round_robin(nodes: Sequence[str]) -> list[list[Pair]]:
    """Every pair of nodes exactly once, in N-1 rounds (N even; N rounds with one node resting when odd) of
    disjoint pairs: the circle method. What an all-pairs test must run, to compare with Bisection."""
    ring = list(nodes) + ([None] if len(nodes) % 2 else [])
    n = len(ring)
    rounds = []
    for _ in range(n - 1):
        pairs = [(ring[i], ring[n - 1 - i]) for i in range(n // 2)]
        rounds.append([p for p in pairs if None not in p])
        ring = [ring[0], ring[-1], *ring[1:-1]]
    return rounds
