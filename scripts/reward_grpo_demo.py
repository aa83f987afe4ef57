"""Chart GRPO with a trained Bradley-Terry reward model as the reward (``make demo-reward``, step 2).

The loop issue 12 asks to close: rendered pairs -> a reward model (``scripts/reward_demo.py``) -> GRPO
with it. The policy is the shipped tiny chart-to-code model and the GRPO setup is ``make demo``'s
(``configs/chart_grpo_demo.yaml``) with one change: the reward is the trained reward model's score of
the render against the reference render, nothing else. The held-out charts are then scored with metrics
that were *not* the training reward (SSIM to the reference, the chart-code score with the plotted
values, the execution rate), before and after, paired per chart, with bootstrap intervals; the
reward-hacking checks are that those independent metrics move with the learned reward, and the eval
reports (``run/eval/*/report/report.html``) show every chart side by side.

Run: ``.venv/bin/python scripts/reward_grpo_demo.py --reward-model out/demo-reward/run/model
--out out/demo-reward/grpo`` (a few minutes on 2 CPU cores; ``scripts/reward_demo.py`` first).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from visalign.data.charts import chart_dataset
from visalign.data.loaders import load_rows, write_jsonl
from visalign.evaluate import run_eval
from visalign.report.eval_report import bootstrap_ci
from visalign.trainers.config import resolve_config_paths
from visalign.trainers.vlm import train_grpo_from_config

ROOT = Path(__file__).resolve().parents[1]
HELDOUT = ROOT / "models" / "tiny-chart-vlm" / "heldout.jsonl"
#: the held-out metrics: none of them is the training reward
METRICS = ["execution", "render_similarity", "chart_code"]
CHART_CODE = {"weights": {"text": 1, "layout": 1, "type": 1, "color": 1, "data": 4}}


def _scores(report_dir: Path) -> dict[str, dict[str, float]]:
    """``{reward: {row id: score}}`` from an eval's ``results.jsonl`` (a failed render scores 0)."""
    out: dict[str, dict[str, float]] = {m: {} for m in METRICS}
    with open(report_dir / "results.jsonl", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            for m in METRICS:
                v = r.get("scores", {}).get(m)
                out[m][r["id"]] = 0.0 if v is None else float(v)
    return out


def hack_checks(generations: Path) -> dict[str, Any]:
    """The symptoms of the hacks seen so far, from an eval's completions: the share of charts drawn purple
    (the synthetic-only reward model's hack) and in the commonest colour (the on-policy one's: cyan), with
    the references' shares, the share whose colour matches the reference's, and the diversity of the
    plotted values (distinct value lists over the charts, the share of the commonest list, the mean share
    of distinct values within a list)."""
    rows = [json.loads(line) for line in generations.read_text(encoding="utf-8").splitlines() if line.strip()]

    def colour(code: str | None) -> str | None:
        m = re.search(r"color\s*=\s*['\"](\w+)['\"]", code or "")
        return m.group(1) if m else None

    def values(code: str | None) -> tuple[str, ...] | None:
        m = re.search(r"\[([^\[\]]*)\]", code or "")
        return tuple(v.strip() for v in m.group(1).split(",") if v.strip()) if m else None

    cols = [colour(r.get("completion")) for r in rows]
    refs = [colour(r.get("reference_code")) for r in rows]
    vals = [v for v in (values(r.get("completion")) for r in rows) if v]
    n = len(rows)
    top, count = Counter(cols).most_common(1)[0]
    return {"n": n, "purple": sum(c == "purple" for c in cols) / n, "reference_purple": sum(c == "purple" for c in refs) / n,
            "commonest_colour": top, "commonest_colour_share": count / n,
            "reference_share_of_that_colour": sum(c == top for c in refs) / n,
            "colour_matches_reference": sum(c is not None and c == r for c, r in zip(cols, refs, strict=True)) / n,
            "distinct_value_lists": len(set(vals)),
            "commonest_value_list_share": Counter(vals).most_common(1)[0][1] / n if vals else 0.0,
            "distinct_within_list": float(np.mean([len(set(v)) / len(v) for v in vals])) if vals else 0.0}


def paired(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Means before / after and the mean paired difference with its bootstrap 95 % interval."""
    ids = sorted(set(before) & set(after))
    b = np.array([before[i] for i in ids])
    a = np.array([after[i] for i in ids])
    mean, lo, hi = bootstrap_ci(list(a - b))
    return {"n": len(ids), "before": float(b.mean()), "after": float(a.mean()), "diff": mean, "ci95": [lo, hi]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reward-model", default="out/demo-reward/run/model", help="a saved reward model directory")
    ap.add_argument("--out", default="out/demo-reward/grpo")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--train-charts", type=int, default=400)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--beta", type=float, default=0.0, help="KL weight to the starting policy (GRPO's beta)")
    ap.add_argument("--seed", type=int, default=0, help="the GRPO seed (sampling, data order)")
    ap.add_argument("--with-chart-code", action="store_true",
                    help="reward = the reward model + the chart-code score (group-normalised and summed); the "
                         "held-out metrics then exclude chart_code")
    args = ap.parse_args(argv)
    model_dir = Path(args.reward_model)
    if not (model_dir / "reward_model.json").is_file():
        print(f"{model_dir}: no saved reward model (reward_model.json); run scripts/reward_demo.py first",
              file=sys.stderr)
        return 2
    out = Path(args.out)
    t0 = time.perf_counter()
    train_path = out / "data" / "train.jsonl"
    if not train_path.exists():
        exclude = {r["code"] for r in load_rows(HELDOUT) if r.get("code")}
        write_jsonl(chart_dataset(args.train_charts, seed=2, workers=args.workers, exclude=exclude), train_path)
    config = yaml.safe_load((ROOT / "configs" / "chart_grpo_demo.yaml").read_text())["grpo"]
    for key in ("train_data", "eval_data", "output_dir"):  # set below
        config.pop(key)
    config = resolve_config_paths(config, ROOT / "configs")
    config.update(train_data=str(train_path), eval_data=str(HELDOUT), output_dir=str(out / "run"),
                  rewards=[{"name": "model", "weight": 1.0, "options": {"path": str(model_dir)}}]
                  + ([{"name": "chart_code", "weight": 1.0, "options": CHART_CODE}] if args.with_chart_code else []),
                  reward_aggregation="normalize_then_sum" if args.with_chart_code else "sum", max_steps=args.steps, max_minutes=None, beta=args.beta, seed=args.seed, render_workers=args.workers,
                  progress=False, overwrite_output_dir=True)  # the script owns out/.../run
    trainer = train_grpo_from_config(config)
    seconds_train = time.perf_counter() - t0
    (before_dir, after_dir) = trainer.eval_dirs[0].parent, trainer.eval_dirs[-1].parent
    scored = {}
    for tag, d in (("before", before_dir), ("after", after_dir)):
        run_eval(d / "generations.jsonl", "chart", METRICS, d / "independent", workers=args.workers,
                 progress=False, reward_options={"chart_code": CHART_CODE},
                 render_options={"matplotlib": {"dpi": 64, "figsize": [1.5, 1.5]}},
                 title=f"independent metrics · {tag}")
        scored[tag] = _scores(d / "independent")
    summary: dict[str, Any] = {"reward_model": str(model_dir), "training_rewards": [r["name"] for r in config["rewards"]], "steps": trainer.step_count,
                               "seconds": round(time.perf_counter() - t0, 1), "seconds_train": round(seconds_train, 1)}
    learned = [json.loads(line) for line in (out / "run" / "eval.jsonl").read_text(encoding="utf-8").splitlines()]
    summary["training_reward_eval"] = {"before": learned[0].get("eval/model/mean"),
                                       "after": learned[-1].get("eval/model/mean")}
    summary["heldout"] = {m: paired(scored["before"][m], scored["after"][m]) for m in METRICS}
    summary["hack_checks"] = {tag: hack_checks(d / "generations.jsonl") for tag, d in (("before", before_dir), ("after", after_dir))}
    summary["beta"], summary["seed"] = args.beta, args.seed
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    for m, s in summary["heldout"].items():
        print(f"{m:18s} before {s['before']:.4f} after {s['after']:.4f} "
              f"diff {s['diff']:+.4f} [{s['ci95'][0]:+.4f}, {s['ci95'][1]:+.4f}] (n={s['n']})")
    for tag, h in summary["hack_checks"].items():
        print(f"{tag}: purple {h['purple']:.2f} (references {h['reference_purple']:.2f}), commonest colour "
              f"{h['commonest_colour']} {h['commonest_colour_share']:.2f} (references "
              f"{h['reference_share_of_that_colour']:.2f}), colour matches "
              f"{h['colour_matches_reference']:.2f}, {h['distinct_value_lists']} distinct value lists, commonest "
              f"{h['commonest_value_list_share']:.2f}, distinct within a list {h['distinct_within_list']:.2f}")
    print(f"learned reward (held-out mean): {summary['training_reward_eval']}; {summary['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
