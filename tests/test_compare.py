"""visalign.report.compare: a sampled evaluation's completions are averaged per row before the paired interval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from visalign.report.compare import compare_evals, paired_difference, per_row, sample_id, sample_row


def test_sample_ids_round_trip_and_rows_average():
    assert sample_row(sample_id("chart-12", 3)) == "chart-12" and sample_row("a#b") == "a#b"
    before = {"a#s0": 0.0, "a#s1": 1.0, "b#s0": 0.5, "b#s1": 0.5}
    after = {"a#s0": 1.0, "a#s1": 1.0, "b#s0": 0.25, "b#s1": 0.75}
    assert per_row(before) == {"a": 0.5, "b": 0.5} and per_row(after) == {"a": 1.0, "b": 0.5}
    d = paired_difference(per_row(before), per_row(after))
    assert d.n == 2 and d.mean == pytest.approx(0.25)  # ((1 - 0.5) + (0.5 - 0.5)) / 2
    assert per_row({"a": 0.3, "b": None}) == {"a": 0.3, "b": None}  # a greedy evaluation: unchanged


def _eval_dir(path: Path, scores: dict[str, float]) -> Path:
    path.mkdir(parents=True)
    (path / "results.jsonl").write_text("".join(json.dumps({"id": i, "scores": {"ssim": v}}) + "\n"
                                                for i, v in scores.items()))
    return path


def test_compare_evals_pairs_rows_not_samples(tmp_path):
    """Two rows, three samples each: the interval has two paired units, and the difference is the mean of the rows'
    mean differences (row r0: 0.2 -> 0.5, row r1: 0.6 -> 0.6), whatever the samples' order."""
    before = {sample_id("r0", k): v for k, v in enumerate([0.1, 0.2, 0.3])}
    before |= {sample_id("r1", k): v for k, v in enumerate([0.6, 0.6, 0.6])}
    after = {sample_id("r0", k): v for k, v in enumerate([0.5, 0.4, 0.6])}
    after |= {sample_id("r1", k): v for k, v in enumerate([0.9, 0.3, 0.6])}
    table = compare_evals(_eval_dir(tmp_path / "b", before), _eval_dir(tmp_path / "a", after), tmp_path / "c.html")
    assert table["ssim"]["paired"] == 2
    assert table["ssim"]["difference"][0] == pytest.approx((0.3 + 0.0) / 2)
    assert table["ssim"]["before"][0] == pytest.approx(0.4) and table["ssim"]["after"][0] == pytest.approx(0.55)
    assert "averaged first" in (tmp_path / "c.html").read_text()
