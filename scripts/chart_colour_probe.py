"""Which colour does a chart reward model prefer when the colour is wrong, with right or wrong values?

The diagnosis of the cyan hedge in chart GRPO with the Bradley-Terry reward (README, "Chart GRPO with the
trained reward model"): each held-out line chart's reference program is redrawn in every colour of
``COLOURS`` (its values kept, or replaced by the middling list ``[4, 6, 6, 6]`` the hacking policies wrote),
rendered as the GRPO demo renders (64 dpi, 1.5 in), and scored by the reward model against the reference
image. Prints the mean score of the right colour and of each wrong colour.

Run: ``.venv/bin/python scripts/chart_colour_probe.py --reward-model out/onpolicy/run/model [--wrong-values]``
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from visalign.data.charts import COLOURS
from visalign.rewards import Sample, get_reward
from visalign.rewards.render import RenderService

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from chart_colour_match import colour_name  # noqa: E402  (the colour literal the colour-name reward reads)
from colour_pairs import recolour  # noqa: E402

HELDOUT = ROOT / "models" / "tiny-chart-vlm" / "heldout.jsonl"
MIDDLING = "[4, 6, 6, 6]"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reward-model", default="out/onpolicy/run/model")
    ap.add_argument("--wrong-values", action="store_true", help=f"replace the values by {MIDDLING}")
    ap.add_argument("--charts", type=int, default=30, help="held-out line charts")
    args = ap.parse_args(argv)
    rows = [json.loads(line) for line in HELDOUT.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if "plt.plot" in r["code"]][: args.charts]
    samples, meta = [], []
    for r in rows:
        right = colour_name(r["code"])
        reference = Image.open(HELDOUT.parent / r["image"]).convert("RGB")
        for colour in COLOURS:
            code = recolour(r["code"], colour)
            if args.wrong_values:
                code = re.sub(r"\[[^\]]*\]", MIDDLING, code)
            samples.append(Sample(code=code, reference_code=r["code"], kind="matplotlib", reference_image=reference))
            meta.append(colour == right)
    service = RenderService(workers=2, options={"matplotlib": {"dpi": 64, "figsize": [1.5, 1.5]}})
    service.render(samples)
    service.close()
    for s in samples:
        s.image = s.rendered.image if s.rendered is not None and s.rendered.ok else None
    scores = get_reward("model", path=args.reward_model).score(samples).scores
    print(f"right colour: mean score {np.mean([s for s, ok in zip(scores, meta, strict=True) if ok]):+.2f}")
    for colour in COLOURS:
        wrong = [s for s, ok, x in zip(scores, meta, samples, strict=True) if not ok and colour_name(x.code) == colour]
        if wrong:  # none when every chart probed is drawn in this colour
            print(f"wrong {colour:7s}: mean score {np.mean(wrong):+.2f} (n={len(wrong)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
