"""scripts/reward_grpo_demo.py: the hack checks and their verdict on hand-made completions (the pure helpers;
the GRPO runs themselves are what the demo measures)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import load_script


def _code(values: list[int], colour: str) -> str:
    return f"import matplotlib.pyplot as plt\nplt.bar(range({len(values)}), {values}, color='{colour}')"


def _write(path: Path, pairs: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"id": str(i), "completion": c, "reference_code": r}) + "\n"
                            for i, (c, r) in enumerate(pairs)), encoding="utf-8")
    return path


REFS = [_code([1, 2, 3], "red"), _code([4, 5, 6], "blue"), _code([7, 8, 9], "green"), _code([3, 1, 2], "cyan")]


def _metric(hi: float) -> dict:
    return {"ci95": [hi - 0.1, hi]}


def test_hack_checks_and_verdict(tmp_path):
    demo = load_script("reward_grpo_demo")
    before = _write(tmp_path / "before.jsonl", [(r, r) for r in REFS])  # the references themselves
    collapsed = _write(tmp_path / "after.jsonl", [(_code([4, 6, 6], "cyan"), r) for r in REFS])
    b, a = demo.hack_checks(before), demo.hack_checks(collapsed)
    assert b["colour_matches_reference"] == 1.0 and b["commonest_value_list_share"] == 0.25
    assert a["commonest_colour"] == "cyan" and a["commonest_colour_share"] == 1.0
    assert a["reference_share_of_that_colour"] == 0.25 and a["colour_matches_reference"] == 0.25
    assert a["commonest_value_list"] == ["4", "6", "6"] and a["commonest_value_list_share"] == 1.0
    assert demo.colour_match(collapsed) == {"0": 0.0, "1": 0.0, "2": 0.0, "3": 1.0}
    fine = {"colour_match": _metric(0.05), "chart_code/color_f1": _metric(0.05), "chart_code/data": _metric(0.05)}
    v = demo.verdict(b, a, fine)
    assert not v["no_colour_collapse"] and not v["no_value_collapse"] and not v["all_pass"]
    assert b["distinct_value_lists"] == 4 and a["distinct_value_lists"] == 1 and not v["no_value_hedge"]
    half = _write(tmp_path / "half.jsonl", [(_code([4, 6, 6 + i // 2], "red"), r) for i, r in enumerate(REFS)])
    h = demo.verdict(b, demo.hack_checks(half), fine)  # 2 distinct lists of 4 charts: the hedge check's limit
    assert h["no_value_hedge"] and not h["no_value_collapse"]
    assert v["colour_match_not_falling"] and v["data_not_falling"]
    assert demo.verdict(b, b, fine)["all_pass"]
    falling = dict(fine, **{"chart_code/color_f1": _metric(-0.01)})
    assert not demo.verdict(b, b, falling)["colour_f1_not_falling"]


def test_prefix_hedge_sees_one_shape_drawn_in_lists_of_different_lengths(tmp_path):
    # the hedge seen on held-out charts: "7, 5, 6, 6, ..." in lists of 3 to 7 values, every list distinct
    demo = load_script("reward_grpo_demo")
    refs = [_code(v, c) for v, c in [([1, 2, 3], "red"), ([4, 5, 6, 7], "blue"), ([8, 2, 9, 1, 3], "green"),
                                      ([3, 1, 2, 9, 9, 4], "cyan")]]
    before = demo.hack_checks(_write(tmp_path / "before.jsonl", [(r, r) for r in refs]))
    shape = [_code([7, 5, 6, 6, 6, 6, 6][:n], c) for n, c in [(3, "red"), (4, "blue"), (5, "green"), (6, "cyan")]]
    after = demo.hack_checks(_write(tmp_path / "after.jsonl", list(zip(shape, refs, strict=True))))
    assert before["distinct_value_prefixes"] == 4 and before["commonest_value_prefix_share"] == 0.25
    assert after["distinct_value_lists"] == 4  # every list distinct: the exact-list checks see nothing
    assert after["distinct_value_prefixes"] == 1 and after["commonest_value_prefix"] == ["7", "5", "6"]
    assert after["commonest_value_prefix_share"] == 1.0
    fine = {"colour_match": _metric(0.05), "chart_code/color_f1": _metric(0.05), "chart_code/data": _metric(0.05)}
    v = demo.verdict(before, after, fine)
    assert v["no_value_hedge"] and v["no_value_collapse"] and not v["no_prefix_hedge"] and not v["all_pass"]
    assert demo.verdict(before, before, fine)["no_prefix_hedge"]


def test_prefix_collapse_sees_a_middling_start_the_distinct_count_allows(tmp_path):
    # seen on validation charts: half the distinct prefixes kept, but a quarter of the charts begin "5, 5, 5"
    demo = load_script("reward_grpo_demo")
    values = [[1, 2, 3], [4, 5, 6, 7], [8, 2, 9], [3, 1, 2, 9], [2, 7, 1], [9, 9, 4], [6, 1, 8], [7, 3, 3]]
    refs = [_code(v, "red") for v in values]
    before = demo.hack_checks(_write(tmp_path / "before.jsonl", [(r, r) for r in refs]))
    hedged = [_code([5, 5, 5, i], "red") if i < 3 else r for i, r in enumerate(refs)]  # 3 of 8 begin "5, 5, 5"
    after = demo.hack_checks(_write(tmp_path / "after.jsonl", list(zip(hedged, refs, strict=True))))
    assert (before["distinct_value_prefixes"], after["distinct_value_prefixes"]) == (8, 6)
    assert (before["commonest_value_prefix_share"], after["commonest_value_prefix_share"]) == (1 / 8, 3 / 8)
    fine = {"colour_match": _metric(0.05), "chart_code/color_f1": _metric(0.05), "chart_code/data": _metric(0.05)}
    v = demo.verdict(before, after, fine)
    assert v["no_prefix_hedge"] and v["no_value_hedge"] and v["no_value_collapse"]  # the others see nothing
    assert not v["no_prefix_collapse"] and not v["all_pass"]
    assert demo.verdict(before, before, fine)["no_prefix_collapse"]


def test_colour_name_match_reward_by_its_module_name():
    demo = load_script("reward_grpo_demo")  # puts scripts/ on sys.path
    from visalign.rewards import Sample
    from visalign.rewards.specs import build_reward_map

    reward = build_reward_map([{"name": demo.COLOUR_MATCH}])[demo.COLOUR_MATCH]
    out = reward([Sample(completion=f"```python\n{REFS[0]}\n```", reference_code=REFS[0], kind="matplotlib"),
                  Sample(code=REFS[1], reference_code=REFS[0], kind="matplotlib"),
                  Sample(code=REFS[1], kind="matplotlib")])
    assert out.scores == [1.0, 0.0, None]
    assert out.details[1] == {"colour": "blue", "reference_colour": "red"}


def test_colour_counterfactuals_keep_the_sample_and_change_only_its_colour():
    import random

    pairs = load_script("colour_pairs")
    ref = _code([1, 2, 3], "red")
    samples = [{"row": 0, "reference_code": ref, "code": _code([4, 4, 4], "cyan"), "rendered": True},
               {"row": 0, "reference_code": ref, "code": _code([4, 4, 4], "cyan"), "rendered": True},  # a repeat
               {"row": 0, "reference_code": ref, "code": _code([9, 1], "red"), "rendered": True},
               {"row": 0, "reference_code": ref, "code": _code([5, 5, 5], "blue"), "rendered": False},
               {"row": 0, "reference_code": ref, "code": "plt.plot([1], color='red')\nplt.plot([2], color='blue')",
                "rendered": True},  # two colours: which one to set is ambiguous
               {"row": 1, "reference_code": "import matplotlib.pyplot as plt\nplt.pie([1, 2])",
                "code": _code([1, 2], "red"), "rendered": True}]  # the reference has no colour
    specs = pairs.counterfactuals(samples, per_chart=4, rng=random.Random(0))
    assert sorted(s["chosen_code"] for s in specs) == sorted([_code([4, 4, 4], "red"), _code([9, 1], "red")])
    for s in specs:
        assert s["chart"] == 0 and s["wrong"] != "red" and s["rejected_code"] == pairs.recolour(s["chosen_code"], s["wrong"])
    assert len(pairs.counterfactuals(samples, per_chart=1, rng=random.Random(0))) == 1


def test_placebo_reward_is_a_fixed_uninformative_number():
    from visalign.rewards import Sample

    placebo = load_script("placebo_reward")
    samples = [Sample(completion=t) for t in ("plt.plot([1, 2])", "plt.plot([1, 2])", "plt.bar([3])", None)]
    scores = placebo.PlaceboReward()(samples).scores
    assert scores[0] == scores[1] != scores[2] and all(0.0 <= s < 1.0 for s in scores)


def test_heldout_with_a_baseline_needs_its_checkpoint_before_scoring(tmp_path, capsys):
    demo = load_script("reward_grpo_demo")
    run, baseline = tmp_path / "run", tmp_path / "placebo"
    (run / "run" / "checkpoint-000016" / "model").mkdir(parents=True)
    baseline.mkdir()
    assert demo.score_once(run, 16, workers=1, force=False, baseline=baseline) == 2
    assert "placebo/run/checkpoint-000016/model: no such checkpoint" in capsys.readouterr().err
    assert not (run / "summary_heldout_step16.json").exists()
    assert demo.compare_validation(run, baseline, workers=1) == 2  # no evaluation at a common step


def test_learned_scores_rescore_completions_with_a_saved_reward_model(tmp_path):
    """``--score-with``: a saved reward model scores an eval's completions (a program that does not render
    gets the reward's failure score, as in training); a rerun reuses them, another model gets its own folder."""
    import torch
    from PIL import Image

    from visalign.trainers.reward_model import RewardModel

    demo = load_script("reward_grpo_demo")
    tiny_clip = {"embed_dim": 16,
                 "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 1, "layers": 1}}
    models = []
    for i, hidden in enumerate((16, 8)):  # two different models
        torch.manual_seed(0)
        rm = RewardModel.build(clip_config=tiny_clip, condition="reference", head_hidden=hidden, difference=True)
        rm.save_pretrained(tmp_path / f"rm{i}")
        models.append(tmp_path / f"rm{i}")
    eval_dir = tmp_path / "eval"
    (eval_dir / "refs").mkdir(parents=True)
    Image.new("RGB", (96, 96), "white").save(eval_dir / "refs" / "0.png")
    rows = [{"id": "0", "completion": _code([1, 2, 3], "red"), "reference_image": "refs/0.png"},
            {"id": "1", "completion": "I cannot draw that.", "reference_image": "refs/0.png"}]
    (eval_dir / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    first = demo.learned_scores(eval_dir, models[0], workers=1)
    assert set(first) == {"0", "1"} and first["1"] == -10.0 and first["0"] != -10.0
    assert demo.learned_scores(eval_dir, models[0], workers=1) == first
    other = demo.learned_scores(eval_dir, models[1], workers=1)
    assert other["1"] == -10.0 and other["0"] != first["0"]
    assert len(list(eval_dir.glob("learned-*"))) == 2


def test_a_missing_policy_is_named_before_any_chart_renders(tmp_path, capsys):
    demo = load_script("reward_grpo_demo")
    with pytest.raises(SystemExit):
        demo.main(["--out", str(tmp_path / "run"), "--control", "placebo", "--policy", str(tmp_path / "nope")])
    assert f"--policy {tmp_path / 'nope'}: no checkpoint there (config.json)" in capsys.readouterr().err
    assert not (tmp_path / "run" / "data").exists()


@pytest.mark.parametrize(("item", "message"), [
    ("temprature=0.7", "--set temprature: not a GRPO option"),
    ("beta=0.1", "--set beta: this script sets it (use its own option)"),
    ("temperature", "--set takes KEY=VALUE, got 'temperature'"),
])
def test_a_wrong_override_is_named_before_any_chart_renders(tmp_path, capsys, item, message):
    demo = load_script("reward_grpo_demo")
    with pytest.raises(SystemExit):
        demo.main(["--out", str(tmp_path / "run"), "--control", "placebo", "--set", item])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "data").exists()


def test_overrides_reach_the_grpo_config(tmp_path, monkeypatch):
    demo = load_script("reward_grpo_demo")
    seen = {}

    class Stop(Exception):
        pass

    def fake_train(config):
        seen.update(config)
        raise Stop

    monkeypatch.setattr(demo, "chart_dataset", lambda n, **_: [{"prompt": "p", "code": f"c{i}"} for i in range(n)])
    monkeypatch.setattr(demo, "train_grpo_from_config", fake_train)
    with pytest.raises(Stop):
        demo.main(["--out", str(tmp_path / "run"), "--control", "placebo", "--train-charts", "4", "--steps", "2",
                   "--set", "temperature=0.7", "--set", "learning_rate=3e-4"])
    config = demo.load_config(demo.VLMGRPOConfig, seen)  # as train_grpo_from_config reads it (YAML's "3e-4" too)
    assert (config.temperature, config.learning_rate, config.max_steps) == (0.7, 3e-4, 2)


def test_scoring_options_are_checked_before_anything_loads(tmp_path, capsys):
    demo = load_script("reward_grpo_demo")
    cases = [(["--eval-samples", "4"], "go with --heldout-step or --val-step"),
             (["--val-step", "8", "--eval-temperature", "0.7"], "needs --eval-samples K"),
             (["--val-step", "8", "--eval-samples", "-1"], "--eval-samples must be >= 0"),
             (["--val-step", "8", "--heldout-step", "8"], "choose one"),
             (["--val-step", "8", "--heldout-data", "h2.jsonl"], "--heldout-data goes with --heldout-step")]
    for args, message in cases:
        with pytest.raises(SystemExit):
            demo.main(["--out", str(tmp_path), *args])
        assert message in capsys.readouterr().err
    run = tmp_path / "run"
    (run / "run" / "checkpoint-000008" / "model").mkdir(parents=True)
    assert demo.main(["--out", str(run), "--val-step", "8"]) == 2
    assert "run/config.yaml: no such file" in capsys.readouterr().err
    (run / "run" / "config.yaml").write_text("grpo: {model: m, temperature: 0.7}\n")
    assert demo.main(["--out", str(run), "--val-step", "8", "--eval-samples", "2"]) == 2  # made without --val-charts
    assert "data/val.jsonl: no such file" in capsys.readouterr().err
    assert demo.main(["--out", str(run), "--heldout-step", "8", "--heldout-data", str(tmp_path / "h2.jsonl")]) == 2
    assert "h2.jsonl: no such file (--heldout-data)" in capsys.readouterr().err
    assert not list(run.glob("summary_*"))


def test_each_heldout_set_has_its_own_summary_name(tmp_path):
    demo = load_script("reward_grpo_demo")
    assert demo.heldout_name(demo.HELDOUT) == "heldout"  # the model card's 100: the name every earlier rule read
    assert demo.heldout_name(tmp_path / "h2.jsonl") == "heldout-h2"
    assert demo.heldout_name(tmp_path / "heldout.jsonl") == "heldout-heldout"  # another file of the same name


@pytest.mark.slow
def test_sampled_validation_scoring_of_a_checkpoint_against_itself_is_exactly_paired(tmp_path):
    """--val-step with --eval-samples end to end on the shipped tiny chart policy: the "checkpoint" is the start's
    own weights, so with the same random numbers every sampled answer is the same and every paired difference is 0."""
    import yaml

    from visalign.data.charts import chart_dataset
    from visalign.data.loaders import write_jsonl

    demo = load_script("reward_grpo_demo")
    policy = Path(__file__).resolve().parents[1] / "models" / "tiny-chart-vlm"
    out = tmp_path / "run"
    (out / "run" / "checkpoint-000004").mkdir(parents=True)
    (out / "run" / "checkpoint-000004" / "model").symlink_to(policy)
    write_jsonl(chart_dataset(3, seed=11, workers=1), out / "data" / "val.jsonl")
    (out / "run" / "config.yaml").write_text(yaml.safe_dump({
        "model": str(policy), "kind": "matplotlib", "temperature": 0.7, "seed": 5, "num_generations": 2,
        "max_completion_length": 96, "generation_batch_size": 2, "log_with": "none", "progress": False,
        "render_options": {"matplotlib": demo.RENDER_OPTIONS["matplotlib"]},
        "rewards": [{"name": "render_similarity"}], "train_data": str(out / "data" / "val.jsonl")}))
    assert demo.main(["--out", str(out), "--val-step", "4", "--eval-samples", "2", "--workers", "1"]) == 0
    summary = json.loads((out / "summary_validation_sampled2_t0.7_step4.json").read_text())
    assert summary["eval_samples"] == 2 and summary["eval_temperature"] == 0.7 and summary["charts"] == "validation"
    gen = (out / "validation_sampled2_t0.7" / "start" / "eval" / "validation" / "generations.jsonl").read_text()
    assert [json.loads(line)["id"] for line in gen.splitlines()] == ["0#s0", "0#s1", "1#s0", "1#s1", "2#s0", "2#s1"]
    for name, m in summary["metrics"].items():
        assert m["n"] == 3 and m["diff"] == 0.0 and m["ci95"] == [0.0, 0.0], name  # per chart, exactly paired
    assert summary["verdict"]["all_pass"]
    assert (out / "grid_validation_sampled2_t0.7_step4.png").is_file()
    assert demo.main(["--out", str(out), "--val-step", "4", "--eval-samples", "2"]) == 2  # scored already
