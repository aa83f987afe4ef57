"""Bradley-Terry reward model demo (``make demo-reward``): chart pairs -> a tiny open_clip reward model
-> held-out pairwise accuracy with a bootstrap interval, by perturbation kind, and the ranking of graded
perturbations.

1. ``visalign.data.pairs``: seeded chart pairs (reference render vs graded perturbations of values,
   colour, layout, missing elements), rendered in the sandbox; training and held-out pairs come from
   different reference charts; written as JSONL + PNG and read back with ``load_pairs``.
2. A tiny open_clip ViT (random weights, built from an inline config) + head, conditioned on the
   reference render (its embedding, and the embedding of the difference image), trained with the Bradley-Terry loss (``RewardModelTrainer``).
3. Held-out evaluation (``eval/eval.json``, ``eval/calibration.png``) and, on more held-out references,
   every rung of every held-out perturbation ladder scored: does the score fall with the severity?

Run: ``.venv/bin/python scripts/reward_demo.py --out out/demo-reward`` (a few minutes on 2 CPU cores).
``--task html`` runs the same on DocReward-style document pairs (professional vs careless pages, no
reference: the model judges a page alone; 128 px input; rendering the pages takes most of the time).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from visalign.data.pairs import ladders_from_pairs, load_pairs, pair_dataset, write_pairs
from visalign.rewards import Sample, get_reward
from visalign.trainers.config import load_config
from visalign.trainers.reward_model import RewardModelConfig, RewardModelTrainer, rank_ladders

#: A small open_clip ViT: 96 px input (the charts' own size), 8 px patches, 3 layers of width 96.
TINY_CLIP = {"embed_dim": 64,
             "vision_cfg": {"image_size": 96, "layers": 3, "width": 96, "head_width": 32, "patch_size": 8},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 1}}


def _reference_of(row: dict, rows: list[dict]) -> str:
    """The program a pair row was made from: its reference (charts), or its professional page (documents,
    the severity-0 side of any pair of its group)."""
    if row.get("reference_code"):
        return row["reference_code"]
    return next(r["chosen_code"] for r in rows if r["group"] == row["group"] and r["chosen_severity"] == 0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="out/demo-reward")
    ap.add_argument("--task", choices=("chart", "html"), default="chart")
    ap.add_argument("--train-refs", type=int, default=None,
                    help="training references (chart: 48, 24 pairs each; html: 16 documents, 30 pairs each)")
    ap.add_argument("--eval-refs", type=int, default=None, help="held-out references (chart: 20; html: 6)")
    ap.add_argument("--epochs", type=float, default=None, help="chart: 5, html: 6")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2, help="render workers")
    args = ap.parse_args(argv)
    chart = args.task == "chart"
    per_ref = 24 if chart else 30  # every pair of every ladder: 4 (5) kinds x 6 pairs
    train_refs = args.train_refs or (48 if chart else 16)
    eval_refs = args.eval_refs or (20 if chart else 6)
    epochs = args.epochs or (5.0 if chart else 6.0)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    t0 = time.perf_counter()

    train_path, eval_path = out / "data" / "train.jsonl", out / "data" / "heldout.jsonl"
    if not (train_path.exists() and eval_path.exists()):
        # every pair of every ladder (chart: 4 kinds x 6 pairs from 13 renders): the fewest renders per pair
        train = pair_dataset(args.task, per_ref * train_refs, seed=0, pairs_per_reference=per_ref,
                             workers=args.workers)
        held = pair_dataset(args.task, per_ref * eval_refs, seed=1, pairs_per_reference=per_ref,
                            workers=args.workers)
        seen = {_reference_of(r, train) for r in train}
        held = [r for r in held if _reference_of(r, held) not in seen]  # held-out references only
        write_pairs(train, train_path)
        write_pairs(held, eval_path)
    t_data = time.perf_counter() - t0
    print(f"pairs: {len(load_pairs(train_path))} train, {len(load_pairs(eval_path))} held-out "
          f"({t_data:.0f} s)", flush=True)

    clip = TINY_CLIP if chart else {**TINY_CLIP, "vision_cfg": {**TINY_CLIP["vision_cfg"], "image_size": 128}}
    config = load_config(RewardModelConfig, {
        "backbone": "open_clip", "clip_config": clip, "condition": "reference" if chart else "none",
        "difference": chart, "head_hidden": 128,
        "train_data": str(train_path), "eval_data": str(eval_path), "epochs": epochs, "batch_size": 32,
        "learning_rate": 5e-4, "warmup_steps": 10, "weight_decay": 0.01, "use_margin": True,
        "output_dir": str(out / "run"), "overwrite_output_dir": True,  # the demo's run directory is its own
        "log_every": 5, "seed": 0, "progress": False})
    t1 = time.perf_counter()
    result = RewardModelTrainer(config).train()
    t_train = time.perf_counter() - t1
    ev = result["eval"]

    ladders = ladders_from_pairs(load_pairs(eval_path))  # every held-out reference: severities 0..3 per kind
    reward = get_reward("model", path=result["model_dir"])  # the saved model, as every user loads it
    ranking = rank_ladders(reward.model, ladders)
    # the same model through the reward interface: a perfect render beats its worst perturbation
    samples = [Sample(image=lad["images"][s], reference_image=lad["reference"], prompt=lad["prompt"])
               for lad in ladders[:8] for s in (0, 3)]
    scores = reward(samples).scores
    top_beats_worst = sum(scores[i] > scores[i + 1] for i in range(0, len(scores), 2)) / (len(scores) // 2)

    summary = {"train_pairs": len(load_pairs(train_path)), "heldout": ev, "ranking": ranking,
               "reward_interface_top_beats_worst": top_beats_worst, "steps": result["steps"],
               "seconds": {"data": round(t_data, 1), "train": round(t_train, 1),
                           "total": round(time.perf_counter() - t0, 1)},
               "threads": args.threads, "task": args.task}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    lo, hi = ev["ci95"]
    print(f"held-out pairwise accuracy {ev['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] (n={ev['n']})")
    for k, v in ev["by_perturbation"].items():
        print(f"  {k:<10} {v['accuracy']:.3f} [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}] (n={v['n']})")
    for k, v in ev["by_pair_type"].items():
        print(f"  {k:<22} {v['accuracy']:.3f} [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}] (n={v['n']})")
    print(f"calibration ECE {ev['ece']:.3f}; ladders fully ordered {ranking['fully_ordered']:.3f} "
          f"(n={ranking['ladders']}), Kendall tau {ranking['kendall_tau']:.3f}, mean score by severity "
          f"{ranking['mean_score_by_severity']}")
    print(f"by kind: {ranking['fully_ordered_by_perturbation']}")
    print(f"seconds: {summary['seconds']}; outputs in {out}/ (summary.json, run/curves.png, "
          "run/eval/calibration.png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
