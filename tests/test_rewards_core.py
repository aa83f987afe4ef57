"""The core rewards: code extraction, format, execution, render similarity, TEDS, composite, TRL adapter.

Renders are real (the sandboxed renderers through one module-scoped RenderService, small dpi); the
service below only counts the sources it hands to its renderers.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from PIL import Image

from visalign.metrics import psnr, ssim
from visalign.renderers import Renderer
from visalign.rewards import (
    REWARDS,
    CompositeReward,
    ExecutionReward,
    FormatReward,
    RenderService,
    RenderSimilarityReward,
    Reward,
    RewardOutput,
    Sample,
    Table2LatexRLReward,
    TedsReward,
    TedsStructureReward,
    as_trl_reward,
    extract_code,
    find_code,
    get_reward,
    group_zscores,
    weighted_total,
)

pytestmark = pytest.mark.timeout(120)


def chart(heights: tuple[int, ...] = (3, 1, 2), color: str = "#1f77b4") -> str:
    labels = [chr(ord("a") + i) for i in range(len(heights))]
    return f"import matplotlib.pyplot as plt\nplt.bar({labels!r}, {list(heights)!r}, color={color!r})\n"


BROKEN_CHART = "import matplotlib.pyplot as plt\nplt.bar(['a', 'b'], [1, 2]\n"
BLANK_CHART = "import matplotlib.pyplot as plt\nplt.figure()\n"
SVG = '<svg xmlns="http://www.w3.org/2000/svg" width="48" height="48"><rect width="{w}" height="48" fill="#c00"/></svg>'
TABLE = r"\begin{tabular}{|c|c|} \hline Model & Score \\ \hline A & 1.0 \\ B & 2.0 \\ \hline \end{tabular}"


def fenced(code: str, label: str) -> str:
    return f"Here is the code.\n```{label}\n{code}\n```\nIt draws the figure."


class CountingService(RenderService):
    """A real RenderService that records every source its renderers are asked to render."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.sources: list[str] = []

    def renderer(self, kind: str) -> Renderer:
        r = super().renderer(kind)
        if not getattr(r, "_counted", False):
            real = r.render_batch

            def render_batch(sources, _real=real):
                self.sources.extend(sources)
                return _real(sources)

            r.render_batch = render_batch  # type: ignore[method-assign]
            r._counted = True  # type: ignore[attr-defined]
        return r


@pytest.fixture(scope="module")
def service() -> Iterator[CountingService]:
    svc = CountingService(timeout=20, workers=1, options={"matplotlib": {"dpi": 30}, "latex": {"dpi": 72}})
    yield svc
    svc.close()


# --------------------------------------------------------------------------------------------------
# extract_code

PY = "import matplotlib.pyplot as plt\nplt.plot([1, 2])"


@pytest.mark.parametrize(
    ("completion", "language", "expected"),
    [
        # think blocks go first: code drafted while thinking never counts
        (f"<think>\n```python\nimport draft\n```\n</think>\n```python\n{PY}\n```", "matplotlib", PY),
        (f"reasoning ```python\nimport draft\n``` </think>\n```python\n{PY}\n```", "matplotlib", PY),
        (f"```python\n{PY}\n```\n<think>more ```python\nimport later\n```", "matplotlib", PY),
        (f"<think>only thinking ```python\n{PY}\n```", "matplotlib", None),
        (f"<THINKING>x</THINKING>```py\n{PY}\n```", "python", PY),
        # several fences: the last one of the language wins
        (f"```python\nimport a\n```\nthen\n```python\n{PY}\n```", "matplotlib", PY),
        (f"```python\n{PY}\n```\n```text\noutput: ok\n```", "matplotlib", PY),
        (f"```python\n{PY}\n```\n```\nimport other\n```", "matplotlib", PY),  # labelled beats unlabelled
        (f"```latex\n{TABLE}\n```\n```python\n{PY}\n```", "latex", TABLE),
        # labels and aliases
        (f"``` Python \n{PY}\n```", "matplotlib", PY),
        (f"```tex\n{TABLE}\n```", "latex", TABLE),
        ("```xml\n<svg/>\n```", "svg", "<svg/>"),
        ("```html\n<p>hi</p>\n```", "html", "<p>hi</p>"),
        (f"````python\ns = '```'\n{PY}\n````", "matplotlib", f"s = '```'\n{PY}"),
        (f"```python\r\n{PY}\r\n```", "matplotlib", PY),
        (f"```python\n    {PY.replace(chr(10), chr(10) + '    ')}\n```", "matplotlib", PY),  # dedented
        (f"```python\n{PY}```", "matplotlib", PY),  # closing fence at the end of a code line
        # unlabelled fences count when they look like the language
        (f"```\n{PY}\n```", "matplotlib", PY),
        ("```\nThe chart shows sales.\n```", "matplotlib", None),
        (f"```\n{TABLE}\n```", "latex", TABLE),
        # an unclosed trailing fence runs to the end
        (f"Sure:\n```python\n{PY}", "matplotlib", PY),
        (f"```python\n{PY}\n```\n```python\nimport cut", "matplotlib", "import cut"),
        # wrong language
        (f"```latex\n{TABLE}\n```", "matplotlib", None),
        (f"```python\n{PY}\n```", "svg", None),
        (f"```latex\n{TABLE}\n```", None, TABLE),
        # bare code, no fences
        (f"Here is the code:\n{PY}", "matplotlib", PY),
        (f"The table:\n{TABLE}\nDone, as asked.", "latex", TABLE),
        ('Sure! <?xml version="1.0"?>\n<svg width="2"></svg> hope it helps', "svg",
         '<?xml version="1.0"?>\n<svg width="2"></svg>'),
        ("Page: <!DOCTYPE html><html><body>x</body></html> end", "html",
         "<!DOCTYPE html><html><body>x</body></html>"),
        (f"Prose first.\n{TABLE}", None, TABLE),
        ("I cannot draw this chart.", "matplotlib", None),
        ("I cannot draw this chart.", None, None),
        # empty
        ("", "matplotlib", None),
        (None, "matplotlib", None),
        ("   \n", None, None),
        ("```python\n\n```", "matplotlib", None),
    ],
)
def test_extract_code(completion: str | None, language: str | None, expected: str | None) -> None:
    assert extract_code(completion, language) == expected


def test_extract_code_first_block_and_how() -> None:
    two = "```python\nimport a\n```\n```python\nimport b\n```"
    assert extract_code(two, "matplotlib") == "import b"
    assert extract_code(two, "matplotlib", block="first") == "import a"
    assert find_code(two, "matplotlib").how == "fence"
    assert find_code(f"```\n{PY}\n```", "matplotlib").how == "unlabelled_fence"
    assert find_code(f"```python\n{PY}", "matplotlib").how == "unclosed_fence"
    assert find_code(PY, "matplotlib").how == "bare"
    assert find_code(f"```tex\n{TABLE}\n```").language == "latex"
    with pytest.raises(ValueError, match="unknown code language"):
        extract_code(PY, "cobol")
    with pytest.raises(ValueError, match="block"):
        extract_code(PY, block="middle")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# reasoning: one rule for code extraction and judge answers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>hmm</think>answer", "answer"),
        ("no reasoning at all", "no reasoning at all"),
        # R1-style: the chat template opened the block in the prompt, only the closing tag is generated
        ("I compare the bars</think>Score: 7/10", "Score: 7/10"),
        # reasoning that writes a closing tag while thinking about the format: everything before the
        # last closing tag is still reasoning (judge.py used to keep " then answer" here)
        ("<think>I must end with </think> then answer</think>Score: 7/10", "Score: 7/10"),
        # R1-style reasoning that mentions an opening tag: pairing that mention with the real closing
        # tag used to keep "R1 reasoning names the " as if it were the answer
        ("R1 reasoning names the <think> tag</think>answer", "answer"),
        # a stray closing tag after a complete block: judge.py used to keep "b" ("bc"), code.py "c"
        ("<think>a</think>b</think>c", "c"),
        # thinking again after a partial answer: only what follows the last block is the answer
        ("<think>one</think> A <think>two\nlines</think> B", " B"),
        # unclosed block (cut off by the length limit): nothing after it is an answer
        ("<think>cut off before the answer", ""),
        ("answer <think>second thoughts", "answer "),
        ("<think>a</think>answer<think>more", "answer"),
        # <thinking> and any case
        ("<THINKING>x</THINKING>answer", "answer"),
        ("<Think>x</THINK>answer", "answer"),
        ("x</thinking>answer<thinking>y", "answer"),
    ],
)
def test_strip_think(text: str, expected: str) -> None:
    from visalign.rewards.code import strip_think
    from visalign.rewards.judge import strip_reasoning

    assert strip_think(text) == expected
    # the judge's answer cleaner applies the same rule (then drops fences and outer whitespace)
    assert strip_reasoning(text) == expected.strip()


# --------------------------------------------------------------------------------------------------
# format


def test_format_reward() -> None:
    samples = [
        Sample(completion=fenced(PY, "python"), kind="matplotlib"),
        Sample(completion=fenced(TABLE, "latex"), kind="matplotlib"),
        Sample(completion=f"```python\n{PY}", kind="matplotlib"),
        Sample(completion=f"Here:\n{PY}", kind="matplotlib"),
        Sample(completion="", kind="matplotlib"),
        Sample(completion="No code, sorry.", kind="svg"),
        Sample(completion="```python\n```", kind="matplotlib"),
        Sample(code=PY, kind="matplotlib"),
        Sample(completion=fenced("<svg/>", "svg"), kind="svg"),
        Sample(completion=fenced(TABLE, "latex")),  # no kind: any block
    ]
    out = FormatReward()(samples)
    assert out.scores == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, None, 1.0, 1.0]
    reasons = [d.get("reason") for d in out.details]
    assert reasons[1] == "only blocks in other languages: latex"
    assert reasons[2] == "unclosed fence"
    assert reasons[3] == "bare code without a fence"
    assert reasons[4] == "empty completion"
    assert reasons[5] == "no code block"
    assert reasons[6] == "empty code block"
    assert reasons[7] == "no completion"
    assert out.details[0]["how"] == "fence"
    assert out.metrics["fail/unclosed fence"] == 1.0

    lenient = FormatReward(allow_unclosed=True, allow_bare=True)(samples[2:4])
    assert lenient.scores == [1.0, 1.0]
    forced = FormatReward("latex")([samples[0], samples[1]])
    assert forced.scores == [0.0, 1.0]


# --------------------------------------------------------------------------------------------------
# execution


@pytest.mark.slow
def test_execution_reward_across_renderers(service: CountingService) -> None:
    samples = [
        Sample(completion=fenced(chart(), "python"), kind="matplotlib"),
        Sample(completion=fenced(BROKEN_CHART, "python"), kind="matplotlib"),
        Sample(code=chart() + "1 / 0\n", kind="matplotlib"),
        Sample(code=BLANK_CHART, kind="matplotlib"),
        Sample(completion=fenced(SVG.format(w=20), "svg"), kind="svg"),
        Sample(completion=fenced('<svg xmlns="http://www.w3.org/2000/svg"', "svg"), kind="svg"),
        Sample(code='<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>', kind="svg"),
        Sample(completion=fenced(TABLE, "latex"), kind="latex"),
        Sample(completion=fenced(r"\begin{tabular}{c} \nosuchmacro \end{tabular}", "latex"), kind="latex"),
        Sample(completion="I would rather not.", kind="latex"),
        Sample(completion=fenced(PY, "python")),  # no kind: not applicable
        Sample(kind="matplotlib"),  # nothing to run
    ]
    out = ExecutionReward(service=service)(samples)
    assert out.scores == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, None, None]
    kinds = [d.get("error_kind") for d in out.details]
    assert kinds[:10] == [None, "syntax", "runtime", "blank", None, "syntax", "blank", None, "syntax", "no_code"]
    assert "ZeroDivisionError" in out.details[2]["error"]
    assert out.metrics == {"fail/syntax": 3.0, "fail/runtime": 1.0, "fail/blank": 2.0, "fail/no_code": 1.0}
    assert samples[0].code == chart().strip()  # the extracted code is kept for the other rewards

    blank_ok = ExecutionReward(service=service, blank_ok=True)(samples)
    assert blank_ok.scores[3] == 1.0 and blank_ok.scores[6] == 1.0 and blank_ok.scores[1] == 0.0


# --------------------------------------------------------------------------------------------------
# render similarity


@pytest.mark.slow
def test_render_similarity_ssim(service: CountingService) -> None:
    reward = RenderSimilarityReward(service=service)
    samples = [
        Sample(completion=fenced(chart(), "python"), reference_code=chart(), kind="matplotlib"),
        Sample(code=chart((3, 2, 2)), reference_code=chart(), kind="matplotlib"),
        Sample(code=chart(color="#ff7f0e"), reference_code=chart(), kind="matplotlib"),
        Sample(code=BROKEN_CHART, reference_code=chart(), kind="matplotlib"),
        Sample(completion="no code here", reference_code=chart(), kind="matplotlib"),
        Sample(code=chart(), kind="matplotlib"),  # no reference
        Sample(code=chart(), reference_code=BROKEN_CHART, kind="matplotlib"),  # reference fails
    ]
    out = reward(samples)
    assert out.scores[0] == 1.0
    assert 0.0 < out.scores[1] < 1.0 and 0.0 < out.scores[2] < 1.0
    assert out.scores[3:] == [0.0, 0.0, None, None]
    assert out.details[3]["error_kind"] == "syntax" and "never closed" in out.details[3]["error"]
    assert out.details[4]["error_kind"] == "no_code"
    assert out.details[5]["reason"] == "no reference"
    assert out.details[6]["reference_error_kind"] == "syntax"
    # the score is the metric itself on the two renders
    assert out.scores[1] == ssim(samples[1].rendered.image, samples[1].reference_rendered.image)
    assert out.details[1]["raw"] == out.scores[1] and out.details[1]["metric"] == "ssim"

    broken = RenderSimilarityReward(service=service, failure_score=-1.0)(
        [Sample(code=BROKEN_CHART, reference_code=chart(), kind="matplotlib")])
    assert broken.scores == [-1.0] and broken.details[0]["error_kind"] == "syntax"


@pytest.mark.slow
def test_reference_code_rendered_once(service: CountingService) -> None:
    ref = chart((5, 4, 3))
    samples = [Sample(code=chart((5, 4, h)), reference_code=ref, kind="matplotlib") for h in (1, 2, 1)]
    before = len(service.sources)
    reward = RenderSimilarityReward(service=service)
    first = reward(samples)
    rendered = [(s.rendered, s.reference_rendered) for s in samples]
    second = reward(samples)
    assert first.scores == second.scores and first.scores[0] == first.scores[2]
    assert [(s.rendered, s.reference_rendered) for s in samples] == rendered  # same objects, not re-rendered
    # two distinct programs and the reference the three samples share, each once, never again
    assert Counter(service.sources[before:]) == Counter([samples[0].code, samples[1].code, ref])
    assert samples[0].rendered is samples[2].rendered

    # with a reference image the reference code is not rendered at all
    image = samples[0].reference_rendered.image
    before = len(service.sources)
    s = Sample(code=chart((5, 4, 9)), reference_image=image, reference_code="never rendered", kind="matplotlib")
    assert reward([s]).scores[0] < 1.0
    assert service.sources[before:] == [s.code] and s.reference_rendered is None


@pytest.mark.slow
def test_render_similarity_metrics_and_options(service: CountingService) -> None:
    ref, other = chart(), chart((1, 3, 2))
    samples = [Sample(code=ref, reference_code=ref, kind="matplotlib"),
               Sample(code=other, reference_code=ref, kind="matplotlib")]
    p = RenderSimilarityReward("psnr", service=service)(samples)
    raw = psnr(samples[1].rendered.image, samples[1].reference_rendered.image)
    assert p.scores[0] == 1.0 and p.details[0]["raw"] == math.inf
    assert p.scores[1] == pytest.approx(min(raw, 50.0) / 50.0) and p.details[1]["raw"] == raw
    assert RenderSimilarityReward("psnr", service=service, psnr_max=raw / 2)(samples).scores[1] == 1.0  # clipped

    m = RenderSimilarityReward("mse", service=service)(samples)
    a = np.asarray(samples[1].rendered.image, dtype=np.float64)
    b = np.asarray(samples[1].reference_rendered.image, dtype=np.float64)
    assert m.scores[0] == 1.0
    assert m.scores[1] == pytest.approx(1.0 - math.sqrt(((a - b) ** 2).mean()) / 255.0)

    cw = RenderSimilarityReward("cw_ssim", service=service)(samples)
    assert cw.scores[0] == pytest.approx(1.0) and cw.scores[1] < 1.0
    ms = RenderSimilarityReward("ms_ssim", service=service)(samples)  # 192x144 at dpi 30: too small
    assert ms.scores == [None, None] and ms.details[0]["reason"] == "metric error"

    # a callable metric, a generated image given directly (text-to-image: nothing rendered)
    before = len(service.sources)
    img = samples[0].rendered.image
    custom = RenderSimilarityReward(lambda pred, ref: float(pred.size == ref.size), service=service)
    assert custom([Sample(image=img.resize((50, 40)), reference_image=img)]).scores == [0.0]
    assert len(service.sources) == before

    # size policies: resize (default) compares, "error" fails the sample, "pad" costs
    small = img.resize((img.width // 2, img.height // 2), Image.LANCZOS)
    s = Sample(image=small, reference_image=img)
    assert RenderSimilarityReward(service=service)([s]).scores[0] > 0.5
    err = RenderSimilarityReward(service=service, resize="error")([s])
    assert err.scores == [0.0] and err.details[0]["error_kind"] == "size_mismatch"
    assert RenderSimilarityReward(service=service, resize="pad")([s]).scores[0] < RenderSimilarityReward(
        service=service)([s]).scores[0]

    with pytest.raises(ValueError, match="TedsReward"):
        RenderSimilarityReward("teds")
    with pytest.raises(ValueError, match="unknown metric"):
        RenderSimilarityReward("lpips")


def test_render_similarity_svg_and_latex(service: CountingService) -> None:
    samples = [Sample(completion=fenced(SVG.format(w=24), "svg"), reference_code=SVG.format(w=24), kind="svg"),
               Sample(completion=fenced(SVG.format(w=30), "svg"), reference_code=SVG.format(w=24), kind="svg"),
               Sample(completion=fenced(TABLE, "latex"), reference_code=TABLE, kind="latex"),
               Sample(completion=fenced(TABLE.replace("2.0", "7.5"), "latex"), reference_code=TABLE, kind="latex")]
    out = RenderSimilarityReward(service=service)(samples)
    assert out.scores[0] == 1.0 and out.scores[2] == 1.0
    assert out.scores[1] < 1.0 and out.scores[3] < 1.0


# --------------------------------------------------------------------------------------------------
# TEDS


def test_teds_rewards() -> None:
    changed = TABLE.replace("2.0", "7.5")
    wider = TABLE.replace("{|c|c|}", "{|c|c|c|}").replace(r"Score \\", r"Score & Std \\")
    samples = [
        Sample(completion=fenced(TABLE, "latex"), reference_code=TABLE, kind="latex"),
        Sample(completion=fenced(changed, "latex"), reference_code=TABLE, kind="latex"),
        Sample(code=wider, reference_code=TABLE, kind="latex"),
        Sample(completion="I cannot read the table.", reference_code=TABLE, kind="latex"),
        Sample(completion=fenced(r"\textbf{no table}", "latex"), reference_code=TABLE, kind="latex"),
        Sample(completion=fenced(TABLE, "latex"), kind="latex"),  # no reference code
        Sample(code=chart(), reference_code=chart(), kind="matplotlib"),  # not a table
        Sample(code=TABLE, reference_code=TABLE),  # kind guessed from the reference
    ]
    full = TedsReward()(samples)
    structure = TedsStructureReward()(samples)
    assert full.scores[0] == 1.0 and 0.0 < full.scores[1] < 1.0 and full.scores[2] < 1.0
    assert full.scores[3:] == [0.0, 0.0, None, None, 1.0]
    assert structure.scores[:2] == [1.0, 1.0] and structure.scores[2] < 1.0
    assert structure.scores[3:] == [0.0, 0.0, None, None, 1.0]
    assert full.details[3]["reason"] == "no code" and full.details[4]["reason"] == "no table in the code"
    assert full.details[5]["reason"] == "no reference code"
    assert all(s.rendered is None for s in samples)  # code only: nothing rendered

    html_ref = "<html><body><div><table><tr><td>1</td><td>2</td></tr></table></div></body></html>"
    html = [Sample(completion=fenced(html_ref, "html"), reference_code=html_ref, kind="html"),
            Sample(completion=fenced(html_ref.replace("2", "3"), "html"), reference_code=html_ref, kind="html")]
    scores = TedsReward()(html).scores
    assert scores[0] == 1.0 and 0.0 < scores[1] < 1.0


def test_table2latex_rl(service: CountingService) -> None:
    reward = Table2LatexRLReward(service=service)
    samples = [Sample(completion=fenced(TABLE, "latex"), reference_code=TABLE, kind="latex"),
               Sample(code=r"\begin{tabular}{c}" + r"x \\" * 12 + r"\end{tabular}", reference_code=TABLE, kind="latex"),
               Sample(code=TABLE, kind="latex")]
    before = len(service.sources)
    out = reward(samples)
    assert out.scores == [1.0, 0.0, None]
    assert out.details[0]["teds_structure"] == 1.0 and out.details[0]["cw_ssim"] == pytest.approx(1.0)
    assert out.details[1]["teds_structure"] < 0.3 and "cw_ssim" not in out.details[1]
    assert len(service.sources) - before == 2  # only the sample that passed the gate and its reference


# --------------------------------------------------------------------------------------------------
# composite


class FixedReward(Reward):
    """Scores read from ``Sample.metadata[key]``: exact inputs for checking the aggregation by hand."""

    def __init__(self, key: str) -> None:
        self.name = key

    def score(self, samples: list[Sample]) -> RewardOutput:
        scores = [s.metadata.get(self.name) for s in samples]
        return RewardOutput(scores, [{"seen": v} for v in scores], {"calls": 1.0})


def zscore_by_hand(values: list[float], eps: float = 1e-4) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    return (v - v.mean()) / (v.std(ddof=1) + eps)


GROUPS = [0, 0, 0, 0, 1, 1, 1, None, None]
A = [1.0, 0.0, 0.5, 0.25, 0.9, 0.8, 0.1, 0.3, 0.6]
B = [0.2, 0.4, None, 0.8, 5.0, 7.0, 9.0, 1.0, 1.0]


def fixed_samples() -> list[Sample]:
    return [Sample(group=g, metadata={"a": a, "b": b}) for g, a, b in zip(GROUPS, A, B, strict=True)]


def test_composite_sum_weights_and_none() -> None:
    reward = CompositeReward({"a": FixedReward("a"), "b": FixedReward("b")}, weights={"a": 2.0, "b": 0.5})
    out = reward(fixed_samples())
    expected = [2.0 * a + 0.5 * b if b is not None else 2.0 * a * (2.5 / 2.0) for a, b in zip(A, B, strict=True)]
    assert out.scores == pytest.approx(expected)
    assert out.details[2] == {"a": {"score": 0.5, "details": {"seen": 0.5}},
                              "b": {"score": None, "details": {"seen": None}}}
    assert out.metrics["a/calls"] == 1.0 and out.metrics["a/mean"] == pytest.approx(np.mean(A))
    zero = CompositeReward([(FixedReward("a"), 2.0), (FixedReward("b"), 0.5)], missing="zero")(fixed_samples())
    assert zero.scores[2] == pytest.approx(1.0)

    # all weighted children None -> None; weight-0 children are logged, not counted
    s = [Sample(metadata={"a": None, "b": 3.0})]
    assert CompositeReward({"a": FixedReward("a"), "b": FixedReward("b")}, weights={"b": 0.0})(s).scores == [None]
    assert weighted_total([None, None], [1.0, 1.0]) is None
    assert weighted_total([0.5, None], [1.0, -1.0]) == pytest.approx(1.0)  # |w| total 2 over present |w| 1

    with pytest.raises(ValueError, match="named"):
        CompositeReward([FixedReward("a"), FixedReward("a")])
    with pytest.raises(ValueError, match="aggregation"):
        CompositeReward([FixedReward("a")], aggregation="mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown rewards"):
        CompositeReward({"a": FixedReward("a")}, weights={"c": 1.0})


def test_composite_normalize_then_sum_by_hand() -> None:
    wa, wb = 1.0, 3.0
    out = CompositeReward({"a": FixedReward("a"), "b": FixedReward("b")}, weights={"a": wa, "b": wb},
                          aggregation="normalize_then_sum")(fixed_samples())
    za, zb = np.zeros(len(A)), np.full(len(B), np.nan)
    for g in (0, 1, None):
        idx = [i for i, gi in enumerate(GROUPS) if gi == g]
        za[idx] = zscore_by_hand([A[i] for i in idx])
        present = [i for i in idx if B[i] is not None]
        zb[present] = zscore_by_hand([B[i] for i in present])
    expected = [wa * za[i] + wb * zb[i] if not np.isnan(zb[i]) else wa * za[i] * (wa + wb) / wa
                for i in range(len(A))]
    assert out.scores == pytest.approx(expected, abs=1e-12)
    assert [d["a"]["z"] for d in out.details] == pytest.approx(list(za), abs=1e-12)
    assert out.details[2]["b"]["z"] is None
    # the two samples without a group form one group: mean 0.45, unbiased std 0.3 / sqrt(2)
    assert out.details[7]["a"]["z"] == pytest.approx(-0.15 / (0.3 / math.sqrt(2) + 1e-4), abs=1e-12)


def test_composite_sum_then_normalize_by_hand() -> None:
    out = CompositeReward({"a": FixedReward("a"), "b": FixedReward("b")}, weights={"a": 1.0, "b": 0.5},
                          aggregation="sum_then_normalize")(fixed_samples())
    totals = [a + 0.5 * b if b is not None else a * 1.5 for a, b in zip(A, B, strict=True)]
    expected = np.zeros(len(A))
    for g in (0, 1, None):
        idx = [i for i, gi in enumerate(GROUPS) if gi == g]
        expected[idx] = zscore_by_hand([totals[i] for i in idx])
    assert out.scores == pytest.approx(list(expected), abs=1e-12)
    assert [d["weighted_sum"] for d in out.details] == pytest.approx(totals)
    assert group_zscores([1.0, 2.0], ["solo", "other"]) == [0.0, 0.0]


@pytest.mark.slow
def test_composite_renders_once(service: CountingService) -> None:
    ref = chart((2, 2, 1))
    samples = [Sample(completion=fenced(chart((2, 2, h)), "python"), reference_code=ref, kind="matplotlib",
                      group=0) for h in (1, 3, 4)]
    samples.append(Sample(completion=fenced(BROKEN_CHART, "python"), reference_code=ref, kind="matplotlib", group=0))
    similarity = RenderSimilarityReward()
    composite = CompositeReward(
        {"format": FormatReward(), "execution": ExecutionReward(), "ssim": similarity,
         "psnr": RenderSimilarityReward("psnr")},
        weights={"format": 0.1, "execution": 0.2, "ssim": 1.0, "psnr": 0.5}, service=service)
    assert all(getattr(r, "service", service) is service for r in composite.rewards)
    before = len(service.sources)
    out = composite(samples)
    sent = service.sources[before:]
    # each generated program once and the shared reference once: nothing twice
    assert Counter(sent) == Counter([*(s.code for s in samples), ref])
    assert out.scores[0] == pytest.approx(0.1 + 0.2 + 1.0 + 0.5)
    assert out.scores[3] == pytest.approx(0.1)  # broken: format only
    assert out.details[3]["execution"]["details"]["error_kind"] == "syntax"
    assert out.details[3]["ssim"]["score"] == 0.0
    assert out.metrics["execution/fail/syntax"] == 1.0 and "ssim/mean" in out.metrics
    # the children read the very renders the composite made
    assert similarity([samples[1]]).scores == [out.details[1]["ssim"]["score"]]
    assert len(service.sources) == before + len(sent)
    composite.close()  # a given service stays open
    assert "matplotlib" in service._renderers

    # a child that renders through its own service and cannot be bound is reported
    class Unbindable(Reward):
        name = "unbindable"
        needs_render = True

        def __init__(self) -> None:
            self.service = RenderService()

        def score(self, samples: list[Sample]) -> RewardOutput:
            return RewardOutput([None] * len(samples), [{} for _ in samples])

    with pytest.warns(UserWarning, match="own RenderService"):
        CompositeReward([Unbindable()], service=service)

    # a composite without a service owns one and closes it
    own = CompositeReward([ExecutionReward()])
    assert own.rewards[0].service is own.service  # type: ignore[attr-defined]
    own.close()


# --------------------------------------------------------------------------------------------------
# TRL adapter


def test_trl_adapter_string_completions() -> None:
    f = as_trl_reward(TedsReward(), kind="latex")
    assert f.__name__ == "teds"
    completions = [fenced(TABLE, "latex"), fenced(TABLE.replace("2.0", "3.0"), "latex"), "No table.", "x"]
    prompts = ["Write the LaTeX of this table."] * 4
    # exactly how GRPOTrainer calls a reward function: dataset columns as lists, plus its own arguments
    scores = f(prompts=prompts, completions=completions, completion_ids=[[1]] * 4,
               reference_code=[TABLE, TABLE, TABLE, None], source=["arxiv"] * 4, trainer_state=object())
    assert scores[0] == 1.0 and 0.0 < scores[1] < 1.0 and scores[2:] == [0.0, None]
    assert all(isinstance(s, float) for s in scores[:3])
    sample = f.samples(prompts, completions, reference_code=[TABLE] * 4, source=["arxiv"] * 4)[0]
    assert sample.prompt == prompts[0] and sample.metadata == {"source": "arxiv"} and sample.kind == "latex"
    assert f.last_output is not None and f.last_output.details[2]["reason"] == "no code"


def test_trl_adapter_without_a_renderer_kind_fails_loudly() -> None:
    """Issue 13.8: ``as_trl_reward(get_reward("render_similarity"))`` returned ``[None, None]`` (TRL reads
    not applicable) when neither ``kind=`` nor a ``kind`` column was given."""
    f = as_trl_reward(RenderSimilarityReward())
    with pytest.raises(ValueError, match=r"render_similarity: .*no renderer kind.*kind='matplotlib'"):
        f(prompts=["Draw it"] * 2, completions=["```python\nimport matplotlib\n```"] * 2, completion_ids=[[1]] * 2)


@pytest.mark.slow
def test_trl_adapter_chat_messages_and_images(service: CountingService) -> None:
    ref_a, ref_b = chart((1, 2, 3)), chart((3, 2, 1))
    refs = [Sample(code=ref_a, kind="matplotlib"), Sample(code=ref_b, kind="matplotlib")]
    service.render(refs)
    image_a, image_b = refs[0].rendered.image, refs[1].rendered.image
    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Write the code."}]}]
    completions = [[{"role": "assistant", "content": fenced(code, "python")}]
                   for code in (ref_a, ref_b, BROKEN_CHART, ref_b)]
    reward = CompositeReward({"execution": ExecutionReward(), "ssim": RenderSimilarityReward()}, service=service)
    f = as_trl_reward(reward, name="chart")
    # TRL decodes the row again for each generation: equal pixels, distinct objects
    kwargs = {"image": [image_a, image_a.copy(), image_b, image_b.copy()], "kind": ["matplotlib"] * 4,
              "images": [[image_a]] * 4, "split": ["train"] * 4}
    scores = f(prompts=[prompt] * 4, completions=completions, completion_ids=[[0]] * 4, trainer_state=None,
               **kwargs)
    assert f.__name__ == "chart"
    assert scores[0] == pytest.approx(2.0) and scores[3] == pytest.approx(2.0)
    assert scores[1] < 2.0 and scores[2] == 0.0
    samples = f.samples([prompt] * 4, completions, **kwargs)
    assert [s.group for s in samples] == [0, 0, 1, 1]  # same prompt, different target image
    embedded = [[{"role": "user", "content": [{"type": "image", "image": im}]}] for im in kwargs["image"]]
    assert [s.group for s in f.samples(embedded, completions)] == [0, 0, 1, 1]
    assert samples[0].prompt == "Write the code." and samples[0].completion.startswith("Here is the code.")
    assert samples[0].metadata == {"images": [image_a], "split": "train"}
    # an explicit group column wins; TRL's "images" column can carry the reference too
    g = as_trl_reward(RenderSimilarityReward(service=service), image_column="images", group_column="row")
    samples = g.samples([prompt] * 2, completions[:2], images=[[image_a], [image_b]], row=[7, 7],
                        kind=["matplotlib"] * 2)
    assert [s.group for s in samples] == [0, 0] and samples[1].reference_image is image_b
    assert g(prompts=[prompt] * 2, completions=completions[:2], images=[[image_a], [image_b]],
             kind=["matplotlib"] * 2) == [1.0, 1.0]


# --------------------------------------------------------------------------------------------------
# registry


def test_registry() -> None:
    core = {"format": FormatReward, "execution": ExecutionReward, "render_similarity": RenderSimilarityReward,
            "teds": TedsReward, "teds_structure": TedsStructureReward, "table2latex_rl": Table2LatexRLReward}
    for name, cls in core.items():
        assert name in REWARDS
        r = get_reward(name)
        assert type(r) is cls and r.name == name
        r.close()
    assert get_reward("render_similarity", metric="cw_ssim", failure_score=-1.0).failure_score == -1.0
    assert isinstance(get_reward("composite", rewards=[TedsReward()]), CompositeReward)
    with pytest.raises(ValueError, match="unknown reward"):
        get_reward("nope")


@pytest.mark.slow
@pytest.mark.parametrize("name, options, expected", [
    ("ocr", {"failed_score": -1.0}, -1.0),
    ("identity", {"no_face_score": -2.0}, -2.0),
    ("clip", {"failed_score": -3.0, "model": (torch.nn.Linear(1, 1), lambda image: torch.zeros(3, 8, 8), str.split)}, -3.0),
])
def test_image_rewards_score_an_answer_without_code_as_a_failure(name, options, expected):
    """A code-writing answer with no code must score the failure score, not None: None is left out of
    GRPO's advantages, so a policy could escape a failed render's penalty by writing no code."""
    from PIL import Image
    from skimage import data

    face = Image.fromarray(data.astronaut()).resize((256, 256))
    s = Sample(prompt='a sign that says "hello"', completion="Sorry, I cannot.", kind="svg", reference_image=face,
               metadata={"text": "hello"})
    out = get_reward(name, **options)([s])
    assert out.scores == [expected]
    assert "no svg code found" in str(out.details[0])
