"""Colour counterfactual pairs for the chart reward model: the policy's own samples, redrawn in the right
and in a wrong colour.

The cyan hedge of chart GRPO with the Bradley-Terry reward (README, "Chart GRPO with the trained reward
model") is conditional: with wrong values the on-policy reward model ranks a wrong cyan chart above the
right colour (``scripts/chart_colour_probe.py --wrong-values``). Neither its synthetic pairs (each ladder
perturbs one aspect of a reference, so no pair has two wrong-valued charts that differ in colour) nor its
on-policy pairs (whatever two samples happened to differ in) show it that the colour counts whatever the
values. This script makes exactly those pairs:

1. the on-policy samples of ``scripts/onpolicy_pairs.py`` (``ONPOLICY/data/samples.jsonl``: 8 samples of
   the tiny chart policy per training chart, their values mostly wrong), split by chart as that script
   split them (the last ``--val-charts`` charts are its validation part);
2. per chart up to ``--per-chart`` distinct samples that rendered and draw one ``color='...'``: the
   sample with its colour set to the reference's colour (chosen) against the same sample in another
   colour of the palette (rejected, drawn uniformly), everything else (values, type, title) the
   sample's own. The label is the exact colour, a ground truth read from the reference code;
3. rendered in the sandbox as the references are (96 x 96), written as pair JSONL (``OUT/train.jsonl``,
   ``OUT/val.jsonl``) for ``scripts/onpolicy_pairs.py --extra-train``;
4. ``--evaluate MODEL ...``: each saved reward model's accuracy on the validation pairs, overall and by
   the wrong colour, with a bootstrap interval over charts.

Run: ``nice -n 19 .venv/bin/python scripts/colour_pairs.py --onpolicy out/onpolicy --out out/colour-pairs
--evaluate out/onpolicy/run/model``
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from visalign.data.charts import COLOURS, render_charts
from visalign.data.pairs import load_pairs, write_pairs
from visalign.languages import LANGUAGES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chart_colour_match import COLOUR  # the colour literal the colour-name reward reads
from onpolicy_pairs import chart_bootstrap, pair_correct  # the on-policy script's helpers

PROMPT = LANGUAGES["matplotlib"].instruction


def recolour(code: str, colour: str) -> str:
    """``code`` with its one ``color='...'`` literal set to ``colour``.

    Example:
        >>> recolour("plt.plot([1, 2], color='cyan')", "red")
        "plt.plot([1, 2], color='red')"
    """
    return COLOUR.sub(f"color='{colour}'", code)


def counterfactuals(samples: list[dict], per_chart: int, rng: random.Random) -> list[dict]:
    """Pair specs ``dict(chart, reference_code, chosen_code, rejected_code, wrong)`` for one split: up to
    ``per_chart`` distinct rendered one-colour samples per chart whose reference draws one palette colour."""
    by_chart: dict[int, list[dict]] = {}
    for s in samples:
        by_chart.setdefault(s["row"], []).append(s)
    out = []
    for chart, rows in by_chart.items():
        ref = rows[0]["reference_code"]
        right = COLOUR.findall(ref)
        if len(right) != 1 or right[0] not in COLOURS:
            continue
        seen: set[str] = set()
        usable = []
        for s in rows:
            if s["rendered"] and len(COLOUR.findall(s["code"])) == 1 and s["code"] not in seen:
                seen.add(s["code"])
                usable.append(s)
        rng.shuffle(usable)
        for s in usable[:per_chart]:
            wrong = rng.choice([c for c in COLOURS if c != right[0]])
            out.append({"chart": chart, "reference_code": ref, "chosen_code": recolour(s["code"], right[0]),
                        "rejected_code": recolour(s["code"], wrong), "wrong": wrong})
    return out


def render_pairs(specs: list[dict], split: str, workers: int) -> list[dict]:
    """Render references and both sides; pairs whose renders fail or coincide are dropped."""
    codes = sorted({c for p in specs for c in (p["reference_code"], p["chosen_code"], p["rejected_code"])})
    images = {c: (r.image.convert("RGB") if r.ok else None)
              for c, r in zip(codes, render_charts(codes, workers=workers), strict=True)}
    out = []
    for i, p in enumerate(specs):
        ref, chosen, rejected = (images[p[k]] for k in ("reference_code", "chosen_code", "rejected_code"))
        if ref is None or chosen is None or rejected is None or chosen.tobytes() == rejected.tobytes():
            continue
        out.append({"id": f"colour-{split}-{p['chart']}-{i}", "task": "chart", "kind": "matplotlib",
                    "prompt": PROMPT, "chosen": chosen, "rejected": rejected, "reference": ref, "margin": 0.5,
                    "perturbation": f"colour-counterfactual-{p['wrong']}", "group": f"colour-{split}-{p['chart']}",
                    "chosen_code": p["chosen_code"], "rejected_code": p["rejected_code"]})
    return out


def evaluate(model: str, pairs: list[dict]) -> dict:
    """Accuracy of a saved reward model on pairs: overall (charts resampled) and by the wrong colour."""
    correct = pair_correct(model, pairs)
    groups = [str(p["group"]) for p in pairs]
    by: dict[str, list[float]] = {}
    for p, c in zip(pairs, correct, strict=True):
        by.setdefault(p["perturbation"].rsplit("-", 1)[1], []).append(c)
    return {"n": len(correct), "accuracy": sum(correct) / len(correct), "ci95_by_chart": chart_bootstrap(correct, groups),
            "by_wrong_colour": {k: round(sum(v) / len(v), 3) for k, v in sorted(by.items())}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--onpolicy", default="out/onpolicy", help="scripts/onpolicy_pairs.py's output directory")
    ap.add_argument("--out", default="out/colour-pairs")
    ap.add_argument("--val-charts", type=int, default=40, help="as scripts/onpolicy_pairs.py --val-charts was")
    ap.add_argument("--per-chart", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--evaluate", nargs="*", default=[], help="saved reward models to score on the validation pairs")
    args = ap.parse_args(argv)
    out = Path(args.out)
    train_path, val_path = out / "train.jsonl", out / "val.jsonl"
    if not (train_path.exists() and val_path.exists()):
        samples = [json.loads(line) for line in (Path(args.onpolicy) / "data" / "samples.jsonl").open(encoding="utf-8")]
        charts = sorted({s["row"] for s in samples})
        val_charts = set(charts[len(charts) - args.val_charts:])
        rng = random.Random(args.seed)
        for split, path in (("train", train_path), ("val", val_path)):
            part = [s for s in samples if (s["row"] in val_charts) == (split == "val")]
            pairs = render_pairs(counterfactuals(part, args.per_chart, rng), split, args.workers)
            write_pairs(pairs, path)
            print(f"{split}: {len(pairs)} pairs from {len({p['group'] for p in pairs})} charts", flush=True)
    results = {}
    val = load_pairs(val_path)
    for model in args.evaluate:
        results[model] = evaluate(model, val)
        r = results[model]
        print(f"{model}: validation accuracy {r['accuracy']:.3f} [{r['ci95_by_chart'][0]:.3f}, "
              f"{r['ci95_by_chart'][1]:.3f}] (n={r['n']}, charts resampled); by wrong colour {r['by_wrong_colour']}")
    if results:
        (out / "eval.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
