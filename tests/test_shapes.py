"""Synthetic shapes data, the shape_colour reward, and the shipped tiny flow model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from conftest import load_script
from visalign.data.shapes import (
    CAPTIONS,
    COLOURS,
    SHAPES,
    caption_to_class,
    draw_shape,
    parse_caption,
    shapes_dataset,
    split_prompts,
)
from visalign.rewards import Sample, get_reward
from visalign.rewards.shapes import ShapeColourReward, classify_shape_colour

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "models" / "tiny-shapes-flow"


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return shapes_dataset(200, seed=123)


@pytest.fixture(scope="module")
def reward() -> ShapeColourReward:
    return ShapeColourReward()


# --- data ---------------------------------------------------------------------------------------------

def test_captions_and_classes() -> None:
    assert len(CAPTIONS) == len(SHAPES) * len(COLOURS) == 18 == len(set(CAPTIONS))
    assert all(caption_to_class(c) == i for i, c in enumerate(CAPTIONS))
    assert parse_caption(CAPTIONS[5]) == (CAPTIONS[5].split()[2], CAPTIONS[5].split()[1])
    with pytest.raises(ValueError, match="unknown caption"):
        caption_to_class("a purple hexagon")
    with pytest.raises(ValueError, match="unknown shape"):
        draw_shape("hexagon", "red", seed=0)


def test_dataset_is_deterministic_and_balanced() -> None:
    a, b, c = shapes_dataset(36, seed=7), shapes_dataset(36, seed=7), shapes_dataset(36, seed=8)
    assert [r["caption"] for r in a] == [r["caption"] for r in b]
    assert all(x["image"].tobytes() == y["image"].tobytes() for x, y in zip(a, b, strict=True))
    assert any(x["image"].tobytes() != y["image"].tobytes() for x, y in zip(a, c, strict=True))
    assert sorted(r["label"] for r in a) == sorted(list(range(18)) * 2)
    for r in a:
        assert r["image"].size == (32, 32) and r["image"].mode == "RGB"
        assert r["caption"] == CAPTIONS[r["label"]] == f"a {r['colour']} {r['shape']}"
        arr = np.asarray(r["image"])
        assert (arr[0] == 255).all() or (arr[:, 0] == 255).all()  # white background reaches the border
    assert shapes_dataset(2, seed=0, size=48)[0]["image"].size == (48, 48)


def test_split_prompts() -> None:
    train, held = split_prompts()
    assert split_prompts() == (train, held)
    assert not set(train) & set(held) and sorted(train + held) == sorted(CAPTIONS)
    for part in (train, held):  # every colour and every shape on both sides
        assert {c.split()[1] for c in part} == set(COLOURS) and {c.split()[2] for c in part} == set(SHAPES)
    assert split_prompts(seed=1) != (train, held)
    assert len(split_prompts(n_eval=3)[1]) == 3
    with pytest.raises(ValueError):
        split_prompts(n_eval=0)


# --- reward -------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_reward_prefers_the_true_caption(rows: list[dict], reward: ShapeColourReward) -> None:
    true = np.array(reward([Sample(prompt=r["caption"], image=r["image"]) for r in rows]).scores)
    assert true.mean() > 0.9 and true.min() > 0.5
    wins = 0
    for r, s in zip(rows, true, strict=True):
        wrong = reward([Sample(prompt=c, image=r["image"]) for c in CAPTIONS if c != r["caption"]]).scores
        wins += s > max(wrong)
    assert wins / len(rows) > 0.95


@pytest.mark.slow
def test_classifier_accuracy(rows: list[dict]) -> None:
    acc = np.mean([classify_shape_colour(r["image"]) == (r["shape"], r["colour"]) for r in rows])
    assert acc > 0.95


def _degenerate() -> dict[str, Image.Image]:
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    framed = Image.new("RGB", (32, 32), "white")
    ImageDraw.Draw(framed).rectangle([1, 1, 30, 30], fill=COLOURS["red"])
    return {"blank": Image.new("RGB", (32, 32), "white"), "full_fill": Image.new("RGB", (32, 32), COLOURS["red"]),
            "framed_fill": framed, "noise": noise, "grey_circle": draw_shape("circle", (90, 90, 90), seed=0)}


@pytest.mark.parametrize("kind", ["blank", "full_fill", "framed_fill", "noise", "grey_circle"])
def test_degenerate_images_score_low(kind: str, reward: ShapeColourReward) -> None:
    image = _degenerate()[kind]
    out = reward([Sample(prompt=c, image=image) for c in CAPTIONS])
    assert max(out.scores) < 0.2, (kind, out.details[int(np.argmax(out.scores))])
    assert all(0.0 <= s <= 1.0 for s in out.scores)


def test_reward_contract(reward: ShapeColourReward) -> None:
    img = draw_shape("triangle", "green", seed=4)
    out = get_reward("shape_colour")([
        Sample(prompt="a green triangle", image=img),
        Sample(prompt="something green", image=img),        # colour only
        Sample(prompt="a triangle", image=img),             # shape only
        Sample(prompt="a dog", image=img),                  # not applicable
        Sample(prompt="a green triangle"),                  # no image
        Sample(prompt="a dog", image=img, metadata={"shape": "circle", "colour": "green"}),
    ])
    s = out.scores
    assert s[0] > 0.9 and s[1] > 0.9 and s[2] > 0.9 and s[3] is None and s[4] is None and s[5] < 0.2
    d = out.details[0]
    assert {"colour_purity", "shape_score", "coverage", "predicted_shape", "predicted_colour"} <= set(d)
    assert (d["predicted_shape"], d["predicted_colour"]) == ("triangle", "green")
    assert out.metrics["accuracy"] == pytest.approx(3 / 4)
    big = draw_shape("circle", "blue", size=128, seed=1)  # any image size
    assert reward([Sample(prompt="a blue circle", image=big)]).scores[0] > 0.8


# --- shipped model ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_shipped_model_samples_follow_captions(reward: ShapeColourReward) -> None:
    from diffusers import UNet2DModel

    unet = UNet2DModel.from_pretrained(MODEL_DIR).eval()
    assert unet.config.num_class_embeds == len(CAPTIONS) and unet.config.sample_size == 32
    assert json.loads((MODEL_DIR / "classes.json").read_text()) == CAPTIONS
    assert sum(p.numel() for p in unet.parameters()) < 2_000_000

    captions = ["a red circle", "a blue square", "a green triangle", "a yellow circle", "a cyan triangle",
                "a magenta square"]
    per = 4
    labels = torch.tensor([caption_to_class(c) for c in captions]).repeat_interleave(per)
    script = load_script("make_tiny_flow_model")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared 2-core machine, 2 threads here ran 5x slower than 1
    try:
        x = script.euler_sample(unet, labels, steps=10, generator=torch.Generator().manual_seed(0))
    finally:
        torch.set_num_threads(threads)
    assert x.shape == (len(labels), 3, 32, 32) and torch.isfinite(x).all()
    images = script.tensor_to_images(x)
    right, wrong = [], []
    for i, image in enumerate(images):
        true = captions[i // per]
        right.append(reward([Sample(prompt=true, image=image)]).scores[0])
        wrong.append(np.mean(reward([Sample(prompt=c, image=image) for c in CAPTIONS if c != true]).scores))
    assert np.mean(right) > np.mean(wrong) + 0.2, (np.mean(right), np.mean(wrong))
