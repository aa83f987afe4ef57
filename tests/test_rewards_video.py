"""Video rewards (issue 11): a video is scored as its frames; numbers worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from visalign.rewards import Reward, RewardOutput, Sample, get_reward
from visalign.rewards.video import (
    FrameMeanReward,
    TemporalConsistencyReward,
    frame_mean,
    temporal_consistency,
)


def solid(rgb: tuple[int, int, int], size: int = 16) -> Image.Image:
    return Image.new("RGB", (size, size), rgb)


class Red(Reward):
    """Mean red channel in [0, 1]; None for an all-black frame (not applicable); counts calls."""

    name = "red"

    def __init__(self) -> None:
        self.batches: list[int] = []

    def score(self, samples):
        self.batches.append(len(samples))
        scores = []
        for s in samples:
            a = np.asarray(s.image, dtype=np.float64)
            scores.append(None if not a.any() else float(a[..., 0].mean() / 255))
        return RewardOutput(scores, [{} for _ in samples], {"calls": 1.0})


def test_frame_mean_skips_missing_and_non_finite() -> None:
    assert frame_mean([0.25, 0.75]) == 0.5
    assert frame_mean([1.0, None, float("inf"), 0.0]) == 0.5
    assert frame_mean([]) is None and frame_mean([None, float("nan")]) is None


def test_cosine_consistency_by_hand() -> None:
    red, green, yellow, black = solid((255, 0, 0)), solid((0, 255, 0)), solid((255, 255, 0)), solid((0, 0, 0))
    assert temporal_consistency([red, red], "cosine") == pytest.approx(1.0, abs=1e-12)
    assert temporal_consistency([red, green], "cosine") == pytest.approx(0.0, abs=1e-12)
    # red . yellow = 1 per pixel, |red| = 1, |yellow| = sqrt(2) per pixel: cos = 1 / sqrt(2)
    assert temporal_consistency([red, yellow], "cosine") == pytest.approx(1 / math.sqrt(2), abs=1e-12)
    # mean over the pairs (red, yellow), (yellow, yellow), (yellow, green): (1/sqrt2 + 1 + 1/sqrt2) / 3
    expected = (2 / math.sqrt(2) + 1) / 3
    assert temporal_consistency([red, yellow, yellow, green], "cosine") == pytest.approx(expected, abs=1e-12)
    # half-intensity red is parallel to red: scale does not matter to the cosine
    assert temporal_consistency([red, solid((128, 0, 0))], "cosine") == pytest.approx(1.0, abs=1e-12)
    assert temporal_consistency([black, black], "cosine") == 1.0
    assert temporal_consistency([black, red], "cosine") == 0.0


def test_ssim_consistency_by_hand() -> None:
    # constant frames: the structure term is C2 / C2 = 1, so SSIM = (2ab + C1) / (a^2 + b^2 + C1),
    # C1 = (0.01 * 255)^2, the same for every channel
    c1 = (0.01 * 255) ** 2
    a, b = 100.0, 200.0
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    g100, g200 = solid((100, 100, 100)), solid((200, 200, 200))
    assert temporal_consistency([g100, g200], "ssim") == pytest.approx(expected, abs=1e-9)
    assert temporal_consistency([g100, g100, g200], "ssim") == pytest.approx((1 + expected) / 2, abs=1e-9)
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    assert temporal_consistency([noisy, noisy], "ssim") == pytest.approx(1.0, abs=1e-12)


def test_temporal_consistency_checks_its_input() -> None:
    with pytest.raises(ValueError, match="at least two"):
        temporal_consistency([solid((1, 2, 3))])
    with pytest.raises(ValueError, match="differ in size"):
        temporal_consistency([solid((1, 2, 3), 16), solid((1, 2, 3), 20)])
    with pytest.raises(ValueError, match="metric"):
        temporal_consistency([solid((1, 2, 3))] * 2, "psnr")


def test_frame_mean_reward_scores_every_frame_in_one_batch() -> None:
    inner = Red()
    reward = FrameMeanReward(inner)
    video_a = [solid((255, 0, 0)), solid((0, 0, 255)), solid((51, 0, 0))]  # red: 1, 0, 0.2 -> 0.4
    video_b = [solid((0, 0, 0)), solid((102, 0, 0))]  # black frame: None, then 0.4 -> 0.4
    image_only = Sample(prompt="p", image=solid((255, 0, 0)))  # a one-frame video -> 1.0
    out = reward([Sample(prompt="p", image=video_a[0], frames=video_a, group=0),
                  Sample(prompt="q", image=video_b[0], frames=video_b, group=1), image_only, Sample(prompt="x")])
    assert out.scores[0] == pytest.approx(0.4, abs=1e-12)
    assert out.scores[1] == pytest.approx(0.4, abs=1e-12)
    assert out.scores[2] == 1.0 and out.scores[3] is None
    assert inner.batches == [6]  # 3 + 2 + 1 frames, one call
    assert out.details[1]["frames"] == 2 and out.details[1]["frame_scores"][0] is None
    assert out.metrics["frames"] == 6.0 and out.metrics["calls"] == 1.0


def test_temporal_consistency_reward_and_registry() -> None:
    red, green = solid((255, 0, 0)), solid((0, 255, 0))
    reward = get_reward("temporal_consistency", metric="cosine")
    assert isinstance(reward, TemporalConsistencyReward)
    out = reward([Sample(image=red, frames=[red, red, green]), Sample(image=red), Sample(image=red, frames=[red])])
    assert out.scores == [0.5, None, None]
    with pytest.raises(ValueError, match="metric"):
        TemporalConsistencyReward(metric="psnr")
    wrapped = get_reward("frame_mean", reward={"name": f"{__name__}:Red"})
    assert isinstance(wrapped, FrameMeanReward) and isinstance(wrapped.reward, Red)
    assert wrapped([Sample(image=red, frames=[red, green])]).scores == [0.5]
