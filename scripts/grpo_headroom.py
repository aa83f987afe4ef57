"""Is there anything above the policy's greedy answer for GRPO to find? Sampled completions against the greedy one.

GRPO pays a sample for beating its group's mean; the greedy answer (what the evals score) only moves when the samples
GRPO favours are better than it. For the first ``--rows`` training rows of a VLM GRPO config, this samples
``num_generations`` completions per row at each ``--temperatures`` (with the trainer's own sampler, seeds and
rewards) and the greedy completion, and reports for every reward of the config, by its raw score: the greedy mean,
the sample mean, the best-of-G mean and the share of samples above the greedy answer of their row.

    .venv/bin/python scripts/grpo_headroom.py configs/chart_grpo_demo.yaml --rows 32 --temperatures 1,0.7,0.4 \\
        --set model=out/tiny-chart-vlm-1500 --set train_data=out/l/L1/data/val.jsonl

With samples far below greedy and few above it (a low temperature narrows the gap), a GRPO step mostly teaches
the sampler to be more like its mode; the best-of-G gap is what the greedy answer could still gain per row.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from visalign.trainers.config import load_config, parse_overrides
from visalign.trainers.tree import TreeSampling
from visalign.trainers.vlm import VLMGRPOConfig, VLMGRPOTrainer


def raw_scores(trainer: VLMGRPOTrainer, row: dict, texts: list[str]) -> dict[str, np.ndarray]:
    """``{reward name: raw score of each text}``: the config's rewards (the children of the trainer's composite)
    before any group normalisation, rendered as training renders them; NaN where a reward gives None."""
    samples = trainer.to_samples(row, texts, group=0)
    trainer.prepare_samples(samples)
    details = trainer.reward(samples).details
    return {n: np.array([np.nan if d[n]["score"] is None else d[n]["score"] for d in details], float)
            for n in trainer.reward.names}


def headroom(trainer: VLMGRPOTrainer, rows: list[dict], temperature: float) -> dict[str, dict[str, float]]:
    """Per reward: the greedy, sample and best-of-G means over ``rows`` and the share of samples above greedy."""
    c = trainer.config
    acc: dict[str, dict[str, list[float]]] = {}
    for b in range(0, len(rows), c.generation_batch_size):
        chunk = rows[b:b + c.generation_batch_size]
        positions = list(range(b, b + len(chunk)))
        greedy = trainer.sample(chunk, positions, plan=TreeSampling(1), greedy=True)
        sampled = trainer.sample(chunk, positions, temperature=temperature)
        for row, g, s in zip(chunk, greedy, sampled, strict=True):
            g_scores = raw_scores(trainer, row, trainer.tokenizer.batch_decode(g.completions, skip_special_tokens=True))
            s_scores = raw_scores(trainer, row, trainer.tokenizer.batch_decode(s.completions, skip_special_tokens=True))
            for name, v in s_scores.items():
                a = acc.setdefault(name, {"greedy": [], "sample_mean": [], "best_of_g": [], "above_greedy": []})
                top = g_scores[name][0]
                a["greedy"].append(top)
                a["sample_mean"].append(float(np.nanmean(v)))
                a["best_of_g"].append(float(np.nanmax(v)))
                a["above_greedy"].append(float(np.mean(v > top + 1e-6)))
    return {name: {k: float(np.nanmean(v)) for k, v in a.items()} for name, a in acc.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", help="a VLM GRPO config (YAML with a grpo: section)")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="override an option (repeatable)")
    ap.add_argument("--rows", type=int, default=32, help="the first N training rows")
    ap.add_argument("--temperatures", default="1.0", help="comma-separated sampling temperatures")
    ap.add_argument("--out", default=None, help="also write the table as JSON here")
    args = ap.parse_args(argv)
    try:
        temperatures = [float(t) for t in args.temperatures.split(",")]
        overrides = parse_overrides(args.set)
    except ValueError as e:
        ap.error(str(e))
    if not all(t > 0 for t in temperatures):
        ap.error(f"--temperatures {args.temperatures}: each must be > 0")
    with tempfile.TemporaryDirectory() as tmp:
        overrides.update(output_dir=str(Path(tmp) / "run"), eval_data=None, overwrite_output_dir=True,
                         log_with="none", max_train_rows=args.rows, progress=False)
        try:
            config = load_config(VLMGRPOConfig, args.config, section="grpo", **overrides)
        except (ValueError, OSError) as e:
            print(f"{args.config}: {e}", file=sys.stderr)
            return 2
        trainer = VLMGRPOTrainer(config)
        try:
            table = {str(t): headroom(trainer, trainer.train_rows[: args.rows], t) for t in temperatures}
        finally:
            trainer.close()
    for t, per in table.items():
        for name, r in per.items():
            print(f"T={t:4s} {name:20s} greedy {r['greedy']:.4f}  sample mean {r['sample_mean']:.4f}  "
                  f"best-of-{config.num_generations} {r['best_of_g']:.4f}  samples above greedy {r['above_greedy']:.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": args.rows, "num_generations": config.num_generations,
                                              "temperatures": table}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
