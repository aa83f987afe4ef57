"""Pairwise judging in vlm_judge (issue 12, section 3: a trained pairwise judge plugs into vlm_judge).

A fake judge (a :class:`CallableJudgeBackend`) answers deterministically by comparing something it can see,
the images' brightness, so every expected score below is derived by hand from the brightness order.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image, ImageStat

from visalign.renderers.base import RenderResult
from visalign.rewards import Sample, get_reward
from visalign.rewards.judge import (
    CallableJudgeBackend,
    Judgement,
    JudgePreset,
    JudgeRequest,
    VlmJudgeReward,
    bradley_terry,
    parse_verdict,
    plan_pairs,
    trained_judge_preset,
    win_rates,
)
from visalign.rewards.judge.pairwise import combine_votes
from visalign.rewards.judge.prompts import judge_instruction
from visalign.trainers.judge import judge_rows, write_judge_file


def grey(level: int, size: int = 16) -> Image.Image:
    """A grey image of brightness ``level`` with a black dot (not one flat colour)."""
    im = Image.new("RGB", (size, size), (level, level, level))
    im.putpixel((0, 0), (0, 0, 0))
    return im


def brightness(im: Image.Image) -> float:
    return sum(ImageStat.Stat(im.convert("L")).mean)


def answer(verdict: str) -> str:
    return f"<think>compared the two images</think><answer>{verdict}</answer>"


def brighter_wins(request: JudgeRequest) -> str:
    """A judge that prefers the brighter of the two candidates (the last two images shown)."""
    first, second = request.images[-2:]
    return answer("1" if brightness(first) > brightness(second) else "2")


class Counting(CallableJudgeBackend):
    """A fake judge that also records every request it was sent."""

    def __init__(self, fn: Any) -> None:
        super().__init__(fn)
        self.requests: list[JudgeRequest] = []

    def generate(self, requests: Any) -> Any:
        self.requests += list(requests)
        return super().generate(requests)


def judge_dir(tmp_path: Path, mode: str = "pairwise", reference: bool = False, system: str | None = None) -> Path:
    """A model directory holding the ``judge.json`` the judge trainer writes (its own writer)."""
    config = SimpleNamespace(judge_mode=mode, instruction=None, system_prompt=system)
    n_images = (2 if mode == "pairwise" else 1) + reference
    d = tmp_path / f"judge-{mode}-{reference}"
    d.mkdir(exist_ok=True)
    write_judge_file(d, config, [{"images": [None] * n_images}])  # type: ignore[arg-type]
    return d


def pairwise(tmp_path: Path, fn: Any = brighter_wins, reference: bool = False, **options: Any) -> VlmJudgeReward:
    return VlmJudgeReward(Counting(fn), preset="trained_judge", path=judge_dir(tmp_path, reference=reference),
                          mode="pairwise", **options)


def group(levels: list[int], g: int = 0, prompt: str = "a grey square", **extra: Any) -> list[Sample]:
    return [Sample(prompt=prompt, image=grey(v), group=g, **extra) for v in levels]


# ------------------------------------------------------------------------------------------ scores
def test_win_rate_follows_the_judges_order_within_each_group(tmp_path: Path) -> None:
    """All pairs, both orders: a sample of brightness rank r (0 = darkest) among n wins r of its n - 1
    comparisons, so its score is r / (n - 1); groups are never compared with each other."""
    levels_a = [50, 200, 120, 10, 250]
    levels_b = [90, 30, 60]
    reward = pairwise(tmp_path)
    samples = group(levels_a, g=0) + group(levels_b, g=1)
    out = reward(samples)
    rank = {v: r for r, v in enumerate(sorted(levels_a))} | {v: r for r, v in enumerate(sorted(levels_b))}
    expected = [rank[v] / 4 for v in levels_a] + [rank[v] / 2 for v in levels_b]
    assert out.scores == expected
    assert out.metrics["pairs"] == 5 * 4 / 2 + 3 * 2 / 2
    assert out.metrics["requests"] == 2 * (10 + 3) == len(reward.backend.requests)
    assert out.metrics["swap_disagreements"] == 0 and out.metrics["no_decision"] == 0
    assert out.metrics["picked_first_mean"] == 0.5  # both orders of every pair: Image 1 wins half
    d = out.details[4]  # the brightest of group 0
    assert (d["wins"], d["ties"], d["losses"], d["undecided"]) == (4, 0, 0, 0)
    assert sorted(c["vs"] for c in d["comparisons"]) == [0, 1, 2, 3]
    assert all(c["votes"] == [1.0, 1.0] for c in d["comparisons"])
    group_of = {id(s.image): s.group for s in samples}
    for request in reward.backend.requests:  # never a sample of group 0 against one of group 1
        assert len({group_of[id(im)] for im in request.images}) == 1


def test_bradley_terry_scoring_keeps_the_order(tmp_path: Path) -> None:
    levels = [50, 200, 120, 10, 250]
    out = pairwise(tmp_path, scoring="bradley_terry")(group(levels))
    order = sorted(range(5), key=lambda i: out.scores[i])
    assert order == sorted(range(5), key=lambda i: levels[i])
    assert all(0.0 < s < 1.0 for s in out.scores)


# ----------------------------------------------------------------------------------- position bias
def test_pure_position_bias_is_all_ties_with_swap(tmp_path: Path) -> None:
    """A judge that always answers "1" says nothing about the samples: asked both ways, every pair's
    two orders disagree, every pair is a tie, every sample scores 0.5."""
    samples = group([50, 200, 120, 10])
    out = pairwise(tmp_path, lambda r: answer("1"))(samples)
    assert out.scores == [0.5] * 4
    assert out.metrics["swap_disagreements"] == out.metrics["pairs"] == 6
    assert out.metrics["picked_first_mean"] == 1.0
    assert all(d["ties"] == 3 and d["wins"] == d["losses"] == 0 for d in out.details)
    # without swap the same judge hands the whole score to whoever is shown first
    unswapped = pairwise(tmp_path, lambda r: answer("1"), swap=False)(group([50, 200, 120, 10]))
    assert unswapped.scores == [1.0, 2 / 3, 1 / 3, 0.0] and unswapped.metrics["requests"] == 6


def test_a_consistent_judge_is_position_free(tmp_path: Path) -> None:
    """Swapping the order never changes a consistent judge's scores."""
    levels = [50, 200, 120, 10]
    swapped = pairwise(tmp_path)(group(levels)).scores
    once = pairwise(tmp_path, swap=False)(group(levels)).scores
    assert swapped == once == [1 / 3, 1.0, 2 / 3, 0.0]


# ----------------------------------------------------------------------------------------- garbage
GARBAGE = {
    "no_answer_block": lambda: "I think the first one is better",
    "empty_answer": lambda: "<think>hmm</think><answer> </answer>",
    "not_a_choice": lambda: "<think>hmm</think><answer>3</answer>",
    "several_choices": lambda: "<think>hmm</think><answer>1 or 2</answer>",
    "request_failed": lambda: (_ for _ in ()).throw(RuntimeError("the judge server hung up")),
}
CURSED = 77  # the brightness that makes the judge answer garbage (one kind per group)


def test_garbage_answers_are_typed_no_decisions(tmp_path: Path) -> None:
    """Five groups, each [cursed, 200, 100]: the two pairs with the cursed sample get garbage of one
    kind in both orders (4 answers per group); the batch goes on, the other pair is decided."""
    kinds = list(GARBAGE)

    def judge(request: JudgeRequest) -> str:
        if any(abs(brightness(im) - CURSED) < 1 for im in request.images):
            return GARBAGE[kinds[int(re.search(r"task #(\d)", request.text).group(1))]]()
        return brighter_wins(request)

    samples = [s for g in range(5) for s in group([CURSED, 200, 100], g=g, prompt=f"task #{g}")]
    out = pairwise(tmp_path, judge)(samples)
    for g in range(5):
        assert out.scores[3 * g: 3 * g + 3] == [0.5, 1.0, 0.0]  # cursed: no decided comparison
        cursed = out.details[3 * g]
        assert cursed["undecided"] == 2 and "no comparison decided" in cursed["reason"]
        assert all(c["no_decision"] == [kinds[g]] * 2 for c in cursed["comparisons"])
    for kind in kinds:
        assert out.metrics[f"no_decision/{kind}"] == 4
    assert out.metrics["no_decision"] == 20 and out.metrics["undecided_pairs"] == 10
    assert out.metrics["parse_failures"] == 16 and out.metrics["request_failures"] == 4
    assert out.metrics["requests"] == 30


def test_one_unreadable_order_leaves_the_other_vote() -> None:
    assert combine_votes([1.0, None]) == 1.0 and combine_votes([None, 0.0]) == 0.0
    assert combine_votes([1.0, 0.0]) == 0.5 and combine_votes([None, None]) is None


def test_verdict_reasons_are_typed() -> None:
    cases = {"<think>a</think><answer>2</answer>": None, None: "no_answer", "image 1": "no_answer_block",
             "<answer></answer>": "empty_answer", "<answer>3</answer>": "not_a_choice",
             "<answer>1 or 2</answer>": "several_choices"}
    for text, reason in cases.items():
        v = parse_verdict(text, ["1", "2"])
        assert v.reason == reason and (v.error is None) == (reason is None)


# ------------------------------------------------------------------------------------------ budget
@pytest.mark.parametrize(("pairs", "n", "expected_pairs"), [
    ("all", 6, 6 * 5 // 2),        # every pair
    ("anchor", 6, 6 - 1),          # the first candidate against each other
    (1, 6, 6 * 1),                 # n k pairs when n > 2 k
    (2, 6, 6 * 2),
    (3, 6, 6 * 5 // 2),            # n <= 2 k: every pair
    (2, 4, 4 * 3 // 2),
])
@pytest.mark.parametrize("swap", [True, False])
def test_request_budget(tmp_path: Path, pairs: str | int, n: int, expected_pairs: int, swap: bool) -> None:
    reward = pairwise(tmp_path, pairs=pairs, swap=swap)
    out = reward(group(random.Random(n).sample(range(20, 240), n)))
    assert len(reward.backend.requests) == expected_pairs * (2 if swap else 1) == out.metrics["requests"]
    assert out.metrics["pairs"] == expected_pairs
    assert all(s is not None and 0.0 <= s <= 1.0 for s in out.scores)


def test_anchor_first_scores(tmp_path: Path) -> None:
    """pairs='anchor': the first candidate meets every other; each other meets only the anchor."""
    out = pairwise(tmp_path, pairs="anchor")(group([120, 200, 50, 10]))
    assert out.scores == [2 / 3, 1.0, 0.0, 0.0]
    assert [len(d["comparisons"]) for d in out.details] == [3, 1, 1, 1]


def test_anchor_reference(tmp_path: Path) -> None:
    """pairs='anchor', anchor='reference': each sample against its reference image (n pairs), so a
    sample alone in its group is still scored."""
    ref = grey(128)
    samples = group([200, 50, 128], reference_image=ref) + [Sample(prompt="x", image=grey(250), reference_image=ref)]
    reward = pairwise(tmp_path, pairs="anchor", anchor="reference")
    out = reward(samples)
    assert out.scores == [1.0, 0.0, 0.5, 1.0]  # brighter / darker than the reference; identical to it: a tie
    assert len(reward.backend.requests) == 3 * 2  # the sample identical to its reference is not asked
    assert out.metrics["identical_pairs"] == 1
    assert out.details[0]["comparisons"][0]["vs"] == "reference"
    no_ref = reward([Sample(prompt="x", image=grey(200), group=0)])
    assert no_ref.scores == [None] and "no reference image" in no_ref.details[0]["reason"]
    with pytest.raises(ValueError, match="already shows the reference"):
        pairwise(tmp_path, reference=True, pairs="anchor", anchor="reference")


# ------------------------------------------------------------------------------- groups and no output
def test_group_of_one_and_samples_without_a_group(tmp_path: Path) -> None:
    reward = pairwise(tmp_path)
    out = reward([Sample(prompt="x", image=grey(100), group=3), Sample(prompt="x", image=grey(200)),
                  Sample(prompt="x", image=grey(50))])
    assert out.scores == [None, None, None] and reward.backend.requests == []
    assert all(d["judged"] is False and "alone in its group" in d["reason"] for d in out.details)
    assert out.metrics["requests"] == 0 and out.metrics["pairs"] == 0


def test_no_output_samples_lose_without_a_request(tmp_path: Path) -> None:
    """A failed render or a completion without code is never shown to the judge; it scores 0.0 and
    every judged sample of its group beats it for free, so rendering something always pays."""
    failed = Sample(prompt="x", code="<svg", kind="svg", group=0, rendered=RenderResult.failure("syntax", "bad"))
    samples = group([100, 200, 50]) + [failed, Sample(prompt="x", group=0)]
    reward = pairwise(tmp_path)
    out = reward(samples)
    # judged: 3 pairs among them (brightness ranks 1, 2, 0 of 2) plus 2 free wins each, over 4 comparisons
    assert out.scores == [(1 + 2) / 4, (2 + 2) / 4, (0 + 2) / 4, 0.0, 0.0]
    assert out.metrics["requests"] == 3 * 2 and out.metrics["skipped"] == 2
    assert "render failed" in out.details[3]["reason"] and out.details[0]["free_wins"] == 2
    lone = reward([Sample(prompt="x", image=grey(100), group=1), Sample(prompt="x", group=1)])
    assert lone.scores == [1.0, 0.0] and len(reward.backend.requests) == 6  # no new request


def test_missing_prompt_is_not_applicable(tmp_path: Path) -> None:
    """The reference-free pairwise instruction names the task: a sample without a prompt is None."""
    out = pairwise(tmp_path)([Sample(image=grey(100), group=0), Sample(prompt="x", image=grey(200), group=0)])
    assert out.scores[0] is None and out.details[0]["reason"] == "no prompt"


# ------------------------------------------------------------------------------- prompt = trainer's
@pytest.mark.parametrize("reference", [False, True])
def test_requests_are_the_trainers_prompts(tmp_path: Path, reference: bool) -> None:
    """The request for a pair is exactly the judge trainer's row for that pair: the same images in
    the same order (reference first), then the same instruction text, and the same system turn."""
    ref, a, b = grey(128), grey(200), grey(50)
    d = judge_dir(tmp_path, reference=reference, system="You are a careful judge.")
    backend = Counting(brighter_wins)
    reward = VlmJudgeReward(backend, preset="trained_judge", path=d, mode="pairwise")
    reward([Sample(prompt="a grey square", image=a, reference_image=ref, group=0),
            Sample(prompt="a grey square", image=b, reference_image=ref, group=0)])
    rows = judge_rows([{"id": "p", "chosen": a, "rejected": b, "reference": ref if reference else None,
                        "prompt": "a grey square"}], mode="pairwise", reference="auto")
    row = rows[0]
    first, second = backend.requests
    asked_as_row = first if row["label"] == "1" else second  # the row's order: chosen first when label 1
    assert [p for p in asked_as_row.parts if isinstance(p, Image.Image)] == row["images"]
    assert asked_as_row.parts == [*row["images"], row["prompt"]]
    assert asked_as_row.system == "You are a careful judge."
    assert row["prompt"] == judge_instruction("pairwise", reference).replace("{prompt}", "a grey square")
    assert len(first.images) == 2 + reference


# ------------------------------------------------------------------------------------------- API
def test_get_reward_and_option_errors(tmp_path: Path) -> None:
    d = judge_dir(tmp_path)
    backend = CallableJudgeBackend(brighter_wins)
    reward = get_reward("vlm_judge", backend=backend, preset="trained_judge", path=str(d), mode="pairwise",
                        pairs=2, swap=False)
    assert isinstance(reward, VlmJudgeReward) and reward.mode == "pairwise" and reward.pairs == 2
    assert reward.preset.parse_failure_score == 0.5 and reward.failure_score == 0.5
    with pytest.raises(ValueError, match="ask for mode='pairwise'"):  # a pairwise judge asked pointwise
        VlmJudgeReward(backend, preset="trained_judge", path=d)
    with pytest.raises(ValueError, match="ask for mode='pointwise'"):
        VlmJudgeReward(backend, preset="trained_judge", path=judge_dir(tmp_path, "pointwise"), mode="pairwise")
    with pytest.raises(ValueError, match="one sample at a time"):
        VlmJudgeReward(backend, preset="visual_erm", mode="pairwise")
    with pytest.raises(ValueError, match="pairs, swap: pairwise options"):
        VlmJudgeReward(backend, preset="visual_erm", pairs="anchor", swap=False)
    with pytest.raises(ValueError, match="pass path="):
        VlmJudgeReward(backend, preset="trained_judge", mode="pairwise")
    with pytest.raises(ValueError, match="or path="):
        VlmJudgeReward(preset="visual_erm")
    for bad in ({"pairs": 0}, {"pairs": "some"}, {"pairs": True}, {"anchor": "last", "pairs": "anchor"},
                {"anchor": "reference"}, {"scoring": "elo"}):
        with pytest.raises(ValueError):
            VlmJudgeReward(backend, preset="trained_judge", path=d, mode="pairwise", **bad)
    with pytest.raises(ValueError, match="is pairwise"):  # a pairwise preset cannot prepare one sample
        trained_judge_preset(d, mode="pairwise").prepare(Sample(prompt="x", image=grey(9)))


def test_pointwise_trained_judge_unchanged(tmp_path: Path) -> None:
    d = judge_dir(tmp_path, "pointwise", reference=True)
    reward = VlmJudgeReward(CallableJudgeBackend(lambda r: answer("Good")), preset="trained_judge", path=d)
    out = reward([Sample(image=grey(10), reference_image=grey(20)), Sample(image=grey(10))])
    assert out.scores == [1.0, None] and reward.mode == "pointwise"


# ----------------------------------------------------------------------------- pure functions
def test_plan_pairs_counts() -> None:
    for n in range(0, 9):
        members = list(range(100, 100 + n))
        assert len(plan_pairs(members, "all")) == n * (n - 1) // 2
        assert len(plan_pairs(members, "anchor")) == max(0, n - 1)
        for k in (1, 2, 3):
            pairs = plan_pairs(members, k)
            assert len(pairs) == (n * k if n > 2 * k else n * (n - 1) // 2)
            assert len({frozenset(p) for p in pairs}) == len(pairs) and all(a != b for a, b in pairs)
            if n > 2 * k:  # balanced: every candidate meets 2 k others
                assert all(sum(m in p for p in pairs) == 2 * k for m in members)


def test_bradley_terry_is_the_maximum_likelihood() -> None:
    """At the fit, each player's expected score equals its observed score (the likelihood's
    stationarity), prior games included: sum_j n_ij p_i / (p_i + p_j) + prior p_i / (p_i + 1) =
    W_i + prior / 2."""
    rng = random.Random(0)
    outcomes = [(a, b, rng.choice([0.0, 0.5, 1.0, 1.0])) for a, b in itertools.combinations(range(5), 2)
                for _ in range(rng.randint(1, 3))]
    prior = 1.0
    s = bradley_terry(outcomes, prior=prior, tol=1e-13)
    p = {x: v / (1 - v) for x, v in s.items()}
    for x in p:
        expected, observed = prior * p[x] / (p[x] + 1), prior / 2
        for a, b, r in outcomes:
            if x in (a, b):
                y = b if x == a else a
                expected += p[x] / (p[x] + p[y])
                observed += r if x == a else 1 - r
        assert expected == pytest.approx(observed, abs=1e-8)
    # two players, one win: by symmetry p_b = 1 / p_a, so the scores sum to 1
    two = bradley_terry([("a", "b", 1.0)])
    assert two["a"] + two["b"] == pytest.approx(1.0) and two["a"] > 0.5
    # the win rate is the plain share
    assert win_rates([("a", "b", 1.0), ("b", "c", 0.5)]) == {"a": 1.0, "b": 0.25, "c": 0.5}
    assert all(math.isfinite(v) for v in bradley_terry([("a", "b", 1.0)] * 50).values())


# -------------------------------------------------------------------------- end to end, tiny judge
@pytest.mark.slow
def test_trained_pairwise_judge_end_to_end(tmp_path: Path) -> None:
    """One GRPO step of a tiny pairwise judge (random weights), its saved model loaded by path through
    get_reward: the local backend sees the trainer's two-image prompts, the tiny judge's answers (mostly
    garbage) become typed no-decisions, and every score is defined."""
    from visalign.models.tiny_vlm import build_tiny_vlm
    from visalign.trainers.config import load_config
    from visalign.trainers.judge import JudgeGRPOConfig, JudgeGRPOTrainer

    corpus = [judge_instruction("pairwise", False), "<think>image 2</think><answer>2</answer>"]
    model, processor = build_tiny_vlm("qwen2_vl", corpus * 3)
    base = tmp_path / "base"
    model.save_pretrained(base)
    processor.save_pretrained(base)
    pairs = [{"id": f"p{i}", "chosen": grey(200 - i), "rejected": grey(40 + i), "reference": None,
              "prompt": "a bright square"} for i in range(4)]
    cfg = load_config(JudgeGRPOConfig, {
        "model": str(base), "judge_mode": "pairwise", "num_generations": 2, "prompts_per_step": 2,
        "generation_batch_size": 2, "max_completion_length": 6, "max_steps": 1, "learning_rate": 1e-3,
        "per_device_train_batch_size": 4, "output_dir": str(tmp_path / "run"), "progress": False,
        "log_with": "none", "render_workers": 1, "max_prompt_length": 1024, "num_threads": 1})
    trainer = JudgeGRPOTrainer(cfg, train_rows=judge_rows(pairs, mode="pairwise"))
    try:
        trainer.train()
    finally:
        trainer.close()
    model_dir = tmp_path / "run" / (tmp_path / "run" / "final.txt").read_text().strip()
    assert json.loads((model_dir / "judge.json").read_text())["judge_mode"] == "pairwise"

    reward = get_reward("vlm_judge", preset="trained_judge", path=str(model_dir), mode="pairwise",
                        backend_options={"max_new_tokens": 6, "batch_size": 4, "device": "cpu"})
    seen: list[int] = []
    original = reward.backend._generate_batch

    def spy(batch: list[JudgeRequest]) -> Any:
        seen.extend(len(r.images) for r in batch)
        return original(batch)

    reward.backend._generate_batch = spy
    try:
        out = reward(group([200, 120, 40], prompt="a bright square") + [Sample(prompt="a bright square", group=0)])
    finally:
        reward.close()
    assert seen == [2] * 6  # 3 judged candidates: 3 pairs, both orders, Image 1 and Image 2 each time
    assert out.metrics["requests"] == 6 and out.scores[3] == 0.0
    assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in out.scores)
    decided = out.metrics["requests"] - out.metrics["no_decision"]
    assert out.metrics["parse_failures"] + out.metrics["request_failures"] == out.metrics["no_decision"]
    assert decided >= 0 and out.metrics["request_failures"] == 0


def test_custom_pairwise_preset_with_labels(tmp_path: Path) -> None:
    """Any JudgePreset(mode='pairwise') works, e.g. a served judge with labelled images; roles are checked."""
    def parse(text: str) -> Judgement:
        v = parse_verdict(text, ["A", "B"])
        return Judgement(0.5, True, reason=v.reason) if v.answer is None else Judgement(float(v.answer == "a"))

    preset = JudgePreset(name="ab", instruction="Which is closer to the reference? <answer>A|B</answer>",
                         images=("reference", "first", "second"), parse=parse, parse_failure_score=0.5,
                         mode="pairwise")
    ref, a, b = grey(128), grey(200), grey(50)
    request = preset.request(Sample(reference_image=ref), a, b)
    assert request.parts == ["Reference image:", ref, "Image 1:", a, "Image 2:", b, preset.instruction]
    backend = Counting(lambda r: answer("A" if brightness(r.images[1]) < brightness(r.images[2]) else "B"))
    out = VlmJudgeReward(backend, preset=preset)(group([200, 50, 140], reference_image=ref))
    assert out.scores == [0.0, 1.0, 0.5]  # the darker wins here
    with pytest.raises(ValueError, match="a pairwise preset shows first and second"):
        JudgePreset(name="x", instruction="", images=("generated",), parse=parse, parse_failure_score=0.0,
                    mode="pairwise")
    with pytest.raises(ValueError, match="a pointwise preset shows generated"):
        JudgePreset(name="x", instruction="", images=("first", "second"), parse=parse, parse_failure_score=0.0)
