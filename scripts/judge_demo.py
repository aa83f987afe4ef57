"""Generative judge demo (issue 12, section 3): chart pairs -> judge rows -> a tiny VLM judge trained
with GRPO (R1-Reward's format, rewards and StableReinforce) -> held-out verdict accuracy before / after,
with a paired bootstrap interval.

1. ``visalign.data.pairs``: seeded chart pairs (reference render vs graded perturbations of values,
   colour, layout, missing elements), rendered in the sandbox; held-out pairs come from other
   reference charts. Written as JSONL + PNG and read back with ``load_pairs``.
2. ``judge_rows``: pairwise rows with the reference first, then the two candidates in a seeded random
   order; the verdict names the candidate closer to the reference (``1`` / ``2``). ``--min-gap`` keeps
   pairs whose severities differ by at least that much.
3. Starting point: the shipped ``models/tiny-chart-vlm`` (a Qwen2-VL SFT'd to write chart code) with the
   four format tags added to its vocabulary and a short *format* warm-up (``build_sft_batch``): answers
   ``<think>image K is closer</think><answer>K</answer>`` with K drawn at random, independent of the
   label, so the warm-up teaches the format and nothing about which image is closer.
4. ``JudgeGRPOTrainer``: GRPO with ``verdict`` (rules consistency) + 0.5 ``verdict_format``,
   StableReinforce on; greedy held-out verdict accuracy before and after, paired difference.

Run: ``.venv/bin/python scripts/judge_demo.py --out out/demo-judge`` (about 5 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

from visalign.data.pairs import load_pairs, pair_dataset, write_pairs
from visalign.trainers.config import load_config
from visalign.trainers.judge import JudgeGRPOConfig, JudgeGRPOTrainer, judge_rows
from visalign.trainers.sft import build_sft_batch

TAGS = ["<think>", "</think>", "<answer>", "</answer>"]
#: A short instruction: the tiny model's tokenizer was trained on chart code, so English is long in it.
INSTRUCTION = "Reference, image 1, image 2: which is closer? <think>...</think><answer>1/2</answer>"


def _reference_code(row: dict[str, Any]) -> str:
    return row.get("reference_code") or ""


def make_pairs(out: Path, train_refs: int, eval_refs: int, workers: int) -> tuple[Path, Path]:
    train_path, eval_path = out / "data" / "train.jsonl", out / "data" / "heldout.jsonl"
    if not (train_path.exists() and eval_path.exists()):
        per_ref = 24  # every pair of every ladder (4 kinds x 6 pairs from 13 renders)
        train = pair_dataset("chart", per_ref * train_refs, seed=0, pairs_per_reference=per_ref, workers=workers)
        held = pair_dataset("chart", per_ref * eval_refs, seed=1, pairs_per_reference=per_ref, workers=workers)
        seen = {_reference_code(r) for r in train}
        held = [r for r in held if _reference_code(r) not in seen]  # held-out references only
        write_pairs(train, train_path)
        write_pairs(held, eval_path)
    return train_path, eval_path


def gap_filter(pairs: list[dict[str, Any]], min_gap: int) -> list[dict[str, Any]]:
    return [p for p in pairs if int(p.get("rejected_severity", 3)) - int(p.get("chosen_severity", 0)) >= min_gap]


def format_warmup(model: Any, processor: Any, rows: list[dict[str, Any]], steps: int, batch_size: int, lr: float,
                  seed: int) -> list[float]:
    """Supervised steps on label-free answers: ``<think>image K is closer</think><answer>K</answer>`` with
    K random (not the label). Returns the losses."""
    rng = random.Random(seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        batch = rng.sample(rows, min(batch_size, len(rows)))
        answers = []
        for _r in batch:
            k = rng.choice("12")
            answers.append(f"<think>image {k} is closer</think><answer>{k}</answer>")
        inputs = build_sft_batch(processor, [r["images"] for r in batch], [r["prompt"] for r in batch], answers)
        inner = getattr(model, "model", None)
        if inner is not None and hasattr(inner, "rope_deltas"):
            inner.rope_deltas = None
        loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="out/demo-judge")
    ap.add_argument("--model", default="models/tiny-chart-vlm")
    ap.add_argument("--train-refs", type=int, default=24)
    ap.add_argument("--eval-refs", type=int, default=12)
    ap.add_argument("--min-gap", type=int, default=2, help="keep pairs whose severities differ by at least this")
    ap.add_argument("--max-eval", type=int, default=160, help="held-out rows")
    ap.add_argument("--warmup-steps", type=int, default=120)
    ap.add_argument("--warmup-batch", type=int, default=4)
    ap.add_argument("--warmup-lr", type=float, default=2e-3)
    ap.add_argument("--steps", type=int, default=400, help="GRPO steps at most (--minutes stops first)")
    ap.add_argument("--minutes", type=float, default=3.0, help="GRPO wall-clock budget")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--generations", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=8, help="prompts per GRPO step")
    ap.add_argument("--image-size", type=int, default=48, help="judge input side in px (a multiple of 16; the "
                    "shipped model was trained at 96: smaller is faster, the vision tower's cost grows with it)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2, help="render workers")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    t0 = time.perf_counter()

    train_path, eval_path = make_pairs(out, args.train_refs, args.eval_refs, args.workers)
    train_pairs = gap_filter(load_pairs(train_path), args.min_gap)
    eval_pairs = gap_filter(load_pairs(eval_path), args.min_gap)
    train = judge_rows(train_pairs, mode="pairwise", seed=args.seed, instruction=INSTRUCTION)
    held = judge_rows(eval_pairs, mode="pairwise", seed=args.seed + 1, instruction=INSTRUCTION)
    held = random.Random(args.seed).sample(held, min(args.max_eval, len(held)))
    t_data = time.perf_counter() - t0
    print(f"judge rows: {len(train)} train, {len(held)} held-out (labels 1/2: "
          f"{sum(r['label'] == '1' for r in held)}/{sum(r['label'] == '2' for r in held)}); data {t_data:.0f} s",
          flush=True)

    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(args.model)
    ip = processor.image_processor
    ip.min_pixels = ip.max_pixels = args.image_size * args.image_size
    if isinstance(getattr(ip, "size", None), dict):
        ip.size = {"shortest_edge": ip.min_pixels, "longest_edge": ip.max_pixels}
    model = AutoModelForImageTextToText.from_pretrained(args.model)
    added = processor.tokenizer.add_tokens(TAGS)
    if added:
        model.resize_token_embeddings(len(processor.tokenizer))
    t1 = time.perf_counter()
    losses = format_warmup(model, processor, train, args.warmup_steps, args.warmup_batch, args.warmup_lr, args.seed)
    t_warm = time.perf_counter() - t1
    print(f"format warm-up: {args.warmup_steps} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f} ({t_warm:.0f} s)",
          flush=True)

    config = load_config(JudgeGRPOConfig, {
        "model": args.model, "judge_mode": "pairwise", "instruction": INSTRUCTION,
        "num_generations": args.generations, "prompts_per_step": args.prompts, "generation_batch_size": args.prompts,
        "per_device_train_batch_size": args.prompts * args.generations, "max_completion_length": 16,
        "max_prompt_length": 1024, "learning_rate": args.lr, "max_steps": args.steps, "max_minutes": args.minutes,
        "max_eval_rows": None, "output_dir": str(out / "run"), "progress": False, "log_with": "none",
        "log_completions_every": 25, "render_workers": 1, "num_threads": args.threads, "seed": args.seed})
    trainer = JudgeGRPOTrainer(config, model=model, processor=processor, train_rows=train, eval_rows=held)
    t2 = time.perf_counter()
    try:
        trainer.train()
    finally:
        trainer.close()
    t_grpo = time.perf_counter() - t2
    result = json.loads((out / "run" / "judge_eval.json").read_text())
    before, after, diff = result["before"], result["after"], result["difference"]
    summary = {"train_rows": len(train), "heldout_rows": len(held), "min_gap": args.min_gap,
               "warmup": {"steps": args.warmup_steps, "loss_first": losses[0], "loss_last": losses[-1]},
               "grpo_steps": trainer.step_count, "before": before, "after": after, "difference": diff,
               "seconds": {"data": round(t_data, 1), "warmup": round(t_warm, 1), "grpo_and_eval": round(t_grpo, 1),
                           "total": round(time.perf_counter() - t0, 1)},
               "threads": args.threads, "model_dir": str(out / "run" / (out / "run" / "final.txt").read_text().strip())}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"held-out verdict accuracy (greedy, n={after['n']}): before {before['accuracy']:.3f} "
          f"[{before['ci95'][0]:.3f}, {before['ci95'][1]:.3f}] -> after {after['accuracy']:.3f} "
          f"[{after['ci95'][0]:.3f}, {after['ci95'][1]:.3f}]")
    print(f"paired difference {diff['mean']:+.3f} [{diff['ci95'][0]:+.3f}, {diff['ci95'][1]:+.3f}] "
          f"(n={diff['paired']}); format ok {before['format_ok']:.3f} -> {after['format_ok']:.3f}")
    print(f"by kind after: {after['by_perturbation']}")
    print(f"GRPO steps {trainer.step_count}; seconds {summary['seconds']}; outputs in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
