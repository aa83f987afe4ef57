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

Choosing options without the held-out charts: ``--val-charts 48`` keeps the last 48 training charts out of
training and evaluates them (every ``--eval-every`` steps, checkpoints as often) instead of the held-out
charts; the held-out charts are then scored once, for the step chosen on the validation charts, with
``--heldout-step N`` on the same ``--out`` (the starting policy against ``run/checkpoint-N``; with
``--heldout-data FILE.jsonl`` another held-out set than the model card's, e.g. a larger one). Every
evaluation reports the chart-code components (text, layout, type, colour F1 and the data score) paired
with bootstrap intervals, the hack checks with a pass / fail verdict, and a before / after grid PNG.
``--colour-weight W`` adds the chart-code colour F1 alone as a ground-truth term (group-normalised, summed);
``--colour-match-weight W`` adds the exact colour-name match (``scripts/chart_colour_match.py``) instead;
``--data-weight W`` the chart-code data score alone (the plotted values against the reference's: a term
against the value hedge, one rising list drawn for every chart); ``--no-reward-model`` leaves the reward
model out (the ablation: what the ground-truth terms do alone). ``--policy DIR`` starts from another tiny chart
policy than the shipped one (e.g. ``scripts/make_tiny_chart_vlm.py --steps 1500``, one that reads colours);
the held-out charts stay the shipped model card's (the same recipe with seed 0 excludes them from training).

Controls: ``--control placebo`` trains with a reward that carries no information (a hash of the program's
text, ``scripts/placebo_reward.py``): how far GRPO moves this policy on its own; ``--control ground-truth``
with ``make demo``'s rewards (SSIM + chart-code). ``--baseline OUT2`` compares a finished run with another
(the placebo) chart by chart at each common validation step, the hack checks taking the baseline's
completions in the place of the start's; with ``--heldout-step N`` it also scores the baseline's
checkpoint N on the held-out charts and reports the run against it.

Judging the sampler: ``--eval-samples K`` (with ``--heldout-step N`` or ``--val-step N``, which scores the
validation charts again) scores K completions a chart sampled at the run's training temperature (or
``--eval-temperature``) instead of the greedy one; every metric is averaged per chart before the paired
intervals and the hack checks pool all K x N answers. GRPO optimises the sampler's expected reward, and a
policy can be deployed as it trained (pass@1 from K samples, as DeepSeek-R1 reports); the greedy answer is a
different decoder that GRPO need not move.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from visalign.data.charts import CHART_RENDER_OPTIONS, chart_dataset
from visalign.data.loaders import load_rows, write_jsonl
from visalign.evaluate import run_eval
from visalign.report.compare import per_row, sample_row
from visalign.report.eval_report import bootstrap_ci
from visalign.trainers.config import load_config, parse_overrides, resolve_config_paths
from visalign.trainers.vlm import VLMGRPOConfig, VLMGRPOTrainer, train_grpo_from_config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))  # the module:Class rewards of --colour-match-weight and --control
from chart_colour_match import colour_name  # noqa: E402  (the colour literal the colour-name reward reads)
from chart_proof_verdict import scoring_name, summary_path  # noqa: E402  (one naming for the verdict's reads)

COLOUR_MATCH = "chart_colour_match:ColourNameMatch"
PLACEBO = "placebo_reward:PlaceboReward"
HELDOUT = ROOT / "models" / "tiny-chart-vlm" / "heldout.jsonl"
#: the held-out metrics: none of them is the training reward
METRICS = ["execution", "render_similarity", "chart_code"]
CHART_CODE = {"weights": {"text": 1, "layout": 1, "type": 1, "color": 1, "data": 4}}
#: the chart-code components reported one by one (from the eval's details)
COMPONENTS = ["text_f1", "layout_f1", "type_f1", "color_f1", "data"]
#: the colour term of ``--colour-weight``: chart_code with the colour F1 alone
COLOUR_ONLY = {"weights": {"color": 1}}
#: the values term of ``--data-weight``: chart_code with the data score alone (plotted values vs the reference's)
DATA_ONLY = {"weights": {"data": 1}}
#: what the reward model reward charges a program that does not render (its default, which training used)
FAILED_RENDER_SCORE = -10.0
#: the renders the references were made with (96 x 96), for every eval this script scores
RENDER_OPTIONS = {"matplotlib": CHART_RENDER_OPTIONS}
#: options this script sets itself (from its own flags or the run's layout); --set may not name them
SCRIPT_OWNED = ("model", "train_data", "eval_data", "output_dir", "rewards", "reward_aggregation", "max_steps",
                "max_minutes", "beta", "seed", "render_workers", "eval_every", "save_every", "prompts_per_step",
                "sampling", "overwrite_output_dir")
PREFIX = 3  # values a list's prefix holds for the prefix-hedge check (the shortest synthetic charts have 3)


def _scores(report_dir: Path) -> dict[str, dict[str, float]]:
    """``{metric: {row id: score}}`` from an eval's ``results.jsonl``: the rewards (a failed render scores
    0) and the chart-code components ``chart_code/<component>`` (0 for a failed render)."""
    names = METRICS + [f"chart_code/{k}" for k in COMPONENTS]
    out: dict[str, dict[str, float]] = {m: {} for m in names}
    with open(report_dir / "results.jsonl", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            for m in METRICS:
                v = r.get("scores", {}).get(m)
                out[m][r["id"]] = 0.0 if v is None else float(v)
            detail = (r.get("details") or {}).get("chart_code") or {}
            for k in COMPONENTS:
                v = None if "error_kind" in detail else detail.get(k)
                out[f"chart_code/{k}"][r["id"]] = 0.0 if v is None else float(v)
    return out


def _values(code: str | None) -> tuple[str, ...] | None:
    m = re.search(r"\[([^\[\]]*)\]", code or "")
    return tuple(v.strip() for v in m.group(1).split(",") if v.strip()) if m else None


def _rows(generations: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in generations.read_text(encoding="utf-8").splitlines() if line.strip()]


def colour_match(generations: Path) -> dict[str, float]:
    """``{row id: 1.0 if the completion's colour name is the reference's else 0.0}``."""
    return {str(r["id"]): float(colour_name(r.get("completion")) is not None
                                and colour_name(r.get("completion")) == colour_name(r.get("reference_code")))
            for r in _rows(generations)}


def hack_checks(generations: Path) -> dict[str, Any]:
    """The symptoms of the hacks seen so far, from an eval's completions: the share of charts drawn purple
    (the synthetic-only reward model's hack) and in the commonest colour (the on-policy one's: cyan), with
    the references' shares and every colour's share, the share whose colour matches the reference's, and the diversity of the
    plotted values (distinct value lists over the charts, the commonest list and its share, the mean share
    of distinct values within a list; the same for the lists' first ``PREFIX`` values, which lists of
    different lengths share when the policy draws one shape for many charts)."""
    rows = _rows(generations)
    cols = [colour_name(r.get("completion")) for r in rows]
    refs = [colour_name(r.get("reference_code")) for r in rows]
    vals = [v for v in (_values(r.get("completion")) for r in rows) if v]
    n = len(rows)
    top, count = Counter(cols).most_common(1)[0]
    top_list = Counter(vals).most_common(1)[0] if vals else (None, 0)
    prefixes = Counter(v[:PREFIX] for v in vals)
    top_prefix = prefixes.most_common(1)[0] if prefixes else (None, 0)
    return {"n": n, "purple": sum(c == "purple" for c in cols) / n, "reference_purple": sum(c == "purple" for c in refs) / n,
            "commonest_colour": top, "commonest_colour_share": count / n,
            "reference_share_of_that_colour": sum(c == top for c in refs) / n,
            "colour_shares": {str(c): k / n for c, k in Counter(cols).most_common()},
            "colour_matches_reference": sum(c is not None and c == r for c, r in zip(cols, refs, strict=True)) / n,
            "distinct_value_lists": len(set(vals)),
            "commonest_value_list": list(top_list[0]) if top_list[0] else None,
            "commonest_value_list_share": top_list[1] / n,
            "distinct_within_list": float(np.mean([len(set(v)) / len(v) for v in vals])) if vals else 0.0,
            "distinct_value_prefixes": len(prefixes),
            "commonest_value_prefix": list(top_prefix[0]) if top_prefix[0] else None,
            "commonest_value_prefix_share": top_prefix[1] / n}


def verdict(before: dict[str, Any], after: dict[str, Any], metrics: dict[str, Any], margin: float = 0.05) -> dict[str, Any]:
    """The hack checks as pass / fail, fixed before the runs: (1) no colour collapse: the after policy's
    commonest colour is drawn on at most ``margin`` more of the charts than the larger of its share in the
    references and in the before policy's charts; (2, 3) the colour match (same colour name) and the colour
    F1 do not fall (the paired interval's upper end >= 0); (4) no value collapse: the commonest value list's
    share rises by at most ``margin`` and (5) the data score does not fall (upper end >= 0); (6, added after
    the first five had passed on a policy that drew one rising shape for most charts) no value hedge: at least
    half as many distinct value lists as before (the commonest exact list under-measures a hedge whose lists
    differ in one value); (7, added after a run that passed the first six drew "7, 5, 6, 6, ..."
    on a quarter of the held-out charts, in lists of different lengths) no prefix hedge: at least half as
    many distinct first-``PREFIX``-value prefixes as before; (8, added after a ground-truth run kept half its
    prefixes but began 0.23 of its charts with "5, 5, 5", a middling hedge the data score pays for) no prefix
    collapse: the commonest prefix's share rises by at most ``margin``."""
    top = after["commonest_colour"]
    allowed = max(after["reference_share_of_that_colour"], before["colour_shares"].get(str(top), 0.0)) + margin
    checks = {
        "no_colour_collapse": after["commonest_colour_share"] <= allowed + 1e-9,
        "colour_match_not_falling": metrics["colour_match"]["ci95"][1] >= 0,
        "colour_f1_not_falling": metrics["chart_code/color_f1"]["ci95"][1] >= 0,
        "no_value_collapse": after["commonest_value_list_share"] <= before["commonest_value_list_share"] + margin + 1e-9,
        "data_not_falling": metrics["chart_code/data"]["ci95"][1] >= 0,
        "no_value_hedge": 2 * after["distinct_value_lists"] >= before["distinct_value_lists"],
        "no_prefix_hedge": 2 * after["distinct_value_prefixes"] >= before["distinct_value_prefixes"],
        "no_prefix_collapse": after["commonest_value_prefix_share"]
        <= before["commonest_value_prefix_share"] + margin + 1e-9,
    }
    return {**checks, "all_pass": all(checks.values()), "colour_share_allowed": allowed}


def grid(before: Path, after: Path, dest: Path, n: int = 24, cols: int = 6) -> None:
    """A PNG of the first ``n`` charts (by id), each cell reference | before | after (the eval renders; of a
    sampled evaluation, each chart's first sample)."""
    from PIL import Image, ImageDraw

    def images(report: Path) -> dict[str, dict[str, str]]:
        with open(report / "results.jsonl", encoding="utf-8") as f:
            return {r["id"]: r for r in map(json.loads, f)}

    b, a = images(before), images(after)
    ids = sorted({i for i in set(b) & set(a) if sample_row(i) == i or i.endswith("#s0")}, key=lambda i: (len(i), i))[:n]
    size, pad, head = 96, 6, 14

    def load(report: Path, rel: str | None) -> Image.Image:
        if rel and (report / rel).is_file():
            return Image.open(report / rel).convert("RGB").resize((size, size))
        return Image.new("RGB", (size, size), (200, 0, 0))  # a failed render

    rows = (len(ids) + cols - 1) // cols
    cell_w, cell_h = 3 * size + pad, size + head + pad
    canvas = Image.new("RGB", (cols * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(canvas)
    for k, i in enumerate(ids):
        x, y = (k % cols) * cell_w, (k // cols) * cell_h
        draw.text((x + 2, y + 1), f"{i}: reference | before | after", fill="black")
        canvas.paste(load(before, b[i].get("reference_png")), (x, y + head))
        canvas.paste(load(before, b[i].get("generated_png")), (x + size, y + head))
        canvas.paste(load(after, a[i].get("generated_png")), (x + 2 * size, y + head))
    dest.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(dest)


def paired(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Means before / after and the mean paired difference with its bootstrap 95 % interval."""
    ids = sorted(set(before) & set(after))
    b = np.array([before[i] for i in ids])
    a = np.array([after[i] for i in ids])
    mean, lo, hi = bootstrap_ci(list(a - b))
    return {"n": len(ids), "before": float(b.mean()), "after": float(a.mean()), "diff": mean, "ci95": [lo, hi]}


def analyse(before: Path, after: Path, workers: int) -> dict[str, Any]:
    """Score two evals' completions (``<eval dir>/generations.jsonl``) with the independent metrics (into
    ``<eval dir>/independent``; a rerun scores only what is missing), pair them per chart, run the hack
    checks and their verdict."""
    scored = {}
    for tag, d in (("before", before), ("after", after)):
        done = d / "independent" / "summary.json"  # scored already (the step-0 eval, compared with each later one)
        if not done.is_file() or done.stat().st_mtime < (d / "generations.jsonl").stat().st_mtime:
            run_eval(d / "generations.jsonl", "chart", METRICS, d / "independent", workers=workers,
                     progress=False, reward_options={"chart_code": CHART_CODE},
                     render_options=RENDER_OPTIONS,
                     title=f"independent metrics · {tag}")
        scored[tag] = _scores(d / "independent")
        scored[tag]["colour_match"] = colour_match(d / "generations.jsonl")
    metrics = {m: paired(per_row(scored["before"][m]), per_row(scored["after"][m])) for m in scored["before"]}
    checks = {tag: hack_checks(d / "generations.jsonl") for tag, d in (("before", before), ("after", after))}
    learned = {}
    for tag, d in (("before", before), ("after", after)):
        rewards = json.loads((d / "report" / "summary.json").read_text(encoding="utf-8")).get("rewards", {})
        learned[tag] = {name: r.get("mean") for name, r in rewards.items()}
    return {"metrics": metrics, "hack_checks": checks, "verdict": verdict(checks["before"], checks["after"], metrics),
            "training_rewards_eval": learned}


def learned_scores(eval_dir: Path, model: Path, workers: int) -> dict[str, float]:
    """``{chart id: score}``: the saved reward model at ``model`` scoring each completion of
    ``<eval_dir>/generations.jsonl`` against its reference, rendered at the size GRPO trained with (a failed
    render gets the reward's failure score, as in training; a chart's samples averaged). Kept in
    ``<eval_dir>/learned-<hash of the model path>``: a rerun with the same model scores only what is missing,
    another model gets its own folder."""
    key = hashlib.sha1(str(model.resolve()).encode()).hexdigest()[:10]
    dest = eval_dir / f"learned-{key}"
    run_eval(eval_dir / "generations.jsonl", "chart", ["model"], dest, workers=workers, progress=False,
             reward_options={"model": {"path": str(model), "failed_score": FAILED_RENDER_SCORE}},
             render_options=RENDER_OPTIONS, title=f"reward model {model}")
    out = {}
    with open(dest / "results.jsonl", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            v = r.get("scores", {}).get("model")  # a failed render or no code: FAILED_RENDER_SCORE, as in training
            if v is not None:
                out[r["id"]] = float(v)
    return {k: v for k, v in per_row(out).items() if v is not None}


def report(title: str, a: dict[str, Any]) -> None:
    print(f"== {title}")
    for m, s in a["metrics"].items():
        print(f"  {m:22s} before {s['before']:.4f} after {s['after']:.4f} "
              f"diff {s['diff']:+.4f} [{s['ci95'][0]:+.4f}, {s['ci95'][1]:+.4f}] (n={s['n']})")
    for tag, h in a["hack_checks"].items():
        print(f"  {tag}: commonest colour {h['commonest_colour']} {h['commonest_colour_share']:.2f} (references "
              f"{h['reference_share_of_that_colour']:.2f}), purple {h['purple']:.2f}, colour matches "
              f"{h['colour_matches_reference']:.2f}, {h['distinct_value_lists']} distinct value lists, commonest "
              f"{h['commonest_value_list']} {h['commonest_value_list_share']:.2f}, distinct within a list "
              f"{h['distinct_within_list']:.2f}, {h['distinct_value_prefixes']} distinct first-{PREFIX} "
              f"prefixes, commonest {h['commonest_value_prefix']} {h['commonest_value_prefix_share']:.2f}")
    print(f"  verdict: {a['verdict']}")
    print(f"  training rewards (eval means): {a['training_rewards_eval']}")
    for name, s in a.get("learned_reward", {}).items():
        if name != "model":
            print(f"  reward model, {name:20s} before {s['before']:.3f} after {s['after']:.3f} "
                  f"diff {s['diff']:+.3f} [{s['ci95'][0]:+.3f}, {s['ci95'][1]:+.3f}] (n={s['n']})")


def _checkpoint(run: Path, step: int) -> Path:
    """The model saved by the run at ``run`` (its ``--out``) at ``step``."""
    return run / "run" / f"checkpoint-{step:06d}" / "model"


def heldout_name(data: Path) -> str:
    """The name a held-out scoring of the charts in ``data`` goes by (its summary, grid and folders): "heldout"
    for the model card's 100, ``heldout-<file stem>`` for another set, so no two sets share a summary.

    Example:
        >>> heldout_name(HELDOUT), heldout_name(Path("out/r/h2.jsonl"))
        ('heldout', 'heldout-h2')
    """
    return "heldout" if Path(data).resolve() == HELDOUT.resolve() else f"heldout-{Path(data).stem}"


def score_once(out: Path, step: int, workers: int, force: bool, baseline: Path | None = None, *,
               charts: str = "heldout", samples: int = 0, temperature: float | None = None,
               heldout_data: Path = HELDOUT) -> int:
    """Score ``charts`` once, "heldout" (``heldout_data``: the model card's 100 unless given, named by
    :func:`heldout_name`) or "validation" (the run's ``data/val.jsonl``): the starting policy and
    ``run/checkpoint-<step>`` with the run's rewards and the independent metrics;
    ``summary_<charts><sampling>_step<step>.json`` and a grid PNG. Greedy, or with ``samples`` K, K completions
    a chart sampled at ``temperature`` (None: the run's training temperature) with the run's seed, every metric
    averaged per chart before pairing. With ``baseline`` (another run's ``--out``, e.g. the placebo control)
    its ``checkpoint-<step>`` too, and the run compared with it chart by chart (the hack checks with the
    baseline in the place of the start)."""
    saved_path = out / "run" / "config.yaml"
    saved = yaml.safe_load(saved_path.read_text(encoding="utf-8")) if saved_path.is_file() else {}
    saved = saved.get("grpo", saved)
    t = (saved.get("temperature", 1.0) if temperature is None else temperature) if samples else None
    data = Path(heldout_data) if charts == "heldout" else out / "data" / "val.jsonl"
    charts = heldout_name(data) if charts == "heldout" else charts
    name = scoring_name(charts, samples, t)
    dest = summary_path(out, charts, step, samples, t)
    if dest.exists() and not force:
        print(f"{dest} exists: the {charts} charts were already scored this way for this step (--force to redo)",
              file=sys.stderr)
        return 2
    runs = {"start": None, f"step_{step}": out}
    if baseline is not None:
        runs[f"baseline_step_{step}"] = baseline
    for run in runs.values():
        if run is not None and not _checkpoint(run, step).is_dir():
            print(f"{_checkpoint(run, step)}: no such checkpoint", file=sys.stderr)
            return 2
    if not saved_path.is_file():
        print(f"{saved_path}: no such file (the run's GRPO config)", file=sys.stderr)
        return 2
    if not data.is_file():
        why = "validation charts exist for runs made with --val-charts" if charts == "validation" else "--heldout-data"
        print(f"{data}: no such file ({why})", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    dirs = {}
    for tag, run in runs.items():
        model = saved["model"] if run is None else str(_checkpoint(run, step))
        config = load_config(VLMGRPOConfig, dict(saved, model=model, eval_data=str(data),
                                                 max_eval_rows=None,
                                                 eval_samples=samples, eval_temperature=t,
                                                 output_dir=str(out / name / tag), overwrite_output_dir=True,
                                                 resume_from=None, render_workers=workers))
        trainer = VLMGRPOTrainer(config)
        try:
            trainer.evaluate(tag=charts)
        finally:
            trainer.close()
        dirs[tag] = out / name / tag / "eval" / charts
    what = f"{charts} charts" + (f", {samples} samples each at T={t:g}" if samples else ", greedy")
    a = analyse(dirs["start"], dirs[f"step_{step}"], workers)
    grid(dirs["start"] / "independent", dirs[f"step_{step}"] / "independent", out / f"grid_{name}_step{step}.png")
    summary = {"step": step, "checkpoint": str(_checkpoint(out, step)), "charts": charts, "eval_samples": samples,
               "eval_temperature": t, **a}
    report(f"{what}, start -> step {step}", a)
    if baseline is not None:
        b = analyse(dirs[f"baseline_step_{step}"], dirs[f"step_{step}"], workers)
        summary["baseline"] = {"run": str(baseline), **b,
                               "baseline_from_start": analyse(dirs["start"], dirs[f"baseline_step_{step}"], workers)}
        report(f"{what}, baseline {baseline} step {step} -> this run step {step}", b)
        report(f"{what}, start -> baseline {baseline} step {step}", summary["baseline"]["baseline_from_start"])
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    dest.write_text(json.dumps(summary, indent=1))
    return 0


def compare_validation(out: Path, baseline: Path, workers: int, score_with: Path | None = None) -> int:
    """Each validation evaluation of the run at ``out`` against the baseline run's at the same step, chart by
    chart (the hack checks with the baseline's completions in the place of the start's):
    ``summary_val_vs_<baseline name>.json``. Reads only the validation charts' evaluations. With
    ``score_with`` (a saved reward model) that model also scores the start's, the baseline's and the run's
    completions, paired per chart (``learned_reward``): does the reward model rank what GRPO did as better?"""
    steps = sorted({d.name for d in (out / "run" / "eval").glob("step_*") if d.name != "step_000000"}
                   & {d.name for d in (baseline / "run" / "eval").glob("step_*")})
    if not steps:
        print(f"{out} and {baseline}: no validation evaluation at a common step", file=sys.stderr)
        return 2
    result = {}
    start = learned_scores(out / "run" / "eval" / "step_000000", score_with, workers) if score_with else {}
    for step in steps:
        a = analyse(baseline / "run" / "eval" / step, out / "run" / "eval" / step, workers)
        if score_with is not None:
            base, run = (learned_scores(d, score_with, workers) for d in (
                baseline / "run" / "eval" / step, out / "run" / "eval" / step))
            a["learned_reward"] = {"model": str(score_with), "start -> run": paired(start, run),
                                   "baseline -> run": paired(base, run), "start -> baseline": paired(start, base)}
        result[str(int(step.split("_")[1]))] = a
        report(f"validation charts, step {int(step.split('_')[1])}: baseline {baseline} -> {out}", a)
    (out / f"summary_val_vs_{baseline.name}.json").write_text(json.dumps(result, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reward-model", default="out/demo-reward/run/model", help="a saved reward model directory")
    ap.add_argument("--out", default="out/demo-reward/grpo")
    ap.add_argument("--policy", default=None,
                    help="the starting policy (a Qwen2-VL checkpoint directory; make demo's shipped "
                         "models/tiny-chart-vlm unless given), e.g. one built by scripts/make_tiny_chart_vlm.py")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--train-charts", type=int, default=400)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--beta", type=float, default=0.0, help="KL weight to the starting policy (GRPO's beta)")
    ap.add_argument("--seed", type=int, default=0, help="the GRPO seed (sampling, data order)")
    ap.add_argument("--prompts-per-step", type=int, default=None,
                    help="charts per GRPO step (make demo's 8 unless given): more per step, less drift per unit of signal")
    ap.add_argument("--sampling", choices=["tree", "independent"], default=None,
                    help="rollouts (make demo's tree unless given): independent samples carry more signal per group "
                         "than leaves sharing prefixes, at more generation cost")
    ap.add_argument("--with-chart-code", action="store_true",
                    help="reward = the reward model + the chart-code score (group-normalised and summed); the "
                         "held-out metrics then exclude chart_code")
    ap.add_argument("--colour-weight", type=float, default=0.0,
                    help="add the chart-code colour F1 alone with this weight (group-normalised and summed)")
    ap.add_argument("--colour-match-weight", type=float, default=0.0,
                    help="add the colour-name match (scripts/chart_colour_match.py: 1 when the program's colour "
                         "name is the reference's) with this weight (group-normalised and summed)")
    ap.add_argument("--data-weight", type=float, default=0.0,
                    help="add the chart-code data score alone (the plotted values against the reference's) with "
                         "this weight (group-normalised and summed)")
    ap.add_argument("--no-reward-model", action="store_true",
                    help="leave the reward model out (an ablation: only the terms added by the other options)")
    ap.add_argument("--control", choices=("placebo", "ground-truth"), default=None,
                    help="a control run without the reward model: a placebo reward (a hash of the text: how far "
                         "GRPO drifts on its own) or make demo's ground-truth rewards (SSIM + chart-code)")
    ap.add_argument("--val-charts", type=int, default=0,
                    help="keep the last N training charts out of training and evaluate them instead of the "
                         "held-out charts (score those later, once, with --heldout-step)")
    ap.add_argument("--eval-every", type=int, default=0,
                    help="with --val-charts: evaluate (and save a checkpoint) every N steps")
    ap.add_argument("--heldout-step", type=int, default=None,
                    help="do not train: score the held-out charts once for run/checkpoint-N of --out")
    ap.add_argument("--heldout-data", type=Path, default=HELDOUT,
                    help="with --heldout-step: score these charts (a JSONL made like the model card's, e.g. "
                         "chart_dataset(N, seed, exclude=every training code)) instead of the model card's 100; "
                         "the summary is named heldout-<file stem>")
    ap.add_argument("--baseline", default=None,
                    help="another run's --out (e.g. the placebo control): compare this run's validation evaluations "
                         "with it step by step (no training), or with --heldout-step score its checkpoint too")
    ap.add_argument("--score-with", default=None,
                    help="with --baseline (validation): a saved reward model that also scores the start's, the "
                         "baseline's and this run's completions, paired per chart")
    ap.add_argument("--val-step", type=int, default=None,
                    help="do not train: score the validation charts again for run/checkpoint-N of --out (with "
                         "--baseline, its checkpoint too), e.g. with --eval-samples")
    ap.add_argument("--eval-samples", type=int, default=0,
                    help="with --heldout-step / --val-step: K completions sampled a chart instead of the greedy one, "
                         "every metric averaged per chart (judges the sampler GRPO trains, as pass@1 from K samples)")
    ap.add_argument("--eval-temperature", type=float, default=None,
                    help="with --eval-samples: their temperature (default: the run's training temperature)")
    ap.add_argument("--force", action="store_true", help="with --heldout-step / --val-step: score them again")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a GRPO option of configs/chart_grpo_demo.yaml, as `visalign train --set` "
                         "(repeatable), e.g. --set temperature=0.7 --set learning_rate=3e-4")
    args = ap.parse_args(argv)
    out = Path(args.out)
    try:
        overrides = parse_overrides(args.set)
    except ValueError as e:
        ap.error(str(e))
    known = {f.name for f in dataclasses.fields(VLMGRPOConfig)}
    for key in overrides:
        if key not in known:
            ap.error(f"--set {key}: not a GRPO option (`visalign train grpo --describe` lists them)")
        if key in SCRIPT_OWNED:
            ap.error(f"--set {key}: this script sets it (use its own option)")
    if args.score_with and (args.heldout_step is not None or args.val_step is not None or not args.baseline):
        ap.error("--score-with compares the training run's validation evaluations: it needs --baseline and no "
                 "--heldout-step or --val-step")
    if args.score_with and not (Path(args.score_with) / "reward_model.json").is_file():
        ap.error(f"--score-with {args.score_with}: no saved reward model (reward_model.json) there")
    if args.heldout_step is not None and args.val_step is not None:
        ap.error("--heldout-step and --val-step: choose one")
    if args.heldout_data != HELDOUT and args.heldout_step is None:
        ap.error("--heldout-data goes with --heldout-step")
    if (args.eval_samples or args.eval_temperature is not None) and args.heldout_step is None and args.val_step is None:
        ap.error("--eval-samples and --eval-temperature go with --heldout-step or --val-step")
    if args.eval_samples < 0 or (args.eval_temperature is not None and not args.eval_temperature > 0):
        ap.error("--eval-samples must be >= 0 and --eval-temperature > 0")
    if args.eval_temperature is not None and not args.eval_samples:
        ap.error("--eval-temperature needs --eval-samples K (greedy has no temperature)")
    if args.heldout_step is not None or args.val_step is not None:
        charts, step = ("heldout", args.heldout_step) if args.heldout_step is not None else ("validation", args.val_step)
        return score_once(out, step, args.workers, args.force, Path(args.baseline) if args.baseline else None,
                          charts=charts, samples=args.eval_samples, temperature=args.eval_temperature,
                          heldout_data=args.heldout_data)
    if args.baseline:
        return compare_validation(out, Path(args.baseline), args.workers,
                                  Path(args.score_with) if args.score_with else None)
    if sum(map(bool, (args.with_chart_code, args.colour_weight, args.data_weight))) > 1:
        ap.error("--with-chart-code, --colour-weight and --data-weight all name the chart_code reward; choose one")
    model_dir = Path(args.reward_model)
    others = args.colour_weight or args.colour_match_weight or args.data_weight or args.with_chart_code
    if args.no_reward_model and (args.control or not others):
        ap.error("--no-reward-model needs another reward term (--colour-match-weight, --data-weight, ...) "
                 "and no --control")
    if args.control is None and not args.no_reward_model and not (model_dir / "reward_model.json").is_file():
        print(f"{model_dir}: no saved reward model (reward_model.json); run scripts/reward_demo.py first",
              file=sys.stderr)
        return 2
    if args.policy and not (Path(args.policy) / "config.json").is_file():
        ap.error(f"--policy {args.policy}: no checkpoint there (config.json)")
    t0 = time.perf_counter()
    train_path = out / "data" / "train.jsonl"
    if not train_path.exists():
        exclude = {r["code"] for r in load_rows(HELDOUT) if r.get("code")}
        write_jsonl(chart_dataset(args.train_charts, seed=2, workers=args.workers, exclude=exclude), train_path)
    eval_path, fit_path = HELDOUT, train_path
    if args.val_charts:
        rows = [json.loads(line) for line in train_path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if args.val_charts >= len(rows):
            ap.error(f"--val-charts {args.val_charts}: only {len(rows)} training charts")
        fit_path, eval_path = out / "data" / "train_fit.jsonl", out / "data" / "val.jsonl"
        for path, part in ((fit_path, rows[: -args.val_charts]), (eval_path, rows[-args.val_charts:])):
            path.write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
    config = yaml.safe_load((ROOT / "configs" / "chart_grpo_demo.yaml").read_text())["grpo"]
    for key in ("train_data", "eval_data", "output_dir"):  # set below
        config.pop(key)
    config = resolve_config_paths(config, ROOT / "configs")
    if args.policy:
        config["model"] = str(Path(args.policy).resolve())
    rewards = [{"name": "model", "weight": 1.0, "options": {"path": str(model_dir)}}]
    if args.control == "placebo":
        rewards = [{"name": PLACEBO, "weight": 1.0}]
    elif args.control == "ground-truth":
        rewards = config["rewards"]
    elif args.no_reward_model:
        rewards = []
    if args.with_chart_code:
        rewards.append({"name": "chart_code", "weight": 1.0, "options": CHART_CODE})
    if args.colour_weight:
        rewards.append({"name": "chart_code", "weight": args.colour_weight, "options": COLOUR_ONLY})
    if args.colour_match_weight:
        rewards.append({"name": COLOUR_MATCH, "weight": args.colour_match_weight})
    if args.data_weight:
        rewards.append({"name": "chart_code", "weight": args.data_weight, "options": DATA_ONLY})
    every = args.eval_every if args.val_charts else 0
    if args.prompts_per_step:
        config["prompts_per_step"] = args.prompts_per_step
    if args.sampling:
        config["sampling"] = args.sampling
    config.update(overrides)
    config.update(train_data=str(fit_path), eval_data=str(eval_path), output_dir=str(out / "run"), rewards=rewards,
                  reward_aggregation="normalize_then_sum" if len(rewards) > 1 else "sum", max_steps=args.steps,
                  max_minutes=None, beta=args.beta, seed=args.seed, render_workers=args.workers, eval_every=every,
                  save_every=every, progress=False, overwrite_output_dir=True)  # the script owns out/.../run
    trainer = train_grpo_from_config(config)
    seconds_train = time.perf_counter() - t0
    summary: dict[str, Any] = {"reward_model": None if args.control or args.no_reward_model else str(model_dir), "control": args.control, "training_rewards": rewards, "steps": trainer.step_count,
                               "beta": args.beta, "seed": args.seed, "val_charts": args.val_charts, "overrides": overrides,
                               "eval_data": str(eval_path), "seconds_train": round(seconds_train, 1)}
    first = trainer.eval_dirs[0].parent
    evals = {}
    for step, d in zip(trainer.eval_steps[1:], trainer.eval_dirs[1:], strict=True):
        evals[step] = analyse(first, d.parent, args.workers)
        grid(first / "independent", d.parent / "independent",
             out / f"grid_{'val' if args.val_charts else 'heldout'}_step{step}.png")
        report(f"{'validation' if args.val_charts else 'held-out'} charts, step 0 -> {step}", evals[step])
    last = evals[trainer.eval_steps[-1]]
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    if args.val_charts:
        summary["validation"] = {str(k): v for k, v in evals.items()}
    else:
        summary["heldout"] = last["metrics"]
        summary["hack_checks"] = last["hack_checks"]
        summary["verdict"] = last["verdict"]
    summary["training_reward_eval"] = {"before": last["training_rewards_eval"]["before"].get("model"),
                                       "after": last["training_rewards_eval"]["after"].get("model")}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"learned reward ({'validation' if args.val_charts else 'held-out'} mean): "
          f"{summary['training_reward_eval']}; {summary['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
