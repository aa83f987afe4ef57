"""Pairwise judging as a reward (pure functions): which pairs of a group to ask the judge about, how the
two orders of a pair combine, and how the outcomes become one score per candidate.

An *outcome* is ``(a, b, result)``: ``result`` is a's share of the comparison, 1.0 (a is better),
0.0 (b is), 0.5 (a tie: a judge answering both orders, A/B and B/A, that picks the same *position*
both times). :class:`~visalign.rewards.judge.VlmJudgeReward` (``mode="pairwise"``) plans the pairs with
:func:`plan_pairs`, asks each in one or both orders, combines the votes with :func:`combine_votes` and
scores with :func:`win_rates` or :func:`bradley_terry`.

Example:
    >>> plan_pairs([0, 1, 2], "all"), plan_pairs([0, 1, 2], "anchor")
    ([(0, 1), (0, 2), (1, 2)], [(0, 1), (0, 2)])
    >>> combine_votes([1.0, 0.0]), combine_votes([1.0, None]), combine_votes([None, None]) is None
    (0.5, 1.0, True)
    >>> win_rates([(0, 1, 1.0), (0, 2, 0.5), (1, 2, 0.0)])
    {0: 0.75, 1: 0.0, 2: 0.75}
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from itertools import combinations

__all__ = ["PAIRINGS", "SCORINGS", "bradley_terry", "check_pairs", "combine_votes", "plan_pairs", "win_rates"]

#: The named pairings of :func:`plan_pairs` (an int k is the third kind: k neighbours each).
PAIRINGS = ("all", "anchor")
#: How outcomes become a score per candidate.
SCORINGS = ("win_rate", "bradley_terry")

Outcome = tuple[Hashable, Hashable, float]


def check_pairs(pairs: str | int) -> str | int:
    """``pairs`` if valid (``"all"``, ``"anchor"`` or an int >= 1), else ``ValueError``."""
    if isinstance(pairs, bool) or not (pairs in PAIRINGS or (isinstance(pairs, int) and pairs >= 1)):
        raise ValueError(f"pairs must be 'all', 'anchor' or a number of neighbours >= 1, got {pairs!r}")
    return pairs


def plan_pairs(members: Sequence[int], pairs: str | int = "all") -> list[tuple[int, int]]:
    """The pairs of one group's candidates to judge, each once, in a fixed order.

    * ``"all"``: every pair, ``n (n - 1) / 2``;
    * ``"anchor"``: the first member against each of the others, ``n - 1``;
    * ``k`` (an int): each member against the next ``k`` in the group's order, cyclically: ``n k`` pairs
      when ``n > 2 k`` (each candidate meets ``2 k`` others, a budget between the two above), every pair
      otherwise.

    Example:
        >>> plan_pairs([10, 11, 12, 13, 14], 1)
        [(10, 11), (11, 12), (12, 13), (13, 14), (10, 14)]
        >>> len(plan_pairs(range(8), 2)), len(plan_pairs(range(4), 2)), plan_pairs([7], "all")
        (16, 6, [])
    """
    check_pairs(pairs)
    members = list(members)
    n = len(members)
    if pairs == "all":
        return list(combinations(members, 2))
    if pairs == "anchor":
        return [(members[0], m) for m in members[1:]]
    seen: set[tuple[int, int]] = set()
    out = []
    for d in range(1, min(int(pairs), n // 2) + 1):
        for i in range(n):
            a, b = sorted((i, (i + d) % n))
            if (a, b) not in seen:
                seen.add((a, b))
                out.append((members[a], members[b]))
    return out


def combine_votes(votes: Sequence[float | None]) -> float | None:
    """One pair's outcome from its votes (one per order asked, each a's share; None: no decision): the
    mean of the decided votes, None when none decided. Two orders that disagree make a tie (0.5); a
    pair whose other order gave no decision keeps the one vote it has."""
    decided = [v for v in votes if v is not None]
    return sum(decided) / len(decided) if decided else None


def _shares(outcomes: Iterable[Outcome]) -> tuple[dict[Hashable, float], dict[Hashable, dict[Hashable, int]]]:
    """Each player's summed share and the number of comparisons between each two players."""
    won: dict[Hashable, float] = {}
    games: dict[Hashable, dict[Hashable, int]] = {}
    for a, b, r in outcomes:
        for x, y, share in ((a, b, r), (b, a, 1.0 - r)):
            won[x] = won.get(x, 0.0) + share
            games.setdefault(x, {})
            games[x][y] = games[x].get(y, 0) + 1
    return won, games


def win_rates(outcomes: Iterable[Outcome]) -> dict[Hashable, float]:
    """Each player's mean share over its decided comparisons (wins + half the ties, over comparisons).

    Example:
        >>> win_rates([("a", "b", 1.0), ("a", "c", 1.0), ("b", "c", 0.5)])
        {'a': 1.0, 'b': 0.25, 'c': 0.25}
    """
    won, games = _shares(outcomes)
    return {p: won[p] / sum(games[p].values()) for p in won}


def bradley_terry(outcomes: Iterable[Outcome], *, prior: float = 1.0, max_iterations: int = 1000,
                  tol: float = 1e-10) -> dict[Hashable, float]:
    """Bradley-Terry strengths of the players, as the probability of beating a player of strength 1.

    The model: ``P(i beats j) = p_i / (p_i + p_j)``; a tie counts half a win each way. Each player also
    plays ``prior`` virtual games, half won, against a fixed opponent of strength 1, which keeps an
    unbeaten (or never-winning) player finite and puts every group on one scale; a player without
    a decided comparison stays at 1 (score 0.5). Fitted by Hunter's MM iteration (2004),
    ``p_i <- W_i / sum_j n_ij / (p_i + p_j)``, which increases the likelihood at every step. Unlike the
    win rate it weighs *whom* a candidate beat, which matters when the pairs are not all asked
    (``pairs="anchor"`` or ``k``) or some were undecided.

    Returns ``p_i / (p_i + 1)`` per player.

    Example:
        >>> s = bradley_terry([("a", "b", 1.0)])  # a beat b once; by symmetry p_b = 1 / p_a
        >>> s["a"] > 0.5 > s["b"], round(s["a"] + s["b"], 6)
        (True, 1.0)
    """
    if prior <= 0:
        raise ValueError(f"prior must be > 0 (it keeps strengths finite), got {prior}")
    won, games = _shares(outcomes)
    p = {x: 1.0 for x in won}
    for _ in range(max_iterations):
        new = {}
        for x in p:
            denominator = prior / (p[x] + 1.0) + sum(n / (p[x] + p[y]) for y, n in games[x].items())
            new[x] = (won[x] + prior / 2) / denominator
        change = max((abs(new[x] - p[x]) / p[x] for x in p), default=0.0)
        p = new
        if change < tol:
            break
    return {x: v / (v + 1.0) for x, v in p.items()}
