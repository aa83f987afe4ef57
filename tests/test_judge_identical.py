"""Pairwise ``vlm_judge``: a pair of byte-identical images is a tie without a request."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from PIL import Image

from visalign.rewards import Sample
from visalign.rewards.judge import CallableJudgeBackend, JudgeRequest, VlmJudgeReward
from visalign.trainers.judge import write_judge_file


def grey(level: int) -> Image.Image:
    im = Image.new("RGB", (8, 8), (level, level, level))
    im.putpixel((0, 0), (0, 0, 0))
    return im


class Counting(CallableJudgeBackend):
    def __init__(self) -> None:  # always "Image 1": a pure position bias
        super().__init__(lambda r: "<think>1</think><answer>1</answer>")
        self.requests: list[JudgeRequest] = []

    def generate(self, requests):  # type: ignore[no-untyped-def]
        self.requests += list(requests)
        return super().generate(requests)


def reward(tmp_path: Path, **options: object) -> VlmJudgeReward:
    config = SimpleNamespace(judge_mode="pairwise", instruction=None, system_prompt=None)
    write_judge_file(tmp_path, config, [{"images": [None, None]}])  # type: ignore[arg-type]
    return VlmJudgeReward(Counting(), preset="trained_judge", path=tmp_path, mode="pairwise", **options)


def test_identical_renders_are_a_tie_without_a_request(tmp_path: Path) -> None:
    """Samples 0 and 1 rendered the same pixels (distinct objects), sample 2 differs: of the 3 pairs only
    the 2 with sample 2 are asked (x2 orders); the always-"1" judge ties those by swap, the identical pair
    is a tie without a request, so every score is 0.5."""
    r = reward(tmp_path, swap=True)
    out = r([Sample(prompt="p", image=grey(100), group=0), Sample(prompt="p", image=grey(100), group=0),
             Sample(prompt="p", image=grey(200), group=0)])
    assert out.metrics["pairs"] == 3 and out.metrics["identical_pairs"] == 1
    assert out.metrics["requests"] == 4 == len(r.backend.requests)
    for request in r.backend.requests:
        a, b = request.images
        assert a.tobytes() != b.tobytes()
    assert out.scores == [0.5, 0.5, 0.5]
    same = next(c for c in out.details[0]["comparisons"] if c["vs"] == 1)
    assert same == {"vs": 1, "result": 0.5, "votes": [0.5], "identical": True}


def test_a_group_of_identical_renders_asks_nothing(tmp_path: Path) -> None:
    r = reward(tmp_path, swap=False)
    out = r([Sample(prompt="p", image=grey(7), group=0) for _ in range(3)])
    assert r.backend.requests == [] and out.metrics["requests"] == 0 and out.metrics["identical_pairs"] == 3
    assert out.scores == [0.5, 0.5, 0.5] and out.details[0]["ties"] == 2


def test_anchor_reference_identical_to_the_reference(tmp_path: Path) -> None:
    """A sample that reproduced its reference exactly ties with it without a request; one that did not is
    asked (the always-"1" judge, one order: the sample shown first wins)."""
    r = reward(tmp_path, pairs="anchor", anchor="reference", swap=False)
    ref = grey(50)
    out = r([Sample(prompt="p", image=grey(50), reference_image=ref, group=0),
             Sample(prompt="p", image=grey(90), reference_image=ref, group=0)])
    assert len(r.backend.requests) == 1 and out.metrics["identical_pairs"] == 1
    assert out.scores == [0.5, 1.0]
