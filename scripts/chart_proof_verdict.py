"""Apply the chart GRPO proof's fixed rule (rules N, P, Q and R in docs/chart-grpo-rules.txt) to the summaries
``reward_grpo_demo.py`` wrote, so the verdict is read by a program, not by eye.

For each run (``--out`` of ``reward_grpo_demo.py``, scored with ``--baseline`` its placebo):

- **gate** (validation summary): the eight hack checks pass against the placebo, and each check against the
  start passes or also fails for the placebo against the start;
- **held-out** (held-out summary, scored once for a run that passed its gate): SSIM start -> run and
  placebo -> run with their 95 % intervals above 0, the eight checks passing against the placebo, and the five
  collapse / hedge checks passing against the start.

The proof holds when every run passes both. A placebo that broke the policy (fewer than 0.9 of its programs
run) is flagged: a comparison with it is then trivially positive.

Run: ``.venv/bin/python scripts/chart_proof_verdict.py out/q/Q-s0 out/q/Q-s1 --step 192 --samples 4 --temperature 0.7``
(``--samples 0`` for greedy summaries; ``--heldout heldout-h2`` judges the held-out set scored with
``reward_grpo_demo.py --heldout-data h2.jsonl`` instead of the model card's 100).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, NamedTuple

CHECKS = ("no_colour_collapse", "colour_match_not_falling", "colour_f1_not_falling", "no_value_collapse",
          "data_not_falling", "no_value_hedge", "no_prefix_hedge", "no_prefix_collapse")
COLLAPSE_CHECKS = ("no_colour_collapse", "no_value_collapse", "no_value_hedge", "no_prefix_hedge",
                   "no_prefix_collapse")
BROKEN_EXECUTION = 0.9


class Judgement(NamedTuple):
    """One run's result on one set of charts: ``passed`` and, when not, the reasons."""

    passed: bool
    reasons: list[str]


def scoring_name(charts: str, samples: int, temperature: float | None) -> str:
    """How ``reward_grpo_demo.py --val-step / --heldout-step`` names a scoring (its summary, grid and folders):
    the charts, and for a sampled one the samples a chart and the temperature.

    Example:
        >>> scoring_name("validation", 4, 0.7), scoring_name("heldout", 0, None)
        ('validation_sampled4_t0.7', 'heldout')
    """
    return charts + (f"_sampled{samples}_t{temperature:g}" if samples else "")


def summary_path(run: Path, charts: str, step: int, samples: int, temperature: float | None) -> Path:
    """The summary ``reward_grpo_demo.py --val-step / --heldout-step`` writes for these settings.

    Example:
        >>> summary_path(Path("out/q/Q-s0"), "validation", 192, 4, 0.7).name
        'summary_validation_sampled4_t0.7_step192.json'
        >>> summary_path(Path("out/q/Q-s0"), "heldout", 48, 0, 1.0).name
        'summary_heldout_step48.json'
    """
    return run / f"summary_{scoring_name(charts, samples, temperature)}_step{step}.json"


def _baseline(summary: dict[str, Any], where: str) -> dict[str, Any]:
    base = summary.get("baseline")
    if not isinstance(base, dict) or "verdict" not in base or "baseline_from_start" not in base:
        raise ValueError(f"{where}: no placebo comparison in it; score the run with --baseline PLACEBO")
    return base


def placebo_broken(summary: dict[str, Any], where: str = "summary") -> bool:
    """True when the placebo's programs run on fewer than 0.9 of the charts (its comparison is then trivial).

    Example:
        >>> s = {"baseline": {"verdict": {}, "baseline_from_start": {"metrics": {"execution": {"after": 0.63}}}}}
        >>> placebo_broken(s)
        True
    """
    execution = _baseline(summary, where)["baseline_from_start"]["metrics"]["execution"]["after"]
    return float(execution) < BROKEN_EXECUTION


def gate(summary: dict[str, Any], where: str = "summary") -> Judgement:
    """The validation gate: every check against the placebo passes, and every check against the start passes
    or fails for the placebo against the start too.

    Example:
        >>> ok = dict.fromkeys(CHECKS, True)
        >>> s = {"verdict": {**ok, "colour_match_not_falling": False}, "baseline": {"verdict": ok,
        ...      "baseline_from_start": {"verdict": {**ok, "colour_match_not_falling": False}}}}
        >>> gate(s)
        Judgement(passed=True, reasons=[])
        >>> s["baseline"]["baseline_from_start"]["verdict"]["colour_match_not_falling"] = True
        >>> gate(s)
        Judgement(passed=False, reasons=['against the start: colour_match_not_falling (the placebo passes it)'])
    """
    base = _baseline(summary, where)
    reasons = [f"against the placebo: {c}" for c in CHECKS if not base["verdict"][c]]
    placebo_from_start = base["baseline_from_start"]["verdict"]
    reasons += [f"against the start: {c} (the placebo passes it)" for c in CHECKS
                if not summary["verdict"][c] and placebo_from_start[c]]
    return Judgement(not reasons, reasons)


def _interval(metric: dict[str, Any]) -> str:
    low, high = metric["ci95"]
    return f"{metric['diff']:+.3f} [{low:+.3f}, {high:+.3f}]"


def heldout(summary: dict[str, Any], where: str = "summary") -> Judgement:
    """The held-out success: SSIM start -> run and placebo -> run intervals above 0, the eight checks pass against
    the placebo and the five collapse / hedge checks against the start.

    Example:
        >>> ok = dict.fromkeys(CHECKS, True)
        >>> up, flat = {"diff": 0.01, "ci95": [0.002, 0.02]}, {"diff": 0.0, "ci95": [-0.01, 0.01]}
        >>> s = {"metrics": {"render_similarity": flat}, "verdict": ok,
        ...      "baseline": {"metrics": {"render_similarity": up}, "verdict": ok, "baseline_from_start": {}}}
        >>> heldout(s)
        Judgement(passed=False, reasons=['SSIM start -> run +0.000 [-0.010, +0.010] not above 0'])
    """
    base = _baseline(summary, where)
    reasons = []
    for name, metric in (("start", summary["metrics"]["render_similarity"]),
                         ("placebo", base["metrics"]["render_similarity"])):
        if not metric["ci95"][0] > 0:
            reasons.append(f"SSIM {name} -> run {_interval(metric)} not above 0")
    reasons += [f"against the placebo: {c}" for c in CHECKS if not base["verdict"][c]]
    reasons += [f"against the start: {c}" for c in COLLAPSE_CHECKS if not summary["verdict"][c]]
    return Judgement(not reasons, reasons)


def _load(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SystemExit(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="the runs' --out directories (one a seed)")
    ap.add_argument("--step", type=int, required=True, help="the checkpoint step the rule judges")
    ap.add_argument("--samples", type=int, default=4, help="answers a chart (0: greedy summaries)")
    ap.add_argument("--temperature", type=float, default=0.7, help="the sampling temperature of the summaries")
    ap.add_argument("--heldout", default="heldout",
                    help="the held-out scoring to judge: heldout (the model card's 100) or heldout-STEM "
                         "(reward_grpo_demo.py --heldout-data STEM.jsonl)")
    args = ap.parse_args(argv)
    proof = True
    for run in args.runs:
        if not run.is_dir():
            ap.error(f"{run}: no such run directory")
        for charts, judge in (("validation", gate), (args.heldout, heldout)):
            path = summary_path(run, charts, args.step, args.samples, args.temperature)
            summary = _load(path)
            if summary is None:
                print(f"{run} {charts}: not scored yet ({path.name} missing)")
                proof = False
                break
            result = judge(summary, str(path))
            ssim = summary["metrics"]["render_similarity"]
            flag = " (the placebo is broken: comparisons with it are trivially positive)" \
                if placebo_broken(summary, str(path)) else ""
            print(f"{run} {charts}: {'pass' if result.passed else 'FAIL'}; SSIM start -> run {_interval(ssim)}, "
                  f"placebo -> run {_interval(summary['baseline']['metrics']['render_similarity'])}{flag}")
            for reason in result.reasons:
                print(f"    {reason}")
            if not result.passed:
                proof = False
                break
    print("the proof holds" if proof else "not the proof")
    return 0


if __name__ == "__main__":
    sys.exit(main())
