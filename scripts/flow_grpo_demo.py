"""Flow-GRPO learning demo: GRPO raises the ``shape_colour`` reward of the shipped tiny flow model on
held-out captions, in a few minutes on one CPU thread (issue 5).

1. load ``models/tiny-shapes-flow`` through the trainer (``configs/flow_grpo_shapes.yaml``), and split
   :data:`visalign.data.shapes.CAPTIONS` with :func:`~visalign.data.shapes.split_prompts` into 12
   training and 6 held-out captions;
2. **before**: sample every held-out caption with fixed noise seeds (deterministic ODE sampling: the
   trainer's own eval sampler, Euler steps with noise level 0) and score each image with the
   ``shape_colour`` reward at its DEFAULT options (the headline metric, even when the config trains on a
   narrower coverage window; the training reward's score is kept beside it) and read it back with
   :func:`~visalign.rewards.shapes.analyse_image` (shape, colour, size, background, position);
3. **train**: GRPO iterations on the training captions only, in the trainer's own loop
   (``FlowGRPOTrainer.train`` with an :class:`IterationBudget` callback), until the config's
   ``max_steps`` or the ``--minutes`` budget, whichever comes first;
4. **after**: the same seeds again, with the trainer's EMA weights (what its eval uses) when EMA is on;
5. write ``summary.json`` (means with bootstrap 95 % intervals, the paired difference, accuracy, time,
   and ``drift``: mean coverage, centroid spread and background colour before/after, the things a
   reward hack changes and the reward does not see),
   ``before_after.png`` (the fixed-seed grid), ``curves.png`` (training reward per iteration),
   ``metrics.jsonl`` (the trainer's per-iteration metrics), ``final/`` / ``final_ema/`` (weights), and
   the trainer's own ``eval/`` grids and ``comparison.html``. An ``--out`` that holds a previous run is
   refused unless ``--overwrite``.

Usage::

    .venv/bin/python scripts/flow_grpo_demo.py --out out/demo-flow --minutes 0 --eval-per-caption 64
                                                              # 30 iterations, ~5-6 minutes on 1 thread
    .venv/bin/python scripts/flow_grpo_demo.py --out out/demo-flow --minutes 2 --eval-per-caption 8

The held-out captions are never trained on: a rise there is generalisation through shared weights
(every shape and every colour still occurs among the training captions). The intervals treat the
``6 x eval-per-caption`` samples as independent; they are about these seeds and this run, not about
GRPO runs in general.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from visalign.data.shapes import parse_caption, split_prompts
from visalign.report.compare import paired_difference
from visalign.report.eval_report import bootstrap_ci
from visalign.rewards.base import Sample
from visalign.rewards.shapes import ShapeColourReward, analyse_image
from visalign.trainers.config import load_config, parse_overrides, resolve_config_paths
from visalign.trainers.flow import FlowGRPOConfig, FlowGRPOTrainer, build_reward
from visalign.trainers.flow_policies import load_flow_policy

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs" / "flow_grpo_shapes.yaml"
EVAL_STREAM = 7919  # noise stream of the before/after samples (differs from the rollouts' stream 0)


# ------------------------------------------------------------------------------------------ setup


def build_trainer(config: str | Path | dict[str, Any] = DEFAULT_CONFIG, n_eval: int = 6, split_seed: int = 0,
                  **overrides: Any) -> FlowGRPOTrainer:
    """The trainer of ``config`` (a YAML file with a ``flow:`` section, or a mapping), trained on the
    :func:`split_prompts` training captions, with the held-out captions as its eval prompts. The
    config's own ``prompts`` / ``eval_prompts`` are replaced by the split. Paths in a config
    file are relative to the file (:func:`~visalign.trainers.config.resolve_config_paths`)."""
    import yaml

    data: Any = config
    if not isinstance(config, dict):
        data = yaml.safe_load(Path(config).read_text()) or {}
    data = dict(data.get("flow", data))
    if not isinstance(config, dict):
        data = resolve_config_paths(data, Path(config).resolve().parent, str(config))
    train_prompts, held_out = split_prompts(n_eval=n_eval, seed=split_seed)
    data.update(prompts=train_prompts, prompts_file=None, eval_prompts=held_out, eval_prompts_file=None)
    data.setdefault("log_with", "none")
    data.setdefault("progress", False)  # the demo logs one line per iteration itself (IterationBudget)
    cfg = load_config(FlowGRPOConfig, data, **overrides)
    policy = load_flow_policy(cfg.pretrained or ROOT / "models" / "tiny-shapes-flow")
    reward = build_reward(cfg.rewards or {"shape_colour": 1.0}, cfg.reward_aggregation)
    return FlowGRPOTrainer(cfg, policy, reward, train_prompts, held_out)


# ------------------------------------------------------------------------------------------- eval


@torch.no_grad()
def evaluate(trainer: FlowGRPOTrainer, prompts: Sequence[str], per_prompt: int, *, use_ema: bool = True,
             num_steps: int | None = None) -> list[dict[str, Any]]:
    """Fixed-seed deterministic samples of ``prompts`` (``per_prompt`` each), scored.

    Sample ``(prompt i, seed j)`` starts from the trainer's noise of root ``i * per_prompt + j`` in
    stream :data:`EVAL_STREAM` and follows the ODE (noise level 0) for ``num_steps`` Euler steps
    (default: the config's ``eval_num_steps``), with the EMA weights swapped in when ``use_ema`` and
    the trainer keeps them. Returns one record per image: ``id``, ``prompt``, ``seed``, ``reward``,
    ``shape`` / ``colour`` (classified), ``correct`` and the PIL ``image``.
    """
    steps = num_steps or trainer.config.eval_num_steps
    roots = [(i * per_prompt + j, i) for i in range(len(prompts)) for j in range(per_prompt)]
    ema = trainer.ema if use_ema else None
    context = ema.swapped_in(trainer.params) if ema is not None else contextlib.nullcontext()
    with context:
        rollout = trainer.rollout(list(prompts), roots, [0.0] * steps, 0, split_steps=[], stream=EVAL_STREAM,
                                  num_steps=steps)
    images = trainer.policy.decode(rollout.leaves)
    samples = [Sample(prompt=prompts[p], image=im, group=p) for (_, p), im in zip(roots, images, strict=True)]
    # the headline metric is always the reward with its default options; the training reward
    # (the config's, which may narrow e.g. the coverage window) is kept beside it
    scores = ShapeColourReward()(samples).scores
    train_scores = trainer.reward(samples).scores
    records = []
    for (r, p), image, score, train_score in zip(roots, images, scores, train_scores, strict=True):
        seen = analyse_image(image)  # what classify_shape_colour reads, plus size / background / position
        shape, colour = seen["predicted_shape"], seen["predicted_colour"]
        centre = _centroid(image, seen["background"])
        want_shape, want_colour = parse_caption(prompts[p])
        value = float(score) if score is not None and math.isfinite(float(score)) else None
        seed = r - p * per_prompt
        train_value = float(train_score) if train_score is not None else None
        records.append({"id": f"{prompts[p]}#{seed}", "prompt": prompts[p], "seed": seed,
                        "reward": value, "train_reward": train_value, "shape": shape, "colour": colour,
                        "correct": shape == want_shape and colour == want_colour, "image": image,
                        "coverage": seen["coverage"], "background": seen["background"], "centroid": centre})
    return records


def _centroid(image: Image.Image, background: Sequence[float]) -> list[float] | None:
    """Mean ``(x, y)`` pixel of the foreground (RGB distance > 60 from the background), or None."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    ys, xs = np.nonzero(np.sqrt(((rgb - np.asarray(background)) ** 2).sum(-1)) > 60)
    return [float(xs.mean()), float(ys.mean())] if xs.size else None


def drift(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What the reward does not look at but a hack would change: the foreground's size (mean coverage;
    the training data's median is 0.18, 90th percentile 0.36), the spread of its position (std of the
    centroid in pixels) and the background colour (mean of the border medians, RGB 0-255)."""
    cov = np.array([r["coverage"] for r in records])
    cents = np.array([r["centroid"] for r in records if r["centroid"] is not None]).reshape(-1, 2)
    return {"coverage_mean": float(cov.mean()), "coverage_p90": float(np.percentile(cov, 90)),
            "centroid_std_px": cents.std(0).round(2).tolist() if len(cents) else None,
            "background_rgb": np.array([r["background"] for r in records]).mean(0).round(1).tolist()}


def _stats(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    rewards = [r["reward"] for r in records if r["reward"] is not None]
    mean, low, high = bootstrap_ci(rewards)
    acc, acc_low, acc_high = bootstrap_ci([float(r["correct"]) for r in records])
    return {"reward_mean": mean, "reward_ci95": [low, high],
            "accuracy": acc, "accuracy_ci95": [acc_low, acc_high],
            "n": len(records), "drift": drift(records)}


def compare(before: Sequence[dict[str, Any]], after: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Before / after statistics, the paired differences (reward and accuracy) and per-caption means."""
    diff, low, high, n = paired_difference({r["id"]: r["reward"] for r in before},
                                           {r["id"]: r["reward"] for r in after})
    tr_diff, tr_low, tr_high, _ = paired_difference({r["id"]: r["train_reward"] for r in before},
                                                    {r["id"]: r["train_reward"] for r in after})
    acc_diff, acc_low, acc_high, _ = paired_difference({r["id"]: float(r["correct"]) for r in before},
                                                       {r["id"]: float(r["correct"]) for r in after})
    per_caption: dict[str, dict[str, float]] = {}
    for name, records in (("before", before), ("after", after)):
        for prompt in dict.fromkeys(r["prompt"] for r in records):
            rows = [r for r in records if r["prompt"] == prompt]
            scores = [r["reward"] for r in rows if r["reward"] is not None]
            entry = per_caption.setdefault(prompt, {})
            entry[f"reward_{name}"] = float(np.mean(scores)) if scores else math.nan
            entry[f"accuracy_{name}"] = float(np.mean([r["correct"] for r in rows]))
    return {"before": _stats(before), "after": _stats(after),
            "reward_difference": {"mean": diff, "ci95": [low, high], "n_pairs": n},
            "accuracy_difference": {"mean": acc_diff, "ci95": [acc_low, acc_high], "n_pairs": n},
            "train_reward_difference": {"mean": tr_diff, "ci95": [tr_low, tr_high], "n_pairs": n},
            "per_caption": per_caption}


# ------------------------------------------------------------------------------------------ train


class IterationBudget:
    """A training callback (``FlowGRPOTrainer.train(callbacks=[...])``): stops when one more iteration
    of the mean length so far would overrun ``minutes``, and logs one line per iteration.

    Example:
        >>> ticks = iter([0.0, 10.0, 20.0, 31.0])
        >>> budget = IterationBudget(0.5, log=None, clock=lambda: next(ticks))
        >>> [budget(None, {"iteration": i, "reward/mean": 0.5}) for i in (1, 2)]
        [False, True]
        >>> budget.stopped_by
        'time'
    """

    def __init__(self, minutes: float | None, log: Any = print, clock: Any = time.perf_counter) -> None:
        self.budget = math.inf if minutes is None else 60.0 * minutes
        self.log, self.clock = log, clock
        self.started = clock()
        self.stopped_by = "iterations"

    def __call__(self, trainer: Any, metrics: dict[str, Any]) -> bool:
        elapsed = self.clock() - self.started
        metrics["time/elapsed"] = elapsed
        if self.log is not None:
            self.log(f"  iteration {metrics['iteration']:3d}  reward {metrics['reward/mean']:.3f}  "
                     f"accuracy {metrics.get('reward/accuracy', math.nan):.2f}  ({elapsed:.0f} s)")
        if elapsed + elapsed / max(1, int(metrics["iteration"])) > self.budget:
            self.stopped_by = "time"
            return True
        return False


def train(trainer: FlowGRPOTrainer, minutes: float | None = None, log: Any = print) -> dict[str, Any]:
    """The trainer's own loop (:meth:`FlowGRPOTrainer.train`: ``metrics.jsonl``, eval grids, curves,
    final and EMA weights) until ``config.max_steps`` or ``minutes``, with an :class:`IterationBudget`
    callback (one more iteration is started only if the mean iteration time still fits)."""
    budget = IterationBudget(minutes, log)
    t0 = time.perf_counter()
    trainer.train(callbacks=[budget])
    seconds = time.perf_counter() - t0
    c = trainer.config
    return {"iterations": trainer.iteration, "minutes": seconds / 60.0,
            "seconds_per_iteration": seconds / max(trainer.iteration, 1), "stopped_by": budget.stopped_by,
            "planned_iterations": c.max_steps, "budget_minutes": minutes}


# ------------------------------------------------------------------------------------------ figures


def before_after_grid(before: Sequence[dict[str, Any]], after: Sequence[dict[str, Any]], columns: int = 8,
                      scale: int = 3) -> Image.Image:
    """Rows = captions; left block ``before``, right block ``after`` (the first ``columns`` seeds, the same
    in both). Each tile has a green frame when ``classify_shape_colour`` reads the caption back, red if not,
    and its reward underneath."""
    prompts = list(dict.fromkeys(r["prompt"] for r in before))
    by_id = {name: {r["id"]: r for r in recs} for name, recs in (("before", before), ("after", after))}
    seeds = sorted({r["seed"] for r in before})[:columns]
    size = before[0]["image"].size[0] * scale
    tile_w, tile_h, label_w, gap, head = size + 6, size + 18, 120, 24, 22
    width = label_w + 2 * len(seeds) * tile_w + gap
    grid = Image.new("RGB", (width, head + len(prompts) * tile_h), "white")
    draw = ImageDraw.Draw(grid)
    for b, name in enumerate(("before", "after")):
        x0 = label_w + b * (len(seeds) * tile_w + gap)
        title = f"{name} GRPO" + (" (EMA weights)" if name == "after" else "")
        draw.text((x0 + 2, 5), title, fill="black")
    for row, prompt in enumerate(prompts):
        y = head + row * tile_h
        draw.text((4, y + size // 2 - 4), prompt, fill="black")
        for b, name in enumerate(("before", "after")):
            x0 = label_w + b * (len(seeds) * tile_w + gap)
            for col, seed in enumerate(seeds):
                rec = by_id[name].get(f"{prompt}#{seed}")
                if rec is None:
                    continue
                x = x0 + col * tile_w
                frame = (40, 160, 60) if rec["correct"] else (210, 40, 40)
                draw.rectangle([x, y, x + size + 3, y + size + 3], outline=frame, width=2)
                grid.paste(rec["image"].convert("RGB").resize((size, size), Image.NEAREST), (x + 2, y + 2))
                if rec["reward"] is not None:
                    draw.text((x + 2, y + size + 5), f"{rec['reward']:.2f}", fill=(60, 60, 60))
    return grid


def plot_curves(history: Sequence[dict[str, Any]], summary: dict[str, Any], path: Path) -> None:
    """Training reward (and accuracy) per iteration, a moving average, and the held-out means."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    its = [h["iteration"] for h in history]
    reward = np.array([h["reward/mean"] for h in history], dtype=float)
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    ax.plot(its, reward, "o-", ms=3, lw=1, alpha=0.5, label="training reward (4 captions x 8 samples)")
    if len(reward) >= 5:
        k = 5
        smooth = np.convolve(reward, np.ones(k) / k, mode="valid")
        ax.plot(its[k - 1:], smooth, lw=2, label=f"moving average ({k})")
    acc = [h.get("reward/accuracy") for h in history]
    if all(a is not None for a in acc):
        ax.plot(its, acc, lw=1, alpha=0.4, color="grey", label="training accuracy")
    for name, style in (("before", ":"), ("after", "--")):
        value = summary[name]["reward_mean"]
        ax.axhline(value, ls=style, color="black", lw=1, label=f"held-out reward {name} ({value:.3f})")
    ax.set_xlabel("GRPO iteration")
    ax.set_ylabel("shape_colour reward")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("Flow-GRPO on models/tiny-shapes-flow (CPU)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ------------------------------------------------------------------------------------------- main


def run_demo(out: str | Path, config: str | Path | dict[str, Any] = DEFAULT_CONFIG,
             minutes: float | None = 5.0,
             eval_per_caption: int = 32, grid_columns: int = 8, threads: int | None = 1, log: Any = print,
             **overrides: Any) -> dict[str, Any]:
    """The whole demo (module docstring); returns the summary written to ``out/summary.json``.
    ``overrides`` replace config options (e.g. ``max_steps=1``)."""
    t_start = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    trainer = build_trainer(config, output_dir=str(out), **overrides)
    c = trainer.config
    use_ema = trainer.ema is not None
    say = log or (lambda *_: None)
    say(f"flow-grpo demo: {len(trainer.prompts)} training captions, "
        f"held out: {', '.join(trainer.eval_prompts)}")
    t = time.perf_counter()
    before = evaluate(trainer, trainer.eval_prompts, eval_per_caption, use_ema=False)
    eval_seconds = time.perf_counter() - t
    say(f"before: held-out reward {np.mean([r['reward'] for r in before]):.3f}  ({eval_seconds:.0f} s)")
    say(f"training ({c.max_steps} iterations at most, {minutes} minutes budget)")
    training = train(trainer, minutes, log=log)
    after = evaluate(trainer, trainer.eval_prompts, eval_per_caption, use_ema=use_ema)
    summary: dict[str, Any] = {
        "model": str(c.pretrained), "reward": "shape_colour",
        "train_prompts": trainer.prompts, "held_out_prompts": trainer.eval_prompts,
        "eval": {"per_caption": eval_per_caption, "samples": len(before), "sampler": "ODE (noise level 0)",
                 "num_steps": c.eval_num_steps, "noise_stream": EVAL_STREAM, "seed": c.seed,
                 "weights_after": "ema" if use_ema else "trained"},
        **compare(before, after),
        "training": training,
    }
    grid = before_after_grid(before, after, columns=min(grid_columns, eval_per_caption))
    grid.save(out / "before_after.png")
    plot_curves(trainer.history, summary, out / "curves.png")
    summary["minutes_total"] = (time.perf_counter() - t_start) / 60.0
    summary["environment"] = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                              "machine": platform.machine(), "python": platform.python_version()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    d = summary["reward_difference"]
    a = summary["accuracy_difference"]
    say(f"held-out reward {summary['before']['reward_mean']:.3f} -> {summary['after']['reward_mean']:.3f}: "
        f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] (paired, 95 %, n={d['n_pairs']})")
    t = summary["train_reward_difference"]
    say(f"training reward (config's options) on held-out: {t['mean']:+.3f} [{t['ci95'][0]:+.3f}, {t['ci95'][1]:+.3f}]")
    say(f"held-out accuracy {summary['before']['accuracy']:.3f} -> {summary['after']['accuracy']:.3f}: "
        f"{a['mean']:+.3f} [{a['ci95'][0]:+.3f}, {a['ci95'][1]:+.3f}]")
    for name in ("before", "after"):
        dr = summary[name]["drift"]
        say(f"{name}: coverage mean {dr['coverage_mean']:.3f} (p90 {dr['coverage_p90']:.2f}), centroid std "
            f"{dr['centroid_std_px']} px, background RGB {dr['background_rgb']}")
    say(f"{training['iterations']} GRPO iterations in {training['minutes']:.1f} min "
        f"({training['seconds_per_iteration']:.1f} s each); {summary['minutes_total']:.1f} min in all")
    say(f"wrote {out}/summary.json, before_after.png, curves.png, metrics.jsonl, comparison.html")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="out/demo-flow", help="output directory (default: out/demo-flow)")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="Flow-GRPO config (default: %(default)s)")
    p.add_argument("--minutes", type=float, default=5.0,
                   help="training budget in minutes, checked between iterations (default: 5; 0: none)")
    p.add_argument("--iterations", type=int, default=None, help="GRPO iterations (default: the config's)")
    p.add_argument("--eval-per-caption", type=int, default=32,
                   help="fixed seeds per held-out caption (default: 32)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    p.add_argument("--overwrite", action="store_true", help="replace a previous run in --out")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config option")
    args = p.parse_args(argv)
    try:
        overrides = parse_overrides(args.set)
    except ValueError as exc:
        p.error(str(exc))
    if args.iterations is not None:
        overrides["max_steps"] = args.iterations
    if args.overwrite:
        overrides["overwrite_output_dir"] = True
    run_demo(args.out, args.config, minutes=args.minutes or None, eval_per_caption=args.eval_per_caption,
             threads=args.threads, **overrides)
    return 0


if __name__ == "__main__":
    sys.exit(main())
