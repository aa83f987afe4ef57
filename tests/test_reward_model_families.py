"""The Bradley-Terry reward model on every VLM family the GRPO trainer supports (issue 12, section 2), and
adapter-only saves of LoRA reward models.

Each family is built tiny from its real config, model and processor classes with random weights
(:func:`visalign.models.tiny_vlm.build_tiny_vlm`, as ``tests/test_vlm_families.py`` builds them), saved,
and loaded the way users load a checkpoint: ``RewardModel.build(backbone="vlm", model=PATH)``. Per
family: the reward model's chats encode as the GRPO trainer's prompts do; a batch of two left-padded
chats scores as each chat alone; the score is differentiable with respect to the image (checked against
central differences); one Bradley-Terry step moves the head and the scores; the saved model (LoRA:
adapters + a pointer to the base) reloads to identical scores.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from visalign.models.reward_model import RewardModel, weights_fingerprint
from visalign.models.tiny_vlm import VLM_FAMILIES, build_tiny_vlm
from visalign.models.vlm_inputs import encode_chats
from visalign.rewards import Sample, get_reward
from visalign.trainers.config import load_config
from visalign.trainers.prompting import encode_prompts
from visalign.trainers.reward_model import RewardModelConfig, RewardModelTrainer

CORPUS = ["Score how well this chart reproduces the reference chart.", "plt.bar(['a', 'b'], [3, 4])"] * 4
PROMPTS = ["Score it.", "Score how well this chart reproduces the reference chart, please."]  # different lengths

_BUILT: dict[str, str] = {}


@pytest.fixture(scope="module")
def base_path(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``family -> path`` of its tiny random model and processor, saved once per family."""

    def get(family: str) -> str:
        if family not in _BUILT:
            model, processor = build_tiny_vlm(family, CORPUS)
            path = tmp_path_factory.mktemp(f"base-{family}")
            model.save_pretrained(path)
            processor.save_pretrained(path)
            _BUILT[family] = str(path)
        return _BUILT[family]

    yield get
    _BUILT.clear()


def _chart(values: list[int], colour: str) -> Image.Image:
    im = Image.new("RGB", (32, 32), "white")
    d = ImageDraw.Draw(im)
    for i, v in enumerate(values):
        d.rectangle([i * 8 + 1, 32 - 3 * v, i * 8 + 6, 31], fill=colour)
    return im


def _pairs(n: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        values = [int(v) for v in rng.integers(2, 9, 4)]
        ref = _chart(values, "red")
        rows.append({"id": i, "chosen": ref, "rejected": _chart(values[::-1], "blue"), "reference": ref,
                     "prompt": PROMPTS[i % 2]})
    return rows


def _config(path: str, out: Path, **kw: Any) -> RewardModelConfig:
    base = {"backbone": "vlm", "model": path, "condition": "reference", "head_hidden": 8, "batch_size": 2,
            "learning_rate": 1e-2, "max_steps": 1, "lr_scheduler": "constant", "output_dir": str(out),
            "progress": False, "bootstrap_resamples": 50, "num_threads": 1, "seed": 0}
    return load_config(RewardModelConfig, {**base, **kw})


# ---------------------------------------------------------------------------------------- every family

@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_chats_encode_as_the_grpo_trainer_encodes_prompts(base_path: Any, family: str) -> None:
    """``encode_chats`` (the reward model's path, one floor below the trainers) and the GRPO trainer's
    ``encode_prompts`` give the same tensors for PIL images; tensor images give the same pixels with a
    graph back to the input."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(base_path(family))
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(2)]
    pil = [Image.fromarray(a) for a in arrays]
    theirs = encode_prompts(processor, pil, PROMPTS)
    mine = encode_chats(processor, [[im] for im in pil], PROMPTS)
    assert sorted(mine.keys()) == sorted(theirs.keys())
    for k in theirs:
        assert torch.equal(mine[k], theirs[k]), k
    x = torch.stack([torch.from_numpy(a).permute(2, 0, 1).float() / 255 for a in arrays]).requires_grad_(True)
    tensors = encode_chats(processor, [[x[0]], [x[1]]], PROMPTS)
    assert torch.equal(tensors["input_ids"], theirs["input_ids"])
    # the processor's float path vs its uint8 path: one float32 rounding of (v / 255 - mean) / std apart
    torch.testing.assert_close(tensors["pixel_values"], theirs["pixel_values"], rtol=0, atol=1e-6)
    assert tensors["pixel_values"].requires_grad


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_family_scores_padding_and_gradient(base_path: Any, family: str) -> None:
    """A batch of two left-padded chats scores as each chat alone, and the score has the gradient of
    central differences with respect to the image."""
    model = RewardModel.build(backbone="vlm", model=base_path(family), condition="reference", head_hidden=8)
    assert type(model.backbone.net).__module__.startswith("transformers.models.")
    assert model.backbone.image_size == 32  # the side the tiny processor pins
    model = model.double().eval()
    gen = torch.Generator().manual_seed(0)
    x, ref = (torch.rand(2, 3, 32, 32, generator=gen, dtype=torch.float64) for _ in range(2))
    batch = encode_chats(model.backbone.processor, [[r, i] for r, i in zip(ref, x, strict=True)], PROMPTS,
                         add_generation_prompt=False)
    lengths = batch["attention_mask"].sum(1).tolist()
    assert lengths[0] < lengths[1] == batch["input_ids"].shape[1]  # row 0 is left-padded
    with torch.no_grad():
        both = model(x, ref, PROMPTS)
        alone = torch.cat([model(x[i:i + 1], ref[i:i + 1], PROMPTS[i:i + 1]) for i in range(2)])
    # Padding changes nothing mathematically (masked keys, positions counting real tokens only), so the
    # difference is rounding: float64 (eps 1.1e-16) through two layers of width 32 on O(1) scores leaves
    # ~1e-15; 1e-10 is five orders above that and far below what a leak moves (a pad token attended or a
    # position shifted by the padding changes a random model's score by ~1e-2).
    torch.testing.assert_close(both, alone, rtol=0, atol=1e-10)
    with torch.no_grad():  # the image reaches the score (swap the two images: each row's score moves)
        swapped = model(x.flip(0), ref, PROMPTS)
    assert (swapped - both).abs().min() > 1e-6
    # gradient to the image through the processor's tensor path, against central differences along the
    # gradient plus a random direction (the derivative there is about |grad|, well above the noise)
    xg = x.clone().requires_grad_(True)
    model(xg, ref, PROMPTS).sum().backward()
    grad = xg.grad
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    r = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    v = grad / grad.norm() + r / r.norm()
    eps = 1e-2
    with torch.no_grad():
        fd = (model(x + eps * v, ref, PROMPTS).sum() - model(x - eps * v, ref, PROMPTS).sum()) / (2 * eps)
    # The processor normalises in float32 whatever the model's dtype, so the score carries ~1e-7 relative
    # noise: over 2 eps = 2e-2 that is ~1e-5 of the derivative. The central difference's O(eps^2)
    # truncation is the larger term: measured at most 1.4e-4 relative over the ten families at eps = 1e-2
    # (100 times its value at eps = 1e-1, as eps^2 predicts). 1e-3 holds both with room.
    assert float((grad * v).sum()) == pytest.approx(float(fd), rel=1e-3)


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_family_bt_step_save_and_reload(base_path: Any, tmp_path: Path, family: str, lora: bool) -> None:
    """One Bradley-Terry step (``visalign train reward --mode bt`` with ``backbone: vlm``) moves the head and
    the scores; the saved model (LoRA: adapters only, by default) reloads to identical scores, also as
    ``get_reward("model", path=...)``."""
    rows = _pairs(4, 1)
    extra = {"lora": True, "lora_r": 2, "lora_alpha": 4} if lora else {}
    trainer = RewardModelTrainer(_config(base_path(family), tmp_path / "run", **extra), train_rows=rows)
    rm = trainer.reward_model
    images, refs, prompts = [r["rejected"] for r in rows], [r["reference"] for r in rows], [r["prompt"] for r in rows]
    head = {k: v.clone() for k, v in rm.head.state_dict().items()}
    body = {k: v.clone() for k, v in rm.backbone.state_dict().items()}
    before = rm.score(images, refs, prompts)
    trainer.train()
    after = rm.score(images, refs, prompts)
    assert any(not torch.equal(head[k], v) for k, v in rm.head.state_dict().items())
    moved = [k for k, v in rm.backbone.state_dict().items() if not torch.equal(body[k], v)]
    assert moved and all(("lora_" in k) == lora for k in moved)
    assert max(abs(a - b) for a, b in zip(after, before, strict=True)) > 1e-4
    saved = tmp_path / "run" / "model"
    assert (saved / "adapter.safetensors").is_file() == lora and (saved / "backbone").is_dir() != lora
    reloaded = RewardModel.from_pretrained(saved)
    assert reloaded.has_lora == lora
    # the same weights through the same code: equal to the last bit
    assert reloaded.score(images, refs, prompts) == after
    reward = get_reward("model", path=saved, device="cpu")
    out = reward([Sample(image=im, reference_image=r, prompt=p) for im, r, p in zip(images, refs, prompts, strict=True)])
    assert out.scores == after


# ---------------------------------------------------------------------------------------- adapter-only saves

def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def test_adapter_only_save_is_small_points_to_its_base_and_checks_it(base_path: Any, tmp_path: Path) -> None:
    path = base_path("qwen2_vl")
    model = RewardModel.build(backbone="vlm", model=path, condition="reference", head_hidden=8,
                              lora={"r": 2, "alpha": 4}).eval()
    with torch.no_grad():  # trained adapters (LoRA B starts at zero, which would hide a lost adapter)
        for n, p in model.backbone.net.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    x, ref = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    want = model(x, ref, PROMPTS)
    model.save_pretrained(tmp_path / "adapter")
    model.save_pretrained(tmp_path / "full", save_adapter_only=False)
    import json

    meta = json.loads((tmp_path / "adapter" / "reward_model.json").read_text())
    assert meta["weights"] == "adapter" and meta["base"] == {"model": str(Path(path).resolve())}
    assert meta["lora"] == {"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == ["adapter.safetensors", "head.safetensors",
                                                                      "reward_model.json"]
    small, big = _dir_bytes(tmp_path / "adapter"), _dir_bytes(tmp_path / "full")
    assert small * 10 < big, (small, big)  # tiny here (2 layers of width 32); a 7B base: MB against GB
    back = RewardModel.from_pretrained(tmp_path / "adapter")
    assert back.has_lora and torch.equal(back(x, ref, PROMPTS), want)
    merged = RewardModel.from_pretrained(tmp_path / "full")
    assert not merged.has_lora
    torch.testing.assert_close(merged(x, ref, PROMPTS), want, rtol=0, atol=1e-5)  # merged: W + BA rounded once
    # the base moved: point to it; a different base is refused
    shutil.copytree(path, tmp_path / "moved")
    assert torch.equal(RewardModel.from_pretrained(tmp_path / "adapter", base=str(tmp_path / "moved"))(x, ref, PROMPTS),
                       want)
    other, processor = build_tiny_vlm("qwen2_vl", CORPUS)
    with torch.no_grad():  # another checkpoint of the same architecture (say, a later revision)
        for p in other.parameters():
            p.add_(0.01 * torch.randn_like(p))
    other.save_pretrained(tmp_path / "other")
    processor.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="not the one these LoRA adapters were trained on"):
        RewardModel.from_pretrained(tmp_path / "adapter", base=str(tmp_path / "other"))
    assert RewardModel.from_pretrained(tmp_path / "adapter", base=str(tmp_path / "other"), check_base=False).has_lora
    with pytest.raises(FileNotFoundError, match="pass base="):
        RewardModel.from_pretrained(tmp_path / "adapter", base=str(tmp_path / "nowhere"))
    # refusals: adapter-only without adapters, or without a base to point to
    full = RewardModel.build(backbone="vlm", model=path, condition="reference", head_hidden=8)
    with pytest.raises(ValueError, match="no LoRA adapters"):
        full.save_pretrained(tmp_path / "x", save_adapter_only=True)
    net, processor = build_tiny_vlm("qwen2_vl", CORPUS)
    from visalign.models.reward_model import VlmBackbone

    random_base = RewardModel(VlmBackbone(net, processor), "reference", 8, lora={"r": 2})
    assert random_base.backbone.source is None
    with pytest.raises(ValueError, match="random weights"):
        random_base.save_pretrained(tmp_path / "y", save_adapter_only=True)
    random_base.save_pretrained(tmp_path / "y")  # default: saved whole
    assert (tmp_path / "y" / "backbone").is_dir()
    # a base changed after loading (fine-tuned, then LoRA on top) no longer matches its pointer
    changed = RewardModel.build(backbone="vlm", model=path, condition="reference", head_hidden=8, lora={"r": 2})
    with torch.no_grad():
        next(p for n, p in changed.backbone.net.named_parameters() if "lora_" not in n).add_(1.0)
    with pytest.raises(ValueError, match="weights changed since they were loaded"):
        changed.save_pretrained(tmp_path / "z", save_adapter_only=True)
    changed.save_pretrained(tmp_path / "z")
    assert (tmp_path / "z" / "backbone").is_dir()


def test_adapter_only_open_clip(tmp_path: Path) -> None:
    """An open_clip base from a ``local-dir:`` folder: the LoRA model saves adapters + head + pointer."""
    import json

    import open_clip

    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 16,
                                           "patch_size": 8},
           "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 16, "heads": 1, "layers": 1}}
    (tmp_path / "visalign-rm-adapter-clip.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "visalign-rm-adapter-clip.json")
    torch.manual_seed(0)
    folder = tmp_path / "clip"  # the layout of a downloaded hub repo: config + weights
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    torch.save(open_clip.create_model("visalign-rm-adapter-clip").state_dict(), folder / "open_clip_pytorch_model.bin")
    model = RewardModel.build(model=f"local-dir:{folder}", condition="reference", head_hidden=8,
                              lora={"r": 2}).eval()
    with torch.no_grad():
        for n, p in model.backbone.net.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    x, ref = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    model.save_pretrained(tmp_path / "a")
    model.save_pretrained(tmp_path / "f", save_adapter_only=False)
    assert not (tmp_path / "a" / "backbone").exists()
    assert _dir_bytes(tmp_path / "a") * 10 < _dir_bytes(tmp_path / "f")
    back = RewardModel.from_pretrained(tmp_path / "a")
    assert back.has_lora and torch.equal(back(x, ref), model(x, ref))
    assert weights_fingerprint(back.backbone.net) == weights_fingerprint(model.backbone.net)

