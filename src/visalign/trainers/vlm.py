"""GRPO for code-writing vision-language models: the model looks at a chart (table, SVG, web page),
writes code, the code is rendered in the sandbox and scored against the reference, and the policy
moves towards what scored well.

One step, top to bottom (:meth:`VLMGRPOTrainer.step`):

1. take ``prompts_per_step`` prompts (image + instruction) per process from the shuffled data;
2. sample ``num_generations`` completions per prompt, independently or as a prefix tree
   (:func:`~visalign.trainers.tree.sample_groups`: one KV cache, shared prefixes sampled once), while
   the previous micro-batch renders and scores in a background thread;
3. rewards (a :class:`~visalign.rewards.CompositeReward` of the configured rewards, one shared render
   per program), dynamic sampling (drop groups that carry no signal, refill) when asked;
4. advantages: GRPO per group, plus the TD correction at branching tokens for trees;
5. ``num_iterations`` optimizer steps on the clipped surrogate
   (:func:`~visalign.trainers.grpo.policy_loss`), old log-probs stored before the first;
6. logs (metrics.jsonl + accelerate trackers), sample completions with their renders, periodic
   held-out evaluation through the eval report, checkpoints that resume exactly.

Launch on one device with ``visalign train grpo CONFIG.yaml``; across GPUs or nodes with
``accelerate launch [--multi_gpu | --use_deepspeed | --use_fsdp] -m visalign train grpo CONFIG.yaml``
(each process takes its own prompts; groups never span processes).

Example:
    >>> cfg = load_config(VLMGRPOConfig, {"num_generations": 4, "sampling": "tree"})
    >>> cfg.num_generations, cfg.loss_type, cfg.sampling
    (4, 'dapo', 'tree')
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..languages import DEFAULT_INSTRUCTIONS, KIND_TO_TASK
from ..rewards import CompositeReward, RenderService, Reward, Sample
from ..rewards.code import fill_code
from ..rewards.specs import build_rewards, parse_reward_specs
from .config import config_to_dict, load_config, option, save_config, shared_option
from .grpo import R1_REWARD_LOG_RATIO_BOUND, filter_advantages, group_advantages, policy_loss
from .prompting import PromptImages, check_prompts, encode_prompts, vision_token_ids
from .runtime import (
    Callback,
    MetricsLog,
    TimeBudget,
    make_accelerator,
    plot_curves,
    prepare_output_dir,
    progress_bar,
    reset_rope_deltas,
    resolve_checkpoint,
    reward_postfix,
    run_callbacks,
    trackers,
)
from .tree import SampledGroup, TreeSampling, filter_logits, sample_groups, tree_token_advantages

log = logging.getLogger("visalign.train")



@dataclass
class VLMGRPOConfig:
    """Options of :class:`VLMGRPOTrainer`; ``describe_config(VLMGRPOConfig)`` prints them as a table."""

    # model
    model: str = option("models/tiny-chart-vlm", "path or hub id of an AutoModelForImageTextToText + AutoProcessor")
    # data
    train_data: str = option("", "training rows: JSONL, parquet, or a datasets directory (visalign.data.load_rows)")
    eval_data: str | None = option(None, "held-out rows for periodic evaluation (same formats)")
    kind: str = option("matplotlib", "renderer of the generated code: matplotlib, latex, svg or html")
    image_column: str = option("image", "column holding the reference image")
    code_column: str = option("code", "column holding the reference code (optional)")
    prompt_column: str = option("prompt", "column holding the instruction (default instruction when missing)")
    system_prompt: str | None = option(None, "system turn before every prompt")
    max_train_rows: int | None = option(None, "use only the first N training rows")
    max_eval_rows: int | None = option(64, "evaluate on the first N held-out rows")
    # rewards and rendering
    rewards: list | dict = option([{"name": "render_similarity", "weight": 1.0}],
                                  "rewards: a list of names or {name, weight, options} mappings",
                                  source="visalign")
    reward_aggregation: str = option("sum", "sum, normalize_then_sum or sum_then_normalize (CompositeReward)")
    render_options: dict = option({}, "renderer options per kind, e.g. {matplotlib: {dpi: 64, figsize: [1.5, 1.5]}}")
    render_timeout: float = option(10.0, "seconds per render")
    render_workers: int | None = option(None, "sandboxed render workers (default: CPU count)")
    # sampling
    num_generations: int = option(8, "completions per prompt (G)", source="TRL 1.16")
    prompts_per_step: int = option(4, "prompts per step on each process")
    generation_batch_size: int = option(4, "prompts sampled together; scoring of one overlaps sampling of the next")
    max_prompt_length: int = option(512, "longer prompts are rejected at load time, never truncated", source="TRL 1.16")
    max_completion_length: int = option(256, "tokens per completion", source="TRL 1.16")
    temperature: float = option(1.0, "sampling temperature; training log-probs use the same distribution", source="TRL 1.16")
    top_k: int = option(0, "top-k truncation (0 = off); training log-probs use the same truncated distribution")
    top_p: float = option(1.0, "nucleus truncation; training log-probs use the same truncated distribution",
                          source="TRL 1.16")
    sampling: str = option("independent", "independent or tree (prefix-tree rollouts sharing prefixes)")
    tree_mode: str = option("segment", "tree branching rule: segment (TreePO) or entropy (EPTree-like)")
    tree_branch_factor: int = option(2, "children per split", source="TreePO")
    tree_segment_length: int = option(16, "tokens between splits (segment mode)")
    tree_entropy_threshold: float = option(1.0, "split where next-token entropy >= this (nats; entropy mode)")
    tree_min_segment: int = option(4, "tokens between splits at least (entropy mode)")
    tree_advantages: bool = option(True, "add V(child) - V(parent) at branching tokens (TEMPO)", source="TEMPO")
    # loss
    loss_type: str = option("dapo", "grpo, bnpo, dr_grpo or dapo aggregation", source="TRL 1.16")
    epsilon: float = option(0.2, "lower clip range", source="TRL 1.16")
    epsilon_high: float | None = option(None, "upper clip range (clip-higher, DAPO 0.28); None = epsilon", source="TRL 1.16")
    beta: float = option(0.0, "KL weight (k3 estimator) to the reference's sampling distribution", source="TRL 1.16")
    num_iterations: int = option(1, "optimizer steps per generation batch (mu)", source="TRL 1.16")
    importance_sampling_level: str = option("token", "token, or sequence (GSPO)", source="TRL 1.16")
    scale_rewards: str = option("group", "advantage std: group, batch or none (Dr. GRPO)", source="TRL 1.16")
    mask_truncated_completions: bool = option(False, "leave completions without EOS out of the loss", source="TRL 1.16")
    dynamic_sampling: bool = option(False, "drop groups whose rewards are all equal and refill", source="DAPO")
    dynamic_sampling_rounds: int = option(3, "extra sampling rounds at most when refilling")
    pre_clip_log_ratio: bool = option(False, "clamp log(pi / pi_old) to [-pre_clip_bound, pre_clip_bound] before exp "
                                      "(StableReinforce; on in the judge preset)", source="R1-Reward")
    pre_clip_bound: float = option(R1_REWARD_LOG_RATIO_BOUND, "the pre-clip's bound: log(1e3) = 6.91",
                                   source="R1-Reward")
    advantage_filter: bool = option(False, "standardise advantages over the batch's tokens and zero outliers "
                                    "(StableReinforce; on in the judge preset)", source="R1-Reward")
    advantage_filter_sigma: float = option(3.0, "the filter keeps |z| <= sigma (the 3-sigma rule)", source="R1-Reward")
    # optimisation
    learning_rate: float = option(1e-6, "AdamW learning rate", source="TRL 1.16")
    weight_decay: float = shared_option("weight_decay")
    adam_betas: tuple = shared_option("adam_betas")
    lr_scheduler: str = option("constant", "transformers scheduler name: constant, linear, cosine, ...")
    warmup_steps: int = option(0, "scheduler warm-up steps")
    max_grad_norm: float | None = shared_option("max_grad_norm")
    per_device_train_batch_size: int = option(8, "completions per forward/backward micro-batch")
    max_steps: int = option(100, "GRPO steps")
    max_minutes: float | None = shared_option("max_minutes")
    gradient_checkpointing: bool = shared_option("gradient_checkpointing")
    mixed_precision: str = shared_option("mixed_precision", note="log-probs stay float32")
    lora: bool = shared_option("lora")
    lora_r: int = shared_option("lora_r")
    lora_alpha: int = shared_option("lora_alpha")
    lora_dropout: float = shared_option("lora_dropout")
    lora_target_modules: Any = option("all-linear", "peft target_modules")
    # run
    seed: int = option(42, "seed of data order, sampling and initialisation")
    output_dir: str = option("out/vlm-grpo", "checkpoints, logs, samples and eval reports")
    save_every: int = shared_option("save_every")
    eval_every: int = option(0, "evaluate on eval_data every N steps (0 = before and after training only)")
    eval_before: bool = option(True, "evaluate before the first step when eval_data is set")
    eval_samples: int = option(0, "0: score each eval row's greedy completion; K > 0: K completions sampled at "
                                  "eval_temperature, each metric the mean over them (pass@1 estimated from K "
                                  "samples, as DeepSeek-R1 reports): what GRPO optimises is the sampler",
                               source="DeepSeek-R1")
    eval_temperature: float | None = option(None, "temperature of eval_samples (None: the training temperature)")
    log_completions: int = option(4, "completions (with renders) saved per logged step")
    log_completions_every: int = option(10, "save sample completions every N steps")
    log_with: str = option("auto", "accelerate tracker: auto (tensorboard, else none), tensorboard, wandb, none")
    num_threads: int | None = shared_option("num_threads")
    resume_from: str | None = shared_option("resume_from")
    overwrite_output_dir: bool = shared_option("overwrite_output_dir")
    progress: bool = shared_option("progress")

    def __post_init__(self) -> None:
        checks = {"sampling": ("independent", "tree"), "tree_mode": ("segment", "entropy"),
                  "loss_type": ("grpo", "bnpo", "dr_grpo", "dapo"), "scale_rewards": ("group", "batch", "none"),
                  "importance_sampling_level": ("token", "sequence"),
                  "reward_aggregation": ("sum", "normalize_then_sum", "sum_then_normalize")}
        for name, allowed in checks.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.num_generations < 2:
            raise ValueError("num_generations must be >= 2 (a group of one has no advantage)")
        if self.num_iterations < 1 or self.prompts_per_step < 1 or self.generation_batch_size < 1:
            raise ValueError("num_iterations, prompts_per_step and generation_batch_size must be >= 1")
        if not self.pre_clip_bound > 0 or not self.advantage_filter_sigma > 0:
            raise ValueError("pre_clip_bound and advantage_filter_sigma must be > 0")
        if self.eval_samples < 0 or (self.eval_temperature is not None and not self.eval_temperature > 0):
            raise ValueError(f"eval_samples must be >= 0 and eval_temperature > 0 (or None), got "
                             f"{self.eval_samples} and {self.eval_temperature}")
        parse_reward_specs(self.rewards)  # a bad reward entry fails here, before anything loads


@dataclass
class Rollout:
    """One step's completions on this process, groups contiguous (``num_generations`` each)."""

    rows: list[dict[str, Any]]               # the prompt row of each group
    completion_ids: list[list[int]]
    truncated: list[bool]
    texts: list[str]
    samples: list[Sample]
    rewards: torch.Tensor                    # (B,), NaN = no reward applied
    tokens_sampled: int
    reward_metrics: dict[str, float] = field(default_factory=dict)
    sampler_logps: list[list[float]] = field(default_factory=list)  # what the sampler drew each token with
    seconds: dict[str, float] = field(default_factory=dict)
    dropped_groups: int = 0


def completion_logps(model: Any, prompt_inputs: dict[str, torch.Tensor], completion_ids: torch.Tensor,
                     completion_mask: torch.Tensor, temperature: float = 1.0, *, top_k: int = 0, top_p: float = 1.0,
                     suppress: Sequence[int] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs and entropies of completions under the distribution they were sampled from.

    The logits go through :func:`~visalign.trainers.tree.filter_logits` with the sampler's
    ``temperature``, ``suppress`` tokens and ``top_k`` / ``top_p`` truncation (the completion's own
    tokens are never truncated: the sampler kept them), so these log-probs equal the sampler's to
    float rounding and the policy that is optimised is the one that is sampled. Float32.

    ``prompt_inputs`` is the processor's left-padded batch; ``completion_ids`` / ``completion_mask``
    are right-padded ``(B, T)``. Returns two ``(B, T)`` tensors.
    """
    ids = torch.cat([prompt_inputs["input_ids"], completion_ids], dim=1)
    attention = torch.cat([prompt_inputs["attention_mask"], completion_mask.to(prompt_inputs["attention_mask"].dtype)],
                          dim=1)
    extra = {k: v for k, v in prompt_inputs.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
    if "mm_token_type_ids" in prompt_inputs:
        extra["mm_token_type_ids"] = torch.cat(
            [prompt_inputs["mm_token_type_ids"], torch.zeros_like(completion_ids)], dim=1)
    if "token_type_ids" in prompt_inputs:  # Gemma 3 marks image tokens with them
        extra["token_type_ids"] = torch.cat([prompt_inputs["token_type_ids"], torch.zeros_like(completion_ids)], dim=1)
    if not reset_rope_deltas(model):  # Qwen-VL derives its M-RoPE positions from the mask itself
        # 1-D positions count real tokens only, as the sampler does, so left padding changes nothing
        extra["position_ids"] = (attention.long().cumsum(-1) - 1).clamp(min=0)
    T = completion_ids.shape[1]
    logits = model(input_ids=ids, attention_mask=attention, logits_to_keep=T + 1, use_cache=False, **extra).logits
    x = filter_logits(logits[:, :-1], temperature, top_k, top_p, suppress, keep=completion_ids)
    logp_all = torch.log_softmax(x, dim=-1)
    logps = logp_all.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all.nan_to_num(neginf=0.0)).sum(-1)
    return logps, entropy


def _pad(seqs: Sequence[Sequence[int]], pad_id: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(1, max(len(s) for s in seqs))
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[i, :len(s)] = 1
    return ids.to(device), mask.to(device)


def _stable_seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") & ((1 << 63) - 1)


def reward_specs(specs: Any) -> tuple[list[str], dict[str, float], dict[str, dict[str, Any]]]:
    """Names, weights and options of the configured rewards (read by
    :func:`visalign.rewards.specs.parse_reward_specs`).

    Example:
        >>> reward_specs(["format", {"name": "chart_code", "weight": 2, "options": {"metric": "data"}}])
        (['format', 'chart_code'], {'format': 1.0, 'chart_code': 2.0}, {'chart_code': {'metric': 'data'}})
    """
    parsed = parse_reward_specs(specs)
    return ([s.name for s in parsed], {s.name: s.weight for s in parsed},
            {s.name: dict(s.options) for s in parsed if s.options})


def build_reward(specs: Any, service: RenderService, aggregation: str = "sum") -> CompositeReward:
    """A composite of ``specs`` (names or ``{name, weight, options}`` mappings) sharing ``service``
    (:func:`visalign.rewards.specs.build_rewards`).

    Example:
        >>> with RenderService(workers=1) as service:
        ...     reward = build_reward(["format", {"name": "execution", "weight": 0.5}], service)
        ...     list(zip(reward.names, reward.weights))
        [('format', 1.0), ('execution', 0.5)]
    """
    return build_rewards(specs, service, aggregation)


class VLMGRPOTrainer:
    """GRPO on a VLM that writes code (see the module docstring for the loop).

    Args:
        config: the options.
        model, processor: already loaded ones (default: ``from_pretrained(config.model)``).
        reward: a reward (default: built from ``config.rewards``).
        train_rows, eval_rows: rows as :func:`visalign.data.load_rows` gives them (``image``,
            ``code``, ``prompt``, ``id``); default: loaded from ``config.train_data`` / ``eval_data``.
    """

    def __init__(self, config: VLMGRPOConfig, *, model: Any = None, processor: Any = None, reward: Reward | None = None,
                 train_rows: Sequence[dict[str, Any]] | None = None,
                 eval_rows: Sequence[dict[str, Any]] | None = None) -> None:
        from accelerate.utils import set_seed

        self.config = c = config
        if c.num_threads:
            torch.set_num_threads(c.num_threads)
        self.out = Path(c.output_dir)
        found_trackers = trackers(c.log_with)
        self.accelerator = make_accelerator(mixed_precision=c.mixed_precision, log_with=found_trackers or None,
                                            project_dir=str(self.out))
        acc = self.accelerator
        # one run per directory, decided before the model loads (runtime.prepare_output_dir)
        prepare_output_dir(self.out, overwrite=c.overwrite_output_dir, resume_from=c.resume_from,
                           main_process=acc.is_main_process)
        acc.wait_for_everyone()
        set_seed(c.seed)
        if model is None or processor is None:
            from transformers import AutoModelForImageTextToText, AutoProcessor

            processor = processor or AutoProcessor.from_pretrained(c.model)
            model = model or AutoModelForImageTextToText.from_pretrained(c.model)
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        eos = model.generation_config.eos_token_id
        self.eos_ids = list(eos) if isinstance(eos, (list, tuple)) else [eos if eos is not None else self.tokenizer.eos_token_id]
        self.suppress = sorted({*vision_token_ids(model, processor=processor), self.pad_id} - set(self.eos_ids))
        self.ref_model = None
        if c.lora:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=c.lora_r, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout,
                                                     target_modules=c.lora_target_modules))
        elif c.beta > 0:
            self.ref_model = copy.deepcopy(model).eval().requires_grad_(False).to(acc.device)
        if c.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if c.lora:
                model.enable_input_require_grads()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=c.learning_rate, betas=tuple(c.adam_betas), weight_decay=c.weight_decay)
        from transformers import get_scheduler

        scheduler = get_scheduler(c.lr_scheduler, optimizer, num_warmup_steps=c.warmup_steps,
                                  num_training_steps=max(1, c.max_steps * c.num_iterations))
        self.model, self.optimizer, self.scheduler = acc.prepare(model, optimizer, scheduler)
        self.service = RenderService(timeout=c.render_timeout, workers=c.render_workers, options=c.render_options)
        self.reward = reward if reward is not None else build_reward(c.rewards, self.service, c.reward_aggregation)
        bind = getattr(reward, "bind", None)
        if reward is not None and callable(bind):  # a rendering reward renders through the trainer's service
            bind(self.service)
        self.train_rows = self._checked(train_rows if train_rows is not None else self._load(c.train_data, c.max_train_rows),
                                        "train")
        if not self.train_rows:
            raise ValueError("no training rows")
        source = eval_rows if eval_rows is not None else (self._load(c.eval_data, c.max_eval_rows) if c.eval_data else [])
        source = [dict(r, id=str(r.get("id", i))) for i, r in enumerate(source)]
        self.eval_rows = source[: c.max_eval_rows] if c.max_eval_rows else source
        self.plan = TreeSampling(c.num_generations, mode="independent" if c.sampling == "independent" else c.tree_mode,
                                 branch_factor=c.tree_branch_factor, segment_length=c.tree_segment_length,
                                 entropy_threshold=c.tree_entropy_threshold, min_segment=c.tree_min_segment)
        self.step_count = 0
        self.cursor = 0  # position in the (shuffled, repeating) stream of prompts, shared by all processes
        self.history: list[dict[str, Any]] = []
        self.eval_dirs: list[Path] = []
        self.eval_steps: list[int] = []
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="visalign-score")
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(c, self.out / "config.yaml")
        if found_trackers:
            acc.init_trackers("visalign-grpo", config=_flat(config_to_dict(c)))
        if c.resume_from:
            self.load_checkpoint(c.resume_from)

    # ------------------------------------------------------------------------------------------ data
    def _load(self, source: str, limit: int | None) -> list[dict[str, Any]]:
        from ..data import load_rows

        c = self.config
        return load_rows(source, image_column=c.image_column, code_column=c.code_column, prompt_column=c.prompt_column,
                         kind=c.kind, limit=limit)

    def _instruction(self, row: dict[str, Any]) -> str:
        return row.get("prompt") or DEFAULT_INSTRUCTIONS.get(self.config.kind, "Write the code of this image.")

    @staticmethod
    def _images(row: dict[str, Any]) -> PromptImages:
        """What a prompt shows: the row's ``images`` (a list, e.g. a pairwise judge's) or its ``image``."""
        images = row.get("images")
        return images if images is not None else row.get("image")

    def _checked(self, rows: Sequence[dict[str, Any]], split: str) -> list[dict[str, Any]]:
        """Rows whose prompt fits ``max_prompt_length``; the others are rejected with the reason."""
        rows = [dict(r, id=str(r.get("id", i))) for i, r in enumerate(rows)]
        bad = check_prompts(self.processor, [self._images(r) for r in rows], [self._instruction(r) for r in rows],
                            self.config.max_prompt_length, self.config.system_prompt)
        for i, reason in bad:
            log.warning("%s row %s rejected: %s", split, rows[i]["id"], reason)
        rejected = {i for i, _ in bad}
        return [r for i, r in enumerate(rows) if i not in rejected]

    def _row_at(self, position: int) -> dict[str, Any]:
        n = len(self.train_rows)
        epoch, i = divmod(position, n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(_stable_seed(self.config.seed, epoch)))
        return self.train_rows[int(order[i])]

    def _next_prompts(self) -> list[tuple[int, dict[str, Any]]]:
        """This process's share of the next ``prompts_per_step * num_processes`` stream positions."""
        c, acc = self.config, self.accelerator
        start = self.cursor + acc.process_index * c.prompts_per_step
        self.cursor += c.prompts_per_step * acc.num_processes
        return [(p, self._row_at(p)) for p in range(start, start + c.prompts_per_step)]

    # -------------------------------------------------------------------------------------- rollouts
    def _encode(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        inputs = encode_prompts(self.processor, [self._images(r) for r in rows], [self._instruction(r) for r in rows],
                                max_prompt_length=self.config.max_prompt_length, system=self.config.system_prompt,
                                row_ids=[r["id"] for r in rows])
        return {k: v.to(self.accelerator.device) for k, v in inputs.items()}

    def sample(self, rows: Sequence[dict[str, Any]], positions: Sequence[int], plan: TreeSampling | None = None,
               greedy: bool = False, temperature: float | None = None, stream: str = "sample") -> list[SampledGroup]:
        """Completions for ``rows`` (one group each); prompt ``i`` samples with a generator seeded by
        ``(seed, stream, positions[i])`` so results do not depend on batching or process count (evaluation
        draws from its own ``stream``). ``temperature`` replaces the config's for this call (evaluation and
        diagnostics: training samples at the config's)."""
        c = self.config
        temperature = c.temperature if temperature is None else temperature
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        try:
            gens = [torch.Generator().manual_seed(_stable_seed(c.seed, stream, int(p))) for p in positions]
            return sample_groups(model, self._encode(rows), plan or self.plan, max_new_tokens=c.max_completion_length,
                                 eos_token_ids=self.eos_ids, generators=gens, temperature=1.0 if greedy else temperature,
                                 top_k=1 if greedy else c.top_k, top_p=1.0 if greedy else c.top_p,
                                 suppress_tokens=self.suppress)
        finally:
            model.train(was_training)

    def to_samples(self, row: dict[str, Any], texts: Sequence[str], group: int) -> list[Sample]:
        """The reward's :class:`Sample` of each completion text of ``row`` (one group)."""
        return [Sample(prompt=self._instruction(row), completion=t, reference_image=row.get("image"),
                       reference_code=row.get("code"), kind=self.config.kind, group=group,
                       metadata={"row_id": row["id"]}) for t in texts]

    def prepare_samples(self, samples: list[Sample]) -> None:
        """Fill in what the reward reads, as training does: each completion's code, its render and the
        references' renders (through the trainer's sandboxed service)."""
        fill_code(samples)
        if getattr(self.reward, "needs_render", False):
            self.service.render(samples)
        if getattr(self.reward, "needs_reference_render", False):
            self.service.render([s for s in samples if s.reference_image is None and s.reference_code], reference=True)

    def _score(self, samples: list[Sample]) -> tuple[list[float | None], dict[str, float], dict[str, float]]:
        t0 = time.perf_counter()
        self.prepare_samples(samples)
        t1 = time.perf_counter()
        out = self.reward(samples)
        t2 = time.perf_counter()
        return out.scores, out.metrics, {"render": t1 - t0, "score": t2 - t1}

    def rollout(self, prompts: Sequence[tuple[int, dict[str, Any]]]) -> Rollout:
        """Sample and score the groups of ``prompts`` (``(stream position, row)`` pairs); rendering
        and scoring of each generation batch overlap the sampling of the next."""
        c = self.config
        seconds: Counter[str] = Counter()
        ids: list[list[int]] = []
        sampler_logps: list[list[float]] = []
        truncated: list[bool] = []
        texts: list[str] = []
        samples: list[Sample] = []
        futures: list[Future] = []
        tokens = 0
        for b in range(0, len(prompts), c.generation_batch_size):
            chunk = prompts[b:b + c.generation_batch_size]
            t0 = time.perf_counter()
            groups = self.sample([r for _, r in chunk], [p for p, _ in chunk])
            seconds["generate"] += time.perf_counter() - t0
            chunk_samples = []
            for (pos, row), g in zip(chunk, groups, strict=True):
                decoded = self.tokenizer.batch_decode(g.completions, skip_special_tokens=True)
                ids += g.completions
                sampler_logps += g.logprobs
                truncated += g.truncated
                texts += decoded
                tokens += g.tokens_sampled
                chunk_samples += self.to_samples(row, decoded, group=pos)
            samples += chunk_samples
            futures.append(self._executor.submit(self._score, chunk_samples))
        scores: list[float | None] = []
        metrics: Counter[str] = Counter()
        t0 = time.perf_counter()
        for f in futures:
            s, m, secs = f.result()
            scores += s
            for k, v in m.items():  # means weigh by batch size, counts add up
                if isinstance(v, (int, float)) and math.isfinite(v):
                    metrics[k] += v * len(s) if k.endswith("mean") else v
            seconds.update(secs)
        seconds["wait_for_scores"] = time.perf_counter() - t0
        rewards = torch.tensor([math.nan if s is None else float(s) for s in scores], dtype=torch.float32)
        return Rollout(rows=[r for _, r in prompts], completion_ids=ids, truncated=truncated, texts=texts, samples=samples,
                       rewards=rewards, tokens_sampled=tokens, sampler_logps=sampler_logps, reward_metrics={k: v / max(1, len(scores)) if k.endswith("mean") else v
                                       for k, v in metrics.items()},
                       seconds=dict(seconds))

    def _dynamic_sampling(self, rollout: Rollout) -> Rollout:
        """Replace groups whose rewards are all equal (no signal) with freshly sampled ones, for at most
        ``dynamic_sampling_rounds`` rounds; every process runs the same rounds so updates stay in step."""
        c, acc, G = self.config, self.accelerator, self.config.num_generations
        kept, dropped, spare = [], 0, []
        parts = _split_groups(rollout, G)
        for part in parts:
            (spare if _flat_group(part.rewards) else kept).append(part)
        dropped += len(spare)
        for _ in range(c.dynamic_sampling_rounds):
            need = torch.tensor([c.prompts_per_step - len(kept)], device=acc.device)
            if int(acc.gather(need).max()) <= 0:
                break
            fresh = self.rollout(self._next_prompts())
            for part in _split_groups(fresh, G):
                if _flat_group(part.rewards):
                    dropped += 1
                    spare.append(part)
                else:
                    kept.append(part)
        groups = (kept + spare)[: c.prompts_per_step]  # short of signal: fill with flat groups (advantage 0)
        merged = _merge_groups(groups)
        merged.seconds = rollout.seconds
        merged.dropped_groups = dropped
        return merged

    # ----------------------------------------------------------------------------------------- update
    def advantages(self, rollout: Rollout) -> torch.Tensor:
        """(B, T) per-token advantages: GRPO, plus the TD correction at branching tokens for trees."""
        c = self.config
        T = max(1, max(len(x) for x in rollout.completion_ids))
        if c.sampling == "tree" and c.tree_advantages:
            per_token = tree_token_advantages(rollout.completion_ids, rollout.rewards, c.num_generations,
                                              scale=c.scale_rewards)
            adv = torch.zeros(len(per_token), T)
            for i, a in enumerate(per_token):
                adv[i, :len(a)] = a
            return adv
        return group_advantages(rollout.rewards, c.num_generations, scale=c.scale_rewards).unsqueeze(1).expand(-1, T).clone()

    def _filter_advantages(self, rollout: Rollout, adv: torch.Tensor) -> Any:
        """StableReinforce's filter over the active tokens of the whole generation batch (statistics
        gathered from every process, as R1-Reward all-reduces them)."""
        c, acc = self.config, self.accelerator
        mask = torch.zeros(adv.shape, dtype=torch.float64)
        for i, ids in enumerate(rollout.completion_ids):
            if not (c.mask_truncated_completions and rollout.truncated[i]):
                mask[i, :len(ids)] = 1.0
        a = adv.detach().double().cpu()
        sums = torch.tensor([float((a * mask).sum()), float(mask.sum())], dtype=torch.float64, device=acc.device)
        total, count = acc.gather(sums.unsqueeze(0)).sum(0).tolist()
        mean = total / max(count, 1.0)
        sq = torch.tensor([float((((a - mean) ** 2) * mask).sum())], dtype=torch.float64, device=acc.device)
        var = float(acc.gather(sq).sum()) / max(count, 1.0)
        return filter_advantages(adv.cpu(), mask, sigma=c.advantage_filter_sigma, mean=mean,
                                 std=math.sqrt(max(var, 1e-8)))

    def _micro_batches(self, rollout: Rollout) -> list[dict[str, Any]]:
        c, G, dev = self.config, self.config.num_generations, self.accelerator.device
        B = len(rollout.completion_ids)
        out = []
        for s in range(0, B, c.per_device_train_batch_size):
            idx = list(range(s, min(B, s + c.per_device_train_batch_size)))
            rows = [rollout.rows[i // G] for i in idx]
            ids, mask = _pad([rollout.completion_ids[i] for i in idx], self.pad_id, dev)
            if c.mask_truncated_completions:
                mask = mask * torch.tensor([0 if rollout.truncated[i] else 1 for i in idx], device=dev).unsqueeze(1)
            batch = {"idx": idx, "inputs": self._encode(rows), "ids": ids, "mask": mask}
            if len(rollout.sampler_logps) == B:
                sampled = torch.zeros(ids.shape, dtype=torch.float32)
                for j, i in enumerate(idx):
                    lp = rollout.sampler_logps[i][:ids.shape[1]]
                    sampled[j, :len(lp)] = torch.tensor(lp, dtype=torch.float32)
                batch["sampled"] = sampled.to(dev)
            out.append(batch)
        return out

    def update(self, rollout: Rollout) -> dict[str, float]:
        """``num_iterations`` optimizer steps on the rollout; returns loss and ratio statistics."""
        c, acc = self.config, self.accelerator
        adv_full = self.advantages(rollout).to(acc.device)
        filtered = self._filter_advantages(rollout, adv_full) if c.advantage_filter else None
        if filtered is not None:
            adv_full = filtered.advantages.to(acc.device)
        batches = self._micro_batches(rollout)
        B = len(rollout.completion_ids)
        active = sum(float(b["mask"].sum()) for b in batches)
        total_active = float(acc.gather(torch.tensor([active], device=acc.device)).sum())
        stored_old = c.num_iterations > 1
        with torch.no_grad():
            for b in batches:
                T = b["ids"].shape[1]
                b["adv"] = adv_full[b["idx"], :T]
                if stored_old:
                    b["old"] = self._logps(self.model, b)[0]
                if c.beta > 0:
                    b["ref"] = self._ref_logps(b)
        stats: Counter[str] = Counter()
        gap_max, gap_sum, gap_n = 0.0, 0.0, 0.0
        for it in range(c.num_iterations):
            for j, b in enumerate(batches):
                sync = contextlib.nullcontext() if j == len(batches) - 1 else acc.no_sync(self.model)
                with sync:
                    logps, entropy = self._logps(self.model, b)
                    old = b["old"] if stored_old else logps.detach()
                    scale = {"dapo": 1.0, "dr_grpo": len(b["idx"]) / B}.get(c.loss_type, 1.0 / len(batches))
                    loss = policy_loss(logps, old, b["adv"], b["mask"], loss_type=c.loss_type, epsilon=c.epsilon,
                                       epsilon_high=c.epsilon_high, beta=c.beta, ref_logps=b.get("ref"),
                                       importance_sampling_level=c.importance_sampling_level,
                                       max_completion_length=c.max_completion_length,
                                       num_items_in_batch=total_active, num_processes=acc.num_processes,
                                       log_ratio_clip=c.pre_clip_bound if c.pre_clip_log_ratio else None) * scale
                    acc.backward(loss)
                stats["loss"] += float(loss.detach())
                _ratio_stats(stats, logps.detach(), old, b["mask"].float(), b["adv"], c, entropy, b.get("ref"))
                if it == 0 and "sampled" in b:  # before any update: the trainer's policy is the sampler's
                    m = b["mask"].bool()
                    if m.any():
                        gap = (logps.detach() - b["sampled"])[m].abs()
                        gap_max, gap_sum, gap_n = max(gap_max, float(gap.max())), gap_sum + float(gap.sum()), gap_n + gap.numel()
            grad_norm = acc.clip_grad_norm_(self.model.parameters(), c.max_grad_norm) if c.max_grad_norm else None
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            if grad_norm is not None:
                stats["grad_norm"] += float(grad_norm)
        n_tok = max(1.0, stats.pop("_tokens"))
        out = {"loss": stats["loss"] / c.num_iterations, "grad_norm": stats["grad_norm"] / c.num_iterations,
               "lr": self.scheduler.get_last_lr()[0]}
        for k in ("clip/low", "clip/high", "clip/region", "ratio/mean", "entropy", "kl"):
            if k in stats:
                out[k] = stats[k] / n_tok
        if filtered is not None:
            out["advantage/filtered_share"] = filtered.dropped_share
            out["advantage/filter_std"] = filtered.std
        if gap_n:
            out["logprob/sampler_gap_max"] = gap_max
            out["logprob/sampler_gap_mean"] = gap_sum / gap_n
            if gap_max > 1e-3:
                log.warning("sampler and trainer log-probs differ by up to %.3g nats on one token (mean %.3g) before "
                            "the first update: precision (bf16/fp16), dropout or a non-deterministic kernel", gap_max,
                            gap_sum / gap_n)
        return out

    def _logps(self, model: Any, b: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs and entropies of a micro-batch under the sampling distribution (temperature,
        suppressed tokens, top-k / top-p), as :meth:`sample` draws them."""
        c = self.config
        return completion_logps(model, b["inputs"], b["ids"], b["mask"], c.temperature, top_k=c.top_k, top_p=c.top_p,
                                suppress=self.suppress)

    def _ref_logps(self, b: dict[str, Any]) -> torch.Tensor:
        model = self.accelerator.unwrap_model(self.model)
        if self.ref_model is not None:
            return self._logps(self.ref_model, b)[0]
        with model.disable_adapter():
            return self._logps(self.model, b)[0]

    # ------------------------------------------------------------------------------------------- step
    def step(self) -> dict[str, Any]:
        """One GRPO step: sample, score, (refill), advantages, update, metrics."""
        c = self.config
        t0 = time.perf_counter()
        rollout = self.rollout(self._next_prompts())
        if c.dynamic_sampling:
            rollout = self._dynamic_sampling(rollout)
        t1 = time.perf_counter()
        train = self.update(rollout)
        t2 = time.perf_counter()
        self.step_count += 1
        self._last_rollout = rollout
        metrics = self._metrics(rollout, train)
        metrics.update({f"time/{k}": v for k, v in rollout.seconds.items()})
        metrics.update({"time/rollout": t1 - t0, "time/train": t2 - t1, "time/step": t2 - t0})
        return metrics

    def _metrics(self, rollout: Rollout, train: dict[str, float]) -> dict[str, Any]:
        acc, G = self.accelerator, self.config.num_generations
        r = acc.gather(rollout.rewards.to(acc.device)).cpu()
        lengths = torch.tensor([float(len(x)) for x in rollout.completion_ids], device=acc.device)
        lengths = acc.gather(lengths).cpu()
        tokens = float(acc.gather(torch.tensor([float(rollout.tokens_sampled)], device=acc.device)).sum())
        adv = group_advantages(r, G, scale=self.config.scale_rewards)
        valid = r[~torch.isnan(r)]
        m: dict[str, Any] = {"step": self.step_count, "reward/mean": float(valid.mean()) if valid.numel() else math.nan,
                             "reward/std": float(valid.std()) if valid.numel() > 1 else 0.0,
                             "reward/not_applicable": int(torch.isnan(r).sum()),
                             "advantage/abs_mean": float(adv.abs().mean()),
                             "completion/length_mean": float(lengths.mean()), "completion/length_max": float(lengths.max()),
                             "completion/truncated": sum(rollout.truncated) / max(1, len(rollout.truncated)),
                             "tokens/sampled": tokens, "tokens/per_leaf": tokens / max(1, lengths.numel()),
                             "tokens/per_leaf_if_independent": float(lengths.mean()),
                             "completion/distinct_per_group": _distinct_share(rollout.completion_ids, G),
                             "dynamic_sampling/dropped_groups": rollout.dropped_groups,
                             "data/cursor": self.cursor}
        m.update({f"reward/{k}": v for k, v in rollout.reward_metrics.items()})
        kinds = Counter((s.rendered.error_kind or "unknown") for s in rollout.samples
                        if s.rendered is not None and not s.rendered.ok)
        no_code = sum(1 for s in rollout.samples if s.rendered is None)
        m["render/ok"] = sum(1 for s in rollout.samples if s.rendered is not None and s.rendered.ok) / max(1, len(rollout.samples))
        m["render/failed/no_code"] = no_code
        m.update({f"render/failed/{k}": v for k, v in kinds.items()})
        m.update(train)
        return m

    # ------------------------------------------------------------------------------------------- loop
    def train(self, callbacks: Sequence[Callback] = ()) -> list[dict[str, Any]]:
        """Run until ``max_steps``; returns the per-step metrics (also in ``output_dir/metrics.jsonl``).

        ``callbacks`` (``callback(trainer, metrics) -> stop?``) run after every logged step; one that
        returns True ends the run there (final eval, checkpoint and curves still follow)."""
        c, acc = self.config, self.accelerator
        if acc.is_main_process:
            self.metrics_log.start(self.step_count)
        if self.eval_rows and c.eval_before and self.step_count == 0:
            self.evaluate()
        bar = progress_bar(c.max_steps, initial=self.step_count, desc="grpo", unit="step",
                           enabled=c.progress and acc.is_main_process, output_dir=self.out)
        budget = TimeBudget(c.max_minutes, acc)
        try:
            while self.step_count < c.max_steps:
                if budget.spent():
                    log.info("max_minutes %.1f reached after %d steps", c.max_minutes, self.step_count)
                    break
                metrics = self.step()
                self._log(metrics)
                bar.update(1)
                bar.set_postfix(**reward_postfix(metrics), loss=f"{metrics['loss']:.4f}")
                if c.log_completions and self.step_count % max(1, c.log_completions_every) in (0, 1):
                    self._save_completions(self._last_rollout)
                if c.eval_every and self.eval_rows and self.step_count % c.eval_every == 0 and self.step_count < c.max_steps:
                    self.evaluate()
                if c.save_every and self.step_count % c.save_every == 0:
                    self.save_checkpoint()
                if run_callbacks(callbacks, self, metrics):
                    log.info("a callback stopped the run after %d steps", self.step_count)
                    break
        finally:
            bar.close()
        if self.eval_rows:
            self.evaluate()
        self.save_checkpoint(final=True)
        if acc.is_main_process:
            curves = plot_curves(self.out / "metrics.jsonl", self.out / "curves.png")
            if len(self.eval_dirs) >= 2:
                from ..report.compare import compare_evals

                table = compare_evals(self.eval_dirs[0], self.eval_dirs[-1], self.out / "comparison.html",
                                      title=f"GRPO: held-out before (step {self.eval_steps[0]}) / after "
                                            f"(step {self.eval_steps[-1]})", curves=curves)
                for name, t in table.items():
                    d = t["difference"]
                    log.info("held-out %s: %.4f -> %.4f, paired difference %+.4f [%+.4f, %+.4f]", name,
                             t["before"][0], t["after"][0], d[0], d[1], d[2])
        for tracker in acc.trackers:  # not end_training(): it would tear down the caller's process group
            tracker.finish()
        return self.history

    _last_rollout: Rollout | None = None

    @property
    def metrics_log(self) -> MetricsLog:
        """``output_dir/metrics.jsonl`` (one line per step)."""
        return MetricsLog(self.out / "metrics.jsonl")

    def _log(self, metrics: dict[str, Any]) -> None:
        self.history.append(metrics)
        acc = self.accelerator
        acc.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=self.step_count)
        if acc.is_main_process:
            self.metrics_log.append(metrics)
        children = " ".join(f"{k[7:-5]} {v:.4f}" for k, v in metrics.items()
                            if k.startswith("reward/") and k.endswith("/mean") and k != "reward/mean")
        log.info("step %d reward %.4f (%s) loss %.5f tokens/leaf %.1f (%.1fs)", self.step_count, metrics["reward/mean"],
                 children or "-", metrics["loss"], metrics["tokens/per_leaf"], metrics["time/step"])

    def _save_completions(self, rollout: Rollout | None) -> None:
        if rollout is None or not self.accelerator.is_main_process:
            return
        d = self.out / "completions" / f"step_{self.step_count:06d}"
        d.mkdir(parents=True, exist_ok=True)
        with open(d / "completions.jsonl", "w", encoding="utf-8") as f:
            for i, s in enumerate(rollout.samples[: self.config.log_completions]):
                rec = {"row_id": s.metadata.get("row_id"), "completion": s.completion,
                       "reward": None if math.isnan(float(rollout.rewards[i])) else float(rollout.rewards[i]),
                       "render_ok": bool(s.rendered and s.rendered.ok),
                       "error_kind": s.rendered.error_kind if s.rendered is not None else "no_code"}
                if s.generated_image is not None:
                    s.generated_image.save(d / f"{i}.png")
                    rec["render_png"] = f"{i}.png"
                f.write(json.dumps(rec) + "\n")

    # ------------------------------------------------------------------------------------------- eval
    def _completions(self, rows: Sequence[dict[str, Any]], plan: TreeSampling,
                     **sampling: Any) -> list[tuple[dict[str, Any], list[str]]]:
        """``(row, completion texts)`` for this process's share of ``rows`` (every N-th across processes),
        ``generation_batch_size`` prompts at a time; row ``i`` of ``rows`` samples at stream position ``i``
        (``sampling``: :meth:`sample`'s ``greedy``, ``temperature`` and ``stream``)."""
        c, acc = self.config, self.accelerator
        mine = list(enumerate(rows))[acc.process_index::acc.num_processes]
        out = []
        for b in range(0, len(mine), c.generation_batch_size):
            chunk = mine[b:b + c.generation_batch_size]
            groups = self.sample([r for _, r in chunk], [i for i, _ in chunk], plan=plan, **sampling)
            out += [(row, self.tokenizer.batch_decode(g.completions, skip_special_tokens=True))
                    for (_, row), g in zip(chunk, groups, strict=True)]
        return out

    def greedy_completions(self, rows: Sequence[dict[str, Any]]) -> list[tuple[dict[str, Any], str]]:
        """``(row, greedy completion)`` for this process's share of ``rows``."""
        return [(row, texts[0]) for row, texts in self._completions(rows, TreeSampling(1), greedy=True)]

    def eval_completions(self, rows: Sequence[dict[str, Any]]) -> list[tuple[dict[str, Any], str, int | None]]:
        """``(row, completion, sample index)`` for this process's share of ``rows``: the greedy completion
        (index ``None``), or with ``eval_samples`` K, K completions sampled at ``eval_temperature``, row ``i``
        of ``rows`` with a generator seeded by ``(seed, "eval", i)``: the same random numbers for every
        checkpoint of a run (paired draws) and for any batching or process count."""
        c = self.config
        if not c.eval_samples:
            return [(row, text, None) for row, text in self.greedy_completions(rows)]
        groups = self._completions(rows, TreeSampling(c.eval_samples, mode="independent"),
                                   temperature=c.eval_temperature, stream="eval")
        return [(row, text, k) for row, texts in groups for k, text in enumerate(texts)]

    def evaluate(self, tag: str | None = None) -> dict[str, Any]:
        """Greedy completions for the held-out rows (or ``eval_samples`` sampled ones each, ids
        ``<row id>#s<k>``), scored by the configured rewards through the eval report
        (``output_dir/eval/<tag>/report.html``); returns the summary and logs ``eval/*``."""
        from ..evaluate import run_eval
        from ..report.compare import sample_id

        c, acc = self.config, self.accelerator
        tag = tag or f"step_{self.step_count:06d}"
        d = self.out / "eval" / tag
        gathered = _gather_objects(acc, self.eval_completions(self.eval_rows))
        summary: dict[str, Any] = {}
        if acc.is_main_process:
            if d.exists():  # scores of other completions (an earlier run, or a resumed one's): never reused
                shutil.rmtree(d)
            (d / "refs").mkdir(parents=True, exist_ok=True)
            with open(d / "generations.jsonl", "w", encoding="utf-8") as f:
                for row, text, k in gathered:
                    rec = {"id": row["id"] if k is None else sample_id(row["id"], k), "completion": text,
                           "prompt": self._instruction(row)}
                    if row.get("image") is not None:
                        name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in row["id"])[:100]
                        if not k:  # the reference once per row
                            row["image"].save(d / "refs" / f"{name}.png")
                        rec["reference_image"] = f"refs/{name}.png"
                    if row.get("code"):
                        rec["reference_code"] = row["code"]
                    f.write(json.dumps(rec) + "\n")
            names, _, options = reward_specs(c.rewards)
            if "execution" not in names:
                names.insert(0, "execution")
            summary = run_eval(d / "generations.jsonl", KIND_TO_TASK.get(c.kind, "chart"), names, d / "report",
                               workers=c.render_workers, timeout=c.render_timeout, progress=False,
                               reward_options=options, render_options=c.render_options,
                               title=f"visalign GRPO eval · {tag}" + (
                                   f" · {c.eval_samples} samples a row at T="
                                   f"{c.temperature if c.eval_temperature is None else c.eval_temperature}"
                                   if c.eval_samples else " · greedy"))
            flat = {f"eval/{n}/mean": s["mean"] for n, s in summary["rewards"].items()}
            acc.log(flat, step=self.step_count)
            self.eval_dirs.append(d / "report")
            self.eval_steps.append(self.step_count)
            MetricsLog(self.out / "eval.jsonl").append({"step": self.step_count, "tag": tag, **flat})
            log.info("eval %s: %s", tag, ", ".join(f"{k} {v:.4f}" for k, v in flat.items()))
        acc.wait_for_everyone()
        return summary

    # ------------------------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, final: bool = False) -> Path:
        """``output_dir/checkpoint-<step>``: accelerate state (weights, optimizer, scheduler, RNG of every
        process), the model or adapter and processor as ``from_pretrained`` reads them, and the trainer's
        step and data position."""
        acc = self.accelerator
        d = self.out / f"checkpoint-{self.step_count:06d}"
        acc.save_state(str(d / "state"))
        if acc.is_main_process:
            acc.unwrap_model(self.model).save_pretrained(d / "model")
            self.processor.save_pretrained(d / "model")
            (d / "trainer_state.json").write_text(json.dumps({"step": self.step_count, "cursor": self.cursor}))
            if final:
                (self.out / "final.txt").write_text(f"{d.name}/model\n")  # where the final weights are
        acc.wait_for_everyone()
        return d

    def load_checkpoint(self, path: str | Path) -> None:
        """Resume from ``path`` (a checkpoint directory) or ``"latest"``: the newest ``checkpoint-<N>`` in
        ``output_dir`` (none yet: a fresh start, logged). Lines of ``metrics.jsonl`` / ``eval.jsonl``
        logged after the checkpoint are dropped."""
        found = resolve_checkpoint(self.out, path)
        if found is None:
            return
        self.accelerator.load_state(str(found / "state"))
        state = json.loads((found / "trainer_state.json").read_text())
        self.step_count, self.cursor = int(state["step"]), int(state["cursor"])
        if self.accelerator.is_main_process:
            self.metrics_log.truncate(after=self.step_count)
            MetricsLog(self.out / "eval.jsonl").truncate(after=self.step_count)
        log.info("resumed from %s at step %d", found, self.step_count)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.service.close()
        self.reward.close()


# ------------------------------------------------------------------------------------------ helpers
def _ratio_stats(stats: Counter, logps: torch.Tensor, old: torch.Tensor, mask: torch.Tensor, adv: torch.Tensor,
                 c: VLMGRPOConfig, entropy: torch.Tensor, ref: torch.Tensor | None) -> None:
    ratio = torch.exp(logps - old)
    hi = 1 + (c.epsilon if c.epsilon_high is None else c.epsilon_high)
    low = (ratio < 1 - c.epsilon) & (adv < 0)
    high = (ratio > hi) & (adv > 0)
    stats["clip/low"] += float((low * mask).sum())
    stats["clip/high"] += float((high * mask).sum())
    stats["clip/region"] += float(((low | high) * mask).sum())
    stats["ratio/mean"] += float((ratio * mask).sum())
    stats["entropy"] += float((entropy * mask).sum())
    if ref is not None:
        d = ref - logps
        stats["kl"] += float(((torch.exp(d) - d - 1) * mask).sum())
    stats["_tokens"] += float(mask.sum())


def _distinct_share(completions: Sequence[Sequence[int]], group_size: int) -> float:
    """Mean share of distinct completions in a group (1 = all different): how much variety a group's
    advantages can work with, which tree sampling with late splits can lower."""
    groups = [completions[g:g + group_size] for g in range(0, len(completions), group_size)]
    return sum(len({tuple(c) for c in grp}) / len(grp) for grp in groups) / max(1, len(groups))


def _flat_group(rewards: torch.Tensor) -> bool:
    valid = rewards[~torch.isnan(rewards)]
    return valid.numel() < 2 or bool((valid.max() - valid.min()).abs() < 1e-9)


def _split_groups(r: Rollout, G: int) -> list[Rollout]:
    return [Rollout(rows=[r.rows[g]], completion_ids=r.completion_ids[g * G:(g + 1) * G], truncated=r.truncated[g * G:(g + 1) * G],
                    sampler_logps=r.sampler_logps[g * G:(g + 1) * G],
                    texts=r.texts[g * G:(g + 1) * G], samples=r.samples[g * G:(g + 1) * G], rewards=r.rewards[g * G:(g + 1) * G],
                    tokens_sampled=r.tokens_sampled // max(1, len(r.rows)), reward_metrics=r.reward_metrics)
            for g in range(len(r.rows))]


def _merge_groups(parts: Sequence[Rollout]) -> Rollout:
    return Rollout(rows=[x for p in parts for x in p.rows], completion_ids=[x for p in parts for x in p.completion_ids],
                   sampler_logps=[x for p in parts for x in p.sampler_logps],
                   truncated=[x for p in parts for x in p.truncated], texts=[x for p in parts for x in p.texts],
                   samples=[x for p in parts for x in p.samples], rewards=torch.cat([p.rewards for p in parts]),
                   tokens_sampled=sum(p.tokens_sampled for p in parts),
                   reward_metrics=parts[0].reward_metrics if parts else {})


def _gather_objects(acc: Any, items: list[Any]) -> list[Any]:
    if acc.num_processes == 1:
        return items
    from accelerate.utils import gather_object

    return gather_object(items)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[key] = "None" if v is None else v
        else:
            out[key] = json.dumps(v)
    return out


def train_grpo_from_config(source: str | Path | dict[str, Any], **overrides: Any) -> VLMGRPOTrainer:
    """Build a :class:`VLMGRPOTrainer` from a YAML file or mapping (a ``grpo:`` section or top-level
    options), train it, and return it."""
    config = load_config(VLMGRPOConfig, source, section="grpo", **overrides)
    trainer = VLMGRPOTrainer(config)
    try:
        trainer.train()
    finally:
        trainer.close()
    return trainer

