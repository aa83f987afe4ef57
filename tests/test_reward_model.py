"""Bradley-Terry reward models: the loss against hand-derived numbers, the tiny open_clip and Qwen2-VL
backbones, training, resume, save / reload / score, the reward interface, and gradients to the input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from visalign.rewards import Sample, get_reward
from visalign.trainers.config import load_config
from visalign.trainers.reward_model import (
    CLIP_MEAN,
    CLIP_STD,
    RewardModel,
    RewardModelConfig,
    RewardModelTrainer,
    VlmBackbone,
    bradley_terry_loss,
    calibration_bins,
    evaluate_pairs,
    image_to_tensor,
    rank_ladders,
    train_reward_from_config,
)

TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 1, "layers": 1}}


# ---------------------------------------------------------------------------------------- the loss

def test_bradley_terry_loss_hand_derived() -> None:
    # loss_i = -log sigmoid(d_i) = log(1 + exp(-d_i)),  d_i = r_c - r_r - m_i
    r_c, r_r = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([0.0, 0.0, 1.0])
    per = bradley_terry_loss(r_c, r_r, reduction="none")
    expected = [math.log(1 + math.exp(-2)), math.log(2), math.log(1 + math.exp(2))]  # 0.126928, 0.693147, 2.126928
    assert per.tolist() == pytest.approx(expected, abs=1e-6)
    assert bradley_terry_loss(r_c, r_r).item() == pytest.approx(sum(expected) / 3, abs=1e-6)  # 0.982334
    assert bradley_terry_loss(r_c, r_r, reduction="sum").item() == pytest.approx(sum(expected), abs=1e-6)
    # with the label's margin: d = [2 - 1, 0 - 0.5, -2 - 0] -> log(1 + e^-1), log(1 + e^0.5), log(1 + e^2)
    margin = torch.tensor([1.0, 0.5, 0.0])
    with_margin = bradley_terry_loss(r_c, r_r, margin, reduction="none")
    assert with_margin.tolist() == pytest.approx([math.log(1 + math.exp(-1)), math.log(1 + math.exp(0.5)),
                                                  math.log(1 + math.exp(2))], abs=1e-6)  # 0.313262, 0.974077, 2.126928
    # a float margin applies to every pair; a margin only ever raises the loss
    assert bradley_terry_loss(r_c, r_r, 0.5).item() > bradley_terry_loss(r_c, r_r).item()
    assert bradley_terry_loss(r_c, r_r, 0.0).item() == pytest.approx(bradley_terry_loss(r_c, r_r).item())
    # gradient: d loss_i / d r_c = -sigmoid(-d_i) = -(1 - sigmoid(d_i))
    x = r_c.clone().requires_grad_(True)
    bradley_terry_loss(x, r_r, reduction="sum").backward()
    assert x.grad.tolist() == pytest.approx([-1 / (1 + math.exp(2)), -0.5, -1 / (1 + math.exp(-2))], abs=1e-6)
    # no overflow far out
    assert bradley_terry_loss(torch.tensor([-200.0]), torch.tensor([200.0])).item() == pytest.approx(400.0)
    with pytest.raises(ValueError, match="differ"):
        bradley_terry_loss(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="reduction"):
        bradley_terry_loss(r_c, r_r, reduction="max")


def test_calibration_bins_and_ladder_ranking() -> None:
    bins = calibration_bins([0.05, 0.15, 0.95, 0.95, 1.0], [0, 1, 1, 0, 1], bins=10)
    assert [(b["n"], b["predicted"], b["observed"]) for b in bins] == [(1, 0.05, 0.0), (1, 0.15, 1.0),
                                                                       (3, pytest.approx((0.95 + 0.95 + 1.0) / 3), pytest.approx(2 / 3, abs=1e-6))]

    class Fixed(RewardModel):  # scores given by hand: ladder 0 in order, ladder 1 with two rungs swapped
        def __init__(self) -> None:
            torch.nn.Module.__init__(self)
            self.condition = "none"

        def score(self, images, references=None, prompts=None, batch_size=32):
            return [3.0, 2.0, 1.0, 0.0, 3.0, 1.0, 2.0, 0.0]

    ladders = [{"images": [None] * 4, "perturbation": "values"}, {"images": [None] * 4, "perturbation": "colour"}]
    r = rank_ladders(Fixed(), ladders)
    # tau of ladder 1: 6 pairs, 5 concordant, 1 discordant -> (5 - 1) / 6
    assert r["fully_ordered"] == 0.5 and r["kendall_tau"] == pytest.approx((1 + 4 / 6) / 2, abs=1e-4)
    assert r["mean_score_by_severity"] == [3.0, 1.5, 1.5, 0.0]
    assert r["fully_ordered_by_perturbation"] == {"colour": 0.0, "values": 1.0}


# ---------------------------------------------------------------------------------------- data for training

def _chart(values: list[int], colour: str = "red", size: int = 32) -> Image.Image:
    im = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(im)
    w = size // len(values)
    for i, v in enumerate(values):
        d.rectangle([i * w + 1, size - 3 * v, (i + 1) * w - 2, size - 1], fill=colour)
    return im


def _pairs(n: int, seed: int) -> list[dict]:
    """Reference bars; chosen = the reference, rejected = values or colour changed (no renderer needed)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        values = [int(v) for v in rng.integers(2, 9, 4)]
        ref = _chart(values)
        if i % 2:
            bad, kind = _chart([max(1, 10 - v) for v in values]), "values"
        else:
            bad, kind = _chart(values, "blue"), "colour"
        rows.append({"id": i, "chosen": ref, "rejected": bad, "reference": ref, "prompt": "", "margin": 1.0,
                     "perturbation": kind, "chosen_severity": 0, "rejected_severity": 3})
    return rows


def _config(tmp_path: Path, **kw) -> RewardModelConfig:
    base = {"clip_config": TINY_CLIP, "condition": "reference", "head_hidden": 16, "batch_size": 4,
            "learning_rate": 3e-3, "max_steps": 12, "lr_scheduler": "constant", "output_dir": str(tmp_path / "run"),
            "progress": False, "log_every": 2, "bootstrap_resamples": 200, "num_threads": 1}
    return load_config(RewardModelConfig, {**base, **kw})


@pytest.mark.slow
def test_train_save_reload_score_and_reward(tmp_path: Path) -> None:
    train, held = _pairs(16, 0), _pairs(8, 1)
    trainer = RewardModelTrainer(_config(tmp_path), train_rows=train, eval_rows=held)
    before = evaluate_pairs(trainer.reward_model, held, resamples=100)
    result = trainer.train()
    run = tmp_path / "run"
    log = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert losses[-1] < losses[0]
    assert result["eval"]["accuracy"] >= before["accuracy"] and result["eval"]["accuracy"] > 0.5
    for f in ("curves.png", "reward_config.yaml", "eval/eval.json", "eval/calibration.png", "model/reward_model.json",
              "model/head.safetensors", "model/backbone/open_clip_config.json"):
        assert (run / f).is_file(), f
    ev = json.loads((run / "eval" / "eval.json").read_text())
    assert set(ev["by_perturbation"]) == {"colour", "values"} and ev["ci95"][0] <= ev["accuracy"] <= ev["ci95"][1]

    model = trainer.reward_model
    reloaded = RewardModel.from_pretrained(run / "model")
    images, refs = [r["rejected"] for r in held], [r["reference"] for r in held]
    assert reloaded.score(images, refs) == pytest.approx(model.score(images, refs), abs=1e-5)

    reward = get_reward("model", path=run / "model", device="cpu")
    samples = [Sample(image=im, reference_image=ref) for im, ref in zip(images, refs, strict=True)]
    samples.append(Sample(image=images[0]))  # no reference: not applicable
    out = reward(samples)
    assert out.scores[:-1] == pytest.approx(model.score(images, refs), abs=1e-5)
    assert out.scores[-1] is None and out.details[-1]["reason"] == "no reference image"
    sig = get_reward("model", path=run / "model", device="cpu", scale="sigmoid")(samples[:2]).scores
    assert sig == pytest.approx([1 / (1 + math.exp(-v)) for v in out.scores[:2]], abs=1e-6)


@pytest.mark.slow
def test_resume_gives_the_uninterrupted_run(tmp_path: Path) -> None:
    rows = _pairs(12, 2)
    straight = RewardModelTrainer(_config(tmp_path / "a", max_steps=4), train_rows=rows)
    straight.train()
    first = RewardModelTrainer(_config(tmp_path / "b", max_steps=2), train_rows=rows)
    first.train()
    resumed = RewardModelTrainer(_config(tmp_path / "b", max_steps=4, resume_from="latest"), train_rows=rows)
    assert resumed.step == 2
    resumed.train()
    a = straight.reward_model.state_dict()
    b = resumed.reward_model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    log_a = [json.loads(x)["loss"] for x in (tmp_path / "a/run/metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    log_b = [json.loads(x)["loss"] for x in (tmp_path / "b/run/metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert log_b == pytest.approx(log_a, abs=1e-6)


@pytest.mark.slow
def test_lora_trains_adapters_and_head_only(tmp_path: Path) -> None:
    trainer = RewardModelTrainer(_config(tmp_path, lora=True, lora_r=4, max_steps=2), train_rows=_pairs(8, 3))
    before = {k: v.clone() for k, v in trainer.reward_model.state_dict().items()}
    trainer.train()
    after = trainer.reward_model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k or k.startswith("head.") for k in changed)
    assert any(k.startswith("head.") for k in changed) and any("lora_B" in k for k in changed)
    reloaded = RewardModel.from_pretrained(tmp_path / "run" / "model")  # adapters merged into the saved weights
    x, ref = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    trainer.reward_model.eval()
    assert torch.allclose(reloaded(x, ref), trainer.reward_model(x, ref), atol=1e-5)


def test_differentiable_matches_finite_differences(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = RewardModel.build(clip_config=TINY_CLIP, condition="reference", head_hidden=16, difference=True).double()
    reward = get_reward("model", model=model, device="cpu")
    x = torch.rand(2, 3, 40, 40, dtype=torch.float64, requires_grad=True)  # resized to 32 inside, differentiably
    ref = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    reward.differentiable(x, ref).sum().backward()
    grad = x.grad.detach()
    assert grad.abs().sum() > 0 and all(p.grad is None for p in model.parameters())
    v = torch.randn_like(x)
    eps = 1e-5
    with torch.no_grad():
        fd = (reward.differentiable(x + eps * v, ref).sum() - reward.differentiable(x - eps * v, ref).sum()) / (2 * eps)
    assert float((grad * v).sum()) == pytest.approx(float(fd), rel=1e-5, abs=1e-9)
    # the scored PIL image and the tensor path are one function
    img = Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8))
    t = image_to_tensor(img).double().unsqueeze(0)
    with torch.no_grad():
        assert reward([Sample(image=img, reference_image=img)]).scores[0] == pytest.approx(
            float(reward.differentiable(t, t)[0]), abs=1e-6)
    with pytest.raises(ValueError, match="references"):
        reward.differentiable(x)
    model.save_pretrained(tmp_path / "d")
    back = RewardModel.from_pretrained(tmp_path / "d").double()
    assert back.difference and torch.allclose(back(x.detach(), ref), model(x.detach(), ref), atol=1e-6)
    with pytest.raises(ValueError, match="difference"):
        RewardModel.build(clip_config=TINY_CLIP, condition="none", difference=True)


def test_prompt_condition_and_unconditioned(tmp_path: Path) -> None:
    m = RewardModel.build(clip_config=TINY_CLIP, condition="prompt", head_hidden=8)
    x = torch.rand(2, 3, 32, 32)
    a, b = m(x, prompts=["a red bar", "a red bar"]), m(x, prompts=["a red bar", "two blue lines"])
    assert a[0] == b[0] and a[1] != b[1]
    m.save_pretrained(tmp_path / "p")
    assert torch.allclose(RewardModel.from_pretrained(tmp_path / "p")(x, prompts=["x", "y"]),
                          m.eval()(x, prompts=["x", "y"]), atol=1e-5)
    with pytest.raises(ValueError, match="prompts"):
        m(x)
    none = RewardModel.build(clip_config=TINY_CLIP, condition="none", head_hidden=8)
    assert none(x).shape == (2,)
    with pytest.raises(ValueError, match="condition"):
        RewardModel.build(clip_config=TINY_CLIP, condition="text")


def test_open_clip_backbone_from_a_name_checkpoint_or_local_dir(tmp_path: Path) -> None:
    """The loading paths users take with real weights: an architecture name + a local checkpoint, and
    an open_clip ``local-dir:`` folder (config + weights, the layout of a downloaded hub repo)."""
    import open_clip

    (tmp_path / "visalign-rm-test-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(tmp_path / "visalign-rm-test-clip.json")
    torch.manual_seed(1)
    clip = open_clip.create_model("visalign-rm-test-clip")
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP}))
    torch.save(clip.state_dict(), tmp_path / "dir" / "open_clip_pytorch_model.bin")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        want = clip.encode_image((x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1))
        for m in (RewardModel.build(model="visalign-rm-test-clip", pretrained=str(tmp_path / "clip.pt")),
                  RewardModel.build(model=f"local-dir:{tmp_path / 'dir'}")):
            assert torch.allclose(m.backbone.encode_images(x), want, atol=1e-5)
    with pytest.raises(ValueError, match="unknown open_clip model"):
        RewardModel.build(model="no-such-clip")
    # a model's own normalisation (SigLIP-style 0.5 / 0.5) is used, saved and read back
    (tmp_path / "dir" / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP, "preprocess_cfg": {
        "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}))
    m = RewardModel.build(model=f"local-dir:{tmp_path / 'dir'}")
    m.save_pretrained(tmp_path / "saved")
    back = RewardModel.from_pretrained(tmp_path / "saved")
    with torch.no_grad():
        want = clip.encode_image((x - 0.5) / 0.5)
        assert torch.allclose(m.backbone.encode_images(x), want, atol=1e-5)
        assert torch.allclose(back.backbone.encode_images(x), want, atol=1e-5)


# ---------------------------------------------------------------------------------------- the VLM backbone

@pytest.fixture(scope="module")
def tiny_vlm():
    from visalign.models.tiny_vlm import build_processor, build_tiny_qwen2vl, build_tokenizer

    tok = build_tokenizer(["Score how well this chart reproduces the reference chart."], vocab_size=280)
    processor = build_processor(tok, image_size=32)
    net = build_tiny_qwen2vl(processor, hidden_size=32, num_layers=1, num_heads=2, vision_width=32,
                             vision_depth=1, vision_heads=2)
    return net, processor


@pytest.mark.slow
def test_vlm_backbone_last_token_lora_save_and_gradient(tiny_vlm, tmp_path: Path) -> None:
    import copy

    net, processor = tiny_vlm
    model = RewardModel(VlmBackbone(copy.deepcopy(net), processor), condition="reference", head_hidden=8,
                        lora={"r": 4})
    assert model.backbone.image_size == 32 and model.backbone.source is None  # built in memory: no base to point to
    x, ref = torch.rand(3, 3, 32, 32), torch.rand(3, 3, 32, 32)
    # last-token pooling with left padding: a row's score does not depend on the other rows' prompt lengths
    alone = model(x[:1], ref[:1], ["short"])
    batched = model(x, ref, ["short", "a much longer prompt than the first one", "mid prompt"])
    assert torch.allclose(alone, batched[:1], atol=1e-5)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in n or n.startswith("head.") for n in trainable)
    rows = _pairs(6, 4)
    cfg = _config(tmp_path, backbone="vlm", max_steps=2, batch_size=3)
    trainer = RewardModelTrainer(cfg, model=model, train_rows=rows, eval_rows=rows[:4])
    trainer.train()
    assert (tmp_path / "run" / "model" / "backbone").is_dir()  # LoRA on a random base: saved whole, merged
    reloaded = RewardModel.from_pretrained(tmp_path / "run" / "model")
    trainer.reward_model.eval()
    prompts = ["p"] * 3
    assert torch.allclose(reloaded(x, ref, prompts), trainer.reward_model(x, ref, prompts), atol=1e-5)
    reward = get_reward("model", model=reloaded, device="cpu")
    xg = x.clone().requires_grad_(True)
    reward.differentiable(xg, ref, prompts).sum().backward()
    assert xg.grad.abs().sum() > 0


def test_qwen25vl_backbone(tiny_vlm, tmp_path: Path) -> None:
    """Qwen2.5-VL (window attention in the vision tower, a merger to the text width) takes the same path:
    scores, gradients to the input, save and reload through AutoModelForImageTextToText."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    _, processor = tiny_vlm
    tok = processor.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>", "<|image_pad|>", "<|video_pad|>",
                                                     "<|vision_start|>", "<|vision_end|>")}
    cfg = Qwen2_5_VLConfig(
        text_config={"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 512,
                     "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"], "bos_token_id": None,
                     "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}},
        vision_config={"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 32,
                       "patch_size": 8, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 32,
                       "fullatt_block_indexes": [0]},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(0)
    model = RewardModel(VlmBackbone(Qwen2_5_VLForConditionalGeneration(cfg), processor), "reference", 8).eval()
    x, ref = torch.rand(2, 3, 32, 32, requires_grad=True), torch.rand(2, 3, 32, 32)
    scores = model(x, ref, ["a", "a longer prompt"])
    scores.sum().backward()
    assert x.grad.abs().sum() > 0
    model.save_pretrained(tmp_path / "q25")
    back = RewardModel.from_pretrained(tmp_path / "q25")
    assert type(back.backbone.net).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert torch.allclose(back(x.detach(), ref, ["a", "a longer prompt"]), scores.detach(), atol=1e-5)


# ---------------------------------------------------------------------------------------- config and CLI

def test_a_reused_output_dir_is_refused_and_latest_is_the_largest_step(tmp_path: Path) -> None:
    """One run per output_dir (issue 13.1), and ``resume_from: latest`` is the checkpoint with the largest
    step, not the last name in lexical order (``checkpoint-9`` sorts after ``checkpoint-10``)."""
    from visalign.trainers.runtime import OutputDirError

    run, rows = tmp_path / "run", _pairs(2, 0)
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    (run / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirError, match="overwrite_output_dir"):
        RewardModelTrainer(_config(tmp_path), train_rows=rows)
    trainer = RewardModelTrainer(_config(tmp_path, overwrite_output_dir=True), train_rows=rows)
    assert not (run / "metrics.jsonl").exists() and (run / "notes.txt").read_text() == "mine"
    for n in (9, 10):
        (run / f"checkpoint-{n}").mkdir()
        (run / f"checkpoint-{n}" / "trainer_state.json").write_text(json.dumps({"step": n, "micro": 2 * n}))
    loaded: list[str] = []
    trainer.accelerator.load_state = lambda d: loaded.append(Path(d).parent.name)
    trainer.load_checkpoint("latest")
    assert loaded == ["checkpoint-10"] and (trainer.step, trainer.micro) == (10, 20)



def test_config_yaml_cli_and_refusals(tmp_path: Path) -> None:
    from visalign.cli import main
    from visalign.data.pairs import write_pairs

    with pytest.raises(ValueError, match="unknown RewardModelConfig option"):
        load_config(RewardModelConfig, {"learning_rat": 1e-3})
    with pytest.raises(ValueError, match="not built yet"):
        RewardModelTrainer(_config(tmp_path, mode="judge"), train_rows=_pairs(2, 0))
    with pytest.raises(ValueError, match="no reference image"):
        rows = _pairs(2, 0)
        rows[1]["reference"] = None
        RewardModelTrainer(_config(tmp_path), train_rows=rows)
    data = write_pairs(_pairs(8, 5), tmp_path / "pairs.jsonl")
    import yaml

    cfg = {"reward": {"clip_config": TINY_CLIP, "train_data": str(data), "eval_data": str(data), "max_steps": 2,
                      "batch_size": 4, "head_hidden": 8, "output_dir": str(tmp_path / "cli"), "progress": False,
                      "bootstrap_resamples": 50}}
    (tmp_path / "rm.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "reward", str(tmp_path / "rm.yaml"), "--mode", "bt"]) == 0
    assert (tmp_path / "cli" / "model" / "reward_model.json").is_file()
    summary = train_reward_from_config(tmp_path / "rm.yaml", output_dir=str(tmp_path / "cli2"), condition="none")
    assert summary["steps"] == 2
    assert main(["train", "reward", str(tmp_path / "rm.yaml"), "--mode", "judge"]) == 2


def test_an_answer_without_code_scores_the_failure_score() -> None:
    """A policy must not escape the failed-render penalty by writing no code at all (it scored None, a
    NaN reward that GRPO leaves out of the advantage): seen in chart GRPO with a BT reward."""
    torch.manual_seed(0)
    model = RewardModel.build(clip_config=TINY_CLIP, condition="reference", head_hidden=16, difference=True)
    reward = get_reward("model", model=model, device="cpu", failed_score=-7.0)
    ref = Image.new("RGB", (32, 32), "white")
    out = reward([Sample(completion="I cannot draw that.", kind="matplotlib", reference_image=ref),
                  Sample(image=None, reference_image=ref)])
    assert out.scores == [-7.0, None]
    assert out.details[0] == {"error": "no matplotlib code found"}
    assert out.details[1] == {"reason": "no generated image"}


def test_eval_charges_a_saved_reward_model_s_failure_score_to_no_code_and_failed_renders(tmp_path) -> None:
    """``visalign eval`` with a saved reward model scores what training scores: an answer with no code and a
    program that does not render get the model's ``failed_score``, never None (left out of the mean)."""
    from visalign.evaluate import run_eval

    torch.manual_seed(0)
    RewardModel.build(clip_config=TINY_CLIP, condition="reference", head_hidden=16,
                      difference=True).save_pretrained(tmp_path / "model")
    svg = '<svg xmlns="http://www.w3.org/2000/svg" width="32" height="32"><circle cx="16" cy="16" r="9"/></svg>'
    rows = [{"id": "ok", "completion": svg, "reference_code": svg},
            {"id": "no-code", "completion": "I cannot draw that.", "reference_code": svg},
            {"id": "broken", "completion": "<svg xmlns='http://www.w3.org/2000/svg'><circle", "reference_code": svg},
            {"id": "no-code, image reference", "completion": "I cannot draw that.", "reference_image": "ref.png"}]
    Image.new("RGB", (32, 32), "white").save(tmp_path / "ref.png")
    (tmp_path / "g.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = run_eval(tmp_path / "g.jsonl", "svg", ["model"], tmp_path / "ev", workers=1, progress=False,
                       reward_options={"model": {"path": str(tmp_path / "model"), "failed_score": -7.0,
                                                 "device": "cpu"}})
    by = {r["id"]: r for r in map(json.loads, (tmp_path / "ev" / "results.jsonl").read_text().splitlines())}
    assert by["no-code"]["scores"]["model"] == -7.0
    assert by["broken"]["scores"]["model"] == -7.0
    assert by["no-code, image reference"]["scores"]["model"] == -7.0  # was None: the sample lost its kind
    assert isinstance(by["ok"]["scores"]["model"], float) and by["ok"]["scores"]["model"] != -7.0
    assert summary["rewards"]["model"]["n"] == 4
