"""Generative judge demo (issue 12, section 3): chart pairs -> judge rows -> a tiny VLM judge trained
with GRPO (R1-Reward's format, rewards and StableReinforce) -> held-out verdict accuracy before / after,
with a paired bootstrap interval.

1. ``visalign.data.pairs``: seeded chart pairs (reference render vs graded perturbations of values,
   colour, layout, missing elements), rendered in the sandbox; held-out pairs come from other
   reference charts. Written as JSONL + PNG and read back with ``load_pairs``.
2. ``judge_rows``: pairwise rows with the reference first, then the two candidates in a seeded random
   order; the verdict names the candidate closer to the reference (``1`` / ``2``). ``--min-gap`` keeps
   pairs whose severities differ by at least that much, ``--kinds`` the perturbation kinds (default the
   visible ones, ``missing`` and ``layout``); ``balance_pairwise`` then swaps a seeded subset so labels
   1 / 2 are even within each kind (a constant verdict scores 0.5). ``--mode pointwise``: reference +
   one image, verdict ``good`` / ``bad``. ``--data DIR`` shares rendered pairs between runs, so the
   held-out set stays the same across attempts.
3. Starting point: the shipped ``models/tiny-chart-vlm`` (a Qwen2-VL SFT'd to write chart code) with the
   four format tags added to its vocabulary and a short *format* warm-up (``build_sft_batch``): answers
   ``<think>image K is closer</think><answer>K</answer>`` with K drawn at random, independent of the
   label, so the warm-up teaches the format and nothing about which image is closer.
4. ``JudgeGRPOTrainer``: GRPO with ``verdict`` (rules consistency) + 0.5 ``verdict_format``,
   StableReinforce on; greedy held-out verdict accuracy before and after, paired difference.

Run: ``.venv/bin/python scripts/judge_demo.py --out out/demo-judge``. Use ``--threads 1`` on a shared
machine: with 2 torch threads on 2 busy cores one forward/backward took 3-15 s, with 1 thread 0.45 s.
Status (issue 12): no setting tried so far lifts held-out accuracy off 0.5; see the README.
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
POINTWISE_INSTRUCTION = "Reference, image: does it match? <think>...</think><answer>good/bad</answer>"


def _reference_code(row: dict[str, Any]) -> str:
    return row.get("reference_code") or ""


def make_pairs(data: Path, train_refs: int, eval_refs: int, workers: int) -> tuple[Path, Path]:
    """Rendered pairs in ``data`` (kept: a second run with the same ``data`` reuses them)."""
    train_path, eval_path = data / "train.jsonl", data / "heldout.jsonl"
    if not (train_path.exists() and eval_path.exists()):
        per_ref = 24  # every pair of every ladder (4 kinds x 6 pairs from 13 renders)
        train = pair_dataset("chart", per_ref * train_refs, seed=0, pairs_per_reference=per_ref, workers=workers)
        held = pair_dataset("chart", per_ref * eval_refs, seed=1, pairs_per_reference=per_ref, workers=workers)
        seen = {_reference_code(r) for r in train}
        held = [r for r in held if _reference_code(r) not in seen]  # held-out references only
        write_pairs(train, train_path)
        write_pairs(held, eval_path)
    return train_path, eval_path


def gap_filter(pairs: list[dict[str, Any]], min_gap: int, kinds: list[str] | None = None) -> list[dict[str, Any]]:
    """Pairs whose severities differ by at least ``min_gap``, of the perturbation ``kinds`` (None: all)."""
    return [p for p in pairs if int(p.get("rejected_severity", 3)) - int(p.get("chosen_severity", 0)) >= min_gap
            and (kinds is None or p.get("perturbation") in kinds)]


def balance_pairwise(rows: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Pairwise rows with the two candidates swapped in a seeded subset so that, within each perturbation
    kind, labels 1 and 2 differ in count by at most one: a constant verdict then scores 0.5 and a
    before / after difference cannot come from a bias towards one position."""
    rng = random.Random(f"balance:{seed}")
    out = [dict(r) for r in rows]
    for kind in sorted({r["perturbation"] for r in out}):
        group = [r for r in out if r["perturbation"] == kind]
        ones = [r for r in group if r["label"] == "1"]
        twos = [r for r in group if r["label"] == "2"]
        major, new = (ones, "2") if len(ones) > len(twos) else (twos, "1")
        for r in rng.sample(major, abs(len(ones) - len(twos)) // 2):
            r["images"] = r["images"][:-2] + [r["images"][-1], r["images"][-2]]
            r["label"] = new
    return out


def random_answer(rng: random.Random, mode: str) -> str:
    """A well-formed answer with a random verdict (not the label): what the format warm-up teaches."""
    if mode == "pointwise":
        good = rng.random() < 0.5
        return f"<think>the charts {'match' if good else 'differ'}</think><answer>{'good' if good else 'bad'}</answer>"
    k = rng.choice("12")
    return f"<think>image {k} is closer</think><answer>{k}</answer>"


def format_warmup(model: Any, processor: Any, rows: list[dict[str, Any]], steps: int, batch_size: int, lr: float,
                  seed: int, mode: str = "pairwise") -> list[float]:
    """Supervised steps on label-free answers (:func:`random_answer`): ``<think>image K is
    closer</think><answer>K</answer>`` with K random, or ``good`` / ``bad`` at random (pointwise); the
    row's label is never read. Returns the losses."""
    rng = random.Random(seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        batch = rng.sample(rows, min(batch_size, len(rows)))
        answers = [random_answer(rng, mode) for _ in batch]
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
    ap.add_argument("--data", default=None, help="pairs directory (default OUT/data; reused when it holds them)")
    ap.add_argument("--train-refs", type=int, default=24)
    ap.add_argument("--eval-refs", type=int, default=12)
    ap.add_argument("--min-gap", type=int, default=2, help="keep pairs whose severities differ by at least this")
    ap.add_argument("--kinds", default="missing,layout", help="perturbation kinds kept (comma-separated; 'all': "
                    "values, colour, layout, missing)")
    ap.add_argument("--mode", default="pairwise", choices=["pairwise", "pointwise"],
                    help="pairwise (reference, image 1, image 2: verdict 1/2) or pointwise (reference, image: good/bad)")
    ap.add_argument("--max-eval", type=int, default=160, help="held-out rows")
    ap.add_argument("--warmup-steps", type=int, default=120)
    ap.add_argument("--warmup-batch", type=int, default=4)
    ap.add_argument("--warmup-lr", type=float, default=2e-3)
    ap.add_argument("--steps", type=int, default=400, help="GRPO steps (max_steps)")
    ap.add_argument("--minutes", type=float, default=None, help="GRPO wall-clock budget (default: none, --steps "
                    "decides; a budget makes the result depend on the machine's load)")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--beta", type=float, default=0.0, help="KL weight to the reference (the warmed-up model)")
    ap.add_argument("--max-completion", type=int, default=16, help="answer tokens")
    ap.add_argument("--eval-every", type=int, default=0, help="held-out eval every N steps (0: before and after)")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--generations", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=8, help="prompts per GRPO step")
    ap.add_argument("--image-size", type=int, default=48, help="judge input side in px (a multiple of 16; the "
                    "shipped model was trained at 96: smaller is faster, the vision tower's cost grows with it)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (on a busy machine 1 is several times "
                    "faster than 2)")
    ap.add_argument("--workers", type=int, default=2, help="render workers")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    t0 = time.perf_counter()

    train_path, eval_path = make_pairs(Path(args.data) if args.data else out / "data", args.train_refs, args.eval_refs, args.workers)
    kinds = None if args.kinds == "all" else [k.strip() for k in args.kinds.split(",") if k.strip()]
    train_pairs = gap_filter(load_pairs(train_path), args.min_gap, kinds)
    eval_pairs = gap_filter(load_pairs(eval_path), args.min_gap, kinds)
    instruction = INSTRUCTION if args.mode == "pairwise" else POINTWISE_INSTRUCTION
    train = judge_rows(train_pairs, mode=args.mode, seed=args.seed, instruction=instruction)
    held = judge_rows(eval_pairs, mode=args.mode, seed=args.seed + 1, instruction=instruction)
    held = random.Random(args.seed).sample(held, min(args.max_eval, len(held)))  # fixed by the seed, not the run
    if args.mode == "pairwise":
        train, held = balance_pairwise(train, args.seed), balance_pairwise(held, args.seed + 1)
    t_data = time.perf_counter() - t0
    labels = sorted({r["label"] for r in held})
    print(f"judge rows ({args.mode}, kinds {args.kinds}, min gap {args.min_gap}): {len(train)} train, {len(held)} "
          f"held-out (labels {'/'.join(labels)}: {'/'.join(str(sum(r['label'] == k for r in held)) for k in labels)});"
          f" data {t_data:.0f} s", flush=True)

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
    losses = format_warmup(model, processor, train, args.warmup_steps, args.warmup_batch, args.warmup_lr, args.seed,
                           args.mode)
    t_warm = time.perf_counter() - t1
    print(f"format warm-up: {args.warmup_steps} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f} ({t_warm:.0f} s)",
          flush=True)

    config = load_config(JudgeGRPOConfig, {
        "model": args.model, "judge_mode": args.mode, "instruction": instruction,
        "num_generations": args.generations, "prompts_per_step": args.prompts, "generation_batch_size": args.prompts,
        "per_device_train_batch_size": args.prompts * args.generations, "max_completion_length": args.max_completion,
        "max_prompt_length": 1024, "learning_rate": args.lr, "max_steps": args.steps, "max_minutes": args.minutes,
        "temperature": args.temperature, "beta": args.beta, "eval_every": args.eval_every,
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
    summary = {"args": vars(args), "train_rows": len(train), "heldout_rows": len(held), "min_gap": args.min_gap,
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
