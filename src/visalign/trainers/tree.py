"""Prefix trees over a prompt's completions and their per-token advantages (TEMPO-style).

A group of completions that share prefixes forms a tree: the prompt is the root, each completion a
path to a leaf. The value of a node is the mean reward of the leaves below it. Every token of a
completion gets its GRPO advantage; a token that starts one branch of an internal node (a branching
token, where completions sharing the prefix so far go different ways) also gets the temporal-difference
correction ``V(child) - V(parent)``. The root's split is the group itself, already scored by GRPO, so it
adds nothing: a flat group (no shared prefix) gives exactly GRPO.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .grpo import Scale, _nan_std, group_advantages


def prefix_values(token_ids: Sequence[Sequence[int]], rewards: Sequence[float]) -> list[list[tuple[float, float] | None]]:
    """For each completion and token, ``(V(parent), V(child))`` where the token starts a branch of an
    internal node, else None.

    ``V`` of a prefix is the mean reward of the completions that start with it. The first token (a
    branch of the root) is never a branching token here.

    Example:
        >>> prefix_values([[1, 2], [1, 3], [4]], [1.0, 0.0, 0.5])[0]
        [None, (0.5, 1.0)]
    """
    if len(token_ids) != len(rewards):
        raise ValueError(f"{len(token_ids)} completions but {len(rewards)} rewards")
    sums: dict[tuple[int, ...], float] = {}
    counts: dict[tuple[int, ...], int] = {}
    children: dict[tuple[int, ...], set[int]] = {}
    for ids, r in zip(token_ids, rewards, strict=True):
        prefix: tuple[int, ...] = ()
        for tok in ids:
            children.setdefault(prefix, set()).add(tok)
            prefix = (*prefix, tok)
            sums[prefix] = sums.get(prefix, 0.0) + r
            counts[prefix] = counts.get(prefix, 0) + 1
    out = []
    for ids in token_ids:
        row: list[tuple[float, float] | None] = []
        for t in range(len(ids)):
            parent, child = tuple(ids[:t]), tuple(ids[: t + 1])
            if t > 0 and len(children.get(parent, ())) > 1:
                row.append((sums[parent] / counts[parent], sums[child] / counts[child]))
            else:
                row.append(None)
        out.append(row)
    return out


def tree_token_advantages(token_ids: Sequence[Sequence[int]], rewards: torch.Tensor, group_size: int,
                          scale: Scale = "group", eps: float = 1e-4) -> list[torch.Tensor]:
    """Per-token advantages of ``B = n_groups * group_size`` completions (groups contiguous).

    Each token gets the completion's GRPO advantage (:func:`~visalign.trainers.grpo.group_advantages`
    with ``scale`` and ``eps``); a branching token inside its group's prefix tree adds
    ``(V(child) - V(parent))`` divided by the same standard deviation as the advantage (so both are
    in one unit; none with ``scale="none"``). NaN rewards: the completion gets zeros and is left out of
    the values.

    Example:
        >>> adv = tree_token_advantages([[7, 1], [7, 2]], torch.tensor([1.0, 0.0]), group_size=2)
        >>> [[round(x, 3) for x in a.tolist()] for a in adv]  # token 7 is shared; the branch adds +-0.5/std
        [[0.707, 1.414], [-0.707, -1.414]]
    """
    if len(token_ids) != rewards.numel():
        raise ValueError(f"{len(token_ids)} completions but {rewards.numel()} rewards")
    base = group_advantages(rewards, group_size, scale=scale, eps=eps).double()
    r = rewards.double()
    out: list[torch.Tensor] = []
    for g in range(0, len(token_ids), group_size):
        idx = [i for i in range(g, g + group_size) if not torch.isnan(r[i])]
        values = prefix_values([token_ids[i] for i in idx], [float(r[i]) for i in idx])
        by_index = dict(zip(idx, values, strict=True))
        group = r[g:g + group_size]
        if scale == "group":
            denom = float(_nan_std(group)) + eps
        elif scale == "batch":
            denom = float(_nan_std(r)) + eps
        else:
            denom = 1.0
        for i in range(g, g + group_size):
            adv = torch.full((len(token_ids[i]),), float(base[i]), dtype=torch.float64)
            for t, vc in enumerate(by_index.get(i, [])):
                if vc is not None:
                    adv[t] += (vc[1] - vc[0]) / denom
            if i not in by_index:
                adv.zero_()
            out.append(adv.to(torch.float32))
    return out
