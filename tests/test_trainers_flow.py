"""Flow-GRPO trainer: tiny random models (SD3, FLUX, Sana and SD1.5 pipelines, class-conditional UNet) end to end on CPU."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet2DModel

from conftest import tiny_class_unet
from visalign.rewards import Reward, RewardOutput
from visalign.trainers.config import load_config
from visalign.trainers.flow import (
    FlowGRPOConfig,
    FlowGRPOTrainer,
    step_noise_levels,
    train_flow_from_config,
)
from visalign.trainers.flow_policies import (
    ClassConditionalFlowPolicy,
    FluxPolicy,
    SanaPolicy,
    SD3Policy,
    StableDiffusionPolicy,
    load_flow_policy,
    tiny_flux_pipeline,
    tiny_sana_pipeline,
    tiny_sd3_pipeline,
    tiny_sd15_pipeline,
)
from visalign.trainers.sde import cps_step_with_logprob, ddim_step_with_logprob, sde_step_with_logprob

CLASSES = ["a red circle", "a blue square"]
ROOT = Path(__file__).resolve().parents[1]


class Bright(Reward):
    """Mean pixel value in [0, 1]; remembers the last scores."""

    name = "bright"

    def __init__(self, **_: object) -> None:
        self.last: list[float] = []

    def score(self, samples):
        self.last = [float(np.asarray(s.image, dtype=np.float64).mean() / 255) for s in samples]
        return RewardOutput(list(self.last), [{} for _ in samples], {"calls": 1.0})


class Flaky(Reward):
    """Returns None, garbage and non-finite values for some samples."""

    name = "flaky"

    def score(self, samples):
        bad = [None, "garbage", float("nan"), float("inf")]
        scores = [bad[i] if i < len(bad) else float(np.asarray(s.image).mean()) for i, s in enumerate(samples)]
        return RewardOutput(scores, [{} for _ in samples])  # type: ignore[arg-type]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_unet(seed: int = 0) -> UNet2DModel:
    return tiny_class_unet(len(CLASSES) + 1, seed)  # + a null class for CFG


def unet_policy(seed: int = 0) -> ClassConditionalFlowPolicy:
    return ClassConditionalFlowPolicy(tiny_unet(seed), CLASSES)


def config(tmp_path: Path, **overrides: object) -> FlowGRPOConfig:
    base = {"num_steps": 4, "group_size": 4, "prompts_per_iteration": 2, "batch_size": 8, "guidance_scale": 1.0,
            "lora_r": 4, "lora_alpha": 8.0, "beta": 0.0, "epsilon": 1e-2, "eval_every": 0, "max_steps": 1,
            "log_with": "none", "output_dir": str(tmp_path / "run"), "learning_rate": 1e-3}
    base.update(overrides)
    return load_config(FlowGRPOConfig, base)


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_sd3_pipeline_end_to_end_lora_cfg_kl(tmp_path: Path) -> None:
    pipe = tiny_sd3_pipeline(workdir=tmp_path / "tok")
    pipe.save_pretrained(tmp_path / "sd3")
    trainer = train_flow_from_config({
        "pretrained": str(tmp_path / "sd3"), "resolution": 16, "max_sequence_length": 8,
        "rewards": {f"{__name__}:Bright": 1.0}, "prompts": ["a red circle", "a blue square"],
        "num_steps": 2, "group_size": 2, "prompts_per_iteration": 2, "guidance_scale": 2.0, "beta": 0.04,
        "lora_r": 4, "max_steps": 1, "eval_every": 1, "eval_images_per_prompt": 2, "eval_num_steps": 2,
        "log_with": "none", "output_dir": str(tmp_path / "run")})
    assert isinstance(trainer.policy, SD3Policy) and trainer.policy.lora
    (m,) = read_metrics(tmp_path / "run")
    assert m["nfe/rollout"] == 2 * 2 * 2 * 2  # 4 images x 2 steps x 2 (CFG)
    assert m["nfe/train"] == 4 * 1 * 2 * 2  # 4 images x 1 trained step x 2 (CFG) x 2 (policy + reference)
    assert m["ratio/first_update_max_abs_dev"] == 0.0
    for key in ("loss", "kl", "clip_fraction", "ratio/mean", "adv/std", "reward/mean", "reward/calls",
                "time/rollout", "time/reward", "time/train", "eval/reward_mean", "eval_start/reward_mean"):
        assert key in m and math.isfinite(m[key]), key
    assert Path(m["eval/grid"]).exists()
    assert (tmp_path / "run" / "final" / "adapter_config.json").exists()


@pytest.mark.slow
def test_flux_pipeline_end_to_end_lora_kl(tmp_path: Path) -> None:
    tiny_flux_pipeline(workdir=tmp_path / "tok").save_pretrained(tmp_path / "flux")
    trainer = train_flow_from_config({
        "pretrained": str(tmp_path / "flux"), "resolution": 16, "rewards": {f"{__name__}:Bright": 1.0},
        "prompts": ["a red circle", "a blue square"], "num_steps": 2, "group_size": 2, "prompts_per_iteration": 2,
        "guidance_scale": 3.5, "beta": 0.04, "lora_r": 4, "max_steps": 1, "eval_every": 1,
        "eval_images_per_prompt": 1, "eval_num_steps": 2, "log_with": "none", "output_dir": str(tmp_path / "run")})
    policy = trainer.policy
    assert isinstance(policy, FluxPolicy) and policy.lora and policy.guidance_embeds and trainer.sampler == "sde"
    names = list(policy.named_trainable_parameters())
    assert any(".attn.to_q." in n for n in names) and any(".attn.to_out.0." in n for n in names)
    (m,) = read_metrics(tmp_path / "run")
    assert m["nfe/rollout"] == 4 * 2  # 4 images x 2 steps, one forward each (guidance is embedded, no CFG pass)
    assert m["nfe/train"] == 4 * 1 * 2  # 4 images x 1 trained step x 2 (policy + reference)
    assert m["ratio/first_update_max_abs_dev"] == 0.0
    for key in ("loss", "kl", "ratio/mean", "reward/mean", "eval/reward_mean"):
        assert key in m and math.isfinite(m[key]), key
    assert (tmp_path / "run" / "final" / "adapter_config.json").exists()


@pytest.mark.slow
def test_flux_policy_guidance_schedule_and_loading(tmp_path: Path) -> None:
    from diffusers import FluxPipeline
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    tiny_flux_pipeline(workdir=tmp_path / "tok").save_pretrained(tmp_path / "flux")
    policy = load_flow_policy(tmp_path / "flux", resolution=16)
    assert isinstance(policy, FluxPolicy) and policy.latent_shape == (16, 8, 8) and policy.samplers == ("sde", "cps")
    # the pipeline's schedule: linspace(1, 1/n, n) time-shifted with mu for 4x4 = 16 packed tokens, then 0
    mu = calculate_shift(16, 256, 4096, 0.5, 1.15)
    expected = [math.exp(mu) / (math.exp(mu) + (1 / s - 1)) for s in np.linspace(1.0, 0.25, 4)] + [0.0]
    assert torch.allclose(policy.sigmas(4), torch.tensor(expected, dtype=torch.float32), atol=1e-6)
    # guidance-distilled (dev-like): guidance_scale is the guidance embedding, one forward, no uncond
    cond = policy.encode_prompts(["a red circle"], guidance=True)
    assert cond.uncond is None
    calls: list[int] = []
    policy.model.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(1, *policy.latent_shape)
    with torch.no_grad():
        v1, v35 = policy.predict(x, 0.6, cond, 1.0), policy.predict(x, 0.6, cond, 3.5)
    assert len(calls) == 2 and not torch.equal(v1, v35)
    # two Euler steps through the policy reproduce FluxPipeline's own sampler bit for bit
    pipe = policy.pipeline  # eval mode (a freshly built pipeline's T5 still has dropout on)
    latents = pipe.prepare_latents(1, 16, 16, 16, torch.float32, "cpu", torch.Generator().manual_seed(0))[0]
    ref = pipe("a red circle", height=16, width=16, num_inference_steps=2, guidance_scale=3.5, output_type="latent",
               max_sequence_length=16, latents=latents).images
    z, sigmas = FluxPipeline._unpack_latents(latents, 16, 16, 2), policy.sigmas(2)
    with torch.no_grad():
        for k in range(2):
            z = z + (sigmas[k + 1] - sigmas[k]) * policy.velocity(z, sigmas[k], cond, 3.5)
    assert torch.equal(FluxPipeline._pack_latents(z, 1, 16, 8, 8), ref)
    assert policy.decode(z)[0].size == (16, 16)
    # schnell-like: no guidance embeddings, so no guidance at all
    schnell = FluxPolicy(tiny_flux_pipeline({"guidance_embeds": False}, workdir=tmp_path / "tok2"), resolution=16)
    assert not schnell.guidance_embeds
    cond = schnell.encode_prompts(["a blue square"])
    assert schnell.predict(x, 1.0, cond).shape == x.shape
    with pytest.raises(ValueError, match="guidance_scale must be 1"):
        schnell.predict(x, 1.0, cond, 3.5)


@pytest.mark.slow
def test_sana_pipeline_end_to_end_lora_cfg_kl(tmp_path: Path) -> None:
    tiny_sana_pipeline().save_pretrained(tmp_path / "sana")
    trainer = train_flow_from_config({
        "pretrained": str(tmp_path / "sana"), "resolution": 16, "rewards": {f"{__name__}:Bright": 1.0},
        "prompts": ["a red circle", "a blue square"], "num_steps": 2, "group_size": 2, "prompts_per_iteration": 2,
        "guidance_scale": 4.5, "beta": 0.04, "lora_r": 4, "max_steps": 1, "eval_every": 1,
        "eval_images_per_prompt": 1, "eval_num_steps": 2, "log_with": "none", "output_dir": str(tmp_path / "run")})
    policy = trainer.policy
    assert isinstance(policy, SanaPolicy) and policy.lora and trainer.sampler == "sde"
    names = list(policy.named_trainable_parameters())
    for target in (".attn1.to_q.", ".attn1.to_out.0.", ".attn2.to_k.", ".attn2.to_v."):
        assert any(target in n for n in names), target
    (m,) = read_metrics(tmp_path / "run")
    assert m["nfe/rollout"] == 4 * 2 * 2  # 4 images x 2 steps x 2 (CFG)
    assert m["nfe/train"] == 4 * 1 * 2 * 2  # 4 images x 1 trained step x 2 (CFG) x 2 (policy + reference)
    assert m["ratio/first_update_max_abs_dev"] == 0.0
    for key in ("loss", "kl", "ratio/mean", "reward/mean", "eval/reward_mean"):
        assert key in m and math.isfinite(m[key]), key
    assert (tmp_path / "run" / "final" / "adapter_config.json").exists()


@pytest.mark.slow
def test_sana_policy_cfg_schedule_and_loading(tmp_path: Path) -> None:
    tiny_sana_pipeline().save_pretrained(tmp_path / "sana")
    policy = load_flow_policy(tmp_path / "sana", resolution=16)
    assert isinstance(policy, SanaPolicy) and policy.latent_shape == (4, 8, 8) and policy.samplers == ("sde", "cps")
    assert policy.max_sequence_length == 16 and policy.complex_human_instruction  # the pipeline's default
    # the pipeline's FlowMatchEuler schedule (shift 3), then 0
    expected = policy.pipeline.scheduler
    expected.set_timesteps(4)
    assert torch.equal(policy.sigmas(4), expected.sigmas.float())
    # CFG: negative-prompt embeddings and attention masks, two forwards (the unconditional one without grad)
    cond = policy.encode_prompts(["a red circle"], guidance=True)
    assert cond.uncond is not None and set(cond.uncond) == {"prompt_embeds", "encoder_attention_mask"}
    assert cond.cond["encoder_attention_mask"].shape == (1, 16) and policy.forwards_per_prediction(4.5) == 2
    calls: list[int] = []
    policy.model.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(1, *policy.latent_shape)
    with torch.no_grad():
        v1, v45 = policy.predict(x, 0.6, cond, 1.0), policy.predict(x, 0.6, cond, 4.5)
    assert len(calls) == 3 and not torch.equal(v1, v45)
    # two Euler steps through the policy reproduce SanaPipeline's own sampler (it batches uncond + cond);
    # the pipeline takes only sizes divisible by 32
    pipe = policy.pipeline
    pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    big = SanaPolicy(pipe, resolution=32)
    latents = pipe.prepare_latents(1, 4, 32, 32, torch.float32, "cpu", torch.Generator().manual_seed(0))
    for scale in (1.0, 4.5):
        ref = pipe("a red circle", height=32, width=32, num_inference_steps=2, guidance_scale=scale,
                   output_type="latent", max_sequence_length=16, latents=latents, use_resolution_binning=False).images
        z, sigmas = latents.clone(), big.sigmas(2)
        with torch.no_grad():
            for k in range(2):
                z = z + (sigmas[k + 1] - sigmas[k]) * big.velocity(z, sigmas[k], cond, scale)
        assert torch.allclose(z, ref, atol=1e-5, rtol=1e-5), (scale, (z - ref).abs().max())
        if scale == 1.0:
            assert torch.equal(z, ref)
    assert big.decode(z)[0].size == (32, 32) and policy.decode(x)[0].size == (16, 16)
    # without the complex human instruction the prompt embeddings change
    plain = SanaPolicy(pipe, resolution=16, complex_human_instruction=[])
    assert not torch.equal(plain.encode_prompts(["a red circle"], guidance=False).cond["prompt_embeds"],
                           cond.cond["prompt_embeds"])
    with pytest.raises(ValueError, match="divisible"):
        SanaPolicy(pipe, resolution=15)
    # the Sana checkpoints' flow-sigma DPM-Solver: its own shifted sigmas, ending at 0
    from diffusers import DPMSolverMultistepScheduler

    pipe.scheduler = DPMSolverMultistepScheduler(use_flow_sigmas=True, flow_shift=3.0, prediction_type="flow_prediction")
    shifted = [3 * s / (1 + 2 * s) for s in (0.75, 0.5, 0.25)]
    assert torch.allclose(big.sigmas(4)[1:], torch.tensor([*shifted, 0.0]), atol=1e-3) and big.sigmas(4)[0] > 0.999


@pytest.mark.slow
def test_class_unet_end_to_end_from_directory(tmp_path: Path) -> None:
    tiny_unet().save_pretrained(tmp_path / "unet")
    (tmp_path / "unet" / "classes.json").write_text(json.dumps(CLASSES))
    assert isinstance(load_flow_policy(tmp_path / "unet"), ClassConditionalFlowPolicy)
    trainer = train_flow_from_config({
        "pretrained": str(tmp_path / "unet"), "rewards": {f"{__name__}:Bright": {"weight": 1.0}},
        "prompts": CLASSES, "num_steps": 3, "group_size": 4, "prompts_per_iteration": 2, "guidance_scale": 3.0,
        "beta": 0.04, "lora_r": 4, "max_steps": 2, "num_inner_updates": 2, "ema_every": 1,
        "eval_every": 0, "log_with": "none", "output_dir": str(tmp_path / "run")})
    metrics = read_metrics(tmp_path / "run")
    assert [m["iteration"] for m in metrics] == [1, 2]
    assert metrics[0]["ratio/first_update_max_abs_dev"] == 0.0
    assert all(math.isfinite(m["loss"]) and m["kl"] >= 0 for m in metrics)
    assert metrics[1]["kl"] > 0  # the adapter moved away from the reference
    assert len(trainer.trained_transitions) == 2  # two inner updates, disjoint shares
    a, b = trainer.trained_transitions
    assert set(a[0]).isdisjoint(b[0]) and sorted(a[0] + b[0]) == list(range(8))


@pytest.mark.slow
def test_class_unet_one_full_finetune_iteration_with_cfg_and_kl(tmp_path: Path) -> None:
    """A full fine-tune of the class-conditional UNet (the frozen copy is the KL reference); the final
    checkpoint loads back with the trained weights."""
    policy = unet_policy()
    trainer = FlowGRPOTrainer(config(tmp_path, lora=False, guidance_scale=3.0, beta=0.04), policy, Bright(), CLASSES)
    assert not policy.lora and len(policy.trainable_parameters()) == len(list(policy.model.parameters()))
    before = {n: p.detach().clone() for n, p in policy.named_trainable_parameters().items()}
    (m,) = trainer.train()
    assert m["ratio/first_update_max_abs_dev"] == 0.0 and m["nfe/rollout"] == 8 * 4 * 2  # 8 images x 4 steps x CFG
    assert math.isfinite(m["loss"]) and math.isfinite(m["kl"]) and m["kl"] >= 0
    after = policy.named_trainable_parameters()
    assert any(not torch.equal(before[n], after[n].detach()) for n in before)
    final = UNet2DModel.from_pretrained(str(tmp_path / "run" / "final"))
    assert all(torch.equal(v, policy.model.state_dict()[k]) for k, v in final.state_dict().items())


@pytest.mark.slow
def test_sd15_pipeline_end_to_end_ddim_lora_cfg_kl(tmp_path: Path) -> None:
    tiny_sd15_pipeline(workdir=tmp_path / "tok").save_pretrained(tmp_path / "sd15")
    assert isinstance(load_flow_policy(tmp_path / "sd15", resolution=16), StableDiffusionPolicy)
    trainer = train_flow_from_config({
        "pretrained": str(tmp_path / "sd15"), "resolution": 16, "rewards": {f"{__name__}:Bright": 1.0},
        "prompts": ["a red circle", "a blue square"], "num_steps": 2, "group_size": 2, "prompts_per_iteration": 2,
        "guidance_scale": 3.0, "noise_level": 1.0, "beta": 0.04, "lora_r": 4, "max_steps": 1,
        "eval_every": 1, "eval_images_per_prompt": 1, "eval_num_steps": 2, "log_with": "none",
        "output_dir": str(tmp_path / "run")})
    policy = trainer.policy
    assert isinstance(policy, StableDiffusionPolicy) and policy.lora and trainer.sampler == "ddim"
    assert any("to_q" in name for name in policy.named_trainable_parameters())
    (m,) = read_metrics(tmp_path / "run")
    assert m["nfe/rollout"] == 4 * 2 * 2 and m["nfe/train"] == 4 * 1 * 2 * 2
    assert m["ratio/first_update_max_abs_dev"] == 0.0
    for key in ("loss", "kl", "reward/mean", "eval/reward_mean", "eval_start/reward_mean"):
        assert math.isfinite(m[key]), key
    assert (tmp_path / "run" / "final" / "adapter_config.json").exists()


@pytest.mark.slow
def test_cps_sampler_end_to_end(tmp_path: Path) -> None:
    c = config(tmp_path, sampler="cps", noise_level=0.5, guidance_scale=3.0, beta=0.04)
    trainer = FlowGRPOTrainer(c, unet_policy(), Bright(), CLASSES)
    assert trainer.sampler == "cps"
    (m,) = trainer.train()
    assert m["ratio/first_update_max_abs_dev"] == 0.0
    assert math.isfinite(m["loss"]) and m["kl"] >= 0
    rollout = trainer.rollout(CLASSES[:1], [(0, 0)], step_noise_levels(c, 0), 0)  # the steps are CPS steps
    rec, cond = rollout.steps[1], trainer.policy.encode_prompts(CLASSES[:1])
    v = trainer.policy.predict(rec.parents, trainer._schedule[1], cond.select(rec.parent_prompt), 3.0)
    _, cps, _, _ = cps_step_with_logprob(v, rec.parents, trainer._schedule, 1, noise_level=0.5, prev_sample=rec.children)
    _, sde, _, _ = sde_step_with_logprob(v, rec.parents, trainer._schedule, 1, noise_level=0.5, prev_sample=rec.children)
    assert torch.equal(cps, rec.log_probs) and not torch.allclose(sde, rec.log_probs)


def test_samplers_are_checked_against_the_policy(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ddim"):
        FlowGRPOTrainer(config(tmp_path, sampler="ddim"), unet_policy(), Bright(), CLASSES)
    assert StableDiffusionPolicy(tiny_sd15_pipeline(workdir=tmp_path), resolution=16).resolve_sampler("auto") == "ddim"
    with pytest.raises(ValueError, match="cps"):
        StableDiffusionPolicy(tiny_sd15_pipeline(workdir=tmp_path), resolution=16).resolve_sampler("cps")


# ---------------------------------------------------------------------------------------- ratio


@pytest.mark.slow
def test_reevaluating_a_rollout_gives_ratio_exactly_one(tmp_path: Path) -> None:
    trainer = FlowGRPOTrainer(config(tmp_path, guidance_scale=3.0), unet_policy(), Bright(), CLASSES)
    levels = step_noise_levels(trainer.config, 0)
    rollout = trainer.rollout(CLASSES, [(0, 0), (1, 0), (2, 1), (3, 1)], levels, 0)
    cond = trainer.policy.encode_prompts(CLASSES)
    for k, rec in enumerate(rollout.steps):
        v = trainer.policy.velocity(rec.parents, trainer._schedule[k], cond.select(rec.parent_prompt), 3.0)
        _, log_prob, _, _ = sde_step_with_logprob(v, rec.parents, trainer._schedule, k, noise_level=rec.noise_level,
                                                  prev_sample=rec.children)
        assert torch.equal(torch.exp(log_prob - rec.log_probs), torch.ones(4)), k
        assert log_prob.dtype == torch.float32


@pytest.mark.slow
def test_reevaluating_a_ddim_rollout_gives_ratio_exactly_one(tmp_path: Path) -> None:
    from diffusers import DDIMScheduler

    policy = StableDiffusionPolicy(tiny_sd15_pipeline(workdir=tmp_path / "tok"), resolution=16)
    trainer = FlowGRPOTrainer(config(tmp_path, guidance_scale=3.0, noise_level=1.0), policy, Bright(), CLASSES)
    levels = step_noise_levels(trainer.config, 0)
    rollout = trainer.rollout(CLASSES, [(0, 0), (1, 0), (2, 1), (3, 1)], levels, 0)
    cond, schedule = policy.encode_prompts(CLASSES), trainer._schedule
    reference = DDIMScheduler.from_config(policy.scheduler.config)
    reference.set_timesteps(4)
    assert schedule[:-1].tolist() == reference.timesteps.tolist()
    for k, rec in enumerate(rollout.steps):
        eps = policy.predict(rec.parents, schedule[k], cond.select(rec.parent_prompt), 3.0)
        _, log_prob, mean, std = ddim_step_with_logprob(
            eps, rec.parents, policy.scheduler.alphas_cumprod, int(schedule[k]), int(schedule[k + 1]), eta=1.0,
            prev_sample=rec.children, final_alpha_cumprod=float(policy.scheduler.final_alpha_cumprod))
        assert torch.equal(torch.exp(log_prob - rec.log_probs), torch.ones(4)), k
        # the same transition as diffusers' DDIMScheduler.step with eta 1 and the implied noise
        noise = torch.where(std > 0, (rec.children - mean) / std.clamp_min(1e-12), torch.zeros_like(mean))
        expected = reference.step(eps, int(schedule[k]), rec.parents, eta=1.0, variance_noise=noise).prev_sample
        torch.testing.assert_close(rec.children, expected, rtol=1e-4, atol=1e-4)
    # SD1.5 ends at alphas_cumprod[0] < 1 (set_alpha_to_one=False): the last step keeps a small std, as in diffusers
    assert bool(torch.isfinite(rollout.steps[-1].log_probs).all())


# ------------------------------------------------------------------------------------------ trees


@pytest.mark.slow
def test_tree_rollout_nfe_equals_its_formula(tmp_path: Path) -> None:
    c = config(tmp_path, rollout="tree", split_steps=[0, 2], branch_factor=2, guidance_scale=3.0)
    (m,) = FlowGRPOTrainer(c, unet_policy(), Bright(), CLASSES).train()
    live = [2 ** sum(s < k for s in (0, 2)) for k in range(4)]  # nodes alive at each step: 1, 2, 2, 4
    assert m["nfe/rollout"] == 2 * sum(live) * 2  # 2 prompts, x2 CFG
    assert m["nfe/train"] == 2 * sum(live[:3]) * 2  # steps 0..2 trained (timestep fraction 0.99)
    assert m["transitions/trained"] == 2 * (2 + 2 + 4)


@pytest.mark.slow
def test_width_pruning_trains_exactly_best_and_worst(tmp_path: Path) -> None:
    reward = Bright()
    c = config(tmp_path, rollout="tree", split_steps=[0, 1], branch_factor=2, width_pruning=True, num_steps=3,
               timestep_fraction=1.0)
    trainer = FlowGRPOTrainer(c, unet_policy(), reward, CLASSES)
    trainer.train()
    leaves = np.array(reward.last).reshape(2, 4)  # 2 trees of 4 leaves, depth-first
    expected: dict[int, list[int]] = {}
    for k in range(3):
        nodes = 2 if k == 0 else 4
        chosen = []
        for t in range(2):
            node_rewards = leaves[t].reshape(nodes, -1).mean(1)
            keep = range(nodes) if nodes <= 2 else sorted({int(np.argmax(node_rewards)), int(np.argmin(node_rewards))})
            chosen += [t * nodes + i for i in keep]
        expected[k] = chosen
    assert trainer.trained_transitions == [expected]
    assert trainer.history[0]["transitions/trained"] == 2 * (2 + 2 + 2)


def test_split_noise_scale_log_prob_uses_the_applied_noise(tmp_path: Path) -> None:
    c = config(tmp_path, rollout="tree", split_steps=[1], split_noise_scale=3.0, noise_level=0.5)
    trainer = FlowGRPOTrainer(c, unet_policy(), Bright(), CLASSES)
    rollout = trainer.rollout(CLASSES[:1], [(0, 0)], step_noise_levels(c, 0), 0)
    rec = rollout.steps[1]
    assert rec.noise_level == pytest.approx(1.5) and rollout.steps[0].noise_level == 0.5
    cond = trainer.policy.encode_prompts(CLASSES[:1])
    v = trainer.policy.velocity(rec.parents, trainer._schedule[1], cond.select(rec.parent_prompt))
    x, vv = rec.parents[rec.parent_index], v[rec.parent_index]
    _, applied, _, std = sde_step_with_logprob(vv, x, trainer._schedule, 1, noise_level=1.5, prev_sample=rec.children)
    _, unscaled, _, std1 = sde_step_with_logprob(vv, x, trainer._schedule, 1, noise_level=0.5, prev_sample=rec.children)
    assert torch.equal(applied, rec.log_probs)
    assert not torch.allclose(unscaled, rec.log_probs)
    assert torch.allclose(std, 3 * std1)


# ---------------------------------------------------------------------------------------- MixGRPO


@pytest.mark.slow
def test_mixgrpo_window_trains_only_window_steps_and_uses_ode_outside(tmp_path: Path) -> None:
    c = config(tmp_path, sde_window_size=2, sde_window_shift_every=1, max_steps=2, timestep_fraction=1.0)
    trainer = FlowGRPOTrainer(c, unet_policy(), Bright(), CLASSES)
    history = trainer.train()
    assert [h["sde_window"] for h in history] == [[0, 1], [1, 2]]
    assert sorted(trainer.trained_transitions[0]) == [1, 2]  # the last iteration's window
    assert [h["nfe/train"] for h in history] == [2 * 8, 2 * 8]
    rollout = trainer.rollout(CLASSES, [(i, i // 4) for i in range(8)], step_noise_levels(c, 1), 1)
    cond = trainer.policy.encode_prompts(CLASSES)
    for k, rec in enumerate(rollout.steps):
        if k in (1, 2):
            assert rec.noise_level > 0 and bool((rec.log_probs != 0).all())
            continue
        assert rec.noise_level == 0.0 and bool((rec.log_probs == 0).all())
        v = trainer.policy.velocity(rec.parents, trainer._schedule[k], cond.select(rec.parent_prompt))
        dt = trainer._schedule[k + 1] - trainer._schedule[k]
        torch.testing.assert_close(rec.children, rec.parents + dt * v)  # the Euler (ODE) step


# ------------------------------------------------------------------------------ resume, robustness


@pytest.mark.slow
def test_resume_reproduces_an_uninterrupted_run(tmp_path: Path) -> None:
    keys = ("loss", "reward/mean", "ratio/max", "adv/std", "clip_fraction")
    opts = {"max_steps": 4, "ema_every": 1, "eval_every": 2, "eval_images_per_prompt": 1, "epsilon": 1e-3}
    full = FlowGRPOTrainer(config(tmp_path / "a", **opts), unet_policy(), Bright(), CLASSES).train()
    first = config(tmp_path / "b", **{**opts, "max_steps": 2, "save_every": 2})
    FlowGRPOTrainer(first, unet_policy(), Bright(), CLASSES).train()
    second = config(tmp_path / "b", **{**opts, "resume_from": "latest"})
    resumed = FlowGRPOTrainer(second, unet_policy(), Bright(), CLASSES)
    assert resumed.iteration == 2
    tail = resumed.train()
    assert [h["iteration"] for h in tail] == [3, 4]
    for a, b in zip(full[2:], tail, strict=True):
        assert [a[k] for k in keys] == [b[k] for k in keys]
        assert a.get("eval/reward_mean") == b.get("eval/reward_mean")  # EMA weights restored too
    assert full[0]["reward/mean"] != full[3]["reward/mean"]


@pytest.mark.slow
@pytest.mark.parametrize("rollout", ["independent", "tree"])
def test_missing_and_garbage_rewards_do_not_stop_the_run(tmp_path: Path, rollout: str) -> None:
    c = config(tmp_path, rollout=rollout, split_steps=[0, 1], max_steps=2)
    history = FlowGRPOTrainer(c, unet_policy(), Flaky(), CLASSES).train()
    assert [h["reward/missing"] for h in history] == [4, 4]
    assert all(math.isfinite(h["loss"]) and math.isfinite(h["reward/mean"]) for h in history)


def test_example_config_loads() -> None:
    c = load_config(FlowGRPOConfig, ROOT / "configs" / "flow_grpo_shapes.yaml", section="flow")
    assert c.rollout in ("independent", "tree") and c.rewards
    assert c.pretrained == str(ROOT / "models" / "tiny-shapes-flow")  # relative to the config file


# --------------------------------------------------------------------------------- two processes

_TWO_PROCESS_SCRIPT = """
import json, sys, torch
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_trainers_flow import two_process_run
torch.set_num_threads(1)
out = {{r: two_process_run(Path({out!r}) / r, r) for r in ("independent", "tree")}}
if torch.distributed.get_rank() == 0:
    Path({out!r}, "history.json").write_text(json.dumps(out))
"""


def two_process_run(out: Path, rollout: str) -> list[dict]:
    # 3 prompts x 4 images over 2 processes: the second group spans both (independent); trees: 2 prompts
    c = config(out, max_steps=2, rollout=rollout, split_steps=[0, 1], group_size=4, guidance_scale=3.0,
               prompts_per_iteration=3 if rollout == "independent" else 2, beta=0.04)
    return FlowGRPOTrainer(c, unet_policy(), Bright(), CLASSES).train()


@pytest.mark.slow
def test_two_processes_match_one(tmp_path: Path) -> None:
    """``torchrun --nproc_per_node 2`` (gloo, CPU) gives the metrics of one process on the same data."""
    script = tmp_path / "two.py"
    script.write_text(_TWO_PROCESS_SCRIPT.format(tests=str(ROOT / "tests"), out=str(tmp_path / "two")))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "2", "--standalone",
           str(script)]  # --standalone: the rendezvous takes a free port (a fixed one collides with other runs)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    one = {r: two_process_run(tmp_path / "one" / r, r) for r in ("independent", "tree")}  # meanwhile, in process
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr[-3000:]
    two = json.loads((tmp_path / "two" / "history.json").read_text())
    keys = ("loss", "kl", "reward/mean", "adv/std", "ratio/max", "nfe/rollout", "nfe/train", "transitions/trained")
    for rollout in one:
        for a, b in zip(one[rollout], two[rollout], strict=True):
            for k in keys:
                assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), (rollout, k, a[k], b[k])
