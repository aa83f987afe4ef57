"""On-policy preference pairs for the chart reward model, and a Bradley-Terry model retrained on them.

The reward model of ``scripts/reward_demo.py`` learned from perturbations of reference renders and was
hacked by chart GRPO (README, "Chart GRPO with the trained reward model"): the policy's own mistakes
were never in its data. This script adds them:

1. training charts (``chart_dataset`` with a seed of its own, the held-out charts of
   ``models/tiny-chart-vlm/heldout.jsonl`` excluded, as the Makefile does), split by chart into a
   training part and a validation part (both training charts: the 100 held-out charts are never read
   except to exclude them);
2. ``--samples`` completions per chart from the tiny chart policy (temperature 1, as GRPO samples),
   rendered in the sandbox at the references' size;
3. each sample labelled by the chart-code score with the plotted values weighted 4 (ChartMimic's text,
   layout, type and colour F1 and the plotted data, from the executed code's trace against the
   reference code: *not* SSIM and not any image similarity); pairs of two samples of one chart whose
   scores differ by at least ``--min-gap``, the higher one chosen, ``margin`` = the score gap, at most
   ``--pairs-per-chart`` per chart (seeded), samples with identical renders never paired;
4. the reward model retrained from scratch, exactly as ``scripts/reward_demo.py`` trains it (same tiny
   open_clip, same options), on the synthetic training pairs plus the on-policy training pairs; its
   accuracy on the synthetic held-out pairs (the trainer's eval) and on the on-policy validation pairs,
   and the accuracy of the old model on those validation pairs for comparison.

A second round (``--policy`` a GRPO-trained policy, e.g. the hacked one, ``--extra-train`` the first
round's pairs, ``--compare`` the first round's model) adds that policy's samples.

Then: ``scripts/reward_grpo_demo.py --reward-model OUT/run/model --out OUT/grpo``.

Run: ``nice -n 19 .venv/bin/python scripts/onpolicy_pairs.py --out out/onpolicy --threads 1``
(after ``scripts/reward_demo.py --out out/demo-reward``, whose pairs and model it reuses).
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from visalign.data.charts import chart_dataset
from visalign.data.loaders import load_rows
from visalign.data.pairs import load_pairs, write_pairs
from visalign.report.eval_report import bootstrap_ci
from visalign.rewards import Sample, get_reward
from visalign.rewards.chart_code import ChartCodeReward
from visalign.rewards.code import fill_code
from visalign.rewards.render import RenderService
from visalign.trainers.config import load_config
from visalign.trainers.reward_model import RewardModelConfig, RewardModelTrainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reward_demo import TINY_CLIP  # the same tiny ViT as the synthetic-only model

ROOT = Path(__file__).resolve().parents[1]
HELDOUT = ROOT / "models" / "tiny-chart-vlm" / "heldout.jsonl"
CHART_CODE_WEIGHTS = {"text": 1, "layout": 1, "type": 1, "color": 1, "data": 4}
RENDER = {"matplotlib": {"dpi": 64, "figsize": [1.5, 1.5]}}  # the references' renders (96 x 96)


def sample_policy(model_dir: str, rows: list[dict], k: int, temperature: float, max_new_tokens: int,
                  seed: int) -> list[list[str]]:
    """``k`` sampled completions per row (the policy sees the row's image and instruction)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from visalign.trainers.sft import generate_codes

    torch.manual_seed(seed)
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    images = [r["image"] for r in rows for _ in range(k)]
    prompts = [r["prompt"] for r in rows for _ in range(k)]
    texts = generate_codes(model, processor, images, prompts, max_new_tokens=max_new_tokens, do_sample=True,
                           temperature=temperature, batch_size=32)
    return [texts[i * k:(i + 1) * k] for i in range(len(rows))]


def score_samples(rows: list[dict], completions: list[list[str]], workers: int) -> list[list[Sample]]:
    """Render every completion and score it with the chart-code score (data weight 4)."""
    service = RenderService(timeout=20.0, workers=workers, options=RENDER)
    reward = ChartCodeReward(service=service, weights=CHART_CODE_WEIGHTS)
    groups = [[Sample(prompt=r["prompt"], completion=t, reference_image=r["image"], reference_code=r["code"],
                      kind="matplotlib", group=g) for t in texts] for g, (r, texts) in enumerate(zip(rows, completions, strict=True))]
    flat = [s for g in groups for s in g]
    fill_code(flat)
    out = reward(flat)
    for s, v in zip(flat, out.scores, strict=True):
        s.metadata["chart_code"] = v
    service.close()
    return groups


def make_pairs(rows: list[dict], groups: list[list[Sample]], min_gap: float, per_chart: int,
               rng: random.Random) -> list[dict]:
    out = []
    for row, samples in zip(rows, groups, strict=True):
        ok = [s for s in samples if s.generated_image is not None and s.metadata.get("chart_code") is not None]
        cands = []
        for a, b in itertools.combinations(ok, 2):
            gap = a.metadata["chart_code"] - b.metadata["chart_code"]
            if abs(gap) < min_gap or a.generated_image.tobytes() == b.generated_image.tobytes():
                continue
            chosen, rejected = (a, b) if gap > 0 else (b, a)
            cands.append((chosen, rejected, abs(gap)))
        rng.shuffle(cands)
        for i, (c, r, gap) in enumerate(cands[:per_chart]):
            out.append({"id": f"onpolicy-{row['id']}-{i}", "task": "chart", "kind": "matplotlib",
                        "prompt": row["prompt"], "chosen": c.generated_image.convert("RGB"),
                        "rejected": r.generated_image.convert("RGB"), "reference": row["image"],
                        "margin": round(gap, 4), "perturbation": "onpolicy", "group": f"onpolicy-{row['id']}",
                        "chosen_code": c.code, "rejected_code": r.code,
                        "chosen_score": round(c.metadata["chart_code"], 4),
                        "rejected_score": round(r.metadata["chart_code"], 4)})
    return out


def pair_correct(model_dir: str | Path, pairs: list[dict]) -> list[float]:
    """1.0 where a saved reward model scores the chosen image above the rejected one (a tie is wrong)."""
    reward = get_reward("model", path=str(model_dir))
    samples = [Sample(image=p[side], reference_image=p["reference"], prompt=p["prompt"])
               for p in pairs for side in ("chosen", "rejected")]
    scores = reward(samples).scores
    return [float(scores[2 * i] > scores[2 * i + 1]) for i in range(len(pairs))]


def chart_bootstrap(values: list[float], groups: list[str], n: int = 2000, seed: int = 0) -> list[float]:
    """95 % percentile interval of the mean of ``values`` resampling whole charts (the pairs of one chart
    share its reference and samples, so they are not independent)."""
    by: dict[str, list[float]] = {}
    for v, g in zip(values, groups, strict=True):
        by.setdefault(g, []).append(v)
    keys = list(by)
    rng = np.random.default_rng(seed)
    means = []
    for _ in range(n):
        pick = rng.integers(0, len(keys), len(keys))
        tot = [by[keys[i]] for i in pick]
        means.append(sum(map(sum, tot)) / sum(map(len, tot)))
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def onpolicy_accuracy(new: str | Path, old: str | Path, pairs_path: Path) -> dict:
    """Accuracy of the new and the old model on on-policy pairs, and new - old, per pair (bootstrap
    over pairs) and with charts resampled."""
    pairs = load_pairs(pairs_path)
    groups = [str(p["group"]) for p in pairs]
    out = {}
    res = {"new": pair_correct(new, pairs), "old": pair_correct(old, pairs)}
    res["new - old"] = [a - b for a, b in zip(res["new"], res["old"], strict=True)]
    for tag, correct in res.items():
        mean, lo, hi = bootstrap_ci(correct)
        out[tag] = {"n": len(correct), "charts": len(set(groups)), "accuracy": mean, "ci95": [lo, hi],
                    "ci95_by_chart": chart_bootstrap(correct, groups)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="out/onpolicy")
    ap.add_argument("--policy", default=str(ROOT / "models" / "tiny-chart-vlm"))
    ap.add_argument("--synthetic", default="out/demo-reward", help="scripts/reward_demo.py's output directory")
    ap.add_argument("--charts", type=int, default=160, help="training charts sampled (the last --val-charts "
                                                            "are the validation part)")
    ap.add_argument("--val-charts", type=int, default=32)
    ap.add_argument("--samples", type=int, default=8, help="completions per chart")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--max-new-tokens", type=int, default=48, help="GRPO's max_completion_length")
    ap.add_argument("--min-gap", type=float, default=0.1, help="smallest chart-code score gap of a pair")
    ap.add_argument("--pairs-per-chart", type=int, default=10)
    ap.add_argument("--epochs", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=3, help="chart seed (the GRPO training charts use 2)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--extra-train", nargs="*", default=[],
                    help="more on-policy training pairs (an earlier round's OUT/data/train.jsonl) to train on")
    ap.add_argument("--compare", default=None,
                    help="the model the new one is compared with on the validation pairs (default: the "
                         "synthetic-only model, SYNTHETIC/run/model)")
    ap.add_argument("--eval-only", action="store_true", help="reuse OUT/run/model (no training); evaluate it")
    ap.add_argument("--data-only", action="store_true", help="sample, score and write the pairs; train nothing")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    synth = Path(args.synthetic)
    t0 = time.perf_counter()
    data = out / "data"
    train_path, val_path = data / "train.jsonl", data / "val.jsonl"
    stats: dict = {}
    if not (train_path.exists() and val_path.exists()):
        exclude = {r["code"] for r in load_rows(HELDOUT) if r.get("code")}
        rows = [dict(r, id=i) for i, r in enumerate(chart_dataset(args.charts, seed=args.seed, workers=args.workers,
                                                                    exclude=exclude))]
        assert not {r["code"] for r in rows} & exclude
        completions = sample_policy(args.policy, rows, args.samples, args.temperature, args.max_new_tokens, args.seed)
        print(f"sampled {args.samples} x {len(rows)} ({time.perf_counter() - t0:.0f} s)", flush=True)
        groups = score_samples(rows, completions, args.workers)
        scores = [s.metadata["chart_code"] for g in groups for s in g]
        stats["samples"] = {"n": len(scores), "rendered": sum(s.generated_image is not None for g in groups for s in g),
                            "chart_code_mean": sum(v or 0.0 for v in scores) / len(scores)}
        rng = random.Random(args.seed)
        split = len(rows) - args.val_charts
        train = make_pairs(rows[:split], groups[:split], args.min_gap, args.pairs_per_chart, rng)
        val = make_pairs(rows[split:], groups[split:], args.min_gap, args.pairs_per_chart, rng)
        write_pairs(train, train_path)
        write_pairs(val, val_path)
        (data / "samples.jsonl").write_text("".join(
            json.dumps({"row": r["id"], "reference_code": r["code"], "code": s.code, "chart_code": s.metadata["chart_code"],
                        "rendered": s.generated_image is not None}) + "\n" for r, g in zip(rows, groups, strict=True) for s in g))
        (data / "stats.json").write_text(json.dumps(stats, indent=1))
    stats = json.loads((data / "stats.json").read_text())
    n_train, n_val = len(load_rows_count(train_path)), len(load_rows_count(val_path))
    t_data = time.perf_counter() - t0
    print(f"on-policy pairs: {n_train} train, {n_val} validation; samples {stats['samples']} ({t_data:.0f} s)",
          flush=True)
    if args.data_only:
        return 0

    config = load_config(RewardModelConfig, {
        "backbone": "open_clip", "clip_config": TINY_CLIP, "condition": "reference", "difference": True,
        "head_hidden": 128, "train_data": [str(synth / "data" / "train.jsonl"), *args.extra_train, str(train_path)],
        "eval_data": str(synth / "data" / "heldout.jsonl"), "epochs": args.epochs, "batch_size": 32,
        "learning_rate": 5e-4, "warmup_steps": 10, "weight_decay": 0.01, "use_margin": True,
        "output_dir": str(out / "run"), "overwrite_output_dir": True, "log_every": 5, "seed": 0, "progress": False})
    t1 = time.perf_counter()
    if args.eval_only:
        result = {"model_dir": str(out / "run" / "model"),
                  "eval": json.loads((out / "run" / "eval" / "eval.json").read_text()),
                  "steps": json.loads((out / "summary.json").read_text())["steps"]}
    else:
        result = RewardModelTrainer(config).train()
    t_train = time.perf_counter() - t1
    ev = result["eval"]
    summary = {"onpolicy_pairs": {"train": n_train, "val": n_val}, "samples": stats["samples"],
               "label": f"chart_code with weights {CHART_CODE_WEIGHTS}, min gap {args.min_gap}",
               "synthetic_heldout": {"accuracy": ev["accuracy"], "ci95": ev["ci95"], "n": ev["n"],
                                     "by_perturbation": ev.get("by_perturbation")},
               "onpolicy_val": onpolicy_accuracy(result["model_dir"], args.compare or synth / "run" / "model", val_path),
               "steps": result["steps"], "seconds": {"data": round(t_data, 1), "train": round(t_train, 1)},
               "args": vars(args)}
    if args.eval_only:
        summary["seconds"] = json.loads((out / "summary.json").read_text())["seconds"]  # of the run that trained
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    lo, hi = ev["ci95"]
    print(f"synthetic held-out pairwise accuracy {ev['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] (n={ev['n']})")
    for tag, acc in summary["onpolicy_val"].items():
        print(f"on-policy validation accuracy, {tag}: {acc['accuracy']:+.3f} [{acc['ci95'][0]:+.3f}, "
              f"{acc['ci95'][1]:+.3f}] (n={acc['n']}); charts resampled [{acc['ci95_by_chart'][0]:+.3f}, "
              f"{acc['ci95_by_chart'][1]:+.3f}] ({acc['charts']} charts)")
    print(f"model: {result['model_dir']}; {summary['seconds']}")
    return 0


def load_rows_count(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


if __name__ == "__main__":
    sys.exit(main())
