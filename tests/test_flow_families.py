"""Flow policies for SDXL, Qwen-Image, FLUX.2 [klein] and Wan 2.x T2V (issue 11): each family's tiny random
pipeline is saved and loaded back through the registry (``load_flow_policy``), checked step for step against
the pipeline's own sampling loop at noise level 0 (same latents, same prompt; CFG on and off), and trained
for one Flow-GRPO iteration with LoRA and one with a full fine-tune."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from visalign.rewards import CompositeReward, Reward, RewardOutput
from visalign.rewards.video import FrameMeanReward, TemporalConsistencyReward
from visalign.trainers.config import load_config
from visalign.trainers.flow import FlowGRPOConfig, FlowGRPOTrainer, train_flow_from_config
from visalign.trainers.flow_policies import (
    POLICIES,
    Flux2KleinPolicy,
    QwenImagePolicy,
    StableDiffusionXLPolicy,
    WanPolicy,
    load_flow_policy,
    tiny_flux2_klein_pipeline,
    tiny_qwenimage_pipeline,
    tiny_sdxl_pipeline,
    tiny_wan_pipeline,
)

PROMPTS = ["a red circle", "a blue square"]
STEPS = 3


class Bright(Reward):
    """Mean pixel value of the image in [0, 1]."""

    name = "bright"

    def __init__(self, **_: object) -> None:
        self.calls = 0

    def score(self, samples):
        self.calls += 1
        return RewardOutput([float(np.asarray(s.image, dtype=np.float64).mean() / 255) for s in samples],
                            [{} for _ in samples])


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# family -> (builder, policy class, load kwargs)
FAMILIES: dict[str, tuple[Any, type, dict[str, Any]]] = {
    "sdxl": (lambda tmp: tiny_sdxl_pipeline(workdir=tmp / "tok"), StableDiffusionXLPolicy, {"resolution": 16}),
    "qwenimage": (lambda tmp: tiny_qwenimage_pipeline(), QwenImagePolicy,
                  {"resolution": 16, "max_sequence_length": 16}),
    "flux2_klein": (lambda tmp: tiny_flux2_klein_pipeline(), Flux2KleinPolicy,
                    {"resolution": 16, "max_sequence_length": 16}),
    "wan": (lambda tmp: tiny_wan_pipeline(), WanPolicy,
            {"resolution": 16, "num_frames": 5, "max_sequence_length": 16}),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each family's tiny pipeline written with ``save_pretrained`` (loaded back by every test)."""
    root = tmp_path_factory.mktemp("families")
    out = {}
    for name, (build, _, _) in FAMILIES.items():
        build(root / name).save_pretrained(root / name / "pipe")
        out[name] = root / name / "pipe"
    return out


def load(saved: dict[str, Path], family: str) -> Any:
    _, cls, kwargs = FAMILIES[family]
    policy = load_flow_policy(saved[family], **kwargs)
    assert type(policy) is cls
    return policy


def run_pipeline(pipe: Any, latents: torch.Tensor, **kwargs: Any) -> list[torch.Tensor]:
    """The pipeline's own loop from ``latents``; the latents after every step (its step callback)."""
    steps: list[torch.Tensor] = []

    def keep(_pipe, _i, _t, tensors):
        steps.append(tensors["latents"].clone())
        return {}

    pipe(prompt=PROMPTS[0], height=16, width=16, num_inference_steps=STEPS, output_type="latent",
         latents=latents.clone(), callback_on_step_end=keep, **kwargs)
    return steps


def run_policy(policy: Any, latents: torch.Tensor, guidance_scale: float) -> list[torch.Tensor]:
    """The policy's transitions at noise level 0 from ``latents``; the latents after every step."""
    cond = policy.encode_prompts(PROMPTS[:1], guidance=guidance_scale != 1.0)
    schedule, z, steps = policy.schedule(STEPS), latents.clone(), []
    with torch.no_grad():
        for k in range(STEPS):
            out = policy.predict(z, schedule[k], cond, guidance_scale)
            z = policy.step_with_logprob(out, z, schedule, k, noise_level=0.0)[0]
            steps.append(z)
    return steps


def assert_steps_match(mine: list[torch.Tensor], ref: list[torch.Tensor], exact: bool) -> float:
    assert len(mine) == len(ref) == STEPS
    worst = 0.0
    for k, (a, b) in enumerate(zip(mine, ref, strict=True)):
        assert a.shape == b.shape, (k, a.shape, b.shape)
        if exact:
            assert torch.equal(a, b), (k, (a - b).abs().max())
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        worst = max(worst, float((a - b).abs().max()))
    return worst


# ------------------------------------------------------------------------------------ registry


def test_registry_names_the_new_pipelines() -> None:
    for name in ("StableDiffusionXLPipeline", "QwenImagePipeline", "Flux2KleinPipeline", "WanPipeline"):
        assert name in POLICIES
    assert "Flux2Pipeline" not in POLICIES  # no tiny Mistral-3 pipeline checks it yet


# ------------------------------------------------------------------------------ step checks at noise 0


def test_sdxl_steps_match_the_pipeline_ddim_loop(saved: dict[str, Path]) -> None:
    from diffusers import DDIMScheduler

    policy = load(saved, "sdxl")
    pipe = policy.pipeline
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)  # the policy's DDIM, in the pipeline
    assert policy.samplers == ("ddim",) and policy.latent_shape == (4, 8, 8)
    cond = policy.encode_prompts(PROMPTS[:1])
    assert cond.cond["time_ids"].tolist() == [[16.0, 16.0, 0.0, 0.0, 16.0, 16.0]]
    assert not cond.uncond["prompt_embeds"].any()  # force_zeros_for_empty_prompt, as the pipeline
    latents = torch.randn(1, *policy.latent_shape, generator=torch.Generator().manual_seed(0))
    for scale in (1.0, 5.0):  # the pipeline batches uncond + cond: CFG agrees to float rounding
        ref = run_pipeline(pipe, latents, guidance_scale=scale, eta=0.0)
        assert_steps_match(run_policy(policy, latents, scale), ref, exact=scale == 1.0)
    assert policy.decode(ref[-1])[0].size == (16, 16)


def test_qwenimage_steps_match_the_pipeline_loop(saved: dict[str, Path]) -> None:
    from diffusers import QwenImagePipeline

    policy = load(saved, "qwenimage")
    pipe = policy.pipeline
    assert policy.latent_shape == (4, 8, 8) and policy.forwards_per_prediction(4.0) == 2
    packed = pipe.prepare_latents(1, 4, 16, 16, torch.float32, "cpu", torch.Generator().manual_seed(0))
    latents = policy._unpack(packed, 8, 8)
    for scale in (1.0, 4.0):  # true CFG (norm-rescaled) needs a negative prompt in the pipeline
        ref = run_pipeline(pipe, packed, true_cfg_scale=scale, negative_prompt=" " if scale > 1 else None,
                           max_sequence_length=16)
        mine = [QwenImagePipeline._pack_latents(z, 1, 4, 8, 8) for z in run_policy(policy, latents, scale)]
        assert_steps_match(mine, ref, exact=True)
    assert policy.decode(latents)[0].size == (16, 16)


def test_flux2_klein_steps_match_the_pipeline_loop(saved: dict[str, Path]) -> None:
    from diffusers import Flux2KleinPipeline

    policy = load(saved, "flux2_klein")
    pipe = policy.pipeline
    assert policy.latent_shape == (16, 4, 4)
    latents = torch.randn(1, *policy.latent_shape, generator=torch.Generator().manual_seed(0))
    for scale in (1.0, 4.0):
        ref = run_pipeline(pipe, latents, guidance_scale=scale, max_sequence_length=16)
        mine = [Flux2KleinPipeline._pack_latents(z) for z in run_policy(policy, latents, scale)]
        assert_steps_match(mine, ref, exact=True)
    assert policy.decode(latents)[0].size == (16, 16)


def test_wan_steps_match_the_pipeline_loop(saved: dict[str, Path]) -> None:
    policy = load(saved, "wan")
    pipe = policy.pipeline
    assert policy.latent_shape == (4, 3, 8, 8)  # 5 frames -> 3 latent frames
    latents = torch.randn(1, *policy.latent_shape, generator=torch.Generator().manual_seed(0))
    for scale in (1.0, 5.0):
        ref = run_pipeline(pipe, latents, guidance_scale=scale, num_frames=5, max_sequence_length=16)
        assert_steps_match(run_policy(policy, latents, scale), ref, exact=True)
    (sample,) = policy.decode_samples(ref[-1])
    assert len(sample["frames"]) == 5 and sample["image"] is sample["frames"][0]
    assert sample["image"].size == (16, 16)
    with pytest.raises(ValueError, match="num_frames - 1"):
        WanPolicy(pipe, resolution=16, num_frames=4)


# ------------------------------------------------------------------------ one GRPO iteration each


def flow_config(tmp_path: Path, **overrides: object) -> FlowGRPOConfig:
    base = {"num_steps": 2, "group_size": 2, "prompts_per_iteration": 2, "batch_size": 4, "guidance_scale": 1.0,
            "lora_rank": 4, "lora_alpha": 8.0, "beta": 0.0, "clip_range": 1e-2, "eval_every": 0,
            "num_iterations": 1, "log_with": "none", "output_dir": str(tmp_path / "run"), "learning_rate": 1e-2}
    base.update(overrides)
    return load_config(FlowGRPOConfig, base)


def snapshot(policy: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in policy.named_trainable_parameters().items()}


def check_iteration(trainer: FlowGRPOTrainer, before: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    before = before if before is not None else snapshot(trainer.policy)
    (m,) = trainer.train()
    assert m["ratio/first_update_max_abs_dev"] == 0.0
    for key in ("loss", "reward/mean", "ratio/mean"):
        assert math.isfinite(m[key]), key
    after = trainer.policy.named_trainable_parameters()
    assert any(not torch.equal(before[n], after[n].detach()) for n in before), "no weight moved"
    return m


FAMILY_GUIDANCE = {"sdxl": (5.0, 1.0), "qwenimage": (4.0, 0.7), "flux2_klein": (4.0, 0.7), "wan": (5.0, 0.7)}


def video_reward() -> Reward:
    return CompositeReward({"frames": FrameMeanReward(Bright()), "temporal": TemporalConsistencyReward("cosine")},
                           {"frames": 1.0, "temporal": 0.5})


@pytest.mark.parametrize("family", ["sdxl", "qwenimage", "flux2_klein", "wan"])
def test_one_lora_iteration_with_cfg_and_kl(family: str, saved: dict[str, Path], tmp_path: Path) -> None:
    scale, noise = FAMILY_GUIDANCE[family]
    policy = load(saved, family)
    reward = video_reward() if family == "wan" else Bright()
    trainer = FlowGRPOTrainer(flow_config(tmp_path, guidance_scale=scale, noise_level=noise, beta=0.04), policy,
                              reward, PROMPTS)
    assert policy.lora and all("lora_" in n for n in policy.named_trainable_parameters())
    m = check_iteration(trainer)
    assert m["nfe/rollout"] == 4 * 2 * 2  # 4 samples x 2 steps x 2 (CFG)
    assert math.isfinite(m["kl"])
    assert (tmp_path / "run" / "final" / "adapter_config.json").exists()


@pytest.mark.parametrize("family", ["sdxl", "qwenimage", "flux2_klein", "wan"])
def test_one_full_finetune_iteration(family: str, saved: dict[str, Path], tmp_path: Path) -> None:
    _, noise = FAMILY_GUIDANCE[family]
    policy = load(saved, family)
    reward = video_reward() if family == "wan" else Bright()
    trainer = FlowGRPOTrainer(flow_config(tmp_path, lora=False, noise_level=noise, learning_rate=1e-3), policy,
                              reward, PROMPTS)
    n_model = sum(1 for _ in policy.model.parameters())
    assert not policy.lora and len(policy.trainable_parameters()) == n_model
    m = check_iteration(trainer)
    assert m["nfe/rollout"] == 4 * 2
    assert (tmp_path / "run" / "final" / "config.json").exists()


def test_wan_trains_from_a_config_with_video_rewards(saved: dict[str, Path], tmp_path: Path) -> None:
    """``train_flow_from_config`` passes ``num_frames`` to the video policy; the rewards see every frame."""
    trainer = train_flow_from_config({
        "pretrained": str(saved["wan"]), "resolution": 16, "num_frames": 5, "max_sequence_length": 16,
        "rewards": {"temporal_consistency": {"weight": 1.0, "metric": "cosine"},
                    "frame_mean": {"weight": 1.0, "reward": {"name": f"{__name__}:Bright"}}},
        "prompts": PROMPTS, "num_steps": 2, "group_size": 2, "prompts_per_iteration": 2, "guidance_scale": 1.0,
        "noise_level": 0.7, "lora_rank": 4, "num_iterations": 1, "eval_every": 1, "eval_images_per_prompt": 1,
        "eval_num_steps": 2, "log_with": "none", "output_dir": str(tmp_path / "run")})
    assert isinstance(trainer.policy, WanPolicy) and trainer.policy.num_frames == 5
    (m,) = trainer.history
    assert math.isfinite(m["reward/mean"]) and math.isfinite(m["eval/reward_mean"])
    assert m["reward/frame_mean/frames"] == 4 * 5  # 4 videos x 5 frames through the image reward
    assert math.isfinite(m["reward/temporal_consistency/mean"]) and math.isfinite(m["reward/frame_mean/mean"])
