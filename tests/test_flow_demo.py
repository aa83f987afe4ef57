"""scripts/flow_grpo_demo.py: one tiny GRPO iteration end to end writes well-formed outputs (not that it
improves: that is what the full demo measures)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "models" / "tiny-shapes-flow"


@pytest.mark.skipif(not (MODEL_DIR / "diffusion_pytorch_model.safetensors").exists(),
                    reason="no shipped model")
@pytest.mark.slow
def test_flow_demo_writes_outputs(tmp_path):
    demo = load_script("flow_grpo_demo")
    out = tmp_path / "demo-flow"
    lines: list[str] = []
    summary = demo.run_demo(out, demo.DEFAULT_CONFIG, minutes=None, eval_per_caption=2, log=lines.append,
                            max_steps=1, prompts_per_iteration=2, group_size=2, num_steps=4,
                            eval_num_steps=4, ema_every=1, batch_size=8)

    for name in ("summary.json", "before_after.png", "curves.png", "metrics.jsonl", "config.yaml"):
        assert (out / name).is_file(), name
    assert (out / "final").is_dir() and (out / "final_ema").is_dir()
    written = json.loads((out / "summary.json").read_text())
    assert written["held_out_prompts"] == summary["held_out_prompts"]
    assert len(written["held_out_prompts"]) == 6 and len(written["train_prompts"]) == 12
    assert not set(written["held_out_prompts"]) & set(written["train_prompts"])
    for side in ("before", "after"):
        stats = written[side]
        assert stats["n"] == 12
        assert 0.0 <= stats["reward_mean"] <= 1.0 and 0.0 <= stats["accuracy"] <= 1.0
        low, high = stats["reward_ci95"]
        assert low <= stats["reward_mean"] <= high
    diff = written["reward_difference"]
    assert diff["n_pairs"] == 12 and diff["ci95"][0] <= diff["mean"] <= diff["ci95"][1]
    assert math.isclose(diff["mean"], written["after"]["reward_mean"] - written["before"]["reward_mean"],
                        abs_tol=1e-9)
    assert set(written["per_caption"]) == set(written["held_out_prompts"])
    assert written["training"]["iterations"] == 1 and written["training"]["stopped_by"] == "iterations"
    assert written["eval"]["weights_after"] == "ema"

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1]
    assert 0.0 <= rows[0]["reward/mean"] <= 1.0

    grid = Image.open(out / "before_after.png")
    assert grid.width >= 2 * 2 * 96 and grid.height >= 6 * 96  # two blocks of 2 seeds (32 px x 3), 6 rows
    curves = Image.open(out / "curves.png").convert("RGB")
    assert curves.size == (640, 360)  # plot_curves' figsize (6.4, 3.6) inches at 100 dpi
    # the curves are drawn: black held-out lines and text, and the training reward's marker in the first
    # cycle colour (31, 119, 180) at alpha 0.5 over white: (31 + 255) / 2, (119 + 255) / 2, (180 + 255) / 2
    pixels = np.asarray(curves).reshape(-1, 3).astype(int)
    assert (pixels.sum(1) == 0).any() and (np.abs(pixels - [143, 187, 217]).sum(1) < 40).any()
    assert any("held-out reward" in line for line in lines)


@pytest.mark.slow
def test_flow_demo_time_budget_stops_between_iterations() -> None:
    """The demo's budget is a callback on the trainer's loop: it stops when one more iteration of the mean
    length so far would overrun the budget (a fake clock: 0.06 s per iteration, a 0.2 s budget)."""
    demo = load_script("flow_grpo_demo")
    clock = iter([0.0, *[0.06 * i for i in range(1, 100)]])
    lines: list[str] = []
    budget = demo.IterationBudget(0.2 / 60, log=lines.append, clock=lambda: next(clock))
    stops = [budget(None, {"iteration": i, "reward/mean": 0.5}) for i in range(1, 4)]
    assert stops == [False, False, True] and budget.stopped_by == "time"  # 0.12 + 0.06 fits, 0.18 + 0.06 does not
    assert len(lines) == 3 and "iteration   3" in lines[-1]
    unlimited = demo.IterationBudget(None, log=None, clock=lambda: 1e9)
    assert not unlimited(None, {"iteration": 1, "reward/mean": 0.5}) and unlimited.stopped_by == "iterations"
