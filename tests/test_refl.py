"""ReFL / DRaFT (issue 12 section 4): gradients only through the chosen steps, the one-step x0 against the
scheduler, the losses against hand-derived numbers, a saved Bradley-Terry model reloaded and trained on,
differentiable CLIP / shapes / SSIM rewards, config errors, and the ID-Aligner example config on a tiny
SD1.5 pipeline. Tiny random models, CPU, one thread."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet2DModel
from PIL import Image

from conftest import tiny_class_unet
from visalign.rewards import Sample
from visalign.rewards.shapes import ShapeColourReward
from visalign.rewards.specs import parse_reward_specs
from visalign.trainers.config import load_config
from visalign.trainers.flow_policies import (
    ClassConditionalFlowPolicy,
    StableDiffusionPolicy,
    tiny_sd15_pipeline,
)
from visalign.trainers.refl import (
    GradientPlan,
    ReFLConfig,
    TargetSimilarityReward,
    build_differentiable_reward,
    build_refl_trainer,
    decode_images,
    describe_refl_options,
    gradient_plan,
    noise_to,
    predict_x0,
    prediction_regulariser,
    pretraining_loss,
    reward_loss,
    sample_with_grad,
    train_refl_from_config,
)
from visalign.trainers.reward_model import RewardModel

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["a red circle", "a blue square"]
TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 1, "layers": 1}}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_unet(seed: int = 0) -> UNet2DModel:
    return tiny_class_unet(len(CLASSES), seed)


def tiny_policy(seed: int = 0) -> ClassConditionalFlowPolicy:
    return ClassConditionalFlowPolicy(tiny_unet(seed), CLASSES)


def step_gates(policy, schedule: torch.Tensor) -> list[torch.Tensor]:
    """Multiply the prediction of step k by a leaf g_k = 1: g_k.grad is step k's share of the gradient."""
    gates = [torch.ones((), requires_grad=True) for _ in range(len(schedule) - 1)]
    predict = policy.predict

    def gated(latents, t, cond, guidance_scale=1.0):
        k = int(torch.isclose(schedule, torch.as_tensor(t, dtype=schedule.dtype)).nonzero()[0])
        return predict(latents, t, cond, guidance_scale) * gates[k]

    policy.predict = gated
    return gates


# --------------------------------------------------------------------------- gradients: which steps


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["draft", "refl"])
def test_gradient_flows_only_through_the_chosen_steps(mode: str) -> None:
    policy = tiny_policy()
    schedule = policy.schedule(6)
    config = ReFLConfig(mode=mode, num_steps=6, draft_k=2, refl_steps=[2, 4], seed=3)
    plan = gradient_plan(config, 0)
    gates = step_gates(policy, schedule)
    cond = policy.encode_prompts(CLASSES, guidance=False)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    out = sample_with_grad(policy, cond, x, schedule, plan)
    decode_images(policy, out.x0).mean().backward()
    touched = [k for k, g in enumerate(gates) if g.grad is not None and g.grad.abs() > 0]
    assert touched == list(plan.grad_steps)
    assert all(g.grad is None for k, g in enumerate(gates) if k not in plan.grad_steps)  # not even in the graph
    assert x.grad is None  # the steps before the first graph step cut the path to the initial noise
    if mode == "draft":
        assert plan == GradientPlan((4, 5), 5, False) and out.nfe == 12 and out.nfe_backward == 4
    else:
        assert 2 <= plan.last_step <= 4 and plan.grad_steps == (plan.last_step,) and plan.one_step_x0
        assert out.nfe == 2 * (plan.last_step + 1) and out.nfe_backward == 2
    # parameters get a gradient, and all of it comes through the chosen steps: same gradient with every
    # other step's output replaced by a constant (what no_grad means)
    grads = [p.grad.clone() for p in policy.model.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0


def test_draft_through_every_step_reaches_the_initial_noise_and_lv_redoes_the_last_step() -> None:
    policy = tiny_policy()
    schedule = policy.schedule(3)
    cond = policy.encode_prompts(CLASSES, guidance=False)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    out = sample_with_grad(policy, cond, x, schedule, gradient_plan(ReFLConfig(mode="draft", num_steps=3, draft_k=3), 0))
    out.x0.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # DRaFT-LV: the finished sample noised back to the last step twice, the last step redone with the graph
    gates = step_gates(policy, schedule)
    plan = gradient_plan(ReFLConfig(mode="draft", num_steps=3, draft_k=1, lv_samples=2), 0)
    draws = [torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)]
    out = sample_with_grad(policy, cond, torch.randn(2, 3, 8, 8), schedule, plan, lv_noise=draws)
    assert out.x0.shape == (4, 3, 8, 8) and out.nfe == 2 * 3 + 2 * 2 and out.nfe_backward == 4
    out.x0.sum().backward()
    assert [k for k, g in enumerate(gates) if g.grad is not None] == [2]


# --------------------------------------------------------------------------- the one-step prediction


@pytest.mark.slow
def test_one_step_x0_matches_the_scheduler_formulas(tmp_path: Path) -> None:
    # flow matching: x_t = (1 - s) x0 + s n, v = n - x0  =>  x0 = x_t - s v, exactly
    policy = tiny_policy()
    schedule = policy.schedule(4)  # 1, 0.75, 0.5, 0.25, 0
    x0, n = torch.rand(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    x_t = noise_to(policy, x0, schedule, 2, n)
    assert torch.allclose(x_t, 0.5 * x0 + 0.5 * n)
    assert torch.allclose(predict_x0(policy, n - x0, x_t, schedule, 2), x0, atol=1e-6)
    # ReFL's x0 is the prediction at the drawn step, from the no-grad trajectory before it
    cond = policy.encode_prompts(CLASSES, guidance=False)
    noise = torch.randn(2, 3, 8, 8)
    out = sample_with_grad(policy, cond, noise, schedule, GradientPlan((2,), 2, True))
    with torch.no_grad():
        x = noise
        for k in range(2):
            x = x + (schedule[k + 1] - schedule[k]) * policy.predict(x, schedule[k], cond)
        expected = x - schedule[2] * policy.predict(x, schedule[2], cond)
    assert torch.allclose(out.x0, expected, atol=1e-5)
    # epsilon prediction (SD1.5, DDIM): x0 = (x - sqrt(1 - a_t) eps) / sqrt(a_t), and diffusers agrees
    sd = StableDiffusionPolicy(tiny_sd15_pipeline(workdir=tmp_path / "tok"), resolution=16)
    schedule = sd.schedule(4)
    eps, x = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    t = int(schedule[1])
    a = sd.scheduler.alphas_cumprod[t]
    by_hand = (x - torch.sqrt(1 - a) * eps) / torch.sqrt(a)
    assert torch.allclose(predict_x0(sd, eps, x, schedule, 1), by_hand, atol=1e-5)
    scheduler = sd.scheduler
    scheduler.set_timesteps(4)
    reference = scheduler.step(eps, t, x, eta=0.0).pred_original_sample
    assert torch.allclose(predict_x0(sd, eps, x, schedule, 1), reference, atol=1e-5)


# --------------------------------------------------------------------------- losses


def test_reward_loss_regulariser_and_pretraining_loss_hand_derived() -> None:
    r = torch.tensor([0.5, 2.5, -1.0])
    assert reward_loss(r).tolist() == [-0.5, -2.5, 1.0]
    assert reward_loss(r, "relu", target=2.0, scale=1e-3).tolist() == pytest.approx([1.5e-3, 0.0, 3e-3])
    with pytest.raises(ValueError, match="reward_loss"):
        reward_loss(r, "square")
    # (1 - 0)^2, (3 - 1)^2, (0 - 0)^2, (-2 - 0)^2 -> mean 9 / 4; second row: (0.5)^2 -> 0.25
    pred = torch.tensor([[[1.0, 3.0], [0.0, -2.0]], [[0.5, 0.5], [0.5, 0.5]]])
    ref = torch.tensor([[[0.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    assert prediction_regulariser(pred, ref).tolist() == [2.25, 0.25]

    class Zero(ClassConditionalFlowPolicy):  # predicts 0 everywhere
        def _forward(self, model, latents, timestep, inputs):
            return torch.zeros_like(latents) * next(model.parameters()).sum()

    zero = Zero(tiny_unet(), CLASSES)
    cond = zero.encode_prompts(CLASSES, guidance=False)
    # flow: target v = n - x0 = 1 - 0.5 = 0.5 -> loss 0.25, whatever sigma
    x0, n = torch.full((2, 3, 8, 8), 0.5), torch.ones(2, 3, 8, 8)
    assert pretraining_loss(zero, x0, cond, torch.tensor([0.3, 0.9]), n).tolist() == pytest.approx([0.25, 0.25])


@pytest.mark.slow
def test_kl_regulariser_is_zero_at_the_reference_and_matches_the_reference_pass() -> None:
    policy = tiny_policy()
    policy.add_lora(4, 4.0)
    schedule = policy.schedule(4)
    cond = policy.encode_prompts(CLASSES, guidance=False)
    x = torch.randn(2, 3, 8, 8)
    plan = GradientPlan((3,), 3, False)
    assert sample_with_grad(policy, cond, x, schedule, plan, regularise=True).regulariser.abs().max() == 0
    with torch.no_grad():  # move the adapter away from the reference (peft starts LoRA B at zero)
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.add_(0.05 * torch.randn_like(p))
    out = sample_with_grad(policy, cond, x, schedule, plan, regularise=True)
    with torch.no_grad():
        y = x
        for k in range(3):
            y = y + (schedule[k + 1] - schedule[k]) * policy.predict(y, schedule[k], cond)
        v = policy.predict(y, schedule[3], cond)
        with policy.reference():
            v_ref = policy.predict(y, schedule[3], cond)
    assert out.regulariser.tolist() == pytest.approx(((v - v_ref) ** 2).mean((1, 2, 3)).tolist(), rel=1e-5)
    assert float(out.regulariser.detach().min()) > 0


def test_one_gradient_step_raises_a_toy_reward() -> None:
    """A small step against the gradient of ``-reward`` (brightness toward white) lowers the loss."""
    policy = tiny_policy()
    schedule = policy.schedule(4)
    cond = policy.encode_prompts(CLASSES, guidance=False)
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    reward = TargetSimilarityReward("pixel", target=torch.ones(3, 8, 8))
    plan = GradientPlan((2, 3), 3, False)

    def loss() -> torch.Tensor:
        images = decode_images(policy, sample_with_grad(policy, cond, noise, schedule, plan).x0)
        return reward_loss(reward.differentiable(images)).mean()

    before = loss()
    before.backward()
    with torch.no_grad():
        for p in policy.model.parameters():
            p -= 1e-3 * p.grad
    assert float(loss()) < float(before)


# --------------------------------------------------------------------------- rewards


@pytest.mark.slow
def test_bt_reward_model_saved_reloaded_and_used_by_refl(tmp_path: Path) -> None:
    model = RewardModel.build(clip_config=TINY_CLIP, condition="prompt", head_hidden=8, seed=0)
    model.save_pretrained(tmp_path / "rm")
    tiny_unet().save_pretrained(tmp_path / "unet")
    (tmp_path / "unet" / "classes.json").write_text(json.dumps(CLASSES))
    trainer = train_refl_from_config({"flow": {
        "algorithm": "refl", "mode": "refl", "pretrained": str(tmp_path / "unet"),
        "rewards": {"model": {"path": str(tmp_path / "rm"), "device": "cpu"}}, "prompts": CLASSES,
        "num_steps": 4, "guidance_scale": 1.0, "prompts_per_iteration": 4, "micro_batch_size": 2, "kl_weight": 0.1,
        "lora_r": 4, "learning_rate": 1e-2, "max_steps": 2, "eval_every": 2, "eval_images_per_prompt": 2,
        "eval_num_steps": 4, "save_every": 1, "log_with": "none", "output_dir": str(tmp_path / "run")}})
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == [1, 2]
    assert all(math.isfinite(m["reward/mean"]) and m["grad_norm"] > 0 for m in metrics)
    assert metrics[0]["regulariser"] == 0.0 and metrics[1]["regulariser"] > 0  # the adapter moved
    assert "eval_start/reward_mean" in metrics[0] and Path(metrics[1]["eval/grid"]).is_file()
    assert (tmp_path / "run" / "checkpoint-000002" / "trainable.pt").is_file()
    assert (tmp_path / "run" / "final" / "adapter_config.json").is_file()
    # the reward the trainer scored with is the reloaded model's
    reloaded = RewardModel.from_pretrained(tmp_path / "rm")
    x = torch.rand(2, 3, 8, 8)
    assert torch.allclose(trainer.reward.differentiable(x, prompts=CLASSES), reloaded(x, prompts=CLASSES), atol=1e-5)
    # resume from the checkpoint of iteration 1 reproduces iteration 2
    again = build_refl_trainer(load_config_dict(tmp_path), resume_from=str(tmp_path / "run" / "checkpoint-000001"),
                               output_dir=str(tmp_path / "run2"), eval_every=0, save_every=0)
    assert again.iteration == 1
    assert again.train_iteration()["reward/mean"] == pytest.approx(metrics[1]["reward/mean"], abs=1e-6)


def load_config_dict(tmp_path: Path) -> dict:
    import yaml

    return yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())


def test_clip_differentiable_equals_the_score_and_has_a_gradient(tmp_path: Path) -> None:
    open_clip = pytest.importorskip("open_clip")
    from visalign.rewards.clip import ClipReward

    (tmp_path / "refl-tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(tmp_path / "refl-tiny-clip.json")
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("refl-tiny-clip", pretrained=None)
    tokenizer = open_clip.get_tokenizer("refl-tiny-clip")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(2)]
    x = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32) / 255).permute(2, 0, 1) for im in images])
    prompts = ["a red circle", "a blue square"]
    for mode in ("text_image", "image_image"):
        reward = ClipReward(model=(model, preprocess, tokenizer), mode=mode, scale="0-1", device="cpu")
        samples = [Sample(prompt=p, image=im, reference_image=images[1 - i]) for i, (p, im) in enumerate(zip(prompts, images, strict=True))]
        plain = [d["cosine"] for d in reward(samples).details]
        xg = x.clone().requires_grad_(True)
        refs = x[[1, 0]]
        out = reward.differentiable(xg, references=refs, prompts=prompts)
        assert out.tolist() == pytest.approx(plain, abs=1e-4)
        out.sum().backward()
        assert xg.grad.abs().sum() > 0 and all(p.grad is None for p in model.parameters())
    # other sizes go through the resize + crop in torch
    assert reward.differentiable(torch.rand(1, 3, 40, 48), references=torch.rand(1, 3, 32, 32)).shape == (1,)


def test_shape_colour_surrogate_ssim_and_weighted_rewards() -> None:
    from visalign.data.shapes import draw_shape

    reward = ShapeColourReward()
    images = [draw_shape("triangle", "green", seed=2), draw_shape("square", "blue", seed=2)]
    x = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32) / 255).permute(2, 0, 1) for im in images])
    xg = x.clone().requires_grad_(True)
    right = reward.differentiable(xg, prompts=["a green triangle", "a blue square"])
    wrong = reward.differentiable(x, prompts=["a green circle", "a red square"])
    assert (right > 0.6).all() and (wrong < 0.1).all()  # the plain reward: > 0.9 and < 0.1
    right.sum().backward()
    assert xg.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="no shape or colour"):
        reward.differentiable(x, prompts=["a cat", "a dog"])
    # SSIM against a target: 1 on itself; a weighted sum of two rewards; plain scores for the eval grid
    ssim = TargetSimilarityReward("ssim")
    assert ssim.differentiable(x, references=x).tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    both = build_differentiable_reward({"ssim": 0.5, "shape_colour": 2.0})
    value = both.differentiable(x, references=x, prompts=["a green triangle", "a blue square"])
    assert value.tolist() == pytest.approx((0.5 + 2 * right.detach()).tolist(), abs=1e-5)
    samples = [Sample(prompt="a green triangle", image=images[0], reference_image=images[0])]
    assert both(samples).scores[0] == pytest.approx(0.5 + 2 * reward(samples).scores[0], abs=1e-5)


# --------------------------------------------------------------------------- config


def test_config_errors_name_the_field(tmp_path: Path) -> None:
    cases = [({"draft_k": 0}, "draft_k"), ({"mode": "draft", "draft_k": 5, "num_steps": 4}, "draft_k"),
             ({"refl_steps": [5, 50]}, "refl_steps"), ({"refl_steps": [3]}, "refl_steps"),
             ({"lv_samples": 2}, "lv_samples"), ({"reward_loss": "hinge"}, "reward_loss"),
             ({"kl_weight": -1.0}, "kl_weight"), ({"micro_batch_size": 0}, "micro_batch_size"),
             ({"algorithm": "grpo"}, "algorithm"), ({"mode": "ddpo"}, "mode"), ({"group_size": 4}, "group_size")]
    for options, field in cases:
        with pytest.raises(ValueError, match=field):
            load_config(ReFLConfig, options)
    # nothing loads before the options are checked: the model path does not even exist
    base = {"pretrained": str(tmp_path / "missing"), "prompts": CLASSES}
    with pytest.raises(ValueError, match=r"^rewards"):
        build_refl_trainer(base)
    with pytest.raises(ValueError, match=r"rewards\.ocr"):
        build_differentiable_reward({"ocr": 1.0})
    with pytest.raises(ValueError, match=r"^prompts"):
        build_refl_trainer({**base, "prompts": [], "rewards": {"shape_colour": 1.0}})
    with pytest.raises(ValueError, match="pretrain_data"):
        (tmp_path / "rows.jsonl").write_text('{"prompt": "a red circle"}\n')
        build_refl_trainer({**base, "rewards": {"shape_colour": 1.0}, "pretrain_data": str(tmp_path / "rows.jsonl")})
    assert "| `mode` | `'draft'` | --set |" in describe_refl_options({"mode": "refl"}, mode="draft")


def test_pretraining_loss_from_data_rows_runs_in_the_loop(tmp_path: Path) -> None:
    from visalign.data.shapes import draw_shape

    image = draw_shape("circle", "red", size=8, seed=0)
    image.save(tmp_path / "c.png")
    (tmp_path / "rows.jsonl").write_text('{"image": "c.png", "prompt": "a red circle"}\n')
    tiny_unet().save_pretrained(tmp_path / "unet")
    (tmp_path / "unet" / "classes.json").write_text(json.dumps(CLASSES))
    trainer = build_refl_trainer({"pretrained": str(tmp_path / "unet"), "prompts": CLASSES,
                                  "rewards": {"pixel": {"target": str(tmp_path / "c.png")}}, "mode": "draft",
                                  "num_steps": 3, "guidance_scale": 1.0, "prompts_per_iteration": 2, "lora": False,
                                  "pretrain_data": str(tmp_path / "rows.jsonl"), "pretrain_batch_size": 2,
                                  "eval_every": 0, "log_with": "none", "output_dir": str(tmp_path / "run")})
    metrics = trainer.train_iteration()
    assert math.isfinite(metrics["pretrain_loss"]) and metrics["pretrain_loss"] > 0 and metrics["grad_steps"] == [2]


@pytest.mark.slow
def test_id_aligner_config_parses_and_builds_on_a_tiny_sd15_pipeline(tmp_path: Path) -> None:
    """The example config resolves as written (it names SD1.5 and CLIP weights that are not here), and the
    same options build and run one DRaFT iteration on a tiny SD1.5 pipeline with a tiny local CLIP."""
    open_clip = pytest.importorskip("open_clip")
    import yaml

    path = ROOT / "configs" / "id_aligner_sd15.yaml"
    table = describe_refl_options(path)
    assert "| `mode` | `'refl'` | config |" in table and "identity" in table
    data = yaml.safe_load(path.read_text())["flow"]
    config = load_config(ReFLConfig, data)
    specs = {s.name: s for s in parse_reward_specs(config.rewards)}  # the list form of the reward schema
    assert config.lora and config.eval_rewards and list(specs) == ["clip", "model"] and specs["model"].weight == 0.1
    tiny_sd15_pipeline(workdir=tmp_path / "tok").save_pretrained(tmp_path / "sd15")
    torch.manual_seed(0)
    clip_dir = tmp_path / "clip"
    clip_dir.mkdir()
    (clip_dir / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP, "preprocess_cfg": {}}))
    torch.save(_tiny_clip_state(open_clip, tmp_path), clip_dir / "open_clip_pytorch_model.bin")
    Image.fromarray(np.full((16, 16, 3), 200, dtype=np.uint8)).save(tmp_path / "face.png")
    clip = dict(specs["clip"].options, model_name=f"local-dir:{clip_dir}", pretrained=None, device="cpu")
    trainer = build_refl_trainer(data, pretrained=str(tmp_path / "sd15"), resolution=16, num_steps=3, refl_steps=None, mixed_precision="no",
                                 rewards=[{"name": "clip", "options": clip}, {"name": "ssim", "weight": 0.1}],
                                 reference_image=str(tmp_path / "face.png"),
                                 prompts_per_iteration=1, micro_batch_size=1, eval_every=0,
                                 output_dir=str(tmp_path / "run"), prompts_file=None, prompts=["a photo of a person"])
    assert isinstance(trainer.policy, StableDiffusionPolicy) and trainer.policy.lora
    metrics = trainer.train_iteration()
    assert len(metrics["grad_steps"]) == 1 and math.isfinite(metrics["reward/mean"]) and metrics["grad_norm"] > 0


def _tiny_clip_state(open_clip, tmp_path: Path) -> dict:
    (tmp_path / "refl-tiny-clip2.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(tmp_path / "refl-tiny-clip2.json")
    return open_clip.create_model("refl-tiny-clip2").state_dict()


@pytest.mark.slow
def test_cli_train_flow_algorithm_refl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from visalign.cli import main

    tiny_unet().save_pretrained(tmp_path / "unet")
    (tmp_path / "unet" / "classes.json").write_text(json.dumps(CLASSES))
    options = {"pretrained": str(tmp_path / "unet"), "prompts": CLASSES, "rewards": {"shape_colour": 1.0},
               "num_steps": 3, "guidance_scale": 1.0, "prompts_per_iteration": 2, "lora_r": 4, "max_steps": 1,
               "eval_every": 0, "log_with": "none", "output_dir": str(tmp_path / "run")}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"flow": options}))
    assert main(["train", "flow", str(tmp_path / "c.yaml"), "--algorithm", "refl", "--describe"]) == 0
    assert "| `mode` | `'refl'` | default |" in capsys.readouterr().out
    assert main(["train", "flow", str(tmp_path / "c.yaml"), "--algorithm", "refl", "--set", "refl_steps=[0, 9]"]) == 2
    assert "refl_steps" in capsys.readouterr().err
    assert main(["train", "flow", str(tmp_path / "c.yaml"), "--algorithm", "refl", "--mode", "draft"]) == 0
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert record["mode"] == "draft" and record["grad_steps"] == [2]
    assert main(["train", "reward", "--algorithm", "refl", "--describe"]) == 2
