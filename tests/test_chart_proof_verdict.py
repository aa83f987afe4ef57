"""scripts/chart_proof_verdict.py: the chart GRPO proof's rule applied to hand-made summaries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conftest import load_script

verdicts = load_script("chart_proof_verdict")
OK = dict.fromkeys(verdicts.CHECKS, True)


def _metric(diff: float, low: float, high: float) -> dict[str, Any]:
    return {"n": 100, "diff": diff, "ci95": [low, high]}


def _summary(ssim_start: dict, ssim_placebo: dict, *, run: dict | None = None, vs_placebo: dict | None = None,
             placebo_vs_start: dict | None = None, placebo_execution: float = 1.0) -> dict[str, Any]:
    return {"metrics": {"render_similarity": ssim_start}, "verdict": run or OK,
            "baseline": {"metrics": {"render_similarity": ssim_placebo}, "verdict": vs_placebo or OK,
                         "baseline_from_start": {"verdict": placebo_vs_start or OK,
                                                 "metrics": {"execution": {"after": placebo_execution}}}}}


def _write(run: Path, charts: str, summary: dict[str, Any]) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / f"summary_{charts}_sampled4_t0.7_step192.json").write_text(json.dumps(summary))


def test_gate_forgives_only_what_the_placebo_also_fails() -> None:
    up = _metric(0.01, 0.002, 0.02)
    shared = _summary(up, up, run={**OK, "colour_f1_not_falling": False},
                      placebo_vs_start={**OK, "colour_f1_not_falling": False})
    assert verdicts.gate(shared).passed
    own = _summary(up, up, run={**OK, "no_value_hedge": False})
    assert verdicts.gate(own).reasons == ["against the start: no_value_hedge (the placebo passes it)"]
    against_placebo = _summary(up, up, vs_placebo={**OK, "no_colour_collapse": False})
    assert verdicts.gate(against_placebo).reasons == ["against the placebo: no_colour_collapse"]


def test_heldout_needs_both_intervals_above_zero_and_the_collapse_checks() -> None:
    up, touching = _metric(0.007, 0.0001, 0.013), _metric(0.007, 0.0, 0.014)
    assert verdicts.heldout(_summary(up, up)).passed
    assert not verdicts.heldout(_summary(touching, up)).passed  # a lower end of exactly 0 is not above 0
    # colour match and colour F1 against the start are not among the five collapse / hedge checks
    assert verdicts.heldout(_summary(up, up, run={**OK, "colour_match_not_falling": False})).passed
    result = verdicts.heldout(_summary(up, up, run={**OK, "no_prefix_collapse": False}))
    assert result.reasons == ["against the start: no_prefix_collapse"]


def test_main_reads_the_runs_summaries(tmp_path: Path, capsys) -> None:
    up = _metric(0.01, 0.002, 0.02)
    for seed in (0, 1):
        _write(tmp_path / f"Q-s{seed}", "validation", _summary(up, up))
        _write(tmp_path / f"Q-s{seed}", "heldout", _summary(up, up, placebo_execution=0.63 if seed else 1.0))
    runs = [str(tmp_path / "Q-s0"), str(tmp_path / "Q-s1")]
    assert verdicts.main([*runs, "--step", "192"]) == 0
    out = capsys.readouterr().out
    assert out.strip().endswith("the proof holds")
    assert out.count("(the placebo is broken") == 1  # flagged on seed 1's held-out line only
    (tmp_path / "Q-s1" / "summary_heldout_sampled4_t0.7_step192.json").unlink()
    verdicts.main([*runs, "--step", "192"])
    out = capsys.readouterr().out
    assert "Q-s1 heldout: not scored yet" in out and out.strip().endswith("not the proof")


def test_main_judges_another_heldout_set_by_its_name(tmp_path: Path, capsys) -> None:
    """--heldout heldout-h2 reads the summaries reward_grpo_demo.py --heldout-data h2.jsonl writes, not the card's."""
    up, flat = _metric(0.01, 0.002, 0.02), _metric(0.0, -0.01, 0.01)
    run = tmp_path / "R-s0"
    _write(run, "validation", _summary(up, up))
    _write(run, "heldout", _summary(flat, up))  # the model card's 100: fails
    _write(run, "heldout-h2", _summary(up, up))
    verdicts.main([str(run), "--step", "192"])
    assert capsys.readouterr().out.strip().endswith("not the proof")
    verdicts.main([str(run), "--step", "192", "--heldout", "heldout-h2"])
    out = capsys.readouterr().out
    assert "R-s0 heldout-h2: pass" in out and out.strip().endswith("the proof holds")
