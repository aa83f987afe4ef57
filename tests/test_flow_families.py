"""Every registered flow pipeline (issue 11): SD3, FLUX.1, Sana, SD1.5, SDXL, Qwen-Image, FLUX.2 [klein],
FLUX.2 dev and Wan 2.x T2V. Each family's tiny random pipeline is saved and loaded back through the registry
(``load_flow_policy``) and checked step for step against the pipeline's own sampling loop at noise level 0
(latents after each of 3 steps; guidance off and on; 2 seeds x 2 latent sizes, one prompt or a batch of two
different prompts), and trained for one Flow-GRPO iteration with a full fine-tune (and, for the families
``tests/test_trainers_flow.py`` does not run end to end, one with LoRA, CFG and the KL term)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
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
    Flux2Policy,
    FluxPolicy,
    QwenImagePolicy,
    SanaPolicy,
    SD3Policy,
    StableDiffusionPolicy,
    StableDiffusionXLPolicy,
    WanPolicy,
    load_flow_policy,
    tiny_flux2_klein_pipeline,
    tiny_flux2_pipeline,
    tiny_flux_pipeline,
    tiny_qwenimage_pipeline,
    tiny_sana_pipeline,
    tiny_sd3_pipeline,
    tiny_sd15_pipeline,
    tiny_sdxl_pipeline,
    tiny_wan_pipeline,
)

PROMPTS = ["a red circle", "a blue square"]
MIXED = ["a red circle", "a big green star"]  # two prompts of different lengths (fit CLIP's 16 characters)
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


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _packed_2x2(policy: Any, z: torch.Tensor) -> torch.Tensor:
    """FLUX.1 / Qwen-Image: the pipeline's packed 2x2 latents ``(B, h * w / 4, 4 C)``."""
    b, c, h, w = z.shape
    return type(policy.pipeline)._pack_latents(z, b, c, h, w)


def _patch_tokens(policy: Any, z: torch.Tensor) -> torch.Tensor:
    """FLUX.2: the pipeline's tokens ``(B, h * w, C)`` of the patchified latents."""
    return type(policy.pipeline)._pack_latents(z)


@dataclass(frozen=True)
class Family:
    build: Callable[[Path], Any]
    cls: type
    load: dict[str, Any]
    """``load_flow_policy`` kwargs besides ``resolution`` (16 for training, :attr:`sizes` for the step check)."""
    sizes: tuple[int, int] = (16, 32)
    """Two resolutions for the step check."""
    guidance: float = 4.0
    """The step check's guidance "on" (CFG scale, or the embedded guidance of FLUX.1 / FLUX.2 dev)."""
    call: Callable[[float, int], dict[str, Any]] = lambda scale, n: {"guidance_scale": scale}
    """Pipeline ``__call__`` kwargs at guidance ``scale`` for ``n`` prompts."""
    to_pipeline: Callable[[Any, torch.Tensor], torch.Tensor] = lambda policy, z: z
    """The policy's latents in the layout of the pipeline's loop (its step callback's ``latents``)."""
    packs_input: bool = False
    """The pipeline's ``latents`` argument is in the policy's layout (FLUX.2 packs it itself)."""
    batched_cfg: bool = False
    """The pipeline runs CFG's two branches as one batch: with CFG the steps agree to float rounding."""
    ddim: bool = False
    """The pipeline is run with ``DDIMScheduler.from_config`` (the policy's DDIM) and ``eta=0``."""
    noise_level: float = 0.7
    """Training: the SDE noise level (DDIM: eta)."""


def _seq(n: int) -> Callable[[float, int], dict[str, Any]]:
    return lambda scale, _: {"guidance_scale": scale, "max_sequence_length": n}


FAMILIES: dict[str, Family] = {
    "sd3": Family(lambda tmp: tiny_sd3_pipeline(workdir=tmp / "tok"), SD3Policy, {"max_sequence_length": 16},
                  call=_seq(16), batched_cfg=True),
    "flux": Family(lambda tmp: tiny_flux_pipeline(workdir=tmp / "tok"), FluxPolicy, {"max_sequence_length": 16},
                   guidance=3.5, call=_seq(16), to_pipeline=_packed_2x2),
    "sana": Family(lambda tmp: tiny_sana_pipeline(), SanaPolicy, {"max_sequence_length": 16}, sizes=(32, 64),
                   guidance=4.5, batched_cfg=True,  # the pipeline takes sizes divisible by 32 only
                   call=lambda scale, _: {"guidance_scale": scale, "max_sequence_length": 16,
                                          "use_resolution_binning": False}),
    "sd15": Family(lambda tmp: tiny_sd15_pipeline(workdir=tmp / "tok"), StableDiffusionPolicy, {}, guidance=7.5,
                   call=lambda scale, _: {"guidance_scale": scale, "eta": 0.0}, batched_cfg=True, ddim=True,
                   noise_level=1.0),
    "sdxl": Family(lambda tmp: tiny_sdxl_pipeline(workdir=tmp / "tok"), StableDiffusionXLPolicy, {}, guidance=5.0,
                   call=lambda scale, _: {"guidance_scale": scale, "eta": 0.0}, batched_cfg=True, ddim=True,
                   noise_level=1.0),
    "qwenimage": Family(lambda tmp: tiny_qwenimage_pipeline(), QwenImagePolicy, {"max_sequence_length": 16},
                        to_pipeline=_packed_2x2,  # true CFG (norm-rescaled) needs a negative prompt in the pipeline
                        call=lambda scale, n: {"true_cfg_scale": scale, "max_sequence_length": 16,
                                               "negative_prompt": [" "] * n if scale > 1 else None}),
    "flux2_klein": Family(lambda tmp: tiny_flux2_klein_pipeline(), Flux2KleinPolicy, {"max_sequence_length": 16},
                          call=_seq(16), to_pipeline=_patch_tokens, packs_input=True),
    "flux2": Family(lambda tmp: tiny_flux2_pipeline(), Flux2Policy, {"max_sequence_length": 48},
                    call=_seq(48), to_pipeline=_patch_tokens, packs_input=True),
    "wan": Family(lambda tmp: tiny_wan_pipeline(), WanPolicy, {"num_frames": 5, "max_sequence_length": 16},
                  guidance=5.0, call=lambda scale, _: {"guidance_scale": scale, "num_frames": 5,
                                                       "max_sequence_length": 16}),
}
"""Every pipeline class the registry serves (``StableDiffusion3Img2Img`` / ``Inpaint`` share :class:`SD3Policy`)."""


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each family's tiny pipeline written with ``save_pretrained`` (loaded back by every test)."""
    root = tmp_path_factory.mktemp("families")
    out = {}
    for name, family in FAMILIES.items():
        family.build(root / name).save_pretrained(root / name / "pipe")
        out[name] = root / name / "pipe"
    return out


def load(saved: dict[str, Path], family: str, resolution: int = 16) -> Any:
    policy = load_flow_policy(saved[family], resolution=resolution, **FAMILIES[family].load)
    assert type(policy) is FAMILIES[family].cls
    return policy


@pytest.fixture(scope="module")
def step_policies(saved: dict[str, Path]) -> Callable[[str, int], Any]:
    """``get(family, resolution)``: one loaded policy per family and size, shared by the (read-only) step checks."""
    cache: dict[tuple[str, int], Any] = {}

    def get(family: str, resolution: int) -> Any:
        if (family, resolution) not in cache:
            policy = load(saved, family, resolution)
            if FAMILIES[family].ddim:
                from diffusers import DDIMScheduler

                pipe = policy.pipeline  # the policy's DDIM, in the pipeline
                pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
            cache[family, resolution] = policy
        return cache[family, resolution]

    return get


def run_pipeline(pipe: Any, latents: torch.Tensor, prompts: list[str], size: int, **kwargs: Any) -> list[torch.Tensor]:
    """The pipeline's own loop from ``latents``; the latents after every step (its step callback)."""
    steps: list[torch.Tensor] = []

    def keep(_pipe, _i, _t, tensors):
        steps.append(tensors["latents"].clone())
        return {}

    pipe(prompt=prompts, height=size, width=size, num_inference_steps=STEPS, output_type="latent",
         latents=latents.clone(), callback_on_step_end=keep, **kwargs)
    return steps


def run_policy(policy: Any, latents: torch.Tensor, prompts: list[str], guidance_scale: float) -> list[torch.Tensor]:
    """The policy's transitions at noise level 0 from ``latents``; the latents after every step."""
    cond = policy.encode_prompts(prompts, guidance=guidance_scale != 1.0)
    schedule, z, steps = policy.schedule(STEPS), latents.clone(), []
    with torch.no_grad():
        for k in range(STEPS):
            out = policy.predict(z, schedule[k], cond, guidance_scale)
            z = policy.step_with_logprob(out, z, schedule, k, noise_level=0.0)[0]
            steps.append(z)
    return steps


CFG_ATOL = 1e-4
"""Steps of a pipeline that batches CFG's two branches agree with the policy's two passes to this (abs. and rel.)."""


def assert_steps_match(mine: list[torch.Tensor], ref: list[torch.Tensor], exact: bool) -> float:
    """Latents after every step equal (bit for bit when ``exact``, else within :data:`CFG_ATOL`); the max diff."""
    assert len(mine) == len(ref) == STEPS
    worst = 0.0
    for k, (a, b) in enumerate(zip(mine, ref, strict=True)):
        assert a.shape == b.shape, (k, a.shape, b.shape)
        if exact:
            assert torch.equal(a, b), (k, (a - b).abs().max())
        torch.testing.assert_close(a, b, atol=CFG_ATOL, rtol=CFG_ATOL)
        worst = max(worst, float((a - b).abs().max()))
    return worst


def step_check(policy: Any, family: str, seed: int, prompts: list[str], scale: float) -> tuple[list, list]:
    """(policy steps, pipeline steps) in the pipeline's layout, from the same latents and prompts."""
    fam, size = FAMILIES[family], policy.resolution
    latents = torch.randn(len(prompts), *policy.latent_shape, generator=torch.Generator().manual_seed(seed))
    ref = run_pipeline(policy.pipeline, latents if fam.packs_input else fam.to_pipeline(policy, latents), prompts, size,
                       **fam.call(scale, len(prompts)))
    mine = [fam.to_pipeline(policy, z) for z in run_policy(policy, latents, prompts, scale)]
    return mine, ref


# ------------------------------------------------------------------------------------ registry


def test_registry_names_every_family() -> None:
    for name in ("StableDiffusion3Pipeline", "FluxPipeline", "SanaPipeline", "StableDiffusionPipeline",
                 "StableDiffusionXLPipeline", "QwenImagePipeline", "Flux2KleinPipeline", "Flux2Pipeline",
                 "WanPipeline"):
        assert name in POLICIES
    assert {f.cls.__name__ for f in FAMILIES.values()} == {v.split(":")[1] for v in POLICIES.values()}


# ------------------------------------------------------------------------------ step checks at noise 0

# (seed, size index, prompts): each seed and each size with one prompt and with a batch of two different prompts
CASES = [(0, 0, PROMPTS[:1]), (1, 0, MIXED), (0, 1, MIXED), (1, 1, PROMPTS[:1])]


@pytest.mark.slow
@pytest.mark.parametrize("seed,size,prompts", CASES,
                         ids=[f"seed{s}-size{i}-{len(p)}prompt" for s, i, p in CASES])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_steps_match_the_pipeline_loop(family: str, seed: int, size: int, prompts: list[str],
                                       step_policies: Callable[[str, int], Any]) -> None:
    fam = FAMILIES[family]
    policy = step_policies(family, fam.sizes[size])
    finals = []
    for scale in (1.0, fam.guidance):
        mine, ref = step_check(policy, family, seed, prompts, scale)
        assert_steps_match(mine, ref, exact=scale == 1.0 or not fam.batched_cfg)
        finals.append(ref[-1])
    assert not torch.equal(*finals)  # guidance changed the samples (CFG, or the embedded guidance)
    if len(prompts) == 2:
        assert not torch.equal(finals[0][0], finals[0][1])  # the two prompts condition differently


# ------------------------------------------------------------------------ one GRPO iteration each


def flow_config(tmp_path: Path, **overrides: object) -> FlowGRPOConfig:
    base = {"num_steps": 2, "group_size": 2, "prompts_per_iteration": 2, "batch_size": 4, "guidance_scale": 1.0,
            "lora_r": 4, "lora_alpha": 8.0, "beta": 0.0, "epsilon": 1e-2, "eval_every": 0,
            "max_steps": 1, "log_with": "none", "output_dir": str(tmp_path / "run"), "learning_rate": 1e-2}
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


def video_reward() -> Reward:
    return CompositeReward({"frames": FrameMeanReward(Bright()), "temporal": TemporalConsistencyReward("cosine")},
                           {"frames": 1.0, "temporal": 0.5})


# SD3, FLUX.1, Sana and SD1.5 train with LoRA end to end from a config in tests/test_trainers_flow.py
LORA_FAMILIES = ["sdxl", "qwenimage", "flux2_klein", "flux2", "wan"]


@pytest.mark.slow
@pytest.mark.parametrize("family", LORA_FAMILIES)
def test_one_lora_iteration_with_guidance_and_kl(family: str, saved: dict[str, Path], tmp_path: Path) -> None:
    fam, policy = FAMILIES[family], load(saved, family)
    reward = video_reward() if family == "wan" else Bright()
    trainer = FlowGRPOTrainer(flow_config(tmp_path, guidance_scale=fam.guidance, noise_level=fam.noise_level,
                                          beta=0.04), policy, reward, PROMPTS)
    assert policy.lora and all("lora_" in n for n in policy.named_trainable_parameters())
    m = check_iteration(trainer)
    nfe = 1 if family == "flux2" else 2  # FLUX.2 dev embeds the guidance: one forward; the others run CFG
    assert policy.forwards_per_prediction(fam.guidance) == nfe
    assert m["nfe/rollout"] == 4 * 2 * nfe  # 4 samples x 2 steps
    assert math.isfinite(m["kl"]) and m["kl"] >= 0
    assert (tmp_path / "run" / "final" / "adapter_config.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_one_full_finetune_iteration(family: str, saved: dict[str, Path], tmp_path: Path) -> None:
    fam, policy = FAMILIES[family], load(saved, family)
    reward = video_reward() if family == "wan" else Bright()
    trainer = FlowGRPOTrainer(flow_config(tmp_path, lora=False, noise_level=fam.noise_level, learning_rate=1e-3),
                              policy, reward, PROMPTS)
    n_model = sum(1 for _ in policy.model.parameters())
    assert not policy.lora and len(policy.trainable_parameters()) == n_model
    m = check_iteration(trainer)
    assert m["nfe/rollout"] == 4 * 2
    final = type(policy.model).from_pretrained(str(tmp_path / "run" / "final"))  # the trained weights, loaded back
    trained = policy.model.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in final.state_dict().items())


# ------------------------------------------------------------------------------ what each family adds


def test_sdxl_time_ids_and_zero_negative_embeddings(step_policies: Callable[[str, int], Any]) -> None:
    policy = step_policies("sdxl", 16)
    assert policy.samplers == ("ddim",) and policy.latent_shape == (4, 8, 8)
    cond = policy.encode_prompts(PROMPTS[:1])
    assert cond.cond["time_ids"].tolist() == [[16.0, 16.0, 0.0, 0.0, 16.0, 16.0]]
    assert not cond.uncond["prompt_embeds"].any()  # force_zeros_for_empty_prompt, as the pipeline


@pytest.mark.parametrize("family", list(FAMILIES))
def test_latent_shapes_and_decode(family: str, step_policies: Callable[[str, int], Any]) -> None:
    small, big = (step_policies(family, size) for size in FAMILIES[family].sizes)
    shapes = {"sd3": (4, 8, 8), "flux": (16, 8, 8), "sana": (4, 16, 16), "sd15": (4, 8, 8), "sdxl": (4, 8, 8),
              "qwenimage": (4, 8, 8), "flux2_klein": (16, 4, 4), "flux2": (16, 4, 4), "wan": (4, 3, 8, 8)}
    assert small.latent_shape == shapes[family]  # Wan: 5 frames -> 3 latent frames
    assert big.latent_shape[-2:] == tuple(2 * n for n in shapes[family][-2:])
    (sample,) = small.decode_samples(torch.zeros(1, *small.latent_shape))
    assert sample["image"].size == (small.resolution, small.resolution)
    if family == "wan":
        assert len(sample["frames"]) == 5 and sample["image"] is sample["frames"][0]
        with pytest.raises(ValueError, match="num_frames - 1"):
            WanPolicy(small.pipeline, resolution=16, num_frames=4)


@pytest.mark.parametrize("family", ["flux", "flux2"])
def test_embedded_guidance_is_one_forward_without_uncond(family: str,
                                                         step_policies: Callable[[str, int], Any]) -> None:
    """FLUX.1 dev and FLUX.2 dev: the guidance scale is the transformer's guidance-embedding input."""
    policy = step_policies(family, 16)
    cond = policy.encode_prompts(PROMPTS, guidance=True)
    assert cond.uncond is None and policy.guidance_embeds and policy.forwards_per_prediction(4.0) == 1
    calls: list[int] = []
    hook = policy.model.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(2, *policy.latent_shape, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            v1, v4 = policy.predict(x, 0.6, cond, 1.0), policy.predict(x, 0.6, cond, 4.0)
    finally:
        hook.remove()
    assert len(calls) == 2 and not torch.equal(v1, v4)


def test_flux2_prompts_go_through_the_pixtral_chat_template(step_policies: Callable[[str, int], Any]) -> None:
    """FLUX.2 dev: the Pixtral processor's chat template (the pipeline's system message, then the prompt),
    Mistral-3 hidden states 10, 20 and 30 stacked; a guidance-free FLUX.2 transformer takes only guidance 1."""
    from diffusers.pipelines.flux2.pipeline_flux2 import format_input

    policy = step_policies("flux2", 16)
    pipe = policy.pipeline
    assert type(pipe.tokenizer).__name__ == "PixtralProcessor"
    assert type(pipe.text_encoder).__name__ == "Mistral3ForConditionalGeneration"
    ids = pipe.tokenizer.apply_chat_template(format_input(MIXED), tokenize=True, return_dict=True, padding="max_length",
                                             truncation=True, max_length=48, return_tensors="pt")
    lengths = ids["attention_mask"].sum(1).tolist()
    assert lengths[0] < lengths[1] < 48  # the whole prompt fits after the system message
    text = pipe.tokenizer.tokenizer.decode(ids["input_ids"][1])
    assert text.index("[SYSTEM_PROMPT]") < text.index("[INST]") and "big green star" in text
    cond = policy.encode_prompts(MIXED)
    assert cond.cond["prompt_embeds"].shape == (2, 48, 3 * 8) and cond.cond["txt_ids"].shape == (2, 48, 4)
    plain = Flux2Policy(tiny_flux2_pipeline({"guidance_embeds": False}), resolution=16, max_sequence_length=48)
    x = torch.zeros(1, *plain.latent_shape)
    assert plain.predict(x, 1.0, plain.encode_prompts(PROMPTS[:1])).shape == x.shape
    with pytest.raises(ValueError, match="guidance_scale must be 1"):
        plain.predict(x, 1.0, plain.encode_prompts(PROMPTS[:1]), 4.0)


@pytest.mark.slow
def test_wan_trains_from_a_config_with_video_rewards(saved: dict[str, Path], tmp_path: Path) -> None:
    """``train_flow_from_config`` passes ``num_frames`` to the video policy; the rewards see every frame."""
    trainer = train_flow_from_config({
        "pretrained": str(saved["wan"]), "resolution": 16, "num_frames": 5, "max_sequence_length": 16,
        "rewards": {"temporal_consistency": {"weight": 1.0, "metric": "cosine"},
                    "frame_mean": {"weight": 1.0, "reward": {"name": f"{__name__}:Bright"}}},
        "prompts": PROMPTS, "num_steps": 2, "group_size": 2, "prompts_per_iteration": 2, "guidance_scale": 1.0,
        "noise_level": 0.7, "lora_r": 4, "max_steps": 1, "eval_every": 1, "eval_images_per_prompt": 1,
        "eval_num_steps": 2, "log_with": "none", "output_dir": str(tmp_path / "run")})
    assert isinstance(trainer.policy, WanPolicy) and trainer.policy.num_frames == 5
    (m,) = trainer.history
    assert math.isfinite(m["reward/mean"]) and math.isfinite(m["eval/reward_mean"])
    assert m["reward/frame_mean/frames"] == 4 * 5  # 4 videos x 5 frames through the image reward
    assert math.isfinite(m["reward/temporal_consistency/mean"]) and math.isfinite(m["reward/frame_mean/mean"])
