"""Supervised fine-tuning of a code-writing VLM: the warm start of MSRL's SFT-then-RL recipe.

Rows are ``(image, prompt, code)`` (see :mod:`visalign.data.loaders`). Each is encoded exactly as the
GRPO trainer prompts the policy (:func:`~visalign.trainers.prompting.encode_prompts`: the chat
template, left padding, never a truncated prompt) and the answer is the bare code followed by EOS,
tokenized on its own as the policy will generate it. The loss is the mean cross-entropy over the
answer tokens, EOS included; prompt and padding tokens are labelled -100.

The loop reads top to bottom: batch -> forward -> backward -> clip -> step -> log / eval / save.
``accelerate`` handles the device, mixed precision, gradient accumulation and DDP
(``accelerate launch -m visalign.cli train sft CONFIG``); LoRA comes from ``peft``.

Batches follow a permutation of the rows seeded by ``(seed, epoch)``, so the data position is one number
(micro-batches consumed). A save (``checkpoint-STEP/``, and the final one in ``output_dir``) is what
``from_pretrained`` reads, plus, with ``save_optimizer``, the optimizer, scheduler, RNG states of every
process and that position: ``resume_from`` continues a run where it stopped, and the resumed run
trains on the same batches with the same dropout as an uninterrupted one (the weights match, tested).

Example:
    >>> cfg = load_config(SFTConfig, {"model": "models/tiny-chart-vlm", "train_data": "train.jsonl"}, max_steps=5)
    >>> cfg.max_steps, cfg.lr_scheduler, cfg.lora
    (5, 'cosine', False)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image

from .config import load_config, option, save_config, shared_option
from .prompting import encode_prompts, vision_token_ids
from .runtime import (
    MetricsLog,
    OutputDirError,
    TimeBudget,
    checkpoint_step,
    make_accelerator,
    plot_curves,
    prepare_output_dir,
    progress_bar,
    reset_rope_deltas,
    resolve_checkpoint,
    rng_state,
    set_rng_state,
)

log = logging.getLogger("visalign.train")

__all__ = [
    "SFTConfig",
    "SFTTrainer",
    "build_sft_batch",
    "find_resume_checkpoint",
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
    "optimizer.pt", "scheduler.pt", "scaler.pt", "rng_*.pt", "trainer_state.json")

#: Written last by every save with ``save_optimizer``: its presence marks a complete, resumable save.
TRAINER_STATE = "trainer_state.json"


@dataclass
class SFTConfig:
    """Options of :class:`SFTTrainer` (``visalign train sft CONFIG`` reads them from YAML)."""

    RENAMED_OPTIONS: ClassVar[tuple[str, ...]] = ("use_lora",)  # config.VOCABULARY

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
    max_minutes: float | None = shared_option("max_minutes")
    batch_size: int = option(8, "rows per micro-batch per process")
    gradient_accumulation_steps: int = option(1, "micro-batches per optimizer step")
    learning_rate: float = option(2e-5, "peak AdamW learning rate", source="TRL SFTConfig")
    lr_scheduler: str = option("cosine", "'cosine' (to 0) or 'constant', both after a linear warmup")
    warmup_steps: int = option(0, "linear warmup steps")
    weight_decay: float = shared_option("weight_decay")
    adam_betas: tuple[float, float] = shared_option("adam_betas")
    max_grad_norm: float | None = shared_option("max_grad_norm")
    max_length: int = option(1024, "prompt + answer tokens; the answer is cut to fit, the prompt never")
    seed: int = option(0, "seed of the weights (LoRA), the shuffling and dropout")
    output_dir: str = option("out/sft", "where the model, processor, checkpoints and metrics.jsonl go")
    overwrite_output_dir: bool = shared_option("overwrite_output_dir")
    save_every: int = shared_option("save_every")
    save_optimizer: bool = option(True, "save optimizer, scheduler and RNG states and the data position with "
                                        "checkpoints (what resume_from needs)")
    resume_from: str | None = shared_option("resume_from")
    log_every: int = option(10, "log the mean loss every this many steps")
    eval_every: int = option(0, "eval loss every this many steps (0: only at the end)")
    lora: bool = shared_option("lora")
    lora_r: int = shared_option("lora_r")
    lora_alpha: int = shared_option("lora_alpha")
    lora_dropout: float = shared_option("lora_dropout", 0.05)
    lora_target_modules: tuple[str, ...] = option(("q_proj", "k_proj", "v_proj", "o_proj"),
                                            "modules wrapped with LoRA (the language model's attention)")
    merge_lora: bool = option(False, "save the merged full model at the end instead of the adapter")
    gradient_checkpointing: bool = shared_option("gradient_checkpointing")
    mixed_precision: str = shared_option("mixed_precision")
    num_threads: int | None = shared_option("num_threads")
    progress: bool = shared_option("progress")


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


class _EpochOrder:
    """The sampler of the training rows: epoch ``e`` is a permutation seeded by ``(seed, e)`` alone, so
    a resumed run finds the order of any epoch without replaying the ones before (and every process
    draws the same one, which ``accelerate`` then shards)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        import torch

        digest = hashlib.sha256(repr(("sft-order", self.seed, self.epoch)).encode()).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
        return iter(torch.randperm(self.n, generator=generator).tolist())


# ------------------------------------------------------------------------------------ resuming
def _read_state(directory: Path) -> dict[str, Any] | None:
    """The ``trainer_state.json`` of a save, None when there is none (or it cannot be read)."""
    try:
        state = json.loads((directory / TRAINER_STATE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and "step" in state else None


def find_resume_checkpoint(output_dir: str | Path, resume_from: str | Path | None) -> Path | None:
    """The save ``resume_from`` names: a directory (it must exist), or ``"latest"``: the complete save
    with the largest step among ``output_dir``'s ``checkpoint-<N>`` and its final save (a run stopped by
    ``max_minutes`` or finished keeps its last state there; a merged LoRA model is not a state to resume).
    None with ``"latest"`` and nothing saved yet: a fresh start, as in every trainer.

    Raises:
        OutputDirError: a named directory that does not exist, or ``"latest"`` where every
            ``checkpoint-<N>`` lacks its ``trainer_state.json`` (saved with ``save_optimizer: false``, or
            cut short while saving).
    """
    out = Path(output_dir)
    if not resume_from:
        return None
    if str(resume_from) != "latest":
        return resolve_checkpoint(out, resume_from)
    found: list[tuple[int, int, Path]] = []
    incomplete: list[Path] = []
    for path in (out.glob("checkpoint-*") if out.is_dir() else ()):
        if not path.is_dir() or checkpoint_step(path) is None:
            continue
        state = _read_state(path)
        if state is None:
            incomplete.append(path)
        else:
            found.append((int(state["step"]), 1, path))  # on a tie the checkpoint wins over the final save
    final = _read_state(out) if out.is_dir() else None
    if final is not None and not final.get("merged"):
        found.append((int(final["step"]), 0, out))
    if not found:
        if incomplete:
            names = ", ".join(sorted(p.name for p in incomplete)[:5])
            raise OutputDirError(f"resume_from: latest: no resumable save in {out}: {names} have no {TRAINER_STATE} "
                                 f"(saved with save_optimizer: false, or cut short while saving); set "
                                 f"overwrite_output_dir: true to start over, or choose another output_dir")
        return resolve_checkpoint(out, "latest")  # None: the log says a fresh run starts
    step, _, path = max(found)
    skipped = [p.name for p in incomplete if (checkpoint_step(p) or 0) > step]
    if skipped:
        log.warning("resume_from: latest: skipping %s (no %s: cut short while saving?)", ", ".join(skipped),
                    TRAINER_STATE)
    return path


def _check_resumable(path: Path, config: SFTConfig) -> dict[str, Any]:
    """``path``'s trainer state, after checking that this config can continue from it (before any model
    loads, so a wrong ``resume_from`` fails at once)."""
    where = f"resume_from: {path}"
    state = _read_state(path)
    if state is None:
        raise OutputDirError(f"{where} is not a resumable SFT save: it has no {TRAINER_STATE} (a checkpoint saved "
                             f"with save_optimizer: false, one cut short while saving, or not an SFT checkpoint)")
    if "micro" not in state:
        raise OutputDirError(f"{where} was saved by an older visalign without the data position and RNG states: "
                             f"the run cannot continue as it would have; start a new run from its weights "
                             f"(model: {path})")
    if state.get("merged"):
        raise OutputDirError(f"{where} holds the final model with the LoRA adapters merged in (merge_lora: true), "
                             f"not a training state; resume from one of its checkpoint-<N>")
    missing = [n for n in ("optimizer.pt", "scheduler.pt") if not (path / n).is_file()]
    if missing:
        raise OutputDirError(f"{where} lacks {', '.join(missing)}: it cannot be resumed")
    adapter = path / "adapter_config.json"
    if config.lora and not adapter.is_file():
        raise ValueError(f"{where} holds full weights (no adapter_config.json) but lora is true")
    if not config.lora and adapter.is_file():
        raise ValueError(f"{where} holds a LoRA adapter but lora is false")
    if config.lora:
        saved = json.loads(adapter.read_text())
        targets = saved.get("target_modules")
        targets = sorted(targets) if isinstance(targets, (list, tuple)) else targets
        ours = {"r": config.lora_r, "lora_alpha": config.lora_alpha,
                "target_modules": sorted(config.lora_target_modules)}
        theirs = {"r": saved.get("r"), "lora_alpha": saved.get("lora_alpha"), "target_modules": targets}
        differ = [f"{k} {theirs[k]!r} (config: {ours[k]!r})" for k in ours if theirs[k] != ours[k]]
        if differ:
            raise ValueError(f"{where}: its LoRA adapter has {', '.join(differ)}")
    return state


def _load_weights(model: Any, path: Path, use_lora: bool) -> None:
    """Load a save's trainable weights into ``model`` in place: the LoRA adapter, or (through
    ``from_pretrained``, which maps the saved names back to the model's) the full weights."""
    if use_lora:
        from peft import load_peft_weights, set_peft_model_state_dict

        result = set_peft_model_state_dict(model, load_peft_weights(str(path), device="cpu"))
        missing = [k for k in result.missing_keys if "lora_" in k]
        if missing or result.unexpected_keys:
            raise ValueError(f"resume_from: {path}: the adapter does not fit the model (missing {missing[:3]}, "
                             f"unexpected {list(result.unexpected_keys)[:3]})")
        return
    saved = type(model).from_pretrained(path)
    model.load_state_dict(saved.state_dict())
    del saved


class SFTTrainer:
    """Supervised fine-tuning of an image-to-code VLM on ``(image, prompt, code)`` rows.

    Args:
        config: the options (:class:`SFTConfig`).
        model: a model to train instead of ``config.model`` (e.g. a freshly built tiny one).
        processor: its processor (required with ``model`` unless ``config.model`` names one).
        train_rows / eval_rows: rows in memory instead of ``config.train_data`` / ``eval_data``.

    ``train()`` writes ``output_dir/metrics.jsonl`` (one line per log: step, loss, lr, seconds,
    epoch; eval lines carry ``eval_loss``), ``checkpoint-STEP/`` directories every ``save_every`` steps,
    and the final model + processor in ``output_dir``. With ``config.resume_from`` it continues from a
    save: weights (a full model's, or the LoRA adapter on the freshly loaded base), optimizer, scheduler,
    step, data position and RNG states; ``metrics.jsonl`` drops what was logged after that save.
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
        # the save a resumed run continues from, found and checked before the model loads
        self.resumed_from = find_resume_checkpoint(config.output_dir, config.resume_from)
        resume_state = _check_resumable(self.resumed_from, config) if self.resumed_from is not None else None
        # one run per output_dir, decided before the model loads; the final weights go straight into it
        self.output_dir = prepare_output_dir(config.output_dir, overwrite=config.overwrite_output_dir,
                                             resume_from=self.resumed_from or config.resume_from,
                                             extra=FINAL_ARTEFACTS, main_process=self.accelerator.is_main_process)
        set_seed(config.seed)
        weights_loaded = False  # the resumed weights are in the model already
        if model is None or processor is None:
            if config.model is None:
                raise ValueError("SFTConfig.model is None and no model / processor was given")
            from transformers import AutoModelForImageTextToText, AutoProcessor

            if model is None:  # a resumed full fine-tune loads the save's weights instead of the base's
                weights_loaded = self.resumed_from is not None and not config.lora
                model = AutoModelForImageTextToText.from_pretrained(self.resumed_from if weights_loaded else config.model)
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
            if config.lora:
                model.enable_input_require_grads()
        if config.lora:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                                                     lora_dropout=config.lora_dropout,
                                                     target_modules=list(config.lora_target_modules)))
        if self.resumed_from is not None and not weights_loaded:
            _load_weights(model, self.resumed_from, config.lora)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay,
                                      betas=tuple(config.adam_betas))
        # the loaders draw their workers' base seed from their own generators, never from the global RNG
        # that dropout uses: an epoch (or an eval) starting never shifts the training's random numbers
        self.sampler = _EpochOrder(len(self.train_rows), config.seed)
        loader = torch.utils.data.DataLoader(self.train_rows, batch_size=config.batch_size, sampler=self.sampler,
                                             collate_fn=self._collate,
                                             generator=torch.Generator().manual_seed(config.seed))
        self.model, self.optimizer, self.loader = self.accelerator.prepare(model, optimizer, loader)
        self.eval_loader = None
        if self.eval_rows:
            eval_loader = torch.utils.data.DataLoader(self.eval_rows, batch_size=config.batch_size,
                                                      collate_fn=self._collate,
                                                      generator=torch.Generator().manual_seed(config.seed))
            self.eval_loader = self.accelerator.prepare(eval_loader)
        per_epoch = max(1, math.ceil(len(self.loader) / config.gradient_accumulation_steps))
        self.total_steps = config.max_steps if config.max_steps > 0 else max(1, math.ceil(config.epochs * per_epoch))
        self.scheduler = self._scheduler()
        self.step = 0
        self.micro = 0  # micro-batches this process has consumed: the data position
        self._seconds = 0.0  # training seconds before this run (a resumed run's clock continues)
        self._clock: float | None = None  # while training: perf_counter() at the run's (virtual) second 0
        self._window: list[float] = []  # losses since the last logged step
        if self.resumed_from is not None and resume_state is not None:
            self._resume(self.resumed_from, resume_state)

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
        """The micro-batches from the data position on: a resumed run skips what it consumed before."""
        epoch, skip = divmod(self.micro, len(self.loader))
        while True:
            if hasattr(self.loader, "set_epoch"):
                self.loader.set_epoch(epoch)
            self.sampler.set_epoch(epoch)
            yield from (self.accelerator.skip_first_batches(self.loader, skip) if skip else self.loader)
            epoch, skip = epoch + 1, 0

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
        import torch

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
        start = self._clock = time.perf_counter() - self._seconds
        first_step = self.step
        last_loss = float("nan")
        eval_loss = None
        if self.step >= self.total_steps:
            log.warning("sft: resumed at step %d of %d: nothing left to train (raise max_steps to continue)",
                        self.step, self.total_steps)
        for batch in self._batches() if self.step < self.total_steps else ():
            with acc.accumulate(self.model):
                loss = self._forward_loss(batch)
                acc.backward(loss)
                if acc.sync_gradients and cfg.max_grad_norm:
                    acc.clip_grad_norm_(params, cfg.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad()
            self.micro += 1
            self._window.append(float(loss.detach()))
            if not acc.sync_gradients:
                continue
            self.scheduler.step()
            self.step += 1
            bar.update(1)
            elapsed = time.perf_counter() - start
            done = self.step >= self.total_steps or budget.spent()  # alike on every process
            if self.step % max(1, cfg.log_every) == 0 or done:
                last_loss = sum(self._window) / len(self._window)
                if acc.num_processes > 1:  # every process's batches, not the main one's
                    last_loss = float(acc.reduce(torch.tensor([last_loss], device=acc.device), reduction="mean")[0])
                self._window = []
                bar.set_postfix(loss=f"{last_loss:.4f}")
                self._log({"step": self.step, "loss": round(last_loss, 6),
                           "lr": self.scheduler.get_last_lr()[0], "seconds": round(elapsed, 2),
                           "epoch": round(self.micro / max(1, len(self.loader)), 4)})
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
        self._seconds, self._clock = seconds, None
        if self.eval_loader is not None:
            eval_loss = self.evaluate()
            if self.step > first_step:  # a run resumed at its last step has this line already
                self._log({"step": self.step, "eval_loss": round(eval_loss, 6), "seconds": round(seconds, 2)})
        self.save(self.output_dir, final=True)
        if acc.is_main_process:
            plot_curves(self.output_dir / "metrics.jsonl", self.output_dir / "curves.png", ("loss", "lr"),
                        eval_keys=("eval_loss",))
        return {"steps": self.step, "loss": last_loss, "eval_loss": eval_loss, "seconds": seconds,
                "output_dir": str(self.output_dir)}

    def save(self, directory: str | Path, final: bool = True) -> Path:
        """Write the model (or LoRA adapter) and processor with ``save_pretrained``; with
        ``save_optimizer`` also the optimizer, scheduler (and fp16 loss scaler) states, each process's
        RNG states (``rng_<rank>.pt``) and, last, ``trainer_state.json`` (step, data position, the loss
        window not yet logged): what ``resume_from`` continues from. A save cut short has no
        ``trainer_state.json`` and is never taken for a resumable one."""
        import torch

        directory = Path(directory)
        acc, cfg = self.accelerator, self.config
        merged = final and cfg.lora and cfg.merge_lora
        acc.wait_for_everyone()
        if acc.is_main_process:
            directory.mkdir(parents=True, exist_ok=True)
            (directory / TRAINER_STATE).unlink(missing_ok=True)  # a previous save's, until this one is whole
            model = acc.unwrap_model(self.model)
            if merged:
                model = model.merge_and_unload()
            model.save_pretrained(directory)
            self.processor.save_pretrained(directory)
            if cfg.save_optimizer:
                torch.save(self.optimizer.state_dict(), directory / "optimizer.pt")
                torch.save(self.scheduler.state_dict(), directory / "scheduler.pt")
                if getattr(acc, "scaler", None) is not None:
                    torch.save(acc.scaler.state_dict(), directory / "scaler.pt")
        acc.wait_for_everyone()
        if cfg.save_optimizer:
            torch.save(rng_state(), directory / f"rng_{acc.process_index}.pt")
            acc.wait_for_everyone()
            if acc.is_main_process:
                (directory / TRAINER_STATE).write_text(json.dumps({
                    "step": self.step, "total_steps": self.total_steps, "micro": self.micro,
                    "seconds": round(self._seconds if self._clock is None else time.perf_counter() - self._clock, 3),
                    "window": self._window, "merged": merged, "lora": cfg.lora,
                    "num_processes": acc.num_processes, "batch_size": cfg.batch_size,
                    "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
                    "train_rows": len(self.train_rows)}))
        acc.wait_for_everyone()
        return directory

    def _resume(self, path: Path, state: Mapping[str, Any]) -> None:
        """Restore the optimizer, scheduler, step, data position, loss window and RNG states of a save
        (its weights are in the model already)."""
        import torch

        acc, cfg = self.accelerator, self.config
        self.optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
        self.scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        if getattr(acc, "scaler", None) is not None and (path / "scaler.pt").is_file():
            acc.scaler.load_state_dict(torch.load(path / "scaler.pt", weights_only=True))
        self.step, self.micro = int(state["step"]), int(state["micro"])
        self._seconds = float(state.get("seconds") or 0.0)
        self._window = [float(x) for x in state.get("window") or []]
        now = {"num_processes": acc.num_processes, "batch_size": cfg.batch_size,
               "gradient_accumulation_steps": cfg.gradient_accumulation_steps, "train_rows": len(self.train_rows)}
        changed = [f"{k} {state[k]} -> {v}" for k, v in now.items() if k in state and state[k] != v]
        if changed:
            log.warning("resume_from %s: %s changed: the batches that follow differ from an uninterrupted run's",
                        path, ", ".join(changed))
        if int(state.get("total_steps", self.total_steps)) != self.total_steps:
            log.warning("resume_from %s: %s steps now (the save's run had %s): the learning-rate schedule runs "
                        "to the new total", path, self.total_steps, state["total_steps"])
        rng = path / f"rng_{acc.process_index}.pt"
        if rng.is_file():
            set_rng_state(torch.load(rng, weights_only=True))
        else:
            log.warning("resume_from %s: no RNG state for process %d: dropout draws differ from an uninterrupted "
                        "run's", path, acc.process_index)
        log.info("sft: resumed from %s at step %d (micro-batch %d)", path, self.step, self.micro)


def train_sft_from_config(source: str | Path | Mapping[str, Any], **overrides: Any) -> dict[str, Any]:
    """``visalign train sft CONFIG``: load an :class:`SFTConfig` (a YAML file with the options at the
    top level or under ``sft:``, or a mapping), train, and return :meth:`SFTTrainer.train`'s summary."""
    config = load_config(SFTConfig, source, section="sft", **overrides)
    return SFTTrainer(config).train()
