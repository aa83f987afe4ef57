"""Flow-GRPO for flow-matching text-to-image models, with tree rollouts (BranchGRPO) and an SDE window
(MixGRPO).

One iteration, top to bottom (:meth:`FlowGRPOTrainer.train_iteration`):

1. pick ``prompts_per_iteration`` prompts; **roll out**: from pure noise, ``num_steps`` stochastic steps
   (the policy's ``step_with_logprob`` with the configured ``sampler``: Flow-GRPO's SDE
   (:func:`~visalign.trainers.sde.sde_step_with_logprob`) or CPS for flow-matching policies, DDIM for
   epsilon-prediction ones), storing every transition's parent latents,
   child latents, float32 log-prob and the noise level actually used. ``rollout="independent"``:
   ``group_size`` trajectories per prompt (Flow-GRPO). ``rollout="tree"``: one root per prompt that
   splits into ``branch_factor`` children at every step of ``split_steps`` (BranchGRPO; leaves
   depth-first). Outside the MixGRPO window the step is the ODE (noise level 0);
2. decode the leaves and **score** them with the reward (None / non-finite scores count as missing);
3. **advantages**: per prompt group (:func:`~visalign.trainers.grpo.group_advantages`) or per depth of
   the tree (:func:`tree_advantages`), gathered over processes first, clipped to ``+-adv_clip``;
4. **train** (``num_inner_updates`` optimizer steps, each on its share of the trajectories): for every
   chosen transition (:func:`trained_steps`, :func:`width_pruning_masks`) recompute the log-prob of the
   stored child under the current policy with the same step function, PPO-clip loss (:func:`ppo_clip_loss`)
   + ``beta`` x KL to the reference policy's step mean (adapter disabled;
   :func:`~visalign.trainers.sde.kl_to_reference`);
5. log one JSON line to ``output_dir/metrics.jsonl`` (and to accelerate trackers), checkpoint, eval.

NFE (forward passes of the denoiser, x2 with CFG) are counted for rollout and training; a tree's
rollout NFE is ``sum_k (live nodes at step k)`` (:func:`tree_rollout_nfe`). Randomness is a pure
function of ``(seed, iteration, root, depth, node)``, so runs reproduce across resumes and across
process counts.

Example (a random tiny class-conditional UNet, one iteration):
    >>> import tempfile
    >>> from diffusers import UNet2DModel
    >>> from visalign.rewards import Reward, RewardOutput
    >>> from visalign.trainers.flow_policies import ClassConditionalFlowPolicy
    >>> class Bright(Reward):
    ...     name = "bright"
    ...     def score(self, samples):
    ...         return RewardOutput([float(np.asarray(s.image).mean()) for s in samples], [{}] * len(samples))
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
    ...                    layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
    ...                    up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4, num_class_embeds=2)
    >>> policy = ClassConditionalFlowPolicy(unet, ["a red circle", "a blue square"])
    >>> config = FlowGRPOConfig(num_steps=3, group_size=2, prompts_per_iteration=2, guidance_scale=1.0,
    ...                         max_steps=1, lora_r=4, eval_every=0, beta=0.0,
    ...                         output_dir=tempfile.mkdtemp())
    >>> trainer = FlowGRPOTrainer(config, policy, Bright(), ["a red circle", "a blue square"])
    >>> history = trainer.train()
    >>> history[0]["nfe/rollout"], history[0]["ratio/first_update_max_abs_dev"]
    (12, 0.0)
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ..rewards.base import Reward, Sample
from ..rewards.specs import build_rewards, instantiate, parse_reward_specs
from .config import config_to_dict, load_config, save_config
from .ema import ParameterEMA
from .flow_config import PRESETS, FlowGRPOConfig, describe_flow_options
from .flow_math import (
    config_sde_window,
    depth_pruned_steps,
    ppo_clip_loss,
    pruning_active,
    sde_window,
    step_noise_levels,
    trained_steps,
    tree_advantages,
    tree_rollout_nfe,
    width_pruning_masks,
)
from .flow_policies import Conditioning, FlowPolicy, flow_policy_class, image_grid, load_flow_policy
from .flow_policies.registry import FINAL_MANIFEST
from .grpo import group_advantages, keyed_group_advantages
from .runtime import (
    Callback,
    MetricsLog,
    TimeBudget,
    make_accelerator,
    plot_curves,
    prepare_output_dir,
    progress_bar,
    resolve_checkpoint,
    reward_postfix,
    rng_state,
    run_callbacks,
    set_rng_state,
    trackers,
)
from .sde import kl_to_reference

# the config (flow_config), the math (flow_math) and the EMA (ema) live in their own modules and are
# re-exported here, where users import the trainer from
__all__ = [
    "PRESETS",
    "FlowGRPOConfig",
    "FlowGRPOTrainer",
    "ParameterEMA",
    "Rollout",
    "StepRecord",
    "build_reward",
    "depth_pruned_steps",
    "describe_flow_options",
    "flow_algorithm",
    "ppo_clip_loss",
    "pruning_active",
    "sde_window",
    "step_noise_levels",
    "train_flow_from_config",
    "trained_steps",
    "tree_advantages",
    "tree_rollout_nfe",
    "width_pruning_masks",
]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ rollouts


@dataclass
class StepRecord:
    """The transitions of one sampling step, for every node alive at that step.

    ``parents[parent_index[j]] -> children[j]`` is transition ``j``; ``log_probs[j]`` its float32
    log-prob under the rollout policy with ``noise_level`` (the level actually used).
    """

    step: int
    noise_level: float
    parents: torch.Tensor
    parent_prompt: torch.Tensor
    parent_index: torch.Tensor
    children: torch.Tensor
    log_probs: torch.Tensor


@dataclass
class Rollout:
    """Trajectories of this process's roots: ``roots[r] = (global root id, local prompt index)``; every
    root has ``leaves_per_root`` leaves, listed root-major and depth-first within a root."""

    prompts: list[str]
    roots: list[tuple[int, int]]
    steps: list[StepRecord]
    leaves: torch.Tensor
    leaves_per_root: int
    nfe: int
    cond: Conditioning | None = None

    def nodes_per_root(self, step: int) -> int:
        """Nodes of each root among the transitions of ``step`` (i.e. at depth ``step + 1``)."""
        return self.steps[step].children.shape[0] // len(self.roots)


def _seed(*entropy: int) -> int:
    return int(np.random.SeedSequence([int(e) for e in entropy]).generate_state(1)[0])


def _noise(shape: Sequence[int], *entropy: int) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(_seed(*entropy)))


# ------------------------------------------------------------------------------------------ trainer


class FlowGRPOTrainer:
    """GRPO on a :class:`~visalign.trainers.flow_policies.FlowPolicy` (module docstring for the loop).

    Args:
        config: the options.
        policy: the model; the trainer adds the LoRA adapter (or sets up a full fine-tune).
        reward: scores ``Sample(prompt=..., image=PIL, group=prompt slot)``.
        prompts: the training prompts (``prompts_per_iteration`` are drawn each iteration).
        eval_prompts: prompts of the fixed-seed eval grid (default: the first four training prompts).
    """

    def __init__(self, config: FlowGRPOConfig, policy: FlowPolicy, reward: Reward, prompts: Sequence[str],
                 eval_prompts: Sequence[str] | None = None) -> None:

        self.config = config
        self._validate()
        self.policy, self.reward = policy, reward
        self.prompts = list(prompts)
        if not self.prompts:
            raise ValueError("no training prompts")
        self.eval_prompts = list(eval_prompts) if eval_prompts else self.prompts[:4]
        self.output_dir = Path(config.output_dir)
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.accelerator = make_accelerator(mixed_precision=config.mixed_precision, cpu=config.cpu,
                                       log_with=trackers(config.log_with) or None, project_dir=str(self.output_dir))
        prepare_output_dir(self.output_dir, overwrite=config.overwrite_output_dir, resume_from=config.resume_from,
                           main_process=self.accelerator.is_main_process)
        self.accelerator.wait_for_everyone()
        self.eval_results: list[dict[str, Any]] = []  # per eval: iteration, grid, prompts, scores
        torch.manual_seed(config.seed)  # LoRA init
        if config.lora:
            policy.add_lora(config.lora_r, config.lora_alpha, config.lora_target_modules)
        else:
            policy.set_full_finetune(keep_reference=config.beta > 0)
        weight_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.mixed_precision)
        policy.to(self.accelerator.device, weight_dtype if config.lora else None)
        if config.gradient_checkpointing and not policy.enable_gradient_checkpointing():
            logger.warning("gradient_checkpointing: %s does not support it", type(policy.model).__name__)
        self.params = policy.trainable_parameters()
        self.param_names = list(policy.named_trainable_parameters())
        optimizer = torch.optim.AdamW(self.params, lr=config.learning_rate, betas=tuple(config.adam_betas),
                                      weight_decay=config.weight_decay, eps=config.adam_eps)
        self.optimizer = self.accelerator.prepare(optimizer)
        self.ema = ParameterEMA(self.params, config.ema_decay, config.ema_every) if config.ema else None
        self.iteration = 0  # iterations completed
        self.history: list[dict[str, Any]] = []
        self.trained_transitions: list[dict[int, list[int]]] = []  # per update of the last iteration
        self._cfg = config.guidance_scale != 1.0
        self._forwards = policy.forwards_per_prediction(config.guidance_scale)  # NFE per prediction
        self.sampler = policy.resolve_sampler(config.sampler)  # "auto" resolved: sde / cps / ddim
        if self.sampler != "sde" and (config.kl_form != "exact" or config.sigma_mode != "flow_grpo"
                                      or (config.rollout == "tree" and config.split_noise_mode == "draw"
                                          and config.split_noise_scale != 1.0)):
            raise ValueError(f"kl_form flow_grpo, sigma_mode constant and split_noise_mode draw need the sde "
                             f"sampler, not {self.sampler!r}")
        self._sde = {"sigma_mode": config.sigma_mode} if self.sampler == "sde" else {}
        self._schedule = policy.schedule(config.num_steps)
        if config.resume_from:
            self.load_checkpoint(config.resume_from)

    def _validate(self) -> None:
        c = self.config
        if c.rollout not in ("independent", "tree"):
            raise ValueError(f"rollout must be 'independent' or 'tree', got {c.rollout!r}")
        if c.rollout == "tree":
            bad = [s for s in c.split_steps if not 0 <= s < c.num_steps]
            if bad:
                raise ValueError(f"split_steps {bad} outside [0, {c.num_steps})")
            if c.global_std:
                raise ValueError("global_std applies to independent rollouts; trees standardise per depth")
        if c.num_inner_updates < 1 or c.batch_size < 1:
            raise ValueError("num_inner_updates and batch_size must be >= 1")
        if c.adv_ddof not in (0, 1):
            raise ValueError(f"adv_ddof must be 0 or 1, got {c.adv_ddof}")
        if c.width_pruning_mode not in (0, 1, 2):
            raise ValueError(f"width_pruning_mode must be 0, 1 or 2, got {c.width_pruning_mode}")
        if c.rollout == "tree" and (c.group_by != "slot" or not c.per_prompt_stat_tracking):
            raise ValueError("group_by / per_prompt_stat_tracking apply to independent rollouts")

    # ----------------------------------------------------------------------------- the loop
    @property
    def metrics_log(self) -> MetricsLog:
        """``output_dir/metrics.jsonl`` (one line per iteration)."""
        return MetricsLog(self.output_dir / "metrics.jsonl", step_key="iteration")

    def train(self, callbacks: Sequence[Callback] = ()) -> list[dict[str, Any]]:
        """Run ``max_steps`` iterations (from the resumed one); returns the per-iteration metrics.

        Writes ``metrics.jsonl``, eval grids (``eval/iteration_<N>.png``, captioned), ``curves.png``,
        ``comparison.html`` (first and last eval grid side by side) and ``final/`` (+ ``final_ema/``).
        ``callbacks`` (``callback(trainer, metrics) -> stop?``) run after every logged iteration; one that
        returns True ends the run there (the final eval, weights and curves still follow)."""
        c, acc = self.config, self.accelerator
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            save_config(c, self.output_dir / "config.yaml")
            self.metrics_log.start(self.iteration)
        acc.init_trackers("flow_grpo", config={k: str(v) for k, v in config_to_dict(c).items()})
        bar = progress_bar(c.max_steps, initial=self.iteration, desc="flow-grpo", unit="it",
                           enabled=c.progress and acc.is_main_process, output_dir=self.output_dir)
        start: dict[str, Any] = {}
        if c.eval_every > 0 and self.iteration == 0:
            start = {k.replace("eval/", "eval_start/").replace("time/eval", "time/eval_start"): v
                     for k, v in self.evaluate().items()}
        budget = TimeBudget(c.max_minutes, acc)
        try:
            while self.iteration < c.max_steps:
                metrics = {**self.train_iteration(), **start}
                start = {}
                out_of_time = budget.spent()
                metrics["time/elapsed"] = budget.seconds()
                stop = run_callbacks(callbacks, self, metrics)  # before the eval: a stop makes this the last
                last = out_of_time or stop or self.iteration == c.max_steps
                if c.save_every > 0 and self.iteration % c.save_every == 0:
                    self.save_checkpoint()
                if c.eval_every > 0 and (self.iteration % c.eval_every == 0 or last):
                    metrics.update(self.evaluate())
                self._log(metrics)
                bar.update(1)
                bar.set_postfix(**reward_postfix(metrics), loss=f"{metrics.get('loss', math.nan):.4f}")
                if out_of_time:
                    logger.info("max_minutes %.1f reached after %d iterations", c.max_minutes, self.iteration)
                    break
                if stop:
                    logger.info("a callback stopped the run after %d iterations", self.iteration)
                    break
        finally:
            bar.close()
        self.save_final()
        if acc.is_main_process:
            self.write_report()
        for tracker in acc.trackers:  # not end_training(): it destroys the process group of the caller's script
            tracker.finish()
        return self.history

    def write_report(self) -> dict[str, Path]:
        """``curves.png`` from ``metrics.jsonl`` and, with two evals or more, ``comparison.html``: the first
        and the last eval grid with their captions and reward means. Returns what was written."""
        written: dict[str, Path] = {}
        curves = plot_curves(self.output_dir / "metrics.jsonl", self.output_dir / "curves.png",
                             ("reward/mean", "reward/std", "loss", "kl", "clip_fraction"), step_key="iteration",
                             eval_keys=("eval/reward_mean", "eval_start/reward_mean"))
        if curves is not None:
            written["curves"] = curves
        if len(self.eval_results) >= 2:
            written["comparison"] = write_eval_comparison(self.eval_results[0], self.eval_results[-1],
                                                          self.output_dir / "comparison.html", curves=curves)
        return written

    def train_iteration(self) -> dict[str, Any]:
        """One GRPO iteration: rollout, reward, advantages, ``num_inner_updates`` optimizer steps."""
        c, it = self.config, self.iteration
        prompts, roots = self._roots_for_iteration(it)
        levels = step_noise_levels(c, it)
        if c.rollout == "tree" and any(levels[s] <= 0 for s in c.split_steps):
            raise ValueError(f"iteration {it}: a split step has noise level 0 (outside the SDE window?): "
                             f"its children would be identical; noise levels {levels}")
        t0 = time.perf_counter()
        rollout = self.rollout(prompts, roots, levels, it)
        t1 = time.perf_counter()
        rewards, reward_metrics = self.score(rollout)
        t2 = time.perf_counter()
        advantages, adv_metrics = self.advantages(rewards, rollout)
        train_metrics = self.optimize(rollout, advantages, rewards, levels, it)
        t3 = time.perf_counter()
        self.iteration += 1
        return {"iteration": self.iteration, **reward_metrics, **adv_metrics, **train_metrics,
                "nfe/rollout": self._sum_over_processes(rollout.nfe),
                "noise_levels": levels, "sde_window": list(config_sde_window(c, it)),
                "time/rollout": t1 - t0, "time/reward": t2 - t1, "time/train": t3 - t2}

    # ----------------------------------------------------------------------------- rollouts
    def _roots_for_iteration(self, iteration: int) -> tuple[list[str], list[tuple[int, int]]]:
        """This process's prompts and roots ``(global root id, local prompt index)``."""
        c, acc = self.config, self.accelerator
        rng = np.random.default_rng([c.seed, iteration])
        n = c.prompts_per_iteration
        picks = rng.choice(len(self.prompts), n, replace=len(self.prompts) < n)
        per_prompt = c.group_size if c.rollout == "independent" else 1
        total = n * per_prompt
        if total % acc.num_processes:
            raise ValueError(f"{total} trajectories do not split over {acc.num_processes} processes")
        share = total // acc.num_processes
        mine = range(acc.process_index * share, (acc.process_index + 1) * share)
        slots = sorted({r // per_prompt for r in mine})
        prompts = [self.prompts[int(picks[s])] for s in slots]
        roots = [(r, slots.index(r // per_prompt)) for r in mine]
        self._slots = slots
        self._root_prompts = [self.prompts[int(picks[r // per_prompt])] for r in range(total)]  # all processes
        return prompts, roots

    @torch.no_grad()
    def rollout(self, prompts: Sequence[str], roots: Sequence[tuple[int, int]], noise_levels: Sequence[float],
                iteration: int, *, split_steps: Sequence[int] | None = None, stream: int = 0,
                num_steps: int | None = None) -> Rollout:
        """Sample trajectories from ``roots`` with the sampler (``noise_levels`` per step), splitting into
        ``branch_factor`` children at ``split_steps`` (default: the config's for tree rollouts).

        Noise of node ``i`` (within its root) at depth ``d`` is drawn from a generator seeded with
        ``(seed, stream, iteration, root id, d, i)``; log-probs are float32.
        """
        c, policy = self.config, self.policy
        if split_steps is None:
            split_steps = c.split_steps if c.rollout == "tree" else []
        num_steps = num_steps or c.num_steps
        schedule = self._schedule if num_steps == c.num_steps else policy.schedule(num_steps)
        device, shape = policy.device, policy.latent_shape
        cond = policy.encode_prompts(prompts, guidance=self._cfg)
        same = c.same_initial_noise and c.rollout == "independent" and stream == 0
        x = torch.stack([_noise(shape, c.seed, stream, iteration, r // c.group_size, 0, 0, 1) if same
                         else _noise(shape, c.seed, stream, iteration, r, 0, 0) for r, _ in roots]).to(device)
        node_prompt = torch.tensor([p for _, p in roots], dtype=torch.long)
        per_root, steps, nfe = 1, [], 0
        for k in range(num_steps):
            v = self._predict_chunks(x, schedule[k], cond, node_prompt)
            nfe += x.shape[0] * self._forwards
            b = c.branch_factor if k in split_steps else 1
            parent_index = torch.arange(x.shape[0]).repeat_interleave(b)
            noise = torch.stack([_noise(shape, c.seed, stream, iteration, roots[j // (per_root * b)][0], k + 1,
                                        j % (per_root * b)) for j in range(x.shape[0] * b)]).to(device)
            pidx = parent_index.to(device)
            scale = c.split_noise_scale if k in split_steps and c.split_noise_mode == "draw" else 1.0
            extra = {**self._sde, **({"noise_scale": scale} if scale != 1.0 else {})}
            child, log_prob, _, _ = policy.step_with_logprob(v[pidx], x[pidx], schedule, k, sampler=self.sampler,
                                                             noise_level=noise_levels[k], noise=noise, **extra)
            steps.append(StepRecord(k, float(noise_levels[k]), x, node_prompt, parent_index, child, log_prob))
            x, node_prompt, per_root = child, node_prompt[parent_index], per_root * b
        return Rollout(list(prompts), list(roots), steps, x, per_root, nfe, cond)

    def _predict_chunks(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning,
                        prompt_index: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, x.shape[0], self.config.batch_size):
            sl = slice(i, i + self.config.batch_size)
            with self.accelerator.autocast():
                out.append(self.policy.predict(x[sl], t, cond.select(prompt_index[sl]), self.config.guidance_scale))
        return torch.cat(out)

    # ----------------------------------------------------------------------------- rewards
    def score(self, rollout: Rollout) -> tuple[torch.Tensor, dict[str, Any]]:
        """Rewards of this process's leaves (float64, NaN where missing) and the reward metrics."""
        fields = self.policy.decode_samples(rollout.leaves)  # {"image"}, and "frames" for videos
        leaf_prompt = rollout.steps[-1].parent_prompt[rollout.steps[-1].parent_index]
        samples = [Sample(prompt=rollout.prompts[int(p)], group=self._slots[int(p)], **f)
                   for p, f in zip(leaf_prompt, fields, strict=True)]
        out = self.reward(samples)
        values = []
        for s in out.scores:
            try:
                value = float(s) if s is not None and not isinstance(s, bool) else math.nan
            except (TypeError, ValueError):
                value = math.nan
            values.append(value if math.isfinite(value) else math.nan)
        rewards = torch.tensor(values, dtype=torch.float64)
        all_rewards = self._gather(rewards)
        valid = all_rewards[~torch.isnan(all_rewards)]
        metrics: dict[str, Any] = {
            "reward/mean": float(valid.mean()) if len(valid) else math.nan,
            "reward/std": float(valid.std()) if len(valid) > 1 else 0.0,
            "reward/missing": int(torch.isnan(all_rewards).sum())}
        for key, value in out.metrics.items():
            if isinstance(value, (int, float)):
                metrics[f"reward/{key}"] = float(value)
        return rewards, metrics

    def advantages(self, rewards: torch.Tensor, rollout: Rollout) -> tuple[list[torch.Tensor], dict[str, Any]]:
        """Per-step advantages of this process's transitions (float32, clipped), from rewards gathered
        over all processes (groups may span processes)."""
        c, acc = self.config, self.accelerator
        all_rewards = self._gather(rewards)
        n_local = rewards.numel()
        mine = slice(acc.process_index * n_local, (acc.process_index + 1) * n_local)
        if c.rollout == "independent":
            scale = "batch" if c.global_std else "group"
            if c.group_by == "prompt" or not c.per_prompt_stat_tracking:
                keys = self._root_prompts if c.per_prompt_stat_tracking else None
                flat = keyed_group_advantages(all_rewards, keys, scale, c.std_eps, c.adv_ddof)
            else:
                flat = group_advantages(all_rewards, c.group_size, scale, c.std_eps, c.adv_ddof)
            per_step, everyone = [flat[mine]] * c.num_steps, flat
        else:
            trees = all_rewards.view(-1, rollout.leaves_per_root)
            depth = tree_advantages(trees, c.num_steps, c.split_steps, c.branch_factor, eps=c.tree_std_eps)
            r0 = acc.process_index * len(rollout.roots)
            per_step, everyone = [d[r0:r0 + len(rollout.roots)].reshape(-1) for d in depth], depth[-1].reshape(-1)
        per_step = [a.clamp(-c.adv_clip, c.adv_clip).float() for a in per_step]
        last = everyone.clamp(-c.adv_clip, c.adv_clip).float()  # the logged statistics: all processes' leaves
        return per_step, {"adv/mean": float(last.mean()), "adv/std": float(last.std()) if last.numel() > 1 else 0.0,
                          "adv/abs_max": float(last.abs().max())}

    # ----------------------------------------------------------------------------- training
    def _train_masks(self, rollout: Rollout, rewards: torch.Tensor, iteration: int,
                     advantages: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Which transitions of each step are trained (bool per child, this process)."""
        c = self.config
        steps = set(trained_steps(c, iteration))
        masks = [torch.full((r.children.shape[0],), k in steps, dtype=torch.bool) for k, r in enumerate(rollout.steps)]
        if c.rollout == "tree" and c.width_pruning and pruning_active(c, iteration):
            trees = rewards.view(-1, rollout.leaves_per_root)
            width = width_pruning_masks(trees, c.num_steps, c.split_steps, c.branch_factor, c.width_pruning_keep,
                                        mode=c.width_pruning_mode, ratio=c.width_pruning_ratio, steps=sorted(steps),
                                        eps=c.tree_std_eps)
            masks = [m & w.reshape(-1) for m, w in zip(masks, width, strict=True)]
        if c.drop_zero_advantage and advantages is not None:
            masks = [m & (a.cpu() != 0) for m, a in zip(masks, advantages, strict=True)]
        return masks

    def optimize(self, rollout: Rollout, advantages: list[torch.Tensor], rewards: torch.Tensor,
                 noise_levels: Sequence[float], iteration: int) -> dict[str, Any]:
        """``num_inner_updates`` optimizer steps on the chosen transitions; returns the training metrics."""
        c, acc, policy = self.config, self.accelerator, self.policy
        masks = self._train_masks(rollout, rewards, iteration, advantages)
        shares = np.array_split(np.arange(len(rollout.roots)), c.num_inner_updates)
        cond = rollout.cond if rollout.cond is not None else policy.encode_prompts(rollout.prompts, guidance=self._cfg)
        stats: dict[str, list[torch.Tensor]] = {"loss": [], "kl": [], "ratio": [], "clipped": []}
        nfe_train = nfe_backward = 0
        first_dev = math.nan
        self.trained_transitions = []
        for update, share in enumerate(shares):
            roots = torch.zeros(len(rollout.roots), dtype=torch.bool)
            roots[torch.as_tensor(share, dtype=torch.long)] = True
            chosen = [m & roots.repeat_interleave(rollout.nodes_per_root(k)) for k, m in enumerate(masks)]
            count = self._sum_over_processes(int(sum(int(m.sum()) for m in chosen)))
            self.trained_transitions.append({k: m.nonzero().flatten().tolist() for k, m in enumerate(chosen) if m.any()})
            ratios = []
            for k, record in enumerate(rollout.steps):
                kids = chosen[k].nonzero().flatten()
                if kids.numel() == 0:
                    continue
                parents = torch.unique(record.parent_index[kids])
                for i in range(0, parents.numel(), c.batch_size):
                    chunk = parents[i:i + c.batch_size]
                    in_chunk = kids[torch.isin(record.parent_index[kids], chunk)]
                    pos = torch.searchsorted(chunk, record.parent_index[in_chunk]).to(policy.device)
                    x, sub = record.parents[chunk.to(record.parents.device)], cond.select(record.parent_prompt[chunk])
                    with acc.autocast():
                        v = policy.predict(x, self._schedule[k], sub, c.guidance_scale)
                    nfe_train += chunk.numel() * self._forwards
                    nfe_backward += chunk.numel()
                    dev = policy.device
                    children = record.children[in_chunk.to(record.children.device)]
                    _, log_prob, mean, std = policy.step_with_logprob(
                        v[pos], x[pos], self._schedule, k, sampler=self.sampler, noise_level=noise_levels[k],
                        prev_sample=children, **self._sde)
                    loss, ratio = ppo_clip_loss(log_prob, record.log_probs[in_chunk.to(dev)],
                                                advantages[k][in_chunk].to(dev), c.epsilon)
                    kl = torch.zeros_like(loss)
                    if c.beta > 0:
                        with torch.no_grad(), policy.reference(), acc.autocast():
                            v_ref = policy.predict(x, self._schedule[k], sub, c.guidance_scale)
                        nfe_train += chunk.numel() * self._forwards
                        ref_mean = policy.step_with_logprob(v_ref[pos], x[pos], self._schedule, k,
                                                            sampler=self.sampler, noise_level=noise_levels[k],
                                                            prev_sample=children, **self._sde)[2]
                        dt = float(self._schedule[k] - self._schedule[k + 1]) if c.kl_form == "flow_grpo" else None
                        kl = kl_to_reference(mean, ref_mean, std, dt=dt)
                    acc.backward((loss + c.beta * kl).sum() / max(count, 1))
                    ratios.append(ratio.detach())
                    stats["loss"].append(loss.detach())
                    stats["kl"].append(kl.detach())
                    stats["clipped"].append(((ratio.detach() - 1).abs() > c.epsilon).float())
            if update == 0 and ratios:
                first_dev = float((torch.cat(ratios) - 1).abs().max())
                if first_dev > 1e-6:
                    logger.warning("importance ratio deviates from 1 by %.3g at the first inner update: rollout "
                                   "and training compute different log-probs (bf16 rounding, dropout, batching)",
                                   first_dev)
            stats["ratio"].extend(ratios)
            self._step_optimizer()
        pooled = self._pool_over_processes({k: torch.cat(v) if v else torch.zeros(0) for k, v in stats.items()},
                                           first_dev)
        return {**pooled,
                "transitions/trained": self._sum_over_processes(int(sum(int(m.sum()) for m in masks))),
                "nfe/train": self._sum_over_processes(nfe_train),
                "nfe/train_backward": self._sum_over_processes(nfe_backward),
                "lr": self.optimizer.param_groups[0]["lr"]}

    def _step_optimizer(self) -> None:
        c, acc = self.config, self.accelerator
        if acc.num_processes > 1:  # one all-reduce per update, whatever each process trained
            for p in self.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                torch.distributed.all_reduce(p.grad)
        if c.max_grad_norm:
            acc.clip_grad_norm_(self.params, c.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.step(self.params)

    # ----------------------------------------------------------------------------- eval and logs
    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """Fixed-seed ODE samples of ``eval_prompts`` (EMA weights): a grid PNG and the mean reward."""
        c, acc = self.config, self.accelerator
        if not acc.is_main_process:
            acc.wait_for_everyone()
            return {}
        n = c.eval_images_per_prompt
        roots = [(i, i // n) for i in range(len(self.eval_prompts) * n)]
        context = self.ema.swapped_in(self.params) if self.ema is not None else contextlib.nullcontext()
        t0 = time.perf_counter()
        with context:
            rollout = self.rollout(self.eval_prompts, roots, [0.0] * c.eval_num_steps, 0, split_steps=[],
                                   stream=c.eval_seed + 1, num_steps=c.eval_num_steps)
        fields = self.policy.decode_samples(rollout.leaves)
        images = [f["image"] for f in fields]
        out = self.reward([Sample(prompt=self.eval_prompts[p], group=p, **f)
                           for (_, p), f in zip(roots, fields, strict=True)])
        scores = [float(s) for s in out.scores if isinstance(s, (int, float)) and math.isfinite(float(s))]
        path = self.output_dir / "eval" / f"iteration_{self.iteration:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        scale = max(1, 128 // max(images[0].size))
        per_image = [float(s) if isinstance(s, (int, float)) and math.isfinite(float(s)) else None for s in out.scores]
        captioned_grid(images, self.eval_prompts, per_image, columns=n, scale=scale).save(path)
        mean = float(np.mean(scores)) if scores else math.nan
        self.eval_results.append({"iteration": self.iteration, "grid": path, "prompts": list(self.eval_prompts),
                                  "scores": per_image, "reward_mean": mean})
        acc.wait_for_everyone()
        return {"eval/reward_mean": mean, "eval/grid": str(path), "time/eval": time.perf_counter() - t0}

    def _log(self, metrics: dict[str, Any]) -> None:
        self.history.append(metrics)
        if self.accelerator.is_main_process:
            self.metrics_log.append(metrics)
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.accelerator.log(scalars, step=metrics["iteration"])

    def _pool_over_processes(self, per_transition: dict[str, torch.Tensor], first_dev: float) -> dict[str, float]:
        """Loss, KL, clip fraction and ratio statistics over the transitions *every* process trained (a
        rank's own mean would make the logged loss depend on how the batch was split)."""
        ratio = per_transition["ratio"].double()
        sums = torch.stack([per_transition[k].double().sum() for k in ("loss", "kl", "clipped")]
                           + [torch.tensor(float(ratio.numel()), dtype=torch.float64), ratio.sum()])
        low = ratio.min() if ratio.numel() else torch.tensor(math.inf, dtype=torch.float64)
        high = ratio.max() if ratio.numel() else torch.tensor(-math.inf, dtype=torch.float64)
        dev = torch.tensor(-math.inf if math.isnan(first_dev) else first_dev, dtype=torch.float64)
        if self.accelerator.num_processes > 1:
            device = self.accelerator.device
            sums, low, high, dev = (t.to(device) for t in (sums, low, high, dev))
            torch.distributed.all_reduce(sums)
            torch.distributed.all_reduce(low, op=torch.distributed.ReduceOp.MIN)
            torch.distributed.all_reduce(high, op=torch.distributed.ReduceOp.MAX)
            torch.distributed.all_reduce(dev, op=torch.distributed.ReduceOp.MAX)
        loss, kl, clipped, n, ratio_sum = (float(v) for v in sums.cpu())
        if n == 0:
            return {k: math.nan for k in ("loss", "kl", "clip_fraction", "ratio/mean", "ratio/min", "ratio/max",
                                          "ratio/first_update_max_abs_dev")}
        return {"loss": loss / n, "kl": kl / n, "clip_fraction": clipped / n, "ratio/mean": ratio_sum / n,
                "ratio/min": float(low), "ratio/max": float(high),
                "ratio/first_update_max_abs_dev": float(dev) if math.isfinite(float(dev)) else math.nan}

    def _gather(self, values: torch.Tensor) -> torch.Tensor:
        if self.accelerator.num_processes == 1:
            return values
        return self.accelerator.gather(values.to(self.accelerator.device)).cpu()

    def _sum_over_processes(self, value: int) -> int:
        if self.accelerator.num_processes == 1:
            return value
        t = torch.tensor([value], dtype=torch.long, device=self.accelerator.device)
        return int(self.accelerator.reduce(t, reduction="sum").item())

    # ----------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> Path:
        """``output_dir/checkpoint-<iteration>``: trainable weights, optimizer, EMA, RNG states, iteration."""
        acc = self.accelerator
        path = self.output_dir / f"checkpoint-{self.iteration:06d}"
        path.mkdir(parents=True, exist_ok=True)
        torch.save(rng_state(), path / f"rng_{acc.process_index}.pt")
        if acc.is_main_process:
            torch.save({n: p.detach().cpu() for n, p in zip(self.param_names, self.params, strict=True)},
                       path / "trainable.pt")
            torch.save(self.optimizer.state_dict(), path / "optimizer.pt")
            if self.ema is not None:
                torch.save(self.ema.state_dict(), path / "ema.pt")
            c = self.config
            state = {"iteration": self.iteration, "sde_window": list(config_sde_window(c, self.iteration))}
            (path / "trainer_state.json").write_text(json.dumps(state))
        acc.wait_for_everyone()
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore what :meth:`save_checkpoint` wrote (``"latest"``: the newest ``checkpoint-<N>`` in
        ``output_dir``; none yet: a fresh start, logged)."""
        found = resolve_checkpoint(self.output_dir, path)
        if found is None:
            return
        path = found
        weights = torch.load(path / "trainable.pt", map_location="cpu")
        with torch.no_grad():
            for name, p in zip(self.param_names, self.params, strict=True):
                p.copy_(weights[name])
        self.optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=self.accelerator.device))
        if self.ema is not None:
            self.ema.load_state_dict(torch.load(path / "ema.pt"))
        rng_file = path / f"rng_{self.accelerator.process_index}.pt"
        if rng_file.exists():
            set_rng_state(torch.load(rng_file, weights_only=False))  # also a checkpoint of the older form
        self.iteration = json.loads((path / "trainer_state.json").read_text())["iteration"]

    def save_final(self) -> Path | None:
        """The trained weights in ``output_dir/final`` (a peft adapter, or the diffusers model) with what
        :func:`~visalign.trainers.flow_policies.load_flow_policy` needs to rebuild the policy from them;
        the EMA weights too (``final_ema``) when EMA is on."""
        if not self.accelerator.is_main_process:
            return None
        path = self.output_dir / "final"
        self.policy.model.save_pretrained(str(path))
        _save_policy_extras(self.policy, path, self.config.pretrained)
        if self.ema is not None:
            with self.ema.swapped_in(self.params):
                self.policy.model.save_pretrained(str(self.output_dir / "final_ema"))
            _save_policy_extras(self.policy, self.output_dir / "final_ema", self.config.pretrained)
        return path


def _save_policy_extras(policy: FlowPolicy, path: Path, base: str | None = None) -> None:
    """What ``load_flow_policy`` needs beside the weights: a class-conditional UNet's ``classes.json`` and
    :data:`~visalign.trainers.flow_policies.registry.FINAL_MANIFEST` (adapter or full weights, and the
    base directory they were trained from)."""
    classes = getattr(policy, "classes", None)
    if classes is not None:
        (path / "classes.json").write_text(json.dumps(list(classes), indent=1) + "\n")
    model = policy.model.get_base_model() if policy.lora else policy.model
    manifest = {"weights": "adapter" if policy.lora else "full", "model": type(model).__name__,
                "base": str(Path(base).resolve()) if base else None}
    (path / FINAL_MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


def captioned_grid(images: Sequence[Any], prompts: Sequence[str], scores: Sequence[float | None], columns: int,
                   scale: int = 1) -> Any:
    """:func:`image_grid` with a caption band above each row (its prompt) and each tile's reward under it.

    Example:
        >>> from PIL import Image
        >>> grid = captioned_grid([Image.new("RGB", (8, 8))] * 4, ["a", "b"], [0.5, None, 1.0, 0.25], 2, 4)
        >>> grid.size  # 2 columns of 8 px x 4; 2 rows of 14 (caption) + 32 (tile) + 11 (score)
        (64, 114)
    """
    from PIL import Image, ImageDraw

    w, h = images[0].size
    tile_w, tile_h, band, label = w * scale, h * scale, 14, 11
    rows = math.ceil(len(images) / columns)
    grid = Image.new("RGB", (columns * tile_w, rows * (band + tile_h + label)), "white")
    draw = ImageDraw.Draw(grid)
    for r in range(rows):
        y = r * (band + tile_h + label)
        draw.text((2, y + 1), str(prompts[r]) if r < len(prompts) else "", fill="black")
        row = images[r * columns:(r + 1) * columns]
        grid.paste(image_grid(row, columns=columns, scale=scale), (0, y + band))
        for c in range(len(row)):
            score = scores[r * columns + c] if r * columns + c < len(scores) else None
            text = "n/a" if score is None else f"{score:.3f}"
            draw.text((c * tile_w + 2, y + band + tile_h), text, fill=(70, 70, 70))
    return grid


def write_eval_comparison(before: Mapping[str, Any], after: Mapping[str, Any], out_path: str | Path, *,
                          curves: Path | None = None, title: str = "Flow-GRPO: held-out eval grid") -> Path:
    """A standalone HTML page: the ``before`` and ``after`` eval grids side by side (captioned PNGs, kept
    inline), the mean reward of each and of each prompt, and the training curves when given."""
    import html

    from PIL import Image

    from ..report.eval_report import _png_data_uri

    def uri(path: str | Path) -> str:
        with Image.open(path) as im:
            return _png_data_uri(im.convert("RGB"), max_side=max(im.size))

    def per_prompt(ev: Mapping[str, Any]) -> dict[str, float]:
        n = max(1, len(ev["scores"]) // max(1, len(ev["prompts"])))
        out = {}
        for i, p in enumerate(ev["prompts"]):
            vals = [s for s in ev["scores"][i * n:(i + 1) * n] if s is not None]
            out[p] = float(np.mean(vals)) if vals else math.nan
        return out

    b, a = per_prompt(before), per_prompt(after)
    rows = "".join(f"<tr><td>{html.escape(p)}</td><td>{b[p]:.4f}</td><td>{a.get(p, math.nan):.4f}</td>"
                   f"<td>{a.get(p, math.nan) - b[p]:+.4f}</td></tr>" for p in b)
    figs = "".join(f"<figure><figcaption>{name} (iteration {ev['iteration']}): mean reward {ev['reward_mean']:.4f}"
                   f"</figcaption><img src='{uri(ev['grid'])}' alt='{name} eval grid'></figure>"
                   for name, ev in (("before", before), ("after", after)))
    curve = f"<h2>Training curves</h2><img src='{uri(curves)}' alt='curves'>" if curves is not None else ""
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif;margin:1.5em}figure{display:inline-block;margin:0 1em 1em 0}"
            "img{image-rendering:pixelated;border:1px solid #ccc}td,th{padding:2px 10px;text-align:right}"
            "td:first-child{text-align:left}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p>Fixed-seed ODE samples of the eval prompts (same noise before and "
            f"after; EMA weights when EMA is on). Each row is one prompt, each tile's reward under it.</p>{figs}"
            f"<h2>Mean reward per prompt</h2><table><tr><th>prompt</th><th>before</th><th>after</th>"
            f"<th>difference</th></tr>{rows}</table>{curve}</body></html>")
    Path(out_path).write_text(page, encoding="utf-8")
    return Path(out_path)


# ------------------------------------------------------------------------------------- from config


def build_reward(spec: Any, aggregation: str = "normalize_then_sum") -> Reward:
    """A reward from a config's ``rewards`` (a list of names or ``{name, weight, options}``; the older
    ``{name: weight | {weight, **options}}`` mapping is read too: :func:`visalign.rewards.specs.parse_reward_specs`);
    several, or one with a weight other than 1, make a :class:`~visalign.rewards.CompositeReward`.
    Names: :data:`visalign.rewards.REWARDS` or ``"module:Class"``.

    Example:
        >>> build_reward([{"name": "format", "options": {"allow_bare": True}}]).name
        'format'
    """
    specs = parse_reward_specs(spec)
    if not specs:
        raise ValueError("rewards: no reward configured")
    if len(specs) == 1 and specs[0].weight == 1.0:
        return instantiate(specs[0])
    return build_rewards(specs, aggregation=aggregation)


def _read_prompts(inline: Sequence[str], file: str | None) -> list[str]:
    prompts = list(inline)
    if file:
        prompts += [line.strip() for line in Path(file).read_text().splitlines() if line.strip()]
    return prompts


def flow_algorithm(source: str | Path | Mapping[str, Any] | None, algorithm: str | None = None) -> str:
    """``"grpo"`` or ``"refl"``: ``algorithm`` when given (``--algorithm``), else the config's ``algorithm``
    key (under ``flow:`` or at the top level), else ``"grpo"``.

    Example:
        >>> flow_algorithm({"flow": {"algorithm": "refl"}}), flow_algorithm({}), flow_algorithm({}, "refl")
        ('refl', 'grpo', 'refl')
    """
    if algorithm is None and source is not None:
        data = dict(source) if isinstance(source, Mapping) else dict(yaml.safe_load(Path(source).read_text()) or {})
        section = data.get("flow") if isinstance(data.get("flow"), Mapping) else data
        algorithm = section.get("algorithm", "grpo")
    algorithm = algorithm or "grpo"
    if algorithm not in ("grpo", "refl"):
        raise ValueError(f"algorithm must be 'grpo' or 'refl', got {algorithm!r}")
    return algorithm


def train_flow_from_config(source: str | Path | Mapping[str, Any], **overrides: Any) -> Any:
    """Build policy (``pretrained``), reward(s) and prompts from a YAML file or mapping, train, and return
    the trainer (``trainer.history`` holds the per-iteration metrics). A YAML file may hold the options
    under a ``flow:`` key. ``algorithm: refl`` (in the file or as an override) hands over to
    :func:`visalign.trainers.refl.train_refl_from_config`."""
    if flow_algorithm(source, overrides.pop("algorithm", None)) == "refl":
        from .refl import train_refl_from_config  # refl builds on this module: imported on use

        return train_refl_from_config(source, algorithm="refl", **overrides)
    config = load_config(FlowGRPOConfig, source, section="flow", **overrides)
    if not config.pretrained:
        raise ValueError("train_flow_from_config needs `pretrained` (a local model directory)")
    prepare_output_dir(config.output_dir, overwrite=config.overwrite_output_dir, resume_from=config.resume_from,
                       check_only=True)  # refused before the model loads; the trainer clears it
    options = flow_policy_class(config.pretrained).config_options  # what this family's policy takes
    policy = load_flow_policy(config.pretrained, **{name: getattr(config, name) for name in options})
    reward = build_reward(config.rewards, config.reward_aggregation)
    prompts = _read_prompts(config.prompts, config.prompts_file)
    eval_prompts = _read_prompts(config.eval_prompts, config.eval_prompts_file)
    trainer = FlowGRPOTrainer(config, policy, reward, prompts, eval_prompts or None)
    try:
        trainer.train()
    finally:
        reward.close()
    return trainer
