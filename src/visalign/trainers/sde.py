"""Stochastic sampling steps with log-probabilities for GRPO on diffusion and flow-matching models.

Pure torch functions, no model or scheduler objects:

- :func:`sde_step_with_logprob`: Flow-GRPO's SDE step for rectified-flow models (SD3, FLUX), whose
  marginals match the ODE (Euler) sampler; ``noise_level`` 0 is the Euler step.
- :func:`cps_step_with_logprob`: the coefficients-preserving variant (Flow-CPS).
- :func:`ddim_step_with_logprob`: DDPO's DDIM step for epsilon-prediction diffusion models.
- :func:`kl_to_reference`: the per-sample KL between two of those Gaussian steps sharing a std.
- :func:`depthwise_advantages`: BranchGRPO's per-depth advantages on a tree of trajectories.

Conventions shared by the step functions:

- Inputs may be bf16/fp16: everything is computed in (at least) float32, and all four outputs
  ``(prev_sample, log_prob, mean, std)`` come back in that dtype (cast ``prev_sample`` back to the
  latents' dtype yourself). fp32 log-probs avoid the "ratio below 1" drift that bf16 rounding causes.
- ``log_prob`` has shape ``(B,)``: the *mean* (not the sum) over all non-batch dimensions of the
  element-wise log-density, as in Flow-GRPO and DDPO (it keeps the scale independent of resolution).
- ``prev_sample`` is detached inside the log-prob, so gradients flow through ``mean`` and ``std`` only.
- ``std`` has shape ``(B, 1, ..., 1)`` (broadcastable against the sample).
- Where ``std == 0`` (``noise_level``/``eta`` 0, or DDIM's final step into ``alpha = 1``) the step is
  deterministic and ``log_prob`` is defined as **0** (no NaN, no inf, zero gradient); such steps carry
  no policy gradient and must not be trained (Flow-GRPO never trains them).
- Give at most one of ``prev_sample`` (recomputing the log-prob of a stored transition, used as is)
  and ``noise`` (a fixed standard-normal draw); with neither, noise is drawn with ``generator``, always in
  float32 (as Flow-GRPO, DanceGRPO and BranchGRPO draw it), then cast to the compute dtype.
- ``noise_scale`` (flow SDE step) multiplies only the noise draw, not the std of the log-prob:
  BranchGRPO's ``tree_split_noise_scale`` (``prev = mean + std * (scale * noise)``, log-prob under
  ``N(mean, std^2)``).

Degenerate steps, per reference (documented, not reproduced: visalign never trains them):

- noise level 0: Flow-GRPO's log-prob is NaN (``log 0``), DanceGRPO/BranchGRPO clamp the std at 1e-8;
  visalign returns 0. No preset trains such a step (:func:`~visalign.trainers.flow.trained_steps`
  skips noise-level-0 steps).
- CPS last step (``s' = 0``, ``std = 0``) with a stored sample: Flow-GRPO's log-prob is
  ``-mean((x' - mean)^2)`` (finite, with a gradient); visalign returns 0. Flow-GRPO's
  ``timestep_fraction = 0.99`` never trains the last step, and neither do the presets that use CPS.

Example:
    >>> import torch
    >>> from visalign.trainers.sde import sde_step_with_logprob
    >>> sigmas = torch.linspace(1, 0, 11)
    >>> x, v = torch.zeros(2, 4, 8, 8), torch.ones(2, 4, 8, 8)
    >>> prev, log_prob, mean, std = sde_step_with_logprob(v, x, sigmas, 0, noise_level=0.7)
    >>> prev.shape, log_prob.shape, std.shape
    (torch.Size([2, 4, 8, 8]), torch.Size([2]), torch.Size([2, 1, 1, 1]))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch

__all__ = [
    "StepResult",
    "cps_step_with_logprob",
    "ddim_step_with_logprob",
    "depthwise_advantages",
    "kl_to_reference",
    "sde_sigma_t",
    "sde_step_with_logprob",
]

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class StepResult(NamedTuple):
    """One stochastic sampling step (what every ``*_step_with_logprob`` returns; unpacks as a 4-tuple).

    Example:
        >>> import torch
        >>> v, x = torch.ones(1, 2), torch.ones(1, 2)  # the Euler step from sigma 0.5 to 0: x - 0.5 v
        >>> out = sde_step_with_logprob(v, x, torch.tensor([1.0, 0.5, 0.0]), 1, noise_level=0.0)
        >>> out.prev_sample.tolist(), out.log_prob.tolist(), out.std.max().item()
        ([[0.5, 0.5]], [0.0], 0.0)
    """

    prev_sample: torch.Tensor  #: the next latents (the given ``prev_sample`` when one is scored)
    log_prob: torch.Tensor  #: ``(B,)`` mean over non-batch dims of log N(prev_sample | mean, std^2)
    mean: torch.Tensor  #: the step's mean
    std: torch.Tensor  #: the step's std (0: a deterministic step)


# --------------------------------------------------------------------------------------------- helpers


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    dtype = torch.float32
    for t in tensors:
        if t.is_floating_point():
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _check_sample(sample: torch.Tensor, other: torch.Tensor, other_name: str) -> None:
    if sample.ndim < 2:
        raise ValueError(
            f"sample must have a batch dimension and at least one more, got shape {tuple(sample.shape)}"
        )
    if other.shape != sample.shape:
        raise ValueError(
            f"{other_name} shape {tuple(other.shape)} does not match sample shape {tuple(sample.shape)}"
        )


def _per_sample(value: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    """Reshape a scalar or ``(B,)`` tensor to ``(B, 1, ..., 1)`` (B of the sample)."""
    shape = (sample.shape[0],) + (1,) * (sample.ndim - 1)
    if value.ndim == 0:
        return value.reshape((1,) * sample.ndim).expand(shape)
    return value.reshape((-1,) + (1,) * (sample.ndim - 1)).expand(shape)


def _index(
    table: torch.Tensor, index: int | torch.Tensor, name: str, *, high: int, low: int = 0
) -> torch.Tensor:
    """``table[index]`` with a range check (``low <= index < high``); int or per-batch tensor index."""
    if isinstance(index, torch.Tensor):
        if index.ndim > 1 or index.is_floating_point():
            raise ValueError(f"{name} must be an int or a 1-D integer tensor, got {index!r}")
        lo, hi = int(index.min()), int(index.max())
    else:
        lo = hi = int(index)
    if lo < low or hi >= high:
        raise ValueError(f"{name} out of range: must be in [{low}, {high}), got {index!r}")
    return table[index.to(table.device) if isinstance(index, torch.Tensor) else index]


def _draw(
    mean: torch.Tensor,
    std: torch.Tensor,
    prev_sample: torch.Tensor | None,
    noise: torch.Tensor | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    if prev_sample is not None and noise is not None:
        raise ValueError("give at most one of prev_sample and noise")
    if prev_sample is not None:
        _check_sample(mean, prev_sample, "prev_sample")
        return prev_sample.to(mean.dtype)
    if noise is None:
        device = generator.device if generator is not None else mean.device
        # float32 like the reference repositories, whatever the compute dtype: one generator state gives
        # the same sample in float32 and float64 runs
        noise = torch.randn(mean.shape, generator=generator, device=device, dtype=torch.float32).to(mean.device)
    else:
        _check_sample(mean, noise, "noise")
    return mean + std * noise.to(mean.dtype)


def _mean_non_batch(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(1, x.ndim)))


def _gaussian_log_prob(prev_sample: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Mean over non-batch dims of log N(prev | mean, std^2); 0 where std == 0 (gradient-safe)."""
    positive = std > 0
    safe_std = torch.where(positive, std, torch.ones_like(std))
    elem = -((prev_sample.detach() - mean) ** 2) / (2 * safe_std**2) - torch.log(safe_std) - _LOG_SQRT_2PI
    elem = torch.where(positive, elem, torch.zeros_like(elem))
    return _mean_non_batch(elem)


# ------------------------------------------------------------------------------------------ flow steps


def _flow_step_inputs(velocity: torch.Tensor, sample: torch.Tensor, sigmas: torch.Tensor, step_index: int | torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shared set-up of the flow steps: upcast ``x`` and ``v``, and the per-sample ``s`` and ``s'``."""
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(
            f"sigmas must be a 1-D tensor with at least 2 entries, got shape {tuple(sigmas.shape)}"
        )
    dtype = _compute_dtype(sample, velocity)
    x, v = sample.to(dtype), velocity.to(dtype)
    sig = sigmas.to(device=x.device, dtype=dtype)
    s = _per_sample(_index(sig, step_index, "step_index", high=sig.numel() - 1), x)
    s_next = _per_sample(_index(sig, step_index + 1, "step_index + 1", high=sig.numel()), x)
    return x, v, sig, s, s_next


def sde_step_with_logprob(
    velocity: torch.Tensor,
    sample: torch.Tensor,
    sigmas: torch.Tensor,
    step_index: int | torch.Tensor,
    *,
    noise_level: float,
    prev_sample: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    sigma_mode: Literal["flow_grpo", "constant"] = "flow_grpo",
    noise_scale: float = 1.0,
) -> StepResult:
    """One Flow-GRPO SDE step from ``sigmas[i]`` to ``sigmas[i + 1]``, with its log-probability.

    With ``s = sigmas[i]``, ``s' = sigmas[i + 1]``, ``dt = s' - s`` (negative), ``a = noise_level``:
    ``sigma_t = a * sqrt(s / (1 - s~))`` where ``s~ = sigmas[1]`` if ``s == 1`` else ``s``;
    ``mean = x + dt * (v + sigma_t**2 / (2 s) * (x + (1 - s) v))``; ``std = sigma_t * sqrt(-dt)``;
    ``prev_sample = mean + std * noise``. ``a = 0`` gives the Euler (ODE) step ``x + dt * v`` with
    ``std = 0`` and ``log_prob = 0`` (see the module docstring for the shared conventions).

    ``sigma_mode="constant"`` makes ``sigma_t = a`` at every step: DanceGRPO's and BranchGRPO's ``eta``
    (their ``flux_step`` with ``sde_solver=True`` is this step with a constant ``sigma_t``).
    The returned ``std`` is the *step* std ``sigma_t * sqrt(-dt)``; Flow-GRPO returns ``sigma_t``
    (:func:`sde_sigma_t`) as ``std_dev_t`` — divide by ``sqrt(-dt)`` to get it, or give ``dt`` to
    :func:`kl_to_reference`.

    Args:
        velocity: the model's velocity prediction ``v``, same shape as ``sample``.
        sample: the current latents ``x``, shape ``(B, ...)``.
        sigmas: 1-D schedule, ``sigmas[0] == 1`` down to (usually) 0.
        step_index: ``i``, an int or a ``(B,)`` integer tensor (one step per sample).
        noise_level: ``a`` (Flow-GRPO: 0.7 for SD3.5, 0.9 for FLUX, 0 for eval).
        prev_sample: a stored ``x'`` whose log-prob to recompute (used as is).
        noise: a fixed standard-normal draw (shape of ``sample``).
        generator: used to draw the noise when neither ``prev_sample`` nor ``noise`` is given.
        sigma_mode: ``"flow_grpo"`` (``a * sqrt(s / (1 - s))``) or ``"constant"`` (``sigma_t = a``).
        noise_scale: multiplies the noise draw only (BranchGRPO's split noise scale); the log-prob
            stays under ``N(mean, std^2)``. Ignored with ``prev_sample``.

    Returns:
        ``(prev_sample, log_prob, mean, std)``; ``log_prob`` has shape ``(B,)``, ``std`` ``(B, 1, ...)``.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.5, -0.25, 1.0, 0.0]])
        >>> v = torch.tensor([[-1.0, 0.5, 0.25, 2.0]])
        >>> sigmas = torch.tensor([1.0, 0.96, 0.5, 0.0])
        >>> noise = torch.tensor([[1.0, -1.0, 2.0, 0.0]])
        >>> prev, log_prob, mean, std = sde_step_with_logprob(v, x, sigmas, 0, noise_level=0.7, noise=noise)
        >>> round(std.item(), 6), [round(m, 5) for m in mean[0].tolist()], round(log_prob.item(), 5)
        (0.7, [0.4175, -0.20875, 0.745, -0.08], -1.31226)
    """
    _check_sample(sample, velocity, "velocity")
    if noise_level < 0:
        raise ValueError(f"noise_level must be >= 0, got {noise_level}")
    if noise_scale < 0:
        raise ValueError(f"noise_scale must be >= 0, got {noise_scale}")
    x, v, sig, s, s_next = _flow_step_inputs(velocity, sample, sigmas, step_index)
    dt = s_next - s
    sigma_t = _sigma_t(sig, s, noise_level, sigma_mode)
    mean = x + dt * (v + sigma_t**2 / (2 * s) * (x + (1 - s) * v))
    std = sigma_t * torch.sqrt(-dt)
    if noise is not None and noise_scale != 1.0:
        _check_sample(mean, noise, "noise")
        noise = noise * noise_scale
    elif noise is None and prev_sample is None and noise_scale != 1.0:
        device = generator.device if generator is not None else mean.device
        noise = torch.randn(mean.shape, generator=generator, device=device, dtype=torch.float32).to(mean.device)
        noise = noise * noise_scale
    prev = _draw(mean, std, prev_sample, noise, generator)
    return StepResult(prev, _gaussian_log_prob(prev, mean, std), mean, std)


def _sigma_t(sig: torch.Tensor, s: torch.Tensor, noise_level: float, sigma_mode: str) -> torch.Tensor:
    if sigma_mode == "flow_grpo":
        s_tilde = torch.where(s == 1, sig[1], s)
        return noise_level * torch.sqrt(s / (1 - s_tilde))
    if sigma_mode == "constant":
        return torch.full_like(s, float(noise_level))
    raise ValueError(f"sigma_mode must be 'flow_grpo' or 'constant', got {sigma_mode!r}")


def sde_sigma_t(sigmas: torch.Tensor, step_index: int | torch.Tensor, noise_level: float,
                sigma_mode: Literal["flow_grpo", "constant"] = "flow_grpo") -> torch.Tensor:
    """The SDE's diffusion coefficient ``sigma_t`` at ``sigmas[i]`` (Flow-GRPO's ``std_dev_t``), float32.

    Not the step's std: :func:`sde_step_with_logprob` returns ``std = sigma_t * sqrt(-dt)``, the std of
    the Gaussian step; Flow-GRPO's ``sde_step_with_logprob`` returns ``sigma_t`` itself under the name
    ``std_dev_t`` (and DanceGRPO's ``flux_step`` calls the step std ``std_dev_t``). ``sigma_mode``:
    ``"flow_grpo"``: ``noise_level * sqrt(s / (1 - s~))`` (``s~ = sigmas[1]`` where ``s == 1``);
    ``"constant"``: ``noise_level`` (DanceGRPO's / BranchGRPO's eta). Shape: scalar for an int index,
    ``(B,)`` for a tensor index.

    Example:
        >>> import torch
        >>> sigmas = torch.tensor([1.0, 0.75, 0.5, 0.0])
        >>> round(float(sde_sigma_t(sigmas, 2, 0.7)), 4), float(sde_sigma_t(sigmas, 2, 0.3, "constant"))
        (0.7, 0.30000001192092896)
    """
    sig = sigmas.to(_compute_dtype(sigmas))
    s = _index(sig, step_index, "step_index", high=sig.numel() - 1)
    return _sigma_t(sig, s, noise_level, sigma_mode)


def cps_step_with_logprob(
    velocity: torch.Tensor,
    sample: torch.Tensor,
    sigmas: torch.Tensor,
    step_index: int | torch.Tensor,
    *,
    noise_level: float,
    prev_sample: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    log_prob_form: Literal["flow_grpo", "gaussian"] = "flow_grpo",
) -> StepResult:
    """One coefficients-preserving (Flow-CPS) step from ``sigmas[i]`` to ``sigmas[i + 1]``.

    ``x0_hat = x - s v``, ``eps_hat = x + (1 - s) v``, ``std = s' * sin(a * pi / 2)``,
    ``mean = (1 - s') x0_hat + sqrt(s'**2 - std**2) eps_hat``, ``prev_sample = mean + std * noise``:
    the sample keeps the coefficients ``(1 - s', s')`` of a flow-matching marginal exactly. ``a = 0``
    is the Euler step; ``a = 1`` re-noises ``x0_hat`` from scratch.

    Log-prob form (``log_prob_form``):

    - ``"flow_grpo"`` (default): mean over non-batch dims of ``-(x' - mean)**2``, exactly what
      Flow-GRPO's ``sde_type="cps"`` computes. It drops the normalising constants *and* the
      ``1 / (2 std**2)`` factor. ``std`` here does not depend on the model, so ``-ln std - ln sqrt(2 pi)``
      cancels in every ratio; the dropped factor makes the log-ratio ``2 std**2`` times the true one
      (a per-step temperature, which keeps it finite as ``s' -> 0``). Use it to reuse Flow-GRPO's clip
      range and KL weight with CPS.
    - ``"gaussian"``: the full normalised Gaussian log-density, as in :func:`sde_step_with_logprob`
      (true importance ratios; diverges at the last step, where ``std -> 0``).

    Either way ``log_prob`` is 0 where ``std == 0`` (module docstring).

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.5, -0.25, 1.0, 0.0]])
        >>> v = torch.tensor([[-1.0, 0.5, 0.25, 2.0]])
        >>> sigmas = torch.tensor([1.0, 0.5, 0.0])
        >>> prev, log_prob, mean, std = cps_step_with_logprob(v, x, sigmas, 0, noise_level=0.5,
        ...                                                   noise=torch.ones(1, 4))
        >>> round(std.item(), 4), round(log_prob.item(), 4)  # -(std * 1)**2 averaged
        (0.3536, -0.125)
    """
    _check_sample(sample, velocity, "velocity")
    if not 0 <= noise_level <= 1:
        raise ValueError(f"noise_level must be in [0, 1] for CPS, got {noise_level}")
    if log_prob_form not in ("flow_grpo", "gaussian"):
        raise ValueError(f"log_prob_form must be 'flow_grpo' or 'gaussian', got {log_prob_form!r}")
    x, v, _, s, s_next = _flow_step_inputs(velocity, sample, sigmas, step_index)
    x0_hat = x - s * v
    eps_hat = x + (1 - s) * v
    std = s_next * math.sin(noise_level * math.pi / 2)
    mean = (1 - s_next) * x0_hat + torch.sqrt((s_next**2 - std**2).clamp_min(0)) * eps_hat
    prev = _draw(mean, std, prev_sample, noise, generator)
    if log_prob_form == "gaussian":
        log_prob = _gaussian_log_prob(prev, mean, std)
    else:
        elem = -((prev.detach() - mean) ** 2)
        log_prob = _mean_non_batch(torch.where(std > 0, elem, torch.zeros_like(elem)))
    return StepResult(prev, log_prob, mean, std)


# ----------------------------------------------------------------------------------------- DDIM step


def ddim_step_with_logprob(
    noise_pred: torch.Tensor,
    sample: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    t: int | torch.Tensor,
    t_prev: int | torch.Tensor,
    *,
    eta: float,
    prev_sample: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    final_alpha_cumprod: float = 1.0,
) -> StepResult:
    """DDPO's DDIM step from timestep ``t`` to ``t_prev`` (epsilon prediction), with its log-probability.

    With ``a_t = alphas_cumprod[t]`` and ``a_prev = alphas_cumprod[t_prev]`` (``final_alpha_cumprod``
    when ``t_prev < 0``; diffusers' ``set_alpha_to_one=False`` corresponds to ``alphas_cumprod[0]``):
    ``x0 = (x - sqrt(1 - a_t) eps) / sqrt(a_t)``,
    ``variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)``, ``std = eta * sqrt(variance)``,
    ``mean = sqrt(a_prev) x0 + sqrt(1 - a_prev - std**2) eps`` (the square root's argument is clamped
    at 0, which only matters for ``eta > 1``). ``eta = 0`` is deterministic DDIM (``log_prob = 0``).
    No ``x0`` clipping or thresholding. Conventions as in the module docstring.

    Example:
        >>> import torch
        >>> alphas_cumprod = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000), 0)
        >>> x, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
        >>> prev, log_prob, mean, std = ddim_step_with_logprob(eps, x, alphas_cumprod, 999, 899, eta=1.0)
        >>> log_prob.shape, bool((std > 0).all())
        (torch.Size([2]), True)
        >>> prev, log_prob, mean, std = ddim_step_with_logprob(eps, x, alphas_cumprod, 999, 899, eta=0.0)
        >>> torch.equal(prev, mean), log_prob.tolist()
        (True, [0.0, 0.0])
    """
    _check_sample(sample, noise_pred, "noise_pred")
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    if alphas_cumprod.ndim != 1:
        raise ValueError(f"alphas_cumprod must be 1-D, got shape {tuple(alphas_cumprod.shape)}")
    dtype = _compute_dtype(sample, noise_pred)
    x, eps = sample.to(dtype), noise_pred.to(dtype)
    table = alphas_cumprod.to(device=x.device, dtype=dtype)
    n = table.numel()
    a_t = _per_sample(_index(table, t, "t", high=n), x)
    if isinstance(t_prev, torch.Tensor):
        t_prev_dev = t_prev.to(table.device)
        gathered = _index(table, t_prev_dev.clamp_min(0), "t_prev", high=n)
        a_prev = torch.where(t_prev_dev >= 0, gathered, torch.full_like(gathered, final_alpha_cumprod))
    elif t_prev < 0:
        a_prev = torch.tensor(final_alpha_cumprod, device=x.device, dtype=dtype)
    else:
        a_prev = _index(table, t_prev, "t_prev", high=n)
    a_prev = _per_sample(a_prev, x)
    x0 = (x - torch.sqrt(1 - a_t) * eps) / torch.sqrt(a_t)
    variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    std = eta * torch.sqrt(variance.clamp_min(0))
    mean = torch.sqrt(a_prev) * x0 + torch.sqrt((1 - a_prev - std**2).clamp_min(0)) * eps
    prev = _draw(mean, std, prev_sample, noise, generator)
    return StepResult(prev, _gaussian_log_prob(prev, mean, std), mean, std)


# ------------------------------------------------------------------------------------------------ KL


def kl_to_reference(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor | float, *,
                    dt: torch.Tensor | float | None = None) -> torch.Tensor:
    """Per-sample KL(N(mean, std^2) || N(ref_mean, std^2)), averaged over non-batch dimensions.

    ``mean over non-batch dims of (mean - ref_mean)**2 / (2 std**2)``, in float32 (or wider), shape
    ``(B,)``. ``std`` is a float or a tensor broadcastable to ``mean``, e.g. the ``(B, 1, ..., 1)``
    std the step functions return (policy and reference share it: it does not depend on the model).
    Elements with ``std == 0`` contribute 0, matching the step functions' ``log_prob`` convention.

    ``dt`` (the step's ``-dt = sigmas[i] - sigmas[i + 1]``, positive; a float or broadcastable tensor):
    ``std`` is divided by ``sqrt(dt)`` first, which turns the step std into ``sigma_t`` and gives
    Flow-GRPO's KL term (``scripts/train_sd3.py``: ``(mu - mu_ref)^2 / (2 * std_dev_t^2)``, mean over
    non-batch dims) — ``dt`` times the exact KL of the step (3.7x to 25x smaller on SD3 with 10
    steps). Without ``dt``: the exact step KL.
    A paper's ``beta`` means the paper's penalty only with ``dt`` (``kl_form: flow_grpo``).

    Example:
        >>> import torch
        >>> kl_to_reference(torch.ones(2, 3), torch.zeros(2, 3), torch.tensor([[1.0], [0.5]])).tolist()
        [0.5, 2.0]
        >>> kl_to_reference(torch.ones(1, 3), torch.zeros(1, 3), 0.5, dt=0.25).tolist()  # sigma_t = 1
        [0.5]
    """
    if mean.shape != ref_mean.shape:
        raise ValueError(
            f"ref_mean shape {tuple(ref_mean.shape)} does not match mean shape {tuple(mean.shape)}"
        )
    if mean.ndim < 2:
        raise ValueError(
            f"mean must have a batch dimension and at least one more, got shape {tuple(mean.shape)}"
        )
    std_t = torch.as_tensor(std, device=mean.device)
    dtype = _compute_dtype(mean, ref_mean, std_t)
    std_t = std_t.to(dtype)
    if dt is not None:
        dt_t = torch.as_tensor(dt, device=mean.device).to(dtype)
        if bool((dt_t <= 0).any()):
            raise ValueError("dt must be the positive step length sigmas[i] - sigmas[i + 1]")
        std_t = std_t / torch.sqrt(dt_t)
    positive = std_t > 0
    safe_std = torch.where(positive, std_t, torch.ones_like(std_t))
    elem = (mean.to(dtype) - ref_mean.to(dtype)) ** 2 / (2 * safe_std**2)
    return _mean_non_batch(torch.where(positive, elem, torch.zeros_like(elem)))


# ------------------------------------------------------------------------------------ BranchGRPO tree


def depthwise_advantages(
    leaf_rewards: torch.Tensor | Sequence[float],
    num_steps: int,
    split_steps: Sequence[int] | set[int] | frozenset[int],
    branch_factor: int = 2,
    weights: torch.Tensor | Sequence[float] | None = None,
    eps: float | None = None,
) -> list[torch.Tensor]:
    """BranchGRPO's per-depth advantages for one tree of trajectories per prompt.

    The tree starts as one trajectory and splits into ``branch_factor`` children at every step in
    ``split_steps`` (0-based steps ``< num_steps``). Depth ``d`` (1..``num_steps``) is the state after
    step ``d - 1``; it has ``branch_factor ** #{split steps < d}`` nodes. Leaves are listed depth-first,
    so a node's leaves are a contiguous block. A node's reward is the mean of its leaves' rewards
    (``weights``: per-leaf positive weights for a weighted mean instead), and at each depth the nodes'
    rewards are standardised within the tree: ``(r - mean) / std`` with the unbiased std, 0 where
    ``std < 1e-6`` or the depth has a single node. The leaf depth is thus flat GRPO on the leaves.
    ``eps``: None divides by ``max(std, 1e-6)`` (visalign); a float divides by ``std + eps``
    (BranchGRPO's ``compute_hierarchical_advantages_by_depth``: ``eps = 1e-8``).

    Args:
        leaf_rewards: shape ``(..., L)``, one tree per leading index (e.g. ``(prompts, L)``), with
            ``L == branch_factor ** len(split_steps)``.
        num_steps: number of sampling steps ``T``.
        split_steps: steps at which every live branch splits.
        branch_factor: children per split (>= 2).
        weights: optional per-leaf weights, same shape as ``leaf_rewards``, all > 0.

    Returns:
        ``num_steps`` tensors; element ``k`` has shape ``(..., n_{k+1})`` and holds the advantages of
        the nodes at depth ``k + 1`` left to right, i.e. of the transitions of step ``k`` (each
        transition is trained with its child's advantage).

    Example:
        >>> adv = depthwise_advantages([1.0, 2.0, 3.0, 6.0], num_steps=4, split_steps={0, 2})
        >>> [[round(a, 4) for a in d.tolist()] for d in adv]  # doctest: +NORMALIZE_WHITESPACE
        [[-0.7071, 0.7071], [-0.7071, 0.7071], [-0.9258, -0.4629, 0.0, 1.3887],
         [-0.9258, -0.4629, 0.0, 1.3887]]
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
    if isinstance(branch_factor, bool) or not isinstance(branch_factor, int) or branch_factor < 2:
        raise ValueError(f"branch_factor must be an int >= 2, got {branch_factor!r}")
    steps = list(split_steps)
    if len(set(steps)) != len(steps):
        raise ValueError(f"split_steps has duplicates: {sorted(steps)}")
    for step in steps:
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < num_steps:
            raise ValueError(f"split steps must be ints in [0, num_steps={num_steps}), got {step!r}")
    rewards = torch.as_tensor(leaf_rewards)
    rewards = rewards.to(_compute_dtype(rewards))
    if rewards.ndim < 1:
        raise ValueError("leaf_rewards must have at least one dimension (the leaves)")
    expected = branch_factor ** len(steps)
    if rewards.shape[-1] != expected:
        raise ValueError(
            f"expected {expected} leaves (branch_factor {branch_factor} ** {len(steps)} split steps), "
            f"got {rewards.shape[-1]}"
        )
    w = None
    if weights is not None:
        w = torch.as_tensor(weights, device=rewards.device).to(rewards.dtype)
        if w.shape != rewards.shape:
            raise ValueError(
                f"weights shape {tuple(w.shape)} does not match leaf_rewards {tuple(rewards.shape)}"
            )
        if not bool(torch.isfinite(w).all()) or not bool((w > 0).all()):
            raise ValueError("weights must be finite and > 0")

    batch_shape = rewards.shape[:-1]
    out: list[torch.Tensor] = []
    for depth in range(1, num_steps + 1):
        nodes = branch_factor ** sum(step < depth for step in steps)
        blocks = rewards.reshape(*batch_shape, nodes, expected // nodes)
        if w is None:
            node_rewards = blocks.mean(-1)
        else:
            wb = w.reshape(*batch_shape, nodes, expected // nodes)
            node_rewards = (wb * blocks).sum(-1) / wb.sum(-1)
        if nodes == 1:
            out.append(torch.zeros_like(node_rewards))
            continue
        centred = node_rewards - node_rewards.mean(-1, keepdim=True)
        std = node_rewards.std(-1, keepdim=True)
        adv = centred / (std.clamp_min(1e-6) if eps is None else std + eps)
        out.append(torch.where(std < 1e-6, torch.zeros_like(adv), adv))
    return out
