"""Generative judges trained with GRPO (issue 12, section 3): StableReinforce's pre-clip and advantage
filter held to R1-Reward's own code (``openrlhf/models/loss.py`` ``PolicyLoss`` and
``openrlhf/trainer/ppo_utils/replay_buffer.py`` ``NaiveReplayBuffer.normalize``, transcribed below) and to
hand-derived numbers; the verdict / format / consistency rewards against hand-derived scores."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from visalign.rewards import Sample, get_reward
from visalign.rewards.judge import CallableJudgeBackend
from visalign.rewards.verdict import (
    ModelConsistency,
    VerdictFormatReward,
    VerdictReward,
    format_ok,
    parse_verdict,
    rule_consistency,
)
from visalign.trainers.grpo import R1_REWARD_LOG_RATIO_BOUND, filter_advantages, policy_loss


# ------------------------------------------------------------------ R1-Reward's code, transcribed
def r1_policy_loss(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
                   action_mask: torch.Tensor, clip_eps: float = 0.2) -> torch.Tensor:
    """``PolicyLoss.forward`` of R1-Reward (openrlhf/models/loss.py), line for line."""
    log_diff = log_probs - old_log_probs
    log_diff = torch.clamp(log_diff, max=np.log(1e3), min=np.log(1e-3))
    ratio = torch.exp(log_diff)
    surr1 = ratio * advantages
    surr2 = ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantages
    loss = -torch.min(surr1, surr2)
    return ((loss * action_mask).sum(axis=-1) / action_mask.sum(axis=-1)).mean()  # masked_mean(dim=-1).mean()


def r1_normalize(items: list[torch.Tensor], action_masks: list[torch.Tensor]) -> list[torch.Tensor]:
    """``NaiveReplayBuffer.normalize("advantages")`` of R1-Reward on one process (all_reduce = identity);
    ``items`` are the unpadded per-sequence advantages, as their buffer holds them."""
    items_vector = torch.cat(items).float().flatten()
    action_masks_vector = torch.cat(action_masks).flatten()
    num_actions = action_masks_vector.sum()
    mean = items_vector.sum() / num_actions
    std = ((items_vector - mean).pow(2) * action_masks_vector).sum()
    rstd = (std / num_actions).clamp(min=1e-8).rsqrt()
    lower_bound, upper_bound = mean - 3, mean + 3
    out = []
    for item in items:
        result = (item - mean) * rstd + 1e-8
        result = torch.where((result < lower_bound) | (result > upper_bound), torch.zeros_like(result), result)
        result = torch.where(torch.isnan(result) | torch.isinf(result) | (result > 10) | (result < -10),
                             torch.zeros_like(result), result)
        out.append(result)
    return out


# ------------------------------------------------------------------------------------ pre-clip
def test_pre_clip_bound_is_r1_rewards() -> None:
    assert R1_REWARD_LOG_RATIO_BOUND == pytest.approx(np.log(1e3)) == pytest.approx(-np.log(1e-3))


@pytest.mark.slow
def test_pre_clip_matches_r1_reward_policy_loss() -> None:
    g = torch.Generator().manual_seed(0)
    old = -torch.rand(4, 6, generator=g) * 3
    new = old + torch.randn(4, 6, generator=g) * 4  # log-ratios far beyond +-6.9 on some tokens
    new[0, 1] = old[0, 1] + 120.0  # exp(120) overflows float32 without the pre-clip
    mask = torch.ones(4, 6)
    mask[2, 4:] = 0
    adv = torch.tensor([1.5, -0.7, 0.3, -2.0])
    ours = policy_loss(new, old, adv, mask, loss_type="grpo", epsilon=0.2, log_ratio_clip=R1_REWARD_LOG_RATIO_BOUND)
    theirs = r1_policy_loss(new, old, adv.unsqueeze(1), mask)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    adv_neg = torch.tensor([-1.0, -0.7, 0.3, -2.0])  # a negative advantage on the overflowing token
    assert not torch.isfinite(policy_loss(new, old, adv_neg, mask, loss_type="grpo"))
    assert torch.isfinite(policy_loss(new, old, adv_neg, mask, loss_type="grpo", log_ratio_clip=math.log(1e3)))


def test_pre_clip_hand_derived() -> None:
    """log-ratio 10 on a token with advantage -1: clamped to log(1000), ratio 1000, surr1 = -1000, surr2 =
    1.2 * -1 = -1.2, loss = -min = 1000; a log-ratio of -10 with advantage +1: ratio 1e-3, surr1 = 1e-3,
    surr2 = 0.8, loss = -1e-3. Mean over the two tokens: (1000 - 0.001) / 2. No gradient flows through
    the clamped tokens."""
    old = torch.zeros(1, 2)
    new = torch.tensor([[10.0, -10.0]], requires_grad=True)
    adv = torch.tensor([[-1.0, 1.0]])
    loss = policy_loss(new, old, adv, torch.ones(1, 2), loss_type="grpo", log_ratio_clip=math.log(1e3))
    assert float(loss.detach()) == pytest.approx((1000 - 0.001) / 2, rel=1e-5)
    loss.backward()
    assert torch.equal(new.grad, torch.zeros(1, 2))
    with pytest.raises(ValueError, match="log_ratio_clip"):
        policy_loss(new, old, adv, torch.ones(1, 2), log_ratio_clip=0.0)


def test_pre_clip_off_changes_nothing() -> None:
    g = torch.Generator().manual_seed(1)
    old, new = -torch.rand(3, 5, generator=g), -torch.rand(3, 5, generator=g)  # |log-ratio| < 1
    adv, mask = torch.tensor([1.0, -1.0, 0.5]), torch.ones(3, 5)
    for lt in ("grpo", "bnpo", "dapo"):
        torch.testing.assert_close(policy_loss(new, old, adv, mask, loss_type=lt),
                                   policy_loss(new, old, adv, mask, loss_type=lt, log_ratio_clip=math.log(1e3)))


# ---------------------------------------------------------------------------- advantage filter
def _padded(items: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(x) for x in items)
    adv, mask = torch.zeros(len(items), T), torch.zeros(len(items), T)
    for i, x in enumerate(items):
        adv[i, :len(x)], mask[i, :len(x)] = x, 1
    return adv, mask


def test_advantage_filter_matches_r1_reward_normalize_code() -> None:
    g = torch.Generator().manual_seed(3)
    items = [torch.randn(n, generator=g) + 0.4 for n in (5, 9, 3, 7)]  # raw mean far from 0
    items[1][2] = 9.0  # an outlier
    adv, mask = _padded(items)
    theirs = r1_normalize(items, [torch.ones(len(x)) for x in items])
    ours = filter_advantages(adv, mask, bounds="r1_reward_code")
    for i, x in enumerate(theirs):
        torch.testing.assert_close(ours.advantages[i, :len(x)], x, rtol=1e-5, atol=1e-6)
        assert torch.equal(ours.advantages[i, len(x):], torch.zeros(adv.shape[1] - len(x)))
    assert float(ours.advantages[1, 2]) == 0.0 and ours.dropped.sum() >= 1


def test_advantage_filter_standardized_equals_code_when_centred() -> None:
    """After GRPO's centring the raw mean is 0 and the paper's rule (|z| <= 3) is the code's."""
    g = torch.Generator().manual_seed(4)
    items = [torch.randn(6, generator=g) for _ in range(5)]
    flat = torch.cat(items)
    items = [x - flat.mean() for x in items]
    items[0][0] = 12.0
    flat = torch.cat(items)
    items = [x - flat.mean() for x in items]  # exactly centred again
    adv, mask = _padded(items)
    theirs = r1_normalize(items, [torch.ones(6) for _ in items])
    ours = filter_advantages(adv, mask)
    torch.testing.assert_close(ours.advantages, torch.stack(theirs), rtol=1e-5, atol=1e-5)


def test_advantage_filter_hand_derived() -> None:
    """Nine tokens at 0 and one at 10: mean 1, population std 3, z = (a - 1) / 3 -> -1/3 for the nine
    and 3 for the tenth (3 + 1e-8 > 3: dropped). A masked token does not count and comes back 0."""
    adv = torch.tensor([[0.0] * 9 + [10.0, 55.0]])
    mask = torch.tensor([[1.0] * 10 + [0.0]])
    f = filter_advantages(adv, mask)
    assert f.mean == pytest.approx(1.0) and f.std == pytest.approx(3.0)
    torch.testing.assert_close(f.advantages[0, :9], torch.full((9,), -1 / 3 + 1e-8))
    assert float(f.advantages[0, 9]) == 0.0 and float(f.advantages[0, 10]) == 0.0
    assert f.dropped.tolist() == [False] * 9 + [True] and f.dropped_share == pytest.approx(0.1)
    wider = filter_advantages(adv, mask, sigma=3.5)
    assert float(wider.advantages[0, 9]) == pytest.approx(3.0)


def test_advantage_filter_flat_batch_and_errors() -> None:
    f = filter_advantages(torch.ones(2, 3))  # zero variance: std clamps to 1e-4, z = 1e-8
    assert f.std == pytest.approx(1e-4) and torch.allclose(f.advantages, torch.full((2, 3), 1e-8))
    with pytest.raises(ValueError, match="mask shape"):
        filter_advantages(torch.ones(2, 3), torch.ones(3, 2))
    with pytest.raises(ValueError, match="bounds"):
        filter_advantages(torch.ones(2, 3), bounds="nope")  # type: ignore[arg-type]


# -------------------------------------------------------------------------------------- rewards
def test_format_is_r1_rewards_verify_format() -> None:
    assert format_ok("<think>x\ny</think><answer>1</answer>")
    assert format_ok("  <think>x</think><answer>1</answer>\n")  # their response is stripped
    assert not format_ok("<think>x</think>\n<answer>1</answer>")  # nothing between the blocks
    assert not format_ok("<answer>1</answer>")
    assert not format_ok("<think>a</think><think>b</think><answer>1</answer>")
    assert not format_ok("<think>a</think><answer>1</answer><answer>2</answer>")
    assert not format_ok("sure. <think>a</think><answer>1</answer>")
    # closing tags count too: a tiny judge's GRPO answer that the opening-tag count let through
    assert not format_ok("<think>image 1</answer>is c cl</think></think><answer>1</answer>")
    assert not format_ok("<think>a</think><answer>1</answer></answer>")


@pytest.mark.parametrize(("text", "answer", "error"), [
    ("<think>a</think><answer>2</answer>", "2", None),
    ("<think>a</think><answer> Image 1. </answer>", "1", None),
    ("<answer>**2**</answer>", "2", None),
    ("<think>a</think><answer>1 or 2</answer>", None, "names several choices"),
    ("<think>a</think><answer>3</answer>", None, "is not one of"),
    ("<think>a</think><answer></answer>", None, "empty <answer> block"),
    ("<think>image 1 is better", None, "no <answer>"),
    (None, None, "no answer"),
])
def test_parse_verdict_garbage(text: str | None, answer: str | None, error: str | None) -> None:
    v = parse_verdict(text, ["1", "2"])
    assert v.answer == answer
    assert (v.error is None) if error is None else (error in v.error)


def test_verdict_reward_hand_derived() -> None:
    """R1-Reward's total 0.5 * format + acc * (1 + 0.5 * consistency), as a composite of verdict
    (consistency rules) and verdict_format at weight 0.5."""
    meta = {"label": "2", "choices": ["1", "2"]}
    samples = [
        Sample(completion="<think>image 2 is closer to the reference</think><answer>2</answer>", metadata=meta),
        Sample(completion="<think>image 1 is closer</think><answer>2</answer>", metadata=meta),  # contradicts
        Sample(completion="<think>hmm</think><answer>2</answer>", metadata=meta),  # says nothing
        Sample(completion="<think>image 1 is closer</think><answer>1</answer>", metadata=meta),  # wrong
        Sample(completion="2", metadata=meta),  # no answer block: no verdict, no format
        Sample(completion="<think>x</think> <answer>2</answer>", metadata=meta),  # right, format broken
        Sample(completion="<think>image 2</think><answer>2</answer>", metadata={"choices": ["1", "2"]}),  # no label
    ]
    verdict = VerdictReward(consistency="rules")(samples)
    assert verdict.scores == [1.5, 0.5, 1.0, 0.0, 0.0, 1.0, None]
    assert [d.get("consistency") for d in verdict.details] == [1, -1, 0, 1, 0, 0, 1]
    assert "no label" in verdict.details[6]["reason"]
    assert verdict.metrics["accuracy"] == pytest.approx(4 / 6)
    fmt = VerdictFormatReward()(samples)
    assert fmt.scores == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0]
    totals = [None if v is None else 0.5 * f + v for v, f in zip(verdict.scores, fmt.scores, strict=True)]
    assert totals == [2.0, 1.0, 1.5, 0.5, 0.0, 1.0, None]
    plain = VerdictReward()(samples)
    assert plain.scores == [1.0, 1.0, 1.0, 0.0, 0.0, 1.0, None] and "consistency" not in plain.details[0]


def test_verdict_reward_pointwise_and_scores() -> None:
    good = {"label": "good", "choices": ["good", "bad"]}
    samples = [Sample(completion="<think>the charts match</think><answer>good</answer>", metadata=good),
               Sample(completion="<think>the charts do not match</think><answer>good</answer>", metadata=good),
               Sample(completion="<think>bars differ</think><answer>bad</answer>", metadata=good)]
    assert VerdictReward(consistency="rules")(samples).scores == [1.5, 0.5, 0.0]
    scored = [Sample(completion="<think>a</think><answer>7</answer>", metadata={"label": 8}),
              Sample(completion="<think>a</think><answer>seven</answer>", metadata={"label": 8}),
              Sample(completion="<think>a</think><answer>8.0</answer>", metadata={"label": 8.0})]
    assert VerdictReward(tolerance=1)(scored).scores == [1.0, 0.0, 1.0]
    assert VerdictReward()(scored).scores == [0.0, 0.0, 1.0]


def test_rule_consistency_cues() -> None:
    assert rule_consistency("the first image has wrong bars; the second chart is faithful", "2") == 1
    assert rule_consistency("chart 2 is missing a bar, so chart 1", "1") == 1
    assert rule_consistency("the candidate is incorrect", "good") == -1
    assert rule_consistency("nothing is wrong: it matches", "good") == 1
    assert rule_consistency("looks fine", "good") == 0
    assert rule_consistency("image 2 wins", None) == 0


def test_model_consistency_reads_like_r1_reward() -> None:
    assert [ModelConsistency.read(t) for t in ("1", "0", "Output: 1", "I'd say 0", "maybe 1", "yes", None)] == \
        [1, -1, 1, -1, 1, 0, 0]
    seen = []

    def answer(request):  # a second model that checks the last lines of the reasoning
        seen.append(request.text)
        return "1" if "image 2 is better" in request.text and "closer: image 2" in request.text else "0"

    reward = VerdictReward(consistency=CallableJudgeBackend(answer))
    meta = {"label": "2", "choices": ["1", "2"]}
    out = reward([Sample(completion="<think>a\nb\nc\ncloser: image 2</think><answer>2</answer>", metadata=meta),
                  Sample(completion="<think>closer: image 1</think><answer>2</answer>", metadata=meta),
                  Sample(completion="<answer>1</answer>", metadata=meta)])  # no reasoning: not asked
    assert out.scores == [1.5, 0.5, 0.0] and len(seen) == 2
    assert "a;" not in seen[0] and "b;c;closer: image 2" in seen[0]  # the last three lines, joined by ';'
    reward.close()


def test_rewards_are_registered() -> None:
    assert type(get_reward("verdict", consistency="rules")).__name__ == "VerdictReward"
    assert get_reward("verdict_format")([Sample(completion="<think></think><answer>1</answer>")]).scores == [1.0]
    with pytest.raises(ValueError, match="consistency"):
        VerdictReward(consistency="model")


# ------------------------------------------------------------------------- rows, trainer, CLI, preset
def _pairs(n: int, seed: int = 0) -> list[dict]:
    """Pairs of tiny images: the chosen one equals the reference, the rejected one is another colour."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        ref = tuple(int(x) for x in rng.integers(0, 255, 3))
        bad = tuple(int(x) for x in rng.integers(0, 255, 3))
        out.append({"id": f"p{i}", "chosen": Image.new("RGB", (32, 32), ref),
                    "rejected": Image.new("RGB", (32, 32), bad), "reference": Image.new("RGB", (32, 32), ref),
                    "prompt": "a square", "margin": 1.0, "perturbation": "colour",
                    "chosen_severity": 0, "rejected_severity": 3})
    return out


def test_judge_rows_pairwise_and_pointwise() -> None:
    from visalign.trainers.judge import judge_rows

    pairs = _pairs(40)
    rows = judge_rows(pairs, mode="pairwise", seed=0)
    assert len(rows) == 40 and all(len(r["images"]) == 3 for r in rows)
    assert {r["label"] for r in rows} == {"1", "2"}
    for r, p in zip(rows, pairs, strict=True):  # the label names where the chosen image went
        chosen_at = 1 if r["label"] == "1" else 2
        assert r["images"][chosen_at] is p["chosen"] and r["images"][0] is p["reference"]
    assert [r["label"] for r in judge_rows(pairs, mode="pairwise", seed=0)] == [r["label"] for r in rows]
    assert [r["label"] for r in judge_rows(pairs, mode="pairwise", seed=1)] != [r["label"] for r in rows]
    point = judge_rows(pairs + [dict(pairs[0], id="dup")], mode="pointwise", reference="never")
    assert Counter(r["label"] for r in point) == {"good": 40, "bad": 40} and len(point[0]["images"]) == 1
    assert "{prompt}" not in point[0]["prompt"] and "a square" in point[0]["prompt"]
    with pytest.raises(ValueError, match=r"pair 'x' \(row 0\): field 'rejected' must be an image"):
        judge_rows([{"id": "x", "chosen": pairs[0]["chosen"]}])
    with pytest.raises(ValueError, match="field 'reference' is missing"):
        judge_rows([dict(pairs[0], reference=None)], reference="always")


@pytest.fixture(scope="module")
def tiny_judge(tmp_path_factory: pytest.TempPathFactory) -> str:
    from visalign.models.tiny_vlm import build_tiny_vlm
    from visalign.trainers.judge import judge_instruction

    corpus = [judge_instruction(m, r) for m in ("pairwise", "pointwise") for r in (True, False)]
    corpus += ["<think>the colours match</think><answer>good</answer>", "<think>image 2</think><answer>2</answer>"]
    model, processor = build_tiny_vlm("qwen2_vl", corpus * 3)
    path = tmp_path_factory.mktemp("tiny-judge")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


def _judge_options(tmp_path, model: str, **extra) -> dict:
    return {"model": model, "num_generations": 2, "prompts_per_step": 2, "generation_batch_size": 2,
            "max_completion_length": 6, "max_steps": 2, "learning_rate": 1e-3, "per_device_train_batch_size": 4,
            "output_dir": str(tmp_path / "run"), "progress": False, "log_with": "none", "render_workers": 1,
            "max_prompt_length": 1024, "num_threads": 1, **extra}


@pytest.mark.slow
def test_judge_trainer_steps_evaluates_and_plugs_into_vlm_judge(tmp_path, tiny_judge: str) -> None:
    """Two GRPO steps of a pointwise judge (StableReinforce on), held-out accuracy before / after, the
    saved judge loaded by the local backend and asked through the trained_judge preset."""
    import json

    from visalign.rewards.judge import TransformersJudgeBackend, VlmJudgeReward, trained_judge_preset
    from visalign.trainers.config import load_config
    from visalign.trainers.judge import JudgeGRPOConfig, JudgeGRPOTrainer, judge_rows

    cfg = load_config(JudgeGRPOConfig, _judge_options(tmp_path, tiny_judge, judge_mode="pointwise"))
    assert cfg.pre_clip_log_ratio and cfg.advantage_filter and cfg.rewards[0]["name"] == "verdict"
    pairs = _pairs(6)
    trainer = JudgeGRPOTrainer(cfg, train_rows=judge_rows(pairs[:4], mode="pointwise"),
                               eval_rows=judge_rows(pairs[4:], mode="pointwise"))
    try:
        history = trainer.train()
    finally:
        trainer.close()
    assert len(history) == 2 and "reward/verdict/mean" in history[0] and "advantage/filtered_share" in history[0]
    assert not any(k.startswith("render/") for k in history[0])
    assert len(trainer.eval_results) == 2 and trainer.eval_results[0].n == 4
    summary = json.loads((tmp_path / "run" / "judge_eval.json").read_text())
    assert summary["difference"]["paired"] == 4
    model_dir = tmp_path / "run" / (tmp_path / "run" / "final.txt").read_text().strip()
    spec = json.loads((model_dir / "judge.json").read_text())
    assert spec["judge_mode"] == "pointwise" and spec["reference"] is True
    seen = []
    backend = TransformersJudgeBackend(str(model_dir), max_new_tokens=6, batch_size=2, device="cpu")
    original = backend._generate_batch

    def spy(batch):
        seen.extend(len(r.images) for r in batch)
        return original(batch)

    backend._generate_batch = spy
    reward = VlmJudgeReward(backend, preset=trained_judge_preset(model_dir))
    ref = pairs[0]["reference"]
    out = reward([Sample(image=pairs[0]["chosen"], reference_image=ref),
                  Sample(image=pairs[0]["rejected"], reference_image=ref)])
    reward.close()
    assert seen == [2, 2]  # reference + generated, as trained
    assert all(s in (0.0, 1.0) for s in out.scores) and all(d["judged"] for d in out.details)
    # the request is the trained prompt: the images alone, then the instruction
    request = trained_judge_preset(model_dir).prepare(Sample(image=ref, reference_image=ref))
    assert [type(p).__name__ for p in request.parts] == ["Image", "Image", "str"]
    assert request.parts[-1] == spec["instruction"]


def test_trained_judge_preset_refuses_pairwise_and_missing(tmp_path) -> None:
    from visalign.rewards.judge import trained_judge_preset

    with pytest.raises(ValueError, match="cannot read the judge's spec"):
        trained_judge_preset(tmp_path)
    (tmp_path / "judge.json").write_text('{"judge_mode": "pairwise", "instruction": "x"}')
    with pytest.raises(ValueError, match="judge_mode: pointwise"):
        trained_judge_preset(tmp_path)


@pytest.mark.slow
def test_cli_train_reward_mode_judge(tmp_path, tiny_judge: str, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from visalign.cli import main
    from visalign.data.pairs import write_pairs

    write_pairs(_pairs(4), tmp_path / "train.jsonl")
    write_pairs(_pairs(2, seed=1), tmp_path / "eval.jsonl")
    config = {"reward": _judge_options(tmp_path, tiny_judge, train_data=str(tmp_path / "train.jsonl"),
                                       eval_data=str(tmp_path / "eval.jsonl"), max_steps=1)}
    (tmp_path / "judge.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", "reward", str(tmp_path / "judge.yaml"), "--mode", "judge"]) == 0
    out = capsys.readouterr().out
    assert "held-out verdict accuracy" in out and "model:" in out
    assert (tmp_path / "run" / "judge_eval.json").exists()
    assert main(["train", "reward", "--describe", "--mode", "judge"]) == 0
    assert "advantage_filter" in capsys.readouterr().out
    bad = {"reward": {**config["reward"], "judge_mode": "listwise"}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    assert main(["train", "reward", str(tmp_path / "bad.yaml"), "--mode", "judge"]) == 2
    assert "judge_mode must be" in capsys.readouterr().err


@pytest.mark.parametrize("family", ["smolvlm", "gemma3"])
def test_transformers_backend_sends_several_images(family: str) -> None:
    """Processors that need one image list per prompt (SmolVLM, Gemma 3) take a batch of two-image
    requests, mixed with a text-only one."""
    from PIL import Image

    from visalign.models.tiny_vlm import build_tiny_vlm
    from visalign.rewards.judge import JudgeRequest, TransformersJudgeBackend

    model, processor = build_tiny_vlm(family, ["Which image is better?", "<answer>1</answer>"] * 4)
    backend = TransformersJudgeBackend(model, processor, max_new_tokens=3, batch_size=4)
    a, b = Image.new("RGB", (32, 32), "red"), Image.new("RGB", (32, 32), "blue")
    out = backend.generate([JudgeRequest(parts=[a, b, "Which image is better?"]), JudgeRequest(parts=["Hi"]),
                            JudgeRequest(parts=[b, a, "Which is better?"])])
    assert [r.error for r in out] == [None, None, None] and all(isinstance(r.text, str) for r in out)


def test_example_config_loads() -> None:
    from pathlib import Path

    from visalign.trainers.config import load_config
    from visalign.trainers.judge import JudgeGRPOConfig
    from visalign.trainers.reward_model import _mode_of

    path = Path(__file__).resolve().parents[1] / "configs" / "judge_tiny.yaml"
    assert _mode_of(path, {}) == "judge"
    with pytest.raises(ValueError, match=r"judge_tiny\.yaml: option 'train_data': no such file"):
        load_config(JudgeGRPOConfig, path, section="reward")  # the data is made first (see the config's comments)
    cfg = load_config(JudgeGRPOConfig, path, section="reward", train_data="t.jsonl", eval_data="e.jsonl")
    assert cfg.pre_clip_log_ratio and cfg.advantage_filter and cfg.pre_clip_bound == pytest.approx(math.log(1e3))


def test_a_judge_refuses_sampled_evaluation() -> None:
    """The judge's evaluation scores greedy verdicts; eval_samples (a GRPO option it inherits) is refused, not ignored."""
    from visalign.trainers.config import load_config
    from visalign.trainers.judge import JudgeGRPOConfig

    with pytest.raises(ValueError, match="eval_samples: the judge's evaluation scores its greedy verdicts"):
        load_config(JudgeGRPOConfig, {"train_data": "t.jsonl", "eval_samples": 4})
