"""Supervised fine-tuning of a code-writing VLM: the warm start of MSRL's SFT-then-RL recipe.

Rows are ``(image, prompt, code)`` (see :mod:`visalign.data.loaders`). Each is encoded exactly as the
GRPO trainer prompts the policy (:func:`~visalign.trainers.prompting.encode_prompts`: the chat
template, left padding, never a truncated prompt) and the answer is the bare code followed by EOS,
tokenized on its own as the policy will generate it. The loss is the mean cross-entropy over the
answer tokens, EOS included; prompt and padding tokens are labelled -100.

The loop reads top to bottom: batch -> forward -> backward -> clip -> step -> log / eval / save.
``accelerate`` handles the device, mixed precision, gradient accumulation and DDP
(``accelerate launch -m visalign.cli train sft CONFIG``); LoRA comes from ``peft``.

Example:
    >>> cfg = load_config(SFTConfig, {"model": "models/tiny-chart-vlm", "train_data": "train.jsonl"}, max_steps=5)
    >>> cfg.max_steps, cfg.lr_scheduler, cfg.use_lora
    (5, 'cosine', False)
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from .config import load_config, option, save_config
from .prompting import encode_prompts, vision_token_ids
from .runtime import (
    MetricsLog,
    TimeBudget,
    make_accelerator,
    plot_curves,
    prepare_output_dir,
    progress_bar,
    reset_rope_deltas,
)

__all__ = [
    "SFTConfig",
    "SFTTrainer",
    "build_sft_batch",
    "generate_codes",
    "reset_rope_deltas",
    "train_sft_from_config",
]

#: What :meth:`SFTTrainer.save` writes straight into ``output_dir`` (``save_pretrained`` of the model or
#: LoRA adapter and of the processor, the optimizer state): a previous run's, for
#: :func:`~visalign.trainers.runtime.prepare_output_dir`, besides its metrics and checkpoints.
FINAL_ARTEFACTS: tuple[str, ...] = (
    "config.json", "generation_config.json", "*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin",
    "adapter_config.json", "adapter_model.*", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt", "chat_template.*",
    "preprocessor_config.json", "video_preprocessor_config.json", "processor_config.json",
    "optimizer.pt", "scheduler.pt", "trainer_state.json")


@dataclass
class SFTConfig:
    """Options of :class:`SFTTrainer` (``visalign train sft CONFIG`` reads them from YAML)."""

    model: str | None = option(None, "path of the model to fine-tune (AutoModelForImageTextToText + "
                               "AutoProcessor); may be None when the trainer is handed a model")
    train_data: str | list[str] | None = option(
        None, "training rows: a .jsonl / .parquet file, a datasets save_to_disk directory, or a list of them")
    eval_data: str | None = option(None, "held-out rows for the eval loss (same formats)")
    image_column: str = option("image", "column holding the reference image")
    code_column: str = option("code", "column holding the reference code (the answer)")
    prompt_column: str = option("prompt", "column holding the instruction (default instruction when missing)")
    kind: str = option("matplotlib", "renderer kind of the rows (picks the default instruction)")
    split: str = option("train", "split of a DatasetDict to read")
    limit: int | None = option(None, "read at most this many training rows")
    system_prompt: str | None = option(None, "optional system turn (must match the GRPO config)")
    epochs: float = option(1.0, "passes over the training rows (ignored when max_steps > 0)")
    max_steps: int = option(0, "optimizer steps; 0 = derive from epochs")
    max_minutes: float | None = option(None, "stop after this wall time (minutes), whatever the step")
    batch_size: int = option(8, "rows per micro-batch per process")
    gradient_accumulation_steps: int = option(1, "micro-batches per optimizer step")
    learning_rate: float = option(2e-5, "peak AdamW learning rate", source="TRL SFTConfig")
    lr_scheduler: str = option("cosine", "'cosine' (to 0) or 'constant', both after a linear warmup")
    warmup_steps: int = option(0, "linear warmup steps")
    weight_decay: float = option(0.0, "AdamW weight decay", source="TRL SFTConfig")
    adam_betas: tuple[float, float] = option((0.9, 0.999), "AdamW betas", source="torch")
    max_grad_norm: float | None = option(1.0, "clip the gradient norm to this (None: no clipping)",
                                         source="TRL SFTConfig")
    max_length: int = option(1024, "prompt + answer tokens; the answer is cut to fit, the prompt never")
    seed: int = option(0, "seed of the weights (LoRA), the shuffling and dropout")
    output_dir: str = option("out/sft", "where the model, processor, checkpoints and metrics.jsonl go")
    overwrite_output_dir: bool = option(False, "delete a previous run's artefacts in output_dir (its metrics, "
                                        "checkpoints and final weights) and start over (without it such an "
                                        "output_dir is refused)", source="HF Trainer")
    save_every: int = option(0, "save a checkpoint-STEP directory every this many steps (0: only at the end)")
    save_optimizer: bool = option(True, "save optimizer and scheduler states with checkpoints (for resuming)")
    log_every: int = option(10, "log the mean loss every this many steps")
    eval_every: int = option(0, "eval loss every this many steps (0: only at the end)")
    use_lora: bool = option(False, "train LoRA adapters (peft) instead of all weights")
    lora_r: int = option(16, "LoRA rank", source="peft")
    lora_alpha: int = option(32, "LoRA alpha", source="peft")
    lora_dropout: float = option(0.05, "LoRA dropout", source="peft")
    lora_target_modules: tuple[str, ...] = option(("q_proj", "k_proj", "v_proj", "o_proj"),
                                            "modules wrapped with LoRA (the language model's attention)")
    merge_lora: bool = option(False, "save the merged full model at the end instead of the adapter")
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass (less memory)")
    mixed_precision: str = option("no", "'no', 'bf16' or 'fp16' (accelerate)")
    num_threads: int | None = option(None, "torch CPU threads (None: torch's default)")
    progress: bool = option(True, "show a tqdm progress bar")


def build_sft_batch(processor: Any, images: Sequence[Image.Image | None], instructions: Sequence[str],
                    codes: Sequence[str], *, max_length: int | None = None, system: str | None = None,
                    row_ids: Sequence[Any] | None = None) -> dict[str, Any]:
    """Model inputs and labels for a batch of ``(image, instruction, code)`` rows.

    Layout per row: left padding, the prompt (as :func:`encode_prompts` makes it for generation), the
    code's tokens, EOS, right padding. ``labels`` equal ``input_ids`` on the code and EOS and are -100
    elsewhere. A prompt longer than ``max_length`` raises ``PromptTooLongError``; an answer that
    does not fit is cut (and loses its EOS).

    Example:
        >>> from visalign.models.tiny_vlm import build_processor, build_tokenizer
        >>> proc = build_processor(build_tokenizer(["import matplotlib", "Draw it."], vocab_size=280), 32)
        >>> b = build_sft_batch(proc, [Image.new("RGB", (32, 32))], ["Draw it."], ["import matplotlib"])
        >>> proc.tokenizer.decode(b["input_ids"][0][b["labels"][0] != -100])
        'import matplotlib<|im_end|>'
    """
    import torch

    if not (len(images) == len(instructions) == len(codes)):
        raise ValueError(f"{len(images)} images, {len(instructions)} instructions and {len(codes)} codes")
    prompts = encode_prompts(processor, images, instructions, max_prompt_length=max_length, system=system,
                             row_ids=row_ids)
    tok = getattr(processor, "tokenizer", processor)
    eos, pad = tok.eos_token_id, tok.pad_token_id
    if pad is None:
        pad = eos
    prompt_lengths = prompts["attention_mask"].sum(dim=1).tolist()
    answers = []
    for code, n_prompt in zip(codes, prompt_lengths, strict=True):
        ids = tok(code, add_special_tokens=False)["input_ids"] + [eos]
        if max_length is not None:
            ids = ids[: max(0, max_length - int(n_prompt))]
        answers.append(ids)
    width = max(len(a) for a in answers)
    answer_ids = torch.full((len(answers), width), pad, dtype=torch.long)
    answer_mask = torch.zeros((len(answers), width), dtype=prompts["attention_mask"].dtype)
    for i, ids in enumerate(answers):
        answer_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        answer_mask[i, : len(ids)] = 1
    labels = torch.cat([torch.full_like(prompts["input_ids"], -100),
                        answer_ids.masked_fill(answer_mask == 0, -100)], dim=1)
    batch = {k: v for k, v in prompts.items()}
    batch["input_ids"] = torch.cat([prompts["input_ids"], answer_ids], dim=1)
    batch["attention_mask"] = torch.cat([prompts["attention_mask"], answer_mask], dim=1)
    if "mm_token_type_ids" in prompts:  # 0 = text for the answer tokens
        batch["mm_token_type_ids"] = torch.cat(
            [prompts["mm_token_type_ids"], torch.zeros_like(answer_ids, dtype=prompts["mm_token_type_ids"].dtype)],
            dim=1)
    batch["labels"] = labels
    return batch


def generate_codes(model: Any, processor: Any, images: Sequence[Image.Image | None],
                   instructions: Sequence[str], *, max_new_tokens: int = 128, do_sample: bool = False,
                   temperature: float = 1.0, batch_size: int = 16, system: str | None = None) -> list[str]:
    """Completions of ``model`` for ``(image, instruction)`` prompts (greedy by default), decoded
    without special tokens. Vision tokens are suppressed and ``rope_deltas`` reset per call."""
    import torch

    was_training = model.training
    model.eval()
    out: list[str] = []
    suppress = vision_token_ids(model) or None
    tok = getattr(processor, "tokenizer", processor)
    try:
        for start in range(0, len(images), batch_size):
            inputs = encode_prompts(processor, images[start:start + batch_size],
                                    instructions[start:start + batch_size], system=system)
            inputs = inputs.to(model.device)
            reset_rope_deltas(model)
            kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": do_sample,
                                      "suppress_tokens": suppress, "pad_token_id": tok.pad_token_id}
            if do_sample:
                kwargs["temperature"] = temperature
            else:
                kwargs.update(temperature=None, top_p=None, top_k=None)
            with torch.no_grad():
                seqs = model.generate(**inputs, **kwargs)
            new = seqs[:, inputs["input_ids"].shape[1]:]
            out += tok.batch_decode(new, skip_special_tokens=True)
    finally:
        reset_rope_deltas(model)
        model.train(was_training)
    return out


def _load_sources(sources: str | Sequence[str] | None, config: SFTConfig, limit: int | None) -> list[dict[str, Any]]:
    from ..data.loaders import load_rows

    if sources is None:
        return []
    paths = [sources] if isinstance(sources, (str, Path)) else list(sources)
    rows: list[dict[str, Any]] = []
    for p in paths:
        rows += load_rows(p, image_column=config.image_column, code_column=config.code_column,
                          prompt_column=config.prompt_column, kind=config.kind, split=config.split, limit=limit)
    return rows


def _check_rows(rows: Sequence[Mapping[str, Any]], what: str) -> list[Mapping[str, Any]]:
    rows = list(rows)
    missing = [r.get("id", i) for i, r in enumerate(rows) if not r.get("code") or r.get("image") is None]
    if missing:
        raise ValueError(f"SFT needs an image and code in every {what} row; {len(missing)} lack one "
                         f"(first: {missing[:5]})")
    return rows


class SFTTrainer:
    """Supervised fine-tuning of an image-to-code VLM on ``(image, prompt, code)`` rows.

    Args:
        config: the options (:class:`SFTConfig`).
        model: a model to train instead of ``config.model`` (e.g. a freshly built tiny one).
        processor: its processor (required with ``model`` unless ``config.model`` names one).
        train_rows / eval_rows: rows in memory instead of ``config.train_data`` / ``eval_data``.

    ``train()`` writes ``output_dir/metrics.jsonl`` (one line per log: step, loss, lr, seconds,
    epoch; eval lines carry ``eval_loss``), ``checkpoint-STEP/`` directories every ``save_every`` steps,
    and the final model + processor in ``output_dir``.
    """

    def __init__(self, config: SFTConfig, model: Any = None, processor: Any = None,
                 train_rows: Sequence[Mapping[str, Any]] | None = None,
                 eval_rows: Sequence[Mapping[str, Any]] | None = None) -> None:
        import torch
        from accelerate.utils import set_seed

        self.config = config
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        if config.lr_scheduler not in ("cosine", "constant"):
            raise ValueError(f"lr_scheduler must be 'cosine' or 'constant', got {config.lr_scheduler!r}")
        self.accelerator = make_accelerator(mixed_precision=config.mixed_precision,
                                       gradient_accumulation_steps=config.gradient_accumulation_steps)
        # one run per output_dir, decided before the model loads; the final weights go straight into it
        self.output_dir = prepare_output_dir(config.output_dir, overwrite=config.overwrite_output_dir,
                                             extra=FINAL_ARTEFACTS, main_process=self.accelerator.is_main_process)
        set_seed(config.seed)
        if model is None or processor is None:
            if config.model is None:
                raise ValueError("SFTConfig.model is None and no model / processor was given")
            from transformers import AutoModelForImageTextToText, AutoProcessor

            model = model if model is not None else AutoModelForImageTextToText.from_pretrained(config.model)
            processor = processor if processor is not None else AutoProcessor.from_pretrained(config.model)
        self.processor = processor
        rows = train_rows if train_rows is not None else _load_sources(config.train_data, config, config.limit)
        if train_rows is not None and config.limit is not None:
            rows = list(rows)[: config.limit]
        if not rows:
            raise ValueError("no training rows: set SFTConfig.train_data or pass train_rows")
        self.train_rows = _check_rows(rows, "training")
        evals = eval_rows if eval_rows is not None else _load_sources(config.eval_data, config, None)
        self.eval_rows = _check_rows(evals, "eval") if evals else []

        if config.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            if config.use_lora:
                model.enable_input_require_grads()
        if config.use_lora:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                                                     lora_dropout=config.lora_dropout,
                                                     target_modules=list(config.lora_target_modules)))
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay,
                                      betas=tuple(config.adam_betas))
        generator = torch.Generator().manual_seed(config.seed)
        loader = torch.utils.data.DataLoader(self.train_rows, batch_size=config.batch_size, shuffle=True,
                                             collate_fn=self._collate, generator=generator)
        self.model, self.optimizer, self.loader = self.accelerator.prepare(model, optimizer, loader)
        self.eval_loader = None
        if self.eval_rows:
            eval_loader = torch.utils.data.DataLoader(self.eval_rows, batch_size=config.batch_size,
                                                      collate_fn=self._collate)
            self.eval_loader = self.accelerator.prepare(eval_loader)
        per_epoch = max(1, math.ceil(len(self.loader) / config.gradient_accumulation_steps))
        self.total_steps = config.max_steps if config.max_steps > 0 else max(1, math.ceil(config.epochs * per_epoch))
        self.scheduler = self._scheduler()
        self.step = 0

    def _scheduler(self) -> Any:
        from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

        if self.config.lr_scheduler == "cosine":
            return get_cosine_schedule_with_warmup(self.optimizer, self.config.warmup_steps, self.total_steps)
        return get_constant_schedule_with_warmup(self.optimizer, self.config.warmup_steps)

    def _collate(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return build_sft_batch(self.processor, [r["image"] for r in rows], [r["prompt"] for r in rows],
                               [r["code"] for r in rows], max_length=self.config.max_length,
                               system=self.config.system_prompt, row_ids=[r.get("id") for r in rows])

    def _forward_loss(self, batch: Mapping[str, Any]) -> Any:
        reset_rope_deltas(self.model)
        return self.model(**batch, use_cache=False).loss

    def _batches(self) -> Iterator[Mapping[str, Any]]:
        epoch = 0
        while True:
            if hasattr(self.loader, "set_epoch"):
                self.loader.set_epoch(epoch)
            yield from self.loader
            epoch += 1

    def _log(self, record: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            MetricsLog(self.output_dir / "metrics.jsonl").append(record)

    def evaluate(self) -> float | None:
        """Mean loss over the eval rows (None without eval rows)."""
        import torch

        if self.eval_loader is None:
            return None
        self.model.eval()
        losses = []
        with torch.no_grad():
            for batch in self.eval_loader:
                losses.append(self.accelerator.gather_for_metrics(self._forward_loss(batch).detach().reshape(1)))
        self.model.train()
        return float(torch.cat(losses).mean())

    def train(self) -> dict[str, Any]:
        """Run the optimizer steps; returns ``dict(steps, loss, eval_loss, seconds, output_dir)``."""
        cfg, acc = self.config, self.accelerator
        self.model.train()
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.output_dir / "sft_config.yaml")
            MetricsLog(self.output_dir / "metrics.jsonl").start(self.step)
        params = [p for p in self.model.parameters() if p.requires_grad]
        bar = progress_bar(self.total_steps, initial=self.step, desc="sft",
                           enabled=cfg.progress and acc.is_main_process, output_dir=self.output_dir)
        budget = TimeBudget(cfg.max_minutes, acc)
        start = time.perf_counter()
        window: list[float] = []
        last_loss = float("nan")
        eval_loss = None
        micro = 0
        for batch in self._batches():
            with acc.accumulate(self.model):
                loss = self._forward_loss(batch)
                acc.backward(loss)
                if acc.sync_gradients and cfg.max_grad_norm:
                    acc.clip_grad_norm_(params, cfg.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad()
            micro += 1
            window.append(float(loss.detach()))
            if not acc.sync_gradients:
                continue
            self.scheduler.step()
            self.step += 1
            bar.update(1)
            elapsed = time.perf_counter() - start
            done = self.step >= self.total_steps or budget.spent()  # alike on every process
            if self.step % max(1, cfg.log_every) == 0 or done:
                last_loss = sum(window) / len(window)
                window = []
                bar.set_postfix(loss=f"{last_loss:.4f}")
                self._log({"step": self.step, "loss": round(last_loss, 6),
                           "lr": self.scheduler.get_last_lr()[0], "seconds": round(elapsed, 2),
                           "epoch": round(micro / max(1, len(self.loader)), 4)})
            if cfg.eval_every and self.step % cfg.eval_every == 0 and not done:
                eval_loss = self.evaluate()
                if eval_loss is not None:
                    self._log({"step": self.step, "eval_loss": round(eval_loss, 6),
                               "seconds": round(time.perf_counter() - start, 2)})
            if cfg.save_every and self.step % cfg.save_every == 0 and not done:
                self.save(self.output_dir / f"checkpoint-{self.step}", final=False)
            if done:
                break
        bar.close()
        seconds = time.perf_counter() - start
        if self.eval_loader is not None:
            eval_loss = self.evaluate()
            self._log({"step": self.step, "eval_loss": round(eval_loss, 6), "seconds": round(seconds, 2)})
        self.save(self.output_dir, final=True)
        if acc.is_main_process:
            plot_curves(self.output_dir / "metrics.jsonl", self.output_dir / "curves.png", ("loss", "lr"),
                        eval_keys=("eval_loss",))
        return {"steps": self.step, "loss": last_loss, "eval_loss": eval_loss, "seconds": seconds,
                "output_dir": str(self.output_dir)}

    def save(self, directory: str | Path, final: bool = True) -> Path:
        """Write the model (or LoRA adapter) and processor with ``save_pretrained``, plus the optimizer
        and scheduler states and ``trainer_state.json`` when ``save_optimizer``."""
        import torch

        directory = Path(directory)
        acc = self.accelerator
        acc.wait_for_everyone()
        if acc.is_main_process:
            directory.mkdir(parents=True, exist_ok=True)
            model = acc.unwrap_model(self.model)
            if final and self.config.use_lora and self.config.merge_lora:
                model = model.merge_and_unload()
            model.save_pretrained(directory)
            self.processor.save_pretrained(directory)
            if self.config.save_optimizer:
                torch.save(self.optimizer.state_dict(), directory / "optimizer.pt")
                torch.save(self.scheduler.state_dict(), directory / "scheduler.pt")
                (directory / "trainer_state.json").write_text(json.dumps({"step": self.step,
                                                                          "total_steps": self.total_steps}))
        acc.wait_for_everyone()
        return directory


def train_sft_from_config(source: str | Path | Mapping[str, Any], **overrides: Any) -> dict[str, Any]:
    """``visalign train sft CONFIG``: load an :class:`SFTConfig` (a YAML file with the options at the
    top level or under ``sft:``, or a mapping), train, and return :meth:`SFTTrainer.train`'s summary."""
    config = load_config(SFTConfig, source, section="sft", **overrides)
    return SFTTrainer(config).train()
