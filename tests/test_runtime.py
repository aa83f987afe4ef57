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


@pytest.mark.slow
def test_curves_of_iterations_with_eval_keys(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"iteration": i, "reward/mean": 0.1 * i, "loss": 1.0 / i,
                                        **({"eval/reward_mean": 0.2 * i} if i % 2 else {})}) + "\n"
                            for i in range(1, 5)))
    out = plot_curves(path, tmp_path / "curves.png", ("reward/mean", "loss"), step_key="iteration",
                      eval_keys=("eval/reward_mean",))
    assert out is not None and out.stat().st_size > 1000
    assert plot_curves(tmp_path / "missing.jsonl", tmp_path / "none.png") is None


# ------------------------------------------------------------------------ the trainers on the runtime
def _flow_trainer(out: Path, reward: object = None, **overrides: object) -> object:
    """A Flow-GRPO trainer on a random tiny class-conditional UNet (seconds per iteration)."""
    import torch
    from diffusers import UNet2DModel

    from visalign.trainers.config import load_config
    from visalign.trainers.flow import FlowGRPOConfig, FlowGRPOTrainer
    from visalign.trainers.flow_policies import ClassConditionalFlowPolicy

    torch.manual_seed(0)
    classes = ["a red circle", "a blue square"]
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4, num_class_embeds=len(classes) + 1)
    options = {"num_steps": 2, "group_size": 2, "prompts_per_iteration": 2, "batch_size": 8, "guidance_scale": 1.0,
               "lora": False, "beta": 0.0, "eval_every": 0, "max_steps": 1, "log_with": "none",
               "output_dir": str(out), "learning_rate": 1e-3, "eval_num_steps": 2, "eval_images_per_prompt": 2,
               "ema_every": 1, "progress": False, **overrides}
    return FlowGRPOTrainer(load_config(FlowGRPOConfig, options), ClassConditionalFlowPolicy(unet, classes),
                           reward or _Bright(), classes)


class _Bright:
    """Mean brightness (a visalign Reward without the import at module level)."""

    def __new__(cls, name: str = "bright", scale: float = 1.0):
        import numpy as np

        from visalign.rewards import Reward, RewardOutput

        class Bright(Reward):
            def score(self, samples):
                return RewardOutput([scale * float(np.asarray(s.image).mean()) / 255 for s in samples],
                                    [{} for _ in samples])

        reward = Bright()
        reward.name = name
        return reward


@pytest.mark.slow
def test_flow_reused_output_dir_is_refused_and_overwrite_starts_clean(tmp_path: Path) -> None:
    """Issue 13.1 in `visalign train flow`: a rerun appended to metrics.jsonl."""
    _flow_trainer(tmp_path / "run").train()
    with pytest.raises(OutputDirError, match="overwrite_output_dir"):
        _flow_trainer(tmp_path / "run", learning_rate=1e-2)
    history = _flow_trainer(tmp_path / "run", learning_rate=1e-2, overwrite_output_dir=True).train()
    assert [r["iteration"] for r in MetricsLog(tmp_path / "run" / "metrics.jsonl").read()] == [1] == \
        [h["iteration"] for h in history]


@pytest.mark.slow
def test_flow_resume_latest_without_checkpoint_starts_fresh(tmp_path: Path) -> None:
    """``resume_from: latest`` means one thing in every trainer (it raised in flow, started fresh in VLM)."""
    trainer = _flow_trainer(tmp_path / "run", resume_from="latest", save_every=1, max_steps=1)
    trainer.train()
    resumed = _flow_trainer(tmp_path / "run", resume_from="latest", max_steps=2)
    assert resumed.iteration == 1
    resumed.train()
    assert [r["iteration"] for r in MetricsLog(tmp_path / "run" / "metrics.jsonl").read()] == [1, 2]


@pytest.mark.slow
def test_flow_writes_the_run_artefacts_and_its_final_weights_reload(tmp_path: Path) -> None:
    """Issue 13.5: no curves.png / comparison.html, eval grids without captions, and final/ without
    classes.json, so `load_flow_policy(final)` failed."""
    import torch
    from PIL import Image

    from visalign.trainers.flow_policies import load_flow_policy

    out = tmp_path / "run"
    trainer = _flow_trainer(out, max_steps=2, eval_every=1)
    trainer.train()
    assert (out / "curves.png").stat().st_size > 1000
    html = (out / "comparison.html").read_text()
    assert "a red circle" in html and "a blue square" in html and html.count("<img") >= 2
    grid = Image.open(out / "eval" / "iteration_000002.png")
    raw_height = 2 * 8 * max(1, 128 // 8)  # two prompts' rows of 8 px tiles, upscaled
    assert grid.height > raw_height  # room for the captions above the tiles
    for name in ("final", "final_ema"):
        reloaded = load_flow_policy(out / name)
        assert reloaded.classes == trainer.policy.classes
    reloaded = load_flow_policy(out / "final")
    for (n, p), q in zip(trainer.policy.model.named_parameters(), reloaded.model.parameters(), strict=True):
        assert torch.equal(p.detach().cpu(), q), n


@pytest.mark.slow
def test_flow_progress_bar_shows_raw_reward_means_and_callbacks_stop(tmp_path: Path, monkeypatch) -> None:
    """Issue 13.7: `reward=0.000` was the z-scored composite; the bar now shows each reward's raw mean.
    A callback sees every iteration's metrics and can stop the run."""
    import visalign.trainers.flow as flow
    from visalign.rewards import CompositeReward

    shown: list[dict[str, str]] = []

    class Bar:
        def update(self, n: int) -> None: ...
        def set_postfix(self, **fields: str) -> None:
            shown.append(fields)
        def close(self) -> None: ...

    monkeypatch.setattr(flow, "progress_bar", lambda *a, **k: Bar())
    reward = CompositeReward({"bright": _Bright("bright"), "half": _Bright("half", 0.5)},
                             aggregation="normalize_then_sum")
    seen: list[int] = []
    history = _flow_trainer(tmp_path / "run", reward, max_steps=3).train(
        callbacks=[lambda trainer, metrics: seen.append(metrics["iteration"]) or metrics["iteration"] >= 2])
    assert seen == [1, 2] and len(history) == 2
    assert abs(history[0]["reward/mean"]) < 1e-6  # the composite of z-scores
    assert set(shown[0]) >= {"bright", "half"} and "reward" not in shown[0]
    assert history[0]["reward/bright/mean"] > 0
    assert float(shown[0]["bright"]) == pytest.approx(history[0]["reward/bright/mean"], abs=1e-3)


# ------------------------------------------------------------------------------------ one vocabulary

def test_one_vocabulary_across_trainers_and_old_names_load_with_a_warning(caplog) -> None:
    """The options every trainer shares have one name (TRL's: lora, lora_r, epsilon, max_steps); a config
    written with the old flow names still loads, says what it renamed, and both names at once is an error."""
    import dataclasses

    from visalign.trainers.config import VOCABULARY, load_config
    from visalign.trainers.flow import FlowGRPOConfig
    from visalign.trainers.refl import ReFLConfig
    from visalign.trainers.reward_model import RewardModelConfig
    from visalign.trainers.sft import SFTConfig
    from visalign.trainers.vlm import VLMGRPOConfig as GRPOConfig

    names = {cls: {f.name for f in dataclasses.fields(cls)}
             for cls in (FlowGRPOConfig, ReFLConfig, GRPOConfig, SFTConfig, RewardModelConfig)}
    for cls, have in names.items():
        assert {"lora", "lora_r", "lora_alpha", "lora_target_modules", "max_steps", "learning_rate", "seed",
                "output_dir", "overwrite_output_dir", "resume_from", "mixed_precision"} <= have, cls.__name__
        trl_meaning = {"num_iterations"} if cls is GRPOConfig else set()  # TRL's mu, kept in the GRPO trainer
        assert not have & set(VOCABULARY) - trl_meaning, (cls.__name__, have & set(VOCABULARY))
    assert "epsilon" in names[FlowGRPOConfig] and "epsilon" in names[GRPOConfig]
    from visalign.trainers.config import SHARED_OPTIONS

    for cls in names:  # composed from one set of parts: a shared option means the same in every trainer
        for f in dataclasses.fields(cls):
            if f.name in SHARED_OPTIONS:
                assert f.metadata["help"].startswith(SHARED_OPTIONS[f.name][1]), (cls.__name__, f.name)
    with caplog.at_level("WARNING", logger="visalign.config"):
        c = load_config(FlowGRPOConfig, {"clip_range": 1e-3, "lora_rank": 8, "num_iterations": 7})
    assert (c.epsilon, c.lora_r, c.max_steps) == (1e-3, 8, 7)
    said = caplog.text
    assert "'clip_range' is now called 'epsilon'" in said and "'num_iterations' is now called 'max_steps'" in said
    assert load_config(ReFLConfig, {"lora_rank": 4}).lora_r == 4
    assert load_config(SFTConfig, {"use_lora": True}).lora and load_config(RewardModelConfig, {"use_lora": True}).lora
    with pytest.raises(ValueError, match="'lora_rank' and 'lora_r' are one option"):
        load_config(FlowGRPOConfig, {"lora_rank": 4, "lora_r": 8})
    # in the GRPO trainer num_iterations keeps TRL's meaning (optimizer steps per generation batch)
    assert load_config(GRPOConfig, {"num_iterations": 2}).num_iterations == 2


@pytest.mark.slow
def test_flow_lora_final_reloads_by_itself_and_names_its_base(tmp_path: Path) -> None:
    """Issue 13.5: a LoRA run's final/ held the adapter alone; load_flow_policy(final) now rebuilds the
    base it was trained from with the adapter merged, and a run given its policy as an object says how
    to load it (base=) instead of failing on missing files."""
    import json

    import torch

    from visalign.trainers.flow_policies import load_flow_policy

    base = tmp_path / "base"
    trainer = _flow_trainer(tmp_path / "seed", max_steps=0)
    trainer.policy.model.save_pretrained(str(base))
    (base / "classes.json").write_text(json.dumps(list(trainer.policy.classes)))
    out = tmp_path / "run"
    lora = _flow_trainer(out, max_steps=2, lora=True, lora_r=4, lora_alpha=8.0, pretrained=str(base), ema=False)
    lora.train()
    info = json.loads((out / "final" / "visalign_final.json").read_text())
    assert info["weights"] == "adapter" and info["base"] == str(base.resolve())
    reloaded = load_flow_policy(out / "final")
    merged = lora.policy.model.merge_and_unload()  # the trained policy with its adapter folded in
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    t, labels = torch.full((2,), 500), torch.tensor([0, 1])
    with torch.no_grad():
        want, got = merged(x, t, class_labels=labels).sample, reloaded.model(x, t, class_labels=labels).sample
    moved = (want - trainer.policy.model(x, t, class_labels=labels).sample).abs().max()
    assert moved > 0  # training changed the model, so the comparison below can fail
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()  # the same merge, in another order of float adds
    # the run given its policy as an object: the error names the way out
    (out / "final" / "visalign_final.json").write_text(json.dumps({**info, "base": None}))
    with pytest.raises(ValueError, match=r"base=BASE_DIR"):
        load_flow_policy(out / "final")
    again = load_flow_policy(out / "final", base=base)
    with torch.no_grad():
        assert torch.allclose(again.model(x, t, class_labels=labels).sample, want, atol=1e-5)
