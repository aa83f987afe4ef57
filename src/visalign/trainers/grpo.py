"""GRPO math: group advantages and the clipped policy loss, with TRL 1.16's semantics, and R1-Reward's
StableReinforce options (a pre-clip of the log-ratio before exponentiation, an advantage outlier filter).

Small public functions that the trainers call and the tests hold to reference numbers; no model, no
data, no loop here.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

#: R1-Reward's pre-clip of the log-ratio: ``clamp(log_diff, log(1e-3), log(1e3))`` (their ``PolicyLoss``).
R1_REWARD_LOG_RATIO_BOUND = math.log(1e3)

Scale = Literal["group", "batch", "none"]
LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo"]


def _nan_std(x: torch.Tensor, dim: int | None = None, ddof: int = 1) -> torch.Tensor:
    """Standard deviation with ``N - ddof`` in the denominator, ignoring NaN (default: unbiased, ddof 1);
    0 where fewer than ``ddof + 1`` values (and for a single value)."""
    valid = ~torch.isnan(x)
    n = valid.sum() if dim is None else valid.sum(dim)
    mean = torch.nanmean(x) if dim is None else torch.nanmean(x, dim=dim, keepdim=True)
    sq = torch.where(valid, (x - mean) ** 2, torch.zeros_like(x))
    total = sq.sum() if dim is None else sq.sum(dim)
    var = total / (n - ddof).clamp(min=1)
    return torch.where(n > max(ddof, 1), var.sqrt(), torch.zeros_like(var))


def group_advantages(rewards: torch.Tensor, group_size: int, scale: Scale = "group", eps: float = 1e-4,
                     ddof: int = 1) -> torch.Tensor:
    """GRPO advantages: reward minus its prompt group's mean, over a standard deviation.

    ``rewards`` holds ``B = n_groups * group_size`` rewards, the ``group_size`` completions of each
    prompt contiguous (TRL's layout). ``scale``: ``"group"`` divides by the std of the group,
    ``"batch"`` by the std of the whole batch (the mean is still per group; Flow-GRPO's
    ``global_std``), ``"none"`` does not divide (Dr. GRPO). ``eps`` is added to the std (TRL and
    Flow-GRPO: 1e-4; DanceGRPO / BranchGRPO / MixGRPO: 1e-8). ``ddof``: 1 is the unbiased std
    (``torch.std``: TRL, DanceGRPO, MixGRPO), 0 the population std (``np.std``: Flow-GRPO's
    ``stat_tracking.py``); with ddof 1 advantages are ``sqrt((n - 1) / n)`` times those with ddof 0.
    NaN rewards (not applicable) are left out of the means and stds and get advantage 0.

    Example:
        >>> group_advantages(torch.tensor([1.0, 0.0, 2.0, 2.0]), group_size=2)
        tensor([ 0.7070, -0.7070,  0.0000,  0.0000])
        >>> group_advantages(torch.tensor([1.0, 0.0, 2.0, 2.0]), group_size=2, ddof=0)
        tensor([ 0.9998, -0.9998,  0.0000,  0.0000])
    """
    if rewards.ndim != 1:
        raise ValueError(f"rewards must be 1-D (one per completion), got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    if ddof not in (0, 1):
        raise ValueError(f"ddof must be 0 or 1, got {ddof!r}")
    r = rewards.double().view(-1, group_size)
    has_any = (~torch.isnan(r)).any(dim=1, keepdim=True)
    mean = torch.where(has_any, torch.nanmean(r, dim=1, keepdim=True), torch.zeros_like(r[:, :1]))
    adv = r - mean
    if scale == "group":
        adv = adv / (_nan_std(r, dim=1, ddof=ddof).unsqueeze(1) + eps)
    elif scale == "batch":
        adv = adv / (_nan_std(r.flatten(), ddof=ddof) + eps)
    adv = torch.nan_to_num(adv, nan=0.0)
    return adv.view(-1).to(rewards.dtype if rewards.is_floating_point() else torch.float32)


def keyed_group_advantages(rewards: torch.Tensor, keys: Sequence[Hashable] | None, scale: Scale = "group",
                           eps: float = 1e-4, ddof: int = 1) -> torch.Tensor:
    """Advantages grouped by key (e.g. the prompt *string*), wherever the members sit in the batch.

    Flow-GRPO's ``PerPromptStatTracker.update``: samples with equal keys form one group (two slots that
    drew the same prompt merge), ``(r - mean_of_group) / (std + eps)`` with the group's std, or with
    ``scale="batch"`` the std of all rewards (``global_std``). ``keys=None`` is Flow-GRPO's
    ``per_prompt_stat_tracking=False`` path: the batch mean and the batch std for everyone.
    ``ddof``/``eps``/NaN handling as in :func:`group_advantages`.

    Example:
        >>> keyed_group_advantages(torch.tensor([1.0, 3.0, 0.0, 5.0]), ["a", "b", "a", "b"], ddof=0, eps=0.0)
        tensor([ 1., -1., -1.,  1.])
    """
    if rewards.ndim != 1:
        raise ValueError(f"rewards must be 1-D (one per sample), got shape {tuple(rewards.shape)}")
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    if keys is None:
        keys = [0] * rewards.numel()
    if len(keys) != rewards.numel():
        raise ValueError(f"{len(keys)} keys for {rewards.numel()} rewards")
    r = rewards.double()
    index: dict[Hashable, int] = {}
    ids = torch.tensor([index.setdefault(k, len(index)) for k in keys], dtype=torch.long)
    adv = torch.zeros_like(r)
    batch_std = _nan_std(r, ddof=ddof)
    for g in range(len(index)):
        members = ids == g
        rg = r[members]
        mean = torch.nanmean(rg) if bool((~torch.isnan(rg)).any()) else torch.zeros((), dtype=r.dtype)
        a = rg - mean
        if scale == "group":
            a = a / (_nan_std(rg, ddof=ddof) + eps)
        elif scale == "batch":
            a = a / (batch_std + eps)
        adv[members] = a
    adv = torch.nan_to_num(adv, nan=0.0)
    return adv.to(rewards.dtype if rewards.is_floating_point() else torch.float32)


def policy_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
                loss_type: LossType = "dapo", epsilon: float = 0.2, epsilon_high: float | None = None,
                beta: float = 0.0, ref_logps: torch.Tensor | None = None,
                importance_sampling_level: Literal["token", "sequence"] = "token",
                max_completion_length: int | None = None, num_items_in_batch: float | None = None,
                num_processes: int = 1, kl_importance_weighting: bool = True,
                log_ratio_clip: float | None = None) -> torch.Tensor:
    """The clipped GRPO surrogate loss, aggregated as TRL 1.16 does.

    Per token, the importance ratio ``r = exp(logp - old_logp)`` (``"sequence"``: GSPO, the masked mean
    of the log-ratio over the sequence), clipped to ``[1 - epsilon, 1 + epsilon_high]`` (clip-higher,
    DAPO; ``epsilon_high`` defaults to ``epsilon``), and the loss ``-min(r A, clip(r) A)``. ``advantages``
    holds one value per sequence (B,) or one per token (B, T), as prefix-tree rollouts give. With
    ``beta > 0`` the k3 estimate of KL(pi || pi_ref), ``exp(d) - d - 1`` with ``d = ref_logp - logp``,
    multiplied by the importance ratio (TRL's ``use_bias_correction_kl``; off with
    ``kl_importance_weighting=False``), is added with weight ``beta``.

    Aggregation over the (B, T) token losses under ``mask``:
    ``grpo`` mean over sequences of each sequence's token mean; ``bnpo`` mean over all active tokens;
    ``dr_grpo`` sum / (B * ``max_completion_length``); ``dapo`` sum / (``num_items_in_batch`` /
    ``num_processes``), the active tokens of the whole generation batch (default: this batch's).

    Example:
        >>> lp = torch.tensor([[-1.0, -0.5]])
        >>> float(policy_loss(lp, lp, torch.tensor([2.0]), torch.ones(1, 2), loss_type="grpo"))
        -2.0
    """
    if logps.shape != old_logps.shape or logps.shape != mask.shape or logps.ndim != 2:
        raise ValueError(f"logps, old_logps and mask must share one (B, T) shape, got {tuple(logps.shape)}, "
                         f"{tuple(old_logps.shape)}, {tuple(mask.shape)}")
    if advantages.shape not in (logps.shape[:1], logps.shape):
        raise ValueError(f"advantages must have shape ({logps.shape[0]},) or {tuple(logps.shape)} (per token), "
                         f"got {tuple(advantages.shape)}")
    mask = mask.to(logps.dtype)
    log_ratio = logps - old_logps
    if importance_sampling_level == "token":
        log_w = log_ratio
    elif importance_sampling_level == "sequence":
        log_w = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    else:
        raise ValueError(f"importance_sampling_level must be 'token' or 'sequence', got {importance_sampling_level!r}")
    if log_ratio_clip is not None:
        if not log_ratio_clip > 0:
            raise ValueError(f"log_ratio_clip must be > 0, got {log_ratio_clip!r}")
        log_w = torch.clamp(log_w, min=-log_ratio_clip, max=log_ratio_clip)
    ratio = torch.exp(log_w)
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + (epsilon if epsilon_high is None else epsilon_high))
    adv = advantages.unsqueeze(1) if advantages.ndim == 1 else advantages
    per_token = -torch.min(ratio * adv, clipped * adv)
    if beta != 0.0:
        if ref_logps is None:
            raise ValueError("beta > 0 needs ref_logps")
        d = ref_logps - logps
        kl = torch.exp(d) - d - 1
        per_token = per_token + beta * (kl * ratio if kl_importance_weighting else kl)
    if loss_type == "grpo":
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "bnpo":
        return (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    if loss_type == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("dr_grpo needs max_completion_length")
        return (per_token * mask).sum() / (logps.shape[0] * max_completion_length)
    if loss_type == "dapo":
        items = mask.sum() if num_items_in_batch is None else torch.as_tensor(num_items_in_batch, dtype=logps.dtype)
        return (per_token * mask).sum() / (items / num_processes).clamp(min=1.0)
    raise ValueError(f"loss_type must be one of grpo, bnpo, dr_grpo, dapo; got {loss_type!r}")


@dataclass
class FilteredAdvantages:
    """What :func:`filter_advantages` returns: the advantages to train on, which active tokens were
    zeroed as outliers, and the statistics used."""

    advantages: torch.Tensor
    dropped: torch.Tensor
    mean: float
    std: float

    @property
    def dropped_share(self) -> float:
        """Share of the active tokens that were zeroed (0.0 when none were given)."""
        n = self.dropped.numel()
        return float(self.dropped.float().sum()) / n if n else 0.0


def filter_advantages(advantages: torch.Tensor, mask: torch.Tensor | None = None, *, sigma: float = 3.0,
                      max_abs: float = 10.0, mean: float | None = None, std: float | None = None,
                      bounds: Literal["standardized", "r1_reward_code"] = "standardized") -> FilteredAdvantages:
    """StableReinforce's advantage filter (R1-Reward): standardise over the batch, drop outliers.

    As R1-Reward's ``NaiveReplayBuffer.normalize`` does: over the active tokens (``mask``; all when
    None) ``mean`` and the population ``std`` (``sqrt(max(var, 1e-8))``: their ``rstd`` clamps the variance), then
    ``z = (a - mean) / std + 1e-8``; a token whose ``z`` lies outside ``[-sigma, sigma]`` (the 3-sigma
    rule, R1-Reward: 3), or beyond ``max_abs`` (their 10), or is not finite, gets advantage 0. Inactive
    tokens come back as 0. ``mean`` / ``std`` may be given (statistics gathered over all processes).

    ``bounds="r1_reward_code"`` compares ``z`` with ``[mean - sigma, mean + sigma]`` using the *raw*
    mean, exactly as their code does; the two agree when the raw mean is 0, as it nearly is after GRPO's
    group centring. The default follows the paper's 3-sigma rule.

    Example:
        >>> f = filter_advantages(torch.tensor([[1.0, -1.0, 1.0, -1.0]]))
        >>> [round(x, 4) for x in f.advantages[0].tolist()], f.std
        ([1.0, -1.0, 1.0, -1.0], 1.0)
    """
    if bounds not in ("standardized", "r1_reward_code"):
        raise ValueError(f"bounds must be 'standardized' or 'r1_reward_code', got {bounds!r}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    a = advantages.double()
    m = torch.ones_like(a) if mask is None else mask.to(a.dtype)
    if m.shape != a.shape:
        raise ValueError(f"mask shape {tuple(m.shape)} differs from advantages shape {tuple(a.shape)}")
    count = m.sum().clamp(min=1.0)
    mu = float((a * m).sum() / count) if mean is None else float(mean)
    if std is None:
        var = float((((a - mu) ** 2) * m).sum() / count)
        sd = math.sqrt(max(var, 1e-8))
    else:
        sd = float(std)
    z = (a - mu) / sd + 1e-8
    centre = mu if bounds == "r1_reward_code" else 0.0
    outlier = (z < centre - sigma) | (z > centre + sigma) | ~torch.isfinite(z) | (z.abs() > max_abs)
    active = m > 0
    out = torch.where(outlier | ~active, torch.zeros_like(z), z)
    dtype = advantages.dtype if advantages.is_floating_point() else torch.float32
    return FilteredAdvantages(advantages=out.to(dtype), dropped=(outlier & active)[active], mean=mu, std=sd)
