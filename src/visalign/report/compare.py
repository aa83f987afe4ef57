"""Before / after: two evals of the same held-out rows (e.g. the policy before and after GRPO) on one page.

For each reward: both means with their bootstrap intervals and the paired difference (after - before
on the same rows) with its own interval, which is what says whether training helped; the training
curves when given; and a gallery reference | before | after, the rows that changed most first.

Example:
    >>> paired_difference({"a": 0.5, "b": 0.25, "c": None}, {"a": 0.75, "b": 0.5, "c": 1.0})[:1]
    (0.25,)
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from PIL import Image

from .eval_report import _CSS, _figure, _png_data_uri, bootstrap_ci


class PairedDifference(NamedTuple):
    """A paired before / after comparison (unpacks as ``(mean, low, high, n)``)."""

    mean: float  #: mean of after - before over the paired ids
    low: float  #: bootstrap 95 % interval, lower end
    high: float  #: upper end
    n: int  #: ids scored both before and after


def paired_difference(before: dict[str, float | None], after: dict[str, float | None], n_resamples: int = 2000,
                      seed: int = 0) -> PairedDifference:
    """Mean of ``after[id] - before[id]`` over the ids scored in both, its bootstrap 95 % interval, and
    how many ids were paired. A missing score (None) leaves the row out.

    Example:
        >>> d, lo, hi, n = paired_difference({"a": 0.5, "b": 0.25}, {"a": 0.75, "b": 0.5})
        >>> d, n
        (0.25, 2)
    """
    diffs = [after[k] - before[k] for k in before
             if before[k] is not None and after.get(k) is not None]  # type: ignore[operator]
    mean, low, high = bootstrap_ci(diffs, n_resamples=n_resamples, seed=seed)
    return PairedDifference(mean, low, high, len(diffs))


def sample_id(row_id: str, k: int) -> str:
    """The id of a row's ``k``-th sampled completion in a sampled evaluation (``eval_samples``).

    Example:
        >>> sample_id("chart-7", 3)
        'chart-7#s3'
    """
    return f"{row_id}#s{k}"


def sample_row(completion_id: str) -> str:
    """The row a completion answers: ``<row id>`` of a :func:`sample_id`, any other id unchanged.

    Example:
        >>> sample_row("chart-7#s3"), sample_row("chart-7"), sample_row("a#b")
        ('chart-7', 'chart-7', 'a#b')
    """
    return re.sub(r"#s\d+$", "", str(completion_id))


def per_row(scores: Mapping[str, float | None]) -> dict[str, float | None]:
    """``{row id: mean score}`` over each row's completions (one in a greedy evaluation, K sampled ones
    otherwise; a None score left out, None when none scored): the unit a paired interval resamples, since a
    row's samples are not independent.

    Example:
        >>> per_row({"a#s0": 1.0, "a#s1": 0.0, "b#s0": None, "b#s1": 0.5, "c#s0": None})
        {'a': 0.5, 'b': 0.5, 'c': None}
    """
    acc: dict[str, list[float]] = {}
    for k, v in scores.items():
        row = acc.setdefault(sample_row(k), [])
        if v is not None:
            row.append(v)
    return {k: (sum(v) / len(v) if v else None) for k, v in acc.items()}


def _records(eval_dir: Path) -> list[dict[str, Any]]:
    path = eval_dir / "results.jsonl"
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def _image(eval_dir: Path, rel: str | None) -> Image.Image | None:
    if not rel:
        return None
    with Image.open(eval_dir / rel) as im:
        im.load()
        return im.copy()


def compare_evals(before_dir: str | Path, after_dir: str | Path, out_path: str | Path, *,
                  title: str = "before / after", curves: str | Path | None = None, notes: str = "",
                  max_gallery: int = 60) -> dict[str, Any]:
    """Write the comparison page ``out_path`` from two ``visalign eval`` output directories (their
    ``results.jsonl`` and images) and return the numbers as a dict (also written next to the page as JSON).
    Intervals resample rows: the completions of a sampled evaluation (ids :func:`sample_id`) are averaged
    per row first; the gallery shows each completion."""
    before_dir, after_dir, out_path = Path(before_dir), Path(after_dir), Path(out_path)
    before, after = _records(before_dir), _records(after_dir)
    b_by, a_by = {r["id"]: r for r in before}, {r["id"]: r for r in after}
    rewards = list(dict.fromkeys(k for r in before + after for k in r["scores"]))
    table: dict[str, Any] = {}
    for name in rewards:
        bs = per_row({i: r["scores"].get(name) for i, r in b_by.items()})
        as_ = per_row({i: r["scores"].get(name) for i, r in a_by.items()})
        mb, lb, hb = bootstrap_ci([v for v in bs.values() if v is not None])
        ma, la, ha = bootstrap_ci([v for v in as_.values() if v is not None])
        d, ld, hd, n = paired_difference(bs, as_)
        table[name] = {"before": [mb, lb, hb], "after": [ma, la, ha], "difference": [d, ld, hd], "paired": n,
                       "significant": bool(n > 1 and (ld > 0 or hd < 0))}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.with_suffix(".json").write_text(json.dumps(table, indent=2))

    def cell(v: list[float]) -> str:
        return "—" if math.isnan(v[0]) else f"{v[0]:.4f} <small>[{v[1]:.4f}, {v[2]:.4f}]</small>"

    def diff_cell(v: list[float], significant: bool) -> str:
        if math.isnan(v[0]):
            return "—"
        return f"<b>{v[0]:+.4f}</b> <small>[{v[1]:+.4f}, {v[2]:+.4f}]</small>{' ✔' if significant else ''}"

    rows = "".join(
        f"<tr><td>{html.escape(n)}</td><td>{cell(t['before'])}</td><td>{cell(t['after'])}</td>"
        f"<td>{diff_cell(t['difference'], t['significant'])}</td><td>{t['paired']}</td></tr>" for n, t in table.items())
    graded = [n for n in rewards if n not in ("execution", "format")] or rewards
    primary = graded[0] if graded else None

    def change(i: str) -> float:
        b, a = b_by[i]["scores"].get(primary), a_by[i]["scores"].get(primary)
        return -abs(a - b) if a is not None and b is not None else 0.0

    cards = []
    for i in sorted((i for i in b_by if i in a_by), key=change)[:max_gallery]:
        b, a = b_by[i], a_by[i]
        ref = _image(after_dir, a.get("reference_png")) or _image(before_dir, b.get("reference_png"))
        sb = b["scores"].get(primary)
        sa = a["scores"].get(primary)
        caption = (f"{html.escape(str(primary))}: {'—' if sb is None else f'{sb:.3f}'} → "
                   f"{'—' if sa is None else f'{sa:.3f}'}")
        figs = [_figure(ref, "reference"), _figure(_image(before_dir, b.get("generated_png")), "before"),
                _figure(_image(after_dir, a.get("generated_png")), "after")]
        cards.append(f"<div class='row'><header><b>{html.escape(i)}</b><span class='scores'>{caption}</span></header>"
                     f"<div class='triple'>{''.join(figs)}</div></div>")
    curves_html = ""
    if curves and Path(curves).exists():
        with Image.open(curves) as im:
            curves_html = (f"<h2>Training</h2><img alt='training curves' style='max-width:100%' "
                           f"src='{_png_data_uri(im, max_side=2000)}'>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<div class='sub'>{len(before)} rows before, {len(after)} after; intervals are 95 % percentile "
            f"bootstrap over rows (a row's sampled completions averaged first), the difference is paired on the same "
            f"rows (✔: the interval excludes 0)</div>"
            f"{'<p>' + html.escape(notes) + '</p>' if notes else ''}"
            f"<h2>Metrics</h2><table class='metrics'><thead><tr><th>reward</th><th>before</th><th>after</th>"
            f"<th>after − before</th><th>paired n</th></tr></thead><tbody>{rows}</tbody></table>{curves_html}"
            f"<h2>Gallery</h2><div class='sub'>largest change in {html.escape(str(primary))} first</div>"
            f"<div id='gallery'>{''.join(cards)}</div></body></html>")
    out_path.write_text(page, encoding="utf-8")
    return table
