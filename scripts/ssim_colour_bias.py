"""Does SSIM reward a chart for its colour when its values are wrong? (A reward-hacking vector of SSIM on charts.)

For each of the synthetic generator's eight colours, ``--charts`` random bar / line charts in it (the
generator's 3-7 values of 1-9) as references; each is drawn again with *other* random values in each of the
eight colours and scored with ``render_similarity`` (SSIM, the renders of ``make demo``). Printed per
reference colour: the mean SSIM of the wrong values drawn in the right colour and in cyan, how often cyan
scores higher (paired), and the colour drawn that scores best. Where the values are wrong, the right colour
wins on the mean, but cyan, the light colour close to the white background, beats it on 0.20-0.60 of the
charts (seed 0, by reference colour): SSIM's colour signal drowns in the values' noise, which is how GRPO
runs with SSIM in the reward drift to cyan.

    .venv/bin/python scripts/ssim_colour_bias.py --charts 30
"""

from __future__ import annotations

import argparse
import random

import numpy as np

from visalign.data.charts import CHART_RENDER_OPTIONS, COLOURS, HEADER, LENGTH_RANGE, VALUE_RANGE, plot_call
from visalign.rewards import RenderService, Sample, get_reward


def chart(kind: str, values: list[int], colour: str) -> str:
    """The synthetic generator's chart program (``visalign data charts``) for these values and colour."""
    return f"{HEADER}\n{plot_call(kind, values, colour)}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--charts", type=int, default=30, help="charts per reference colour")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    samples, tags = [], []
    for colour in COLOURS:
        for _ in range(args.charts):
            n = rng.randint(*LENGTH_RANGE)
            right, wrong = ([rng.randint(*VALUE_RANGE) for _ in range(n)] for _ in range(2))
            kind = rng.choice(["bar", "line"])
            for drawn in COLOURS:
                samples.append(Sample(code=chart(kind, wrong, drawn), reference_code=chart(kind, right, colour),
                                      kind="matplotlib"))
                tags.append((colour, drawn))
    with RenderService(timeout=10, workers=args.workers, options={"matplotlib": CHART_RENDER_OPTIONS}) as service:
        scores = get_reward("render_similarity", service=service)(samples).scores
    ssim = {(colour, drawn): [] for colour in COLOURS for drawn in COLOURS}
    for tag, s in zip(tags, scores, strict=True):
        ssim[tag].append(float(s))
    print(f"wrong values ({args.charts} charts per reference colour): mean SSIM against the reference")
    print(f"{'reference':10s} {'drawn right':>11s} {'drawn cyan':>10s} {'cyan wins':>9s}  best-scoring colour drawn")
    for colour in COLOURS:
        right, cyan = np.array(ssim[colour, colour]), np.array(ssim[colour, "cyan"])
        best = max(COLOURS, key=lambda d: np.mean(ssim[colour, d]))
        print(f"{colour:10s} {right.mean():11.3f} {cyan.mean():10.3f} {np.mean(cyan > right):9.2f}  {best}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
