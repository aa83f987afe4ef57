"""ReFL / DRaFT learning demo: back-propagating a differentiable surrogate of the shapes reward through the
sampler of the shipped tiny flow model raises the *plain* ``shape_colour`` reward and the shape/colour
classifier's accuracy on held-out captions (issue 12 section 4).

1. load ``models/tiny-shapes-flow`` through the ReFL trainer (``configs/refl_shapes.yaml``), trained on the
   12 :func:`~visalign.data.shapes.split_prompts` training captions, evaluated on the 6 held-out ones;
2. **before**: fixed-seed ODE samples of every held-out caption, scored with the plain
   :class:`~visalign.rewards.shapes.ShapeColourReward` (default options; hue bands, blob labelling, template
   box search: not the function trained on) and read back by its classifier, plus the surrogate's value;
3. **train**: ReFL / DRaFT iterations on the training captions (``ReFLTrainer.train_iteration``) with the
   differentiable surrogate (:func:`~visalign.rewards.shapes.soft_shape_colour`), until ``max_steps`` or
   ``--minutes``;
4. **after**: the same seeds; ``summary.json`` (paired bootstrap intervals of the held-out reward and
   accuracy, the surrogate's change, drift: coverage, centroid spread, background colour),
   ``before_after.png``, ``curves.png``, ``metrics.jsonl``.

The evaluation helpers (fixed-seed sampling, drift statistics, paired comparison, the captioned grid) are
the Flow-GRPO demo's (``scripts/flow_grpo_demo.py``), imported, so both demos measure alike.

Usage::

    .venv/bin/python scripts/refl_demo.py --out out/demo-refl --minutes 3 --eval-per-caption 32
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visalign.data.shapes import split_prompts
from visalign.report.compare import paired_difference
from visalign.trainers.config import load_config, parse_overrides, resolve_config_paths, save_config
from visalign.trainers.flow import build_reward
from visalign.trainers.flow_policies import load_flow_policy
from visalign.trainers.refl import ReFLConfig, ReFLTrainer, build_differentiable_reward

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs" / "refl_shapes.yaml"


def _grpo_demo() -> Any:
    """``scripts/flow_grpo_demo.py`` as a module (its evaluate / compare / grid are reused here)."""
    spec = importlib.util.spec_from_file_location("flow_grpo_demo", ROOT / "scripts" / "flow_grpo_demo.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def build_trainer(config: str | Path = DEFAULT_CONFIG, **overrides: Any) -> ReFLTrainer:
    """The ReFL trainer of ``config`` with the :func:`split_prompts` captions (training / held out)."""
    import yaml

    data = dict((yaml.safe_load(Path(config).read_text()) or {}).get("flow", {}))
    data = resolve_config_paths(data, Path(config).resolve().parent, str(config))  # relative to the file
    train_prompts, held_out = split_prompts(n_eval=6, seed=0)
    data.update(prompts=train_prompts, eval_prompts=held_out, log_with="none")
    cfg = load_config(ReFLConfig, data, **overrides)
    pretrained = Path(cfg.pretrained or ROOT / "models" / "tiny-shapes-flow")
    reward = build_differentiable_reward(cfg.rewards)
    eval_reward = build_reward(cfg.eval_rewards) if cfg.eval_rewards else None
    return ReFLTrainer(cfg, load_flow_policy(pretrained), reward, train_prompts, held_out, eval_reward)


def add_surrogate(trainer: ReFLTrainer, records: Sequence[dict[str, Any]]) -> None:
    """The trained-on surrogate's value of each record's image (``record["surrogate"]``)."""
    images = torch.stack([torch.from_numpy(np.asarray(r["image"], dtype=np.float32) / 255).permute(2, 0, 1)
                          for r in records])
    with torch.no_grad():
        values = trainer.reward.differentiable(images, prompts=[r["prompt"] for r in records]).tolist()
    for r, v in zip(records, values, strict=True):
        r["surrogate"] = float(v)


def _retitle(grid: Any, columns: int, size: int, method: str) -> None:
    """The Flow-GRPO demo's grid says "GRPO" in its block titles: say which method this is."""
    from PIL import ImageDraw

    draw = ImageDraw.Draw(grid)
    block = columns * (size + 6)
    draw.rectangle([120, 0, grid.width, 20], fill="white")
    for b, name in enumerate(("before", f"after {method}")):
        draw.text((120 + b * (block + 24) + 2, 5), name, fill="black")


def plot_curves(history: Sequence[dict[str, Any]], summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    its = [h["iteration"] for h in history]
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    ax.plot(its, [h["reward/mean"] for h in history], "o-", ms=3, lw=1, label="training surrogate (train captions)")
    for name, style in (("before", ":"), ("after", "--")):
        v = summary[name]["reward_mean"]
        ax.axhline(v, ls=style, color="black", lw=1, label=f"held-out plain shape_colour {name} ({v:.3f})")
    ax.set_xlabel("ReFL / DRaFT iteration")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"{summary['mode']} on models/tiny-shapes-flow (CPU)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_demo(out: str | Path, config: str | Path = DEFAULT_CONFIG, minutes: float | None = 3.0,
             eval_per_caption: int = 32, threads: int = 1, log: Any = print, **overrides: Any) -> dict[str, Any]:
    """The whole demo (module docstring); returns the summary written to ``out/summary.json``."""
    t_start = time.perf_counter()
    torch.set_num_threads(threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    demo = _grpo_demo()
    trainer = build_trainer(config, output_dir=str(out), **overrides)
    c, rt = trainer.config, trainer.runtime
    save_config(c, out / "config.yaml")
    held_out = rt.eval_prompts
    log(f"refl demo ({c.mode}): {len(trainer.prompts)} training captions, held out: {', '.join(held_out)}")
    before = demo.evaluate(rt, held_out, eval_per_caption, use_ema=False)
    add_surrogate(trainer, before)
    log(f"before: held-out shape_colour {np.mean([r['reward'] for r in before]):.3f}")
    rt.train_iteration = trainer.train_iteration  # the Flow-GRPO demo's budgeted loop, running ReFL iterations
    training = demo.train(rt, minutes, log=log)
    save_config(c, out / "config.yaml")  # the loop wrote the runtime's options
    after = demo.evaluate(rt, held_out, eval_per_caption, use_ema=rt.ema is not None)
    add_surrogate(trainer, after)
    surrogate = paired_difference({r["id"]: r["surrogate"] for r in before}, {r["id"]: r["surrogate"] for r in after})
    summary: dict[str, Any] = {
        "model": str(c.pretrained), "mode": c.mode, "trained_on": "shape_colour surrogate (soft_shape_colour)",
        "evaluated_on": "plain shape_colour (default options) + its classifier, held-out captions",
        "train_prompts": trainer.prompts, "held_out_prompts": held_out,
        "eval": {"per_caption": eval_per_caption, "samples": len(before), "sampler": "ODE", "num_steps": c.eval_num_steps},
        **demo.compare(before, after),
        "surrogate_difference": {"mean": surrogate[0], "ci95": [surrogate[1], surrogate[2]], "n_pairs": surrogate[3]},
        "training": training,
    }
    summary.pop("train_reward_difference", None)  # the runtime's reward is the plain one here: same as reward
    grid = demo.before_after_grid(before, after, columns=min(8, eval_per_caption))
    _retitle(grid, min(8, eval_per_caption), before[0]["image"].size[0] * 3, f"{c.mode} (EMA)" if rt.ema else c.mode)
    grid.save(out / "before_after.png")
    plot_curves(trainer.history, summary, out / "curves.png")
    summary["minutes_total"] = (time.perf_counter() - t_start) / 60
    summary["environment"] = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                              "machine": platform.machine(), "python": platform.python_version()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    d, a, s = summary["reward_difference"], summary["accuracy_difference"], summary["surrogate_difference"]
    log(f"held-out plain shape_colour {summary['before']['reward_mean']:.3f} -> {summary['after']['reward_mean']:.3f}: "
        f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] (paired, 95 %, n={d['n_pairs']})")
    log(f"held-out accuracy {summary['before']['accuracy']:.3f} -> {summary['after']['accuracy']:.3f}: "
        f"{a['mean']:+.3f} [{a['ci95'][0]:+.3f}, {a['ci95'][1]:+.3f}]")
    log(f"held-out surrogate (trained on): {s['mean']:+.3f} [{s['ci95'][0]:+.3f}, {s['ci95'][1]:+.3f}]")
    for name in ("before", "after"):
        dr = summary[name]["drift"]
        log(f"{name}: coverage mean {dr['coverage_mean']:.3f} (p90 {dr['coverage_p90']:.2f}), centroid std "
            f"{dr['centroid_std_px']} px, background RGB {dr['background_rgb']}")
    log(f"{training['iterations']} iterations in {training['minutes']:.1f} min; {summary['minutes_total']:.1f} min in all")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="out/demo-refl")
    p.add_argument("--config", default=str(DEFAULT_CONFIG))
    p.add_argument("--minutes", type=float, default=3.0, help="training budget (0: none)")
    p.add_argument("--eval-per-caption", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    try:
        overrides = parse_overrides(args.set)
    except ValueError as exc:
        p.error(str(exc))
    run_demo(args.out, args.config, minutes=args.minutes or None, eval_per_caption=args.eval_per_caption,
             threads=args.threads, **overrides)
    return 0


if __name__ == "__main__":
    sys.exit(main())
