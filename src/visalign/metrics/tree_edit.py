"""Exact ordered tree edit distance (Zhang and Shasha 1989) with unit insert and delete costs and a
given matrix of rename costs: the engine under :func:`~visalign.metrics.teds.teds`.

The distance is the one APTED computes (it is unique, so any exact algorithm gives it). Subproblems
that involve a single-node tree (every table cell is one) are solved in closed form, large ones are
swept with numpy rows, small ones in plain Python.

Example:
    >>> from dataclasses import dataclass, field
    >>> import numpy as np
    >>> @dataclass
    ... class Node:
    ...     tag: str
    ...     children: list["Node"] = field(default_factory=list)
    >>> a = PostOrderTree(Node("r", [Node("x"), Node("y")]))
    >>> b = PostOrderTree(Node("r", [Node("x")]))
    >>> rename = np.array([[float(p.tag != q.tag) for q in b.nodes] for p in a.nodes])
    >>> tree_edit_distance(a, b, rename)  # delete y
    1.0
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar

import numpy as np

__all__ = ["PostOrderTree", "TreeNode", "tree_edit_distance"]


class TreeNode(Protocol):
    """A node of an ordered tree: its children, in order."""

    @property
    def children(self) -> Sequence[TreeNode]: ...


NodeT = TypeVar("NodeT", bound=TreeNode)


class PostOrderTree(Generic[NodeT]):
    """A tree in postorder: ``lld[i]`` is the leftmost leaf below node ``i``.

    ``mirrored`` reverses every node's children: the edit distance between two trees equals the one
    between their mirror images, and a mirror can have far fewer or smaller keyroots (a table's
    ``thead`` instead of its ``tbody``; ``<div><br><div><br>...`` chains).
    """

    def __init__(self, root: NodeT, mirrored: bool = False) -> None:
        def children_of(node: NodeT) -> Sequence[NodeT]:
            return node.children[::-1] if mirrored else node.children

        self.nodes: list[NodeT] = []
        index: dict[int, int] = {}
        stack = [(root, iter(children_of(root)))]
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                index[id(node)] = len(self.nodes)
                self.nodes.append(node)
            else:
                stack.append((child, iter(children_of(child))))
        self.lld = [index[id(children_of(n)[0])] if n.children else i for i, n in enumerate(self.nodes)]
        for i, node in enumerate(self.nodes):  # a child precedes its parent: resolve chains in order
            if node.children:
                self.lld[i] = self.lld[self.lld[i]]
        self.size = np.array([i - self.lld[i] + 1 for i in range(len(self.nodes))], dtype=np.float64)
        self.leaf = np.array([not n.children for n in self.nodes])
        highest = {lld: i for i, lld in enumerate(self.lld)}  # the last node per leftmost leaf
        self.keyroots = sorted(i for i in highest.values() if self.nodes[i].children)
        # Zhang and Shasha's work is proportional to the product of these sums over the two trees
        self.work = sum(k - self.lld[k] + 1 for k in self.keyroots)

    def subtree_minimum(self, values: np.ndarray) -> np.ndarray:
        """``out[..., i] = values[..., lld[i]: i + 1].min(-1)``: minimum over each subtree."""
        out = values.copy()
        for i, node in enumerate(self.nodes):
            if node.children:
                out[..., i] = values[..., self.lld[i] : i + 1].min(axis=-1)
        return out


_VECTOR_MIN_SIZE = 24  # subtrees at least this large are swept with numpy rows instead of Python loops


def _forest_distance_python(
    l1: int, k1: int, l2: int, nodes: list[tuple[int, int]], lld_first: list[int],
    costs: list[list[float]], treedist: list[list[float]],
) -> None:
    """One Zhang-Shasha subproblem (keyroots ``k1``, ``k2``) in plain Python, for small subtrees."""
    forest = [list(range(len(nodes) + 1))]
    for x, i in enumerate(range(l1, k1 + 1), 1):
        previous = forest[x - 1]
        row = [x]
        left = x
        cost_i, tree_i = costs[i], treedist[i]
        if lld_first[i] == l1:
            for y, (j, q) in enumerate(nodes, 1):
                value = previous[y] + 1
                if left + 1 < value:
                    value = left + 1
                if q == 0:
                    diagonal = previous[y - 1] + cost_i[j]
                    if diagonal < value:
                        value = diagonal
                    tree_i[j] = value
                else:
                    diagonal = q + tree_i[j]  # forest row 0 is 0, 1, 2, ...
                    if diagonal < value:
                        value = diagonal
                row.append(value)
                left = value
        else:
            before = forest[lld_first[i] - l1]
            for y, (j, q) in enumerate(nodes, 1):
                value = previous[y] + 1
                if left + 1 < value:
                    value = left + 1
                diagonal = before[q] + tree_i[j]
                if diagonal < value:
                    value = diagonal
                row.append(value)
                left = value
        forest.append(row)


def _forest_distance_numpy(
    outer_lld: np.ndarray, l_outer: int, k_outer: int, inner_lld: np.ndarray, l_inner: int, k_inner: int,
    rename: np.ndarray, treedist: np.ndarray,
) -> None:
    """The same subproblem swept one row of the outer subtree at a time, vectorised over the inner one.

    ``rename`` and ``treedist`` are indexed [outer node, inner node] (transposed views work: the
    subproblem is symmetric because insert and delete both cost 1). Along a row, ``row[y] =
    min(candidate[y], row[y - 1] + 1)`` is a running minimum of ``candidate[k] + (y - k)``.
    """
    inner = np.arange(l_inner, k_inner + 1)
    offset = inner_lld[inner] - l_inner
    on_path = offset == 0
    steps = np.arange(len(inner) + 1, dtype=np.float64)
    forest = np.empty((k_outer - l_outer + 2, len(inner) + 1))
    forest[0] = steps
    for x, i in enumerate(range(l_outer, k_outer + 1), 1):
        before = outer_lld[i] - l_outer
        tree_i = treedist[i, l_inner : k_inner + 1]
        if before == 0:
            diagonal = np.where(on_path, forest[x - 1, :-1] + rename[i, l_inner : k_inner + 1], offset + tree_i)
        else:
            diagonal = forest[before, offset] + tree_i
        row = forest[x]
        row[0] = x
        np.minimum(forest[x - 1, 1:] + 1, diagonal, out=row[1:])
        row -= steps
        np.minimum.accumulate(row, out=row)
        row += steps
        if before == 0:
            tree_i[on_path] = row[1:][on_path]


def tree_edit_distance(first: PostOrderTree, second: PostOrderTree, rename: np.ndarray) -> float:
    """Exact ordered tree edit distance (Zhang and Shasha 1989), unit insert and delete costs.

    Zhang and Shasha compute the distance between every pair of subtrees, one pair of "keyroots" at a
    time; a pair involving a single-node tree (every ``td`` is one) has a closed form and is filled in
    first. Large subproblems run vectorised with numpy, small ones in Python: the two copies of the
    subtree distances (lists for Python, an array for numpy) are synchronised on the pairs each
    subproblem writes (the leftmost paths of its two keyroots).
    """
    size_first, size_second = first.size, second.size
    # A single node against a tree: map it onto the cheapest node and insert the rest, or delete it
    # and insert the whole tree.
    dist = np.zeros_like(rename)
    leaf_rows = np.nonzero(first.leaf)[0]
    if len(leaf_rows):
        best = second.subtree_minimum(rename[leaf_rows])
        dist[leaf_rows] = np.minimum(size_second + 1, size_second - 1 + best)
    leaf_cols = np.nonzero(second.leaf)[0]
    if len(leaf_cols):
        best = first.subtree_minimum(rename[:, leaf_cols].T).T
        dist[:, leaf_cols] = np.minimum(size_first[:, None] + 1, size_first[:, None] - 1 + best)
    if not first.keyroots or not second.keyroots:
        return float(dist[-1, -1])
    treedist = dist.tolist()
    costs = rename.tolist()
    lld_first, lld_second = first.lld, second.lld
    lld_first_array, lld_second_array = np.array(lld_first), np.array(lld_second)
    columns = []
    for k2 in second.keyroots:
        l2 = lld_second[k2]
        nodes = [(j, lld_second[j] - l2) for j in range(l2, k2 + 1)]
        columns.append((k2, l2, nodes, [j for j, q in nodes if q == 0]))
    for k1 in first.keyroots:
        l1 = lld_first[k1]
        path1 = [i for i in range(l1, k1 + 1) if lld_first[i] == l1]
        for k2, l2, nodes, path2 in columns:
            if max(k1 - l1, k2 - l2) + 1 < _VECTOR_MIN_SIZE:
                _forest_distance_python(l1, k1, l2, nodes, lld_first, costs, treedist)
                for i in path1:
                    dist[i, path2] = [treedist[i][j] for j in path2]
                continue
            if k1 - l1 <= k2 - l2:  # sweep rows of the smaller subtree
                _forest_distance_numpy(lld_first_array, l1, k1, lld_second_array, l2, k2, rename, dist)
            else:
                _forest_distance_numpy(lld_second_array, l2, k2, lld_first_array, l1, k1, rename.T, dist.T)
            for i in path1:
                tree_i = treedist[i]
                for j, value in zip(path2, dist[i, path2].tolist(), strict=True):
                    tree_i[j] = value
    return float(treedist[-1][-1])
