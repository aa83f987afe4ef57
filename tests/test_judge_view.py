"""A judge trained on a view of its images (difference images from the reference) is asked through
``vlm_judge`` with the same view: ``judge.json`` records it, the ``trained_judge`` preset reads it, and
the requests carry the pixels the trainer's rows carried."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from visalign.rewards import Sample, get_reward
from visalign.rewards.judge import CallableJudgeBackend, JudgeRequest
from visalign.rewards.judge.presets import trained_judge_preset
from visalign.rewards.judge.prompts import difference_image, judge_instruction, judge_prompt
from visalign.trainers.judge import JudgeGRPOConfig, judge_rows, write_judge_file


def chart(dots: list[tuple[int, int]], size: int = 12) -> Image.Image:
    im = Image.new("RGB", (size, size), "white")
    for xy in dots:
        im.putpixel(xy, (200, 30, 30))
    return im


REF = chart([(1, 1), (5, 5), (9, 9)])
CLOSE = chart([(1, 1), (5, 5)])  # one dot missing
FAR = chart([(2, 8)])  # all three missing, one extra


class Recording(CallableJudgeBackend):
    def __init__(self, text: str = "<think>1</think><answer>1</answer>") -> None:
        super().__init__(lambda r: text)
        self.requests: list[JudgeRequest] = []

    def generate(self, requests):  # type: ignore[no-untyped-def]
        self.requests += list(requests)
        return super().generate(requests)


def trained_dir(tmp_path: Path, view: str, mode: str = "pairwise") -> tuple[Path, list[dict]]:
    """A model directory as the judge trainer leaves it, and the trainer's rows for one pair."""
    pair = {"id": "p0", "chosen": CLOSE, "rejected": FAR, "reference": REF, "prompt": "a chart"}
    rows = judge_rows([pair], mode=mode, seed=0, view=view)
    config = JudgeGRPOConfig(judge_mode=mode, view=view)
    d = tmp_path / f"judge-{view}-{mode}"
    d.mkdir()
    write_judge_file(d, config, rows)
    return d, rows


def pixels(images: list) -> list[bytes]:
    return [im.tobytes() for im in images]


def test_difference_image_by_hand() -> None:
    """Inverted |candidate - reference|: white where equal, 255 - |diff| per channel elsewhere; the mask
    is black on a 5 x 5 square around every changed pixel."""
    d = difference_image(CLOSE, REF)
    assert d.getpixel((9, 9)) == (255 - 55, 255 - 225, 255 - 225)  # a red dot (200, 30, 30) on white, gone
    assert d.getpixel((1, 1)) == d.getpixel((0, 11)) == (255, 255, 255)
    m = difference_image(CLOSE, REF, mask=True)
    assert m.getpixel((7, 7)) == m.getpixel((11, 11)) == (0, 0, 0)  # within 2 px of (9, 9)
    assert m.getpixel((6, 6)) == (255, 255, 255)


@pytest.mark.parametrize("view", ["diff", "ref-diff", "mask"])
def test_pairwise_view_requests_are_the_trainers_pixels(tmp_path: Path, view: str) -> None:
    d, rows = trained_dir(tmp_path, view)
    spec = json.loads((d / "judge.json").read_text())
    assert spec["view"] == view and spec["reference"] == (view == "ref-diff")
    assert spec["instruction"] == judge_instruction("pairwise", view == "ref-diff", view)
    backend = Recording()
    reward = get_reward("vlm_judge", backend=backend, preset="trained_judge", path=str(d), mode="pairwise",
                        swap=True)
    out = reward([Sample(image=CLOSE, reference_image=REF, group=0), Sample(image=FAR, reference_image=REF, group=0)])
    assert out.metrics["requests"] == 2 and len(backend.requests) == 2
    row = rows[0]
    asked_as_row = backend.requests[0] if row["label"] == "1" else backend.requests[1]
    assert pixels(asked_as_row.images) == pixels(row["images"])
    assert len(row["images"]) == (3 if view == "ref-diff" else 2)
    assert pixels(row["images"][-2:]) != pixels([CLOSE, FAR]) and pixels(row["images"][-2:]) != pixels([FAR, CLOSE])
    assert asked_as_row.parts[-1] == row["prompt"]


def test_pointwise_view_requests_are_the_trainers_pixels(tmp_path: Path) -> None:
    d, rows = trained_dir(tmp_path, "diff", mode="pointwise")
    backend = Recording("<think>x</think><answer>good</answer>")
    reward = get_reward("vlm_judge", backend=backend, preset="trained_judge", path=str(d))
    out = reward([Sample(image=CLOSE, reference_image=REF), Sample(image=FAR)])
    assert out.scores[0] == 1.0 and out.scores[1] is None and "'diff' view" in out.details[1]["reason"]  # no reference: not applicable
    (request,) = backend.requests
    row = next(r for r in rows if r["id"] == "p0-chosen")
    assert pixels(request.images) == pixels(row["images"]) == pixels([difference_image(CLOSE, REF)])


def test_judge_file_without_view_is_raw(tmp_path: Path) -> None:
    """A judge.json from before views were recorded: the raw images, as before."""
    d, _ = trained_dir(tmp_path, "raw")
    spec = json.loads((d / "judge.json").read_text())
    del spec["view"]
    (d / "judge.json").write_text(json.dumps(spec))
    assert trained_judge_preset(d, mode="pairwise").view == "raw"
    backend = Recording()
    reward = get_reward("vlm_judge", backend=backend, preset="trained_judge", path=str(d), mode="pairwise",
                        swap=False)
    reward([Sample(image=CLOSE, reference_image=REF, group=0), Sample(image=FAR, reference_image=REF, group=0)])
    assert pixels(backend.requests[0].images) == pixels([REF, CLOSE, FAR])


def test_view_errors() -> None:
    with pytest.raises(ValueError, match="view must be one of"):
        judge_prompt("x", [CLOSE], reference=REF, view="edges")
    with pytest.raises(ValueError, match="pass reference="):
        judge_prompt("x", [CLOSE], view="diff")
    with pytest.raises(ValueError, match="field 'reference' is missing"):
        judge_rows([{"id": "p", "chosen": CLOSE, "rejected": FAR, "reference": None}], view="diff")
    with pytest.raises(ValueError, match="view must be one of"):
        JudgeGRPOConfig(view="edges")
