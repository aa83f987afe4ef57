"""The shared trainer runtime (visalign.trainers.runtime): one run per output directory, checkpoint
lookup, metrics.jsonl, the time budget, the progress bar's reward fields, callbacks, curves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from visalign.trainers.runtime import (
    MetricsLog,
    OutputDirError,
    TimeBudget,
    latest_checkpoint,
    plot_curves,
    prepare_output_dir,
    resolve_checkpoint,
    reward_postfix,
    run_callbacks,
)


def _previous_run(d: Path) -> None:
    (d / "checkpoint-000002").mkdir(parents=True)
    (d / "eval" / "step_000002" / "report").mkdir(parents=True)
    (d / "eval" / "step_000002" / "report" / "results.jsonl").write_text('{"id": "e0"}\n')
    MetricsLog(d / "metrics.jsonl").append({"step": 1, "loss": 1.0})


def test_a_directory_with_a_previous_run_is_refused_with_both_ways_out(tmp_path: Path) -> None:
    _previous_run(tmp_path)
    with pytest.raises(OutputDirError) as error:
        prepare_output_dir(tmp_path)
    message = str(error.value)
    assert str(tmp_path) in message and "resume_from: latest" in message and "overwrite_output_dir: true" in message
    assert (tmp_path / "metrics.jsonl").exists()  # refusing deletes nothing


def test_overwrite_clears_only_the_previous_runs_artefacts(tmp_path: Path) -> None:
    _previous_run(tmp_path)
    (tmp_path / "notes.txt").write_text("the user's")
    prepare_output_dir(tmp_path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_resume_keeps_the_run_and_latest_without_checkpoint_is_refused_or_fresh(tmp_path: Path) -> None:
    _previous_run(tmp_path)
    assert prepare_output_dir(tmp_path, resume_from="latest") == tmp_path
    assert (tmp_path / "metrics.jsonl").exists()
    only_logs = tmp_path / "logs-only"
    only_logs.mkdir()
    MetricsLog(only_logs / "metrics.jsonl").append({"step": 1})
    with pytest.raises(OutputDirError, match="nothing to resume"):
        prepare_output_dir(only_logs, resume_from="latest")
    fresh = tmp_path / "fresh"
    assert prepare_output_dir(fresh, resume_from="latest") == fresh and resolve_checkpoint(fresh, "latest") is None
    with pytest.raises(OutputDirError, match=r"resume_from: .*no-such"):
        prepare_output_dir(fresh, resume_from=str(tmp_path / "no-such"))


def test_latest_checkpoint_is_numeric_not_lexical(tmp_path: Path) -> None:
    for name in ("checkpoint-9", "checkpoint-10", "checkpoint-x"):
        (tmp_path / name).mkdir()
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-10"
    assert resolve_checkpoint(tmp_path, "latest") == tmp_path / "checkpoint-10"


def test_metrics_log_starts_empty_or_keeps_up_to_the_checkpoint(tmp_path: Path) -> None:
    m = MetricsLog(tmp_path / "metrics.jsonl", step_key="iteration")
    for i in (1, 2, 3):
        m.append({"iteration": i})
    m.start(2)
    assert [r["iteration"] for r in m.read()] == [1, 2]
    m.start(0)
    assert m.read() == []


def test_time_budget_with_an_injected_clock() -> None:
    ticks = iter([100.0, 100.0 + 59.0, 100.0 + 60.0])
    budget = TimeBudget(1.0, clock=lambda: next(ticks))
    assert not budget.spent() and budget.spent()
    assert not TimeBudget(None).spent()


def test_reward_postfix_shows_raw_means_not_the_z_scored_composite() -> None:
    metrics = {"reward/mean": 0.0, "reward/std": 1.0, "reward/format/mean": 0.5, "reward/ssim/mean": 0.25,
               "reward/ssim/calls": 2.0, "reward/ssim/sub/mean": 9.0}
    assert reward_postfix(metrics) == {"format": "0.500", "ssim": "0.250"}


def test_callbacks_all_run_and_any_can_stop() -> None:
    seen: list[str] = []
    assert not run_callbacks([lambda t, m: seen.append("a")], None, {})
    assert run_callbacks([lambda t, m: True, lambda t, m: seen.append("b")], None, {})
    assert seen == ["a", "b"]


def test_curves_of_iterations_with_eval_keys(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"iteration": i, "reward/mean": 0.1 * i, "loss": 1.0 / i,
                                        **({"eval/reward_mean": 0.2 * i} if i % 2 else {})}) + "\n"
                            for i in range(1, 5)))
    out = plot_curves(path, tmp_path / "curves.png", ("reward/mean", "loss"), step_key="iteration",
                      eval_keys=("eval/reward_mean",))
    assert out is not None and out.stat().st_size > 1000
    assert plot_curves(tmp_path / "missing.jsonl", tmp_path / "none.png") is None
