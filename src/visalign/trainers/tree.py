"""Prefix trees over a prompt's completions and their per-token advantages (TEMPO-style).

A group of completions that share prefixes forms a tree: the prompt is the root, each completion a
path to a leaf. The value of a node is the mean reward of the leaves below it. Every token of a
completion gets its GRPO advantage; a token that starts one branch of an internal node (a branching
token, where completions sharing the prefix so far go different ways) also gets the temporal-difference
correction ``V(child) - V(parent)``. The root's split is the group itself, already scored by GRPO, so it
adds nothing: a flat group (no shared prefix) gives exactly GRPO.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ..models.rope import reset_rope_deltas
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


# ---------------------------------------------------------------------------------------------------
# Sampling: independent groups and prefix trees from one KV-cached decoding loop
# ---------------------------------------------------------------------------------------------------

BranchMode = Literal["independent", "segment", "entropy"]


@dataclass
class TreeSampling:
    """How a prompt's ``num_leaves`` completions are grown.

    - ``"independent"``: the root splits into all leaves at the first token (plain GRPO sampling; the
      prompt's KV cache is still computed once).
    - ``"segment"`` (TreePO): a trunk grows; every ``segment_length`` tokens each live branch that still
      owes more than one leaf splits into ``branch_factor`` children.
    - ``"entropy"`` (after TreeRL's EPTree, online): a branch that owes more than one leaf splits at the
      first token whose next-token entropy is at least ``entropy_threshold`` nats, at least
      ``min_segment`` tokens after its last split.

    In every mode a branch that owes ``q > 1`` leaves and samples EOS emits one leaf and draws again
    from the same distribution for the other ``q - 1`` (so every leaf is a fair sample given its
    prefix), and at the last allowed position a branch splits into all the leaves it owes. So each
    prompt always gets exactly ``num_leaves`` completions.

    Example:
        >>> TreeSampling(num_leaves=8, mode="segment", segment_length=16).num_leaves
        8
    """

    num_leaves: int
    mode: BranchMode = "independent"
    branch_factor: int = 2
    segment_length: int = 16
    entropy_threshold: float = 1.0
    min_segment: int = 4

    def __post_init__(self) -> None:
        if self.num_leaves < 1 or self.branch_factor < 2 or self.segment_length < 1 or self.min_segment < 1:
            raise ValueError("num_leaves >= 1, branch_factor >= 2, segment_length >= 1 and min_segment >= 1")
        if self.mode not in ("independent", "segment", "entropy"):
            raise ValueError(f"mode must be independent, segment or entropy; got {self.mode!r}")

    def splits(self, position: int, quota: int, entropy: float, since_split: int, last: bool) -> int:
        """How many children a live branch owing ``quota`` leaves gets at ``position`` (1 = no split)."""
        if quota <= 1:
            return 1
        if last:
            return quota
        if self.mode == "independent":
            return quota if position == 0 else 1
        if self.mode == "segment":
            split = position > 0 and position % self.segment_length == 0
        else:
            split = since_split >= self.min_segment and entropy >= self.entropy_threshold
        return min(self.branch_factor, quota) if split else 1


@dataclass
class SampledGroup:
    """The completions of one prompt: token ids (EOS included when reached), the log-prob of each token
    under the distribution it was drawn from, whether each was cut at ``max_new_tokens``, and how many
    tokens were sampled for all of them together (a shared prefix counts once)."""

    completions: list[list[int]] = field(default_factory=list)
    logprobs: list[list[float]] = field(default_factory=list)
    truncated: list[bool] = field(default_factory=list)
    tokens_sampled: int = 0


def split_quota(quota: int, parts: int) -> list[int]:
    """Share ``quota`` leaves among ``parts`` children as evenly as possible, larger shares first.

    Example:
        >>> split_quota(5, 2)
        [3, 2]
    """
    return [quota // parts + (1 if i < quota % parts else 0) for i in range(parts)]


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  suppress: Sequence[int] = (), keep: torch.Tensor | None = None) -> torch.Tensor:
    """The logits of the distribution visalign samples from *and* trains: float32, divided by
    ``temperature``, ``suppress`` tokens at -inf, then top-k, then top-p (nucleus) truncation to -inf,
    in the order transformers' ``generate`` applies its processors.

    The sampler (:func:`sample_groups`) draws from ``softmax`` of these logits and the training forward
    (:func:`~visalign.trainers.vlm.completion_logps`) takes its log-probs from ``log_softmax`` of them, so
    the optimised policy is the sampled one.

    Ties are decided by value, never by sort order, so two calls on equal values always keep the same
    tokens: top-k keeps every token tied with the k-th largest (as transformers' ``TopKLogitsWarper``);
    top-p keeps the most likely tokens while the mass of the tokens before them (in descending order)
    is below ``top_p`` (as ``TopPLogitsWarper``; at least one), plus every token tied with the last one
    kept (transformers keeps a sort-order-dependent subset of such ties).

    ``keep`` (token ids, shaped ``logits.shape[:-1]``) are never truncated or suppressed: the training
    side passes the tokens that were sampled, which the sampler's filter kept by construction. This
    changes nothing in exact arithmetic; it keeps log-probs finite where float rounding moves a token
    across a top-k/top-p boundary, and at padded positions.

    Example:
        >>> filter_logits(torch.tensor([[1.0, 2.0, 3.0]]), top_k=2, suppress=[2]).tolist()
        [[1.0, 2.0, -inf]]
        >>> filter_logits(torch.tensor([[0.0, 0.0, 5.0]]), top_p=0.999).tolist()  # both ties stay in
        [[0.0, 0.0, 5.0]]
        >>> filter_logits(torch.tensor([[0.0, 1.0, 9.0]]), top_p=0.5, keep=torch.tensor([1])).tolist()
        [[-inf, 1.0, 9.0]]
    """
    x = logits.float() / max(temperature, 1e-6)
    if not suppress and not top_k and top_p >= 1.0:
        return x
    with torch.no_grad():
        flat = x.detach().reshape(-1, x.shape[-1])
        drop = torch.zeros(flat.shape, dtype=torch.bool, device=x.device)
        for s in range(0, flat.shape[0], 256):  # bounded memory on (batch x length x vocab) training logits
            drop[s:s + 256] = _truncated(flat[s:s + 256], top_k, top_p, suppress)
        drop = drop.view(x.shape)
        if keep is not None:
            drop.scatter_(-1, keep.to(x.device).long().unsqueeze(-1), False)
    return x.masked_fill(drop, float("-inf"))


def _truncated(x: torch.Tensor, top_k: int, top_p: float, suppress: Sequence[int]) -> torch.Tensor:
    """Bool mask of the tokens :func:`filter_logits` removes from rows ``x`` (temperature applied)."""
    drop = torch.zeros_like(x, dtype=torch.bool)
    if suppress:
        drop[:, list(suppress)] = True
    if top_k and top_k < x.shape[-1]:
        xm = x.masked_fill(drop, float("-inf"))
        drop |= xm < torch.topk(xm, top_k, dim=-1).values[:, -1:]
    if top_p < 1.0:
        xm = x.masked_fill(drop, float("-inf"))
        ordered = torch.sort(xm, descending=True, dim=-1).values
        p = ordered.softmax(-1)
        before = p.cumsum(-1) - p
        n_keep = (before < top_p).sum(-1, keepdim=True).clamp(min=1)
        drop |= xm < ordered.gather(-1, n_keep - 1)
    return drop


def _positions(attention_mask: torch.Tensor, rope_deltas: torch.Tensor | None) -> torch.Tensor:
    """Position ids of the last token of each row (``attention_mask`` includes it): its index among the
    row's real tokens (left padding excluded), plus the row's M-RoPE delta on all three axes for
    Qwen-VL models (the delta is relative to the unpadded prompt length)."""
    pos = (attention_mask.long().sum(-1, keepdim=True) - 1).clamp(min=0)
    if rope_deltas is not None:
        return (pos + rope_deltas.view(-1, 1).to(pos.device)).unsqueeze(0).expand(3, -1, -1)
    return pos


def _returned_cache(out: Any) -> Any:
    """The KV cache a forward returned: ``out.cache`` (transformers 5.24), else ``past_key_values``."""
    keys = out.keys()
    return out["cache"] if "cache" in keys else out["past_key_values"]


@torch.no_grad()
def sample_groups(model: Any, inputs: Mapping[str, torch.Tensor], plan: TreeSampling, *, max_new_tokens: int,
                  eos_token_ids: Sequence[int], generators: Sequence[torch.Generator], temperature: float = 1.0,
                  top_k: int = 0, top_p: float = 1.0, suppress_tokens: Sequence[int] = ()) -> list[SampledGroup]:
    """Sample ``plan.num_leaves`` completions for each prompt of ``inputs`` with one KV cache.

    The prompts (left-padded, as :func:`~visalign.trainers.prompting.encode_prompts` gives) are encoded
    once; then every live branch of every prompt advances one token per forward pass. A split copies
    the parent's cache rows (no prefix is ever recomputed). Prompt ``p`` draws its tokens from
    ``generators[p]`` alone, so what a prompt gets does not depend on the batch it was sampled in or on
    the number of processes. Works with Qwen-VL models (M-RoPE deltas are carried per row) and with
    models using 1-D positions.

    Returns one :class:`SampledGroup` per prompt.
    """
    n_prompts = inputs["input_ids"].shape[0]
    if len(generators) != n_prompts:
        raise ValueError(f"{n_prompts} prompts but {len(generators)} generators")
    eos = set(eos_token_ids)
    if not eos:
        raise ValueError("sampling needs at least one EOS token id")
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft wrapper takes **kwargs
    inner = getattr(base, "model", None)
    reset_rope_deltas(base)
    mrope = inner is not None and hasattr(inner, "rope_deltas")
    params = inspect.signature(base.forward).parameters
    # transformers 5.24 names the KV cache ``cache`` (``past_key_values`` is deprecated); older ones the latter
    cache_arg = "past_key_values" if "past_key_values" in params and "cache" not in params else "cache"
    step_kwargs = {}
    prefill = dict(inputs)
    if not mrope:  # 1-D positions count real tokens only (left padding excluded), as generate() does
        prefill["position_ids"] = (inputs["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
    out = model(**prefill, use_cache=True, logits_to_keep=1)
    cache = _returned_cache(out)
    rope_deltas = inner.rope_deltas.clone() if mrope and inner.rope_deltas is not None else None
    logits = out.logits[:, -1]
    attn = inputs["attention_mask"]
    device = attn.device
    groups = [SampledGroup() for _ in range(n_prompts)]
    # live rows: (prompt index, leaves owed, tokens so far, their log-probs, tokens since the last split)
    rows: list[tuple[int, int, list[int], list[float], int]] = [(p, plan.num_leaves, [], [], 0) for p in range(n_prompts)]
    for t in range(max_new_tokens):
        x = filter_logits(logits, temperature, top_k, top_p, suppress_tokens)
        probs = x.softmax(-1)
        logp = torch.log_softmax(x, -1)
        entropy = -(probs * logp.nan_to_num(neginf=0.0)).sum(-1)
        last = t == max_new_tokens - 1
        keep: list[int] = []
        new_rows: list[tuple[int, int, list[int], list[float], int]] = []
        new_tokens: list[int] = []
        for r, (p, quota, toks, lps, since) in enumerate(rows):
            g, gen = groups[p], generators[p]
            k = plan.splits(t, quota, float(entropy[r]), since, last)
            for owed in split_quota(quota, k):
                while owed > 0:
                    tok = int(torch.multinomial(probs[r].cpu(), 1, generator=gen))
                    g.tokens_sampled += 1
                    lp = [*lps, float(logp[r, tok])]
                    if tok in eos or last:
                        g.completions.append([*toks, tok])
                        g.logprobs.append(lp)
                        g.truncated.append(tok not in eos)
                        owed -= 1
                        continue
                    keep.append(r)
                    new_rows.append((p, owed, [*toks, tok], lp, 0 if k > 1 else since + 1))
                    new_tokens.append(tok)
                    owed = 0
        rows = new_rows
        if not rows:
            break
        index = torch.tensor(keep, device=device)
        if keep != list(range(len(keep))) or len(keep) != logits.shape[0]:
            cache.reorder_cache(index)
            attn = attn.index_select(0, index)
            if rope_deltas is not None:
                rope_deltas = rope_deltas.index_select(0, index.to(rope_deltas.device))
        attn = torch.cat([attn, attn.new_ones(len(rows), 1)], dim=1)
        step_ids = torch.tensor(new_tokens, device=device).view(-1, 1)
        position_ids = _positions(attn, rope_deltas)
        if "cache_position" in params:  # transformers < 5.24 wants it; 5.24 reads the cache's own length
            step_kwargs["cache_position"] = torch.tensor([cache.get_seq_length()], device=device)
        out = model(input_ids=step_ids, attention_mask=attn, position_ids=position_ids, use_cache=True,
                    **{cache_arg: cache}, **step_kwargs)
        cache = _returned_cache(out)
        logits = out.logits[:, -1]
    return groups
