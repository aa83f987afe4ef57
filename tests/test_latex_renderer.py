"""The LaTeX renderer against the real pdflatex + pdftoppm, in the real sandbox (no mocks)."""

from __future__ import annotations

import os
import shutil
import time
import uuid

import numpy as np
import pytest

from visalign.renderers import get_renderer
from visalign.renderers.latex import (
    TEX_HINT,
    LatexRenderer,
    classify_source,
    lingering_tex_processes,
    prepare,
)

pytestmark = pytest.mark.skipif(shutil.which("pdflatex") is None or shutil.which("pdftoppm") is None,
                                reason=f"pdflatex/pdftoppm missing: {TEX_HINT} poppler-utils")

TABLE = r"""\begin{tabular}{llccc}
\toprule
\multirow{2}{*}{Model} & \multirow{2}{*}{Params} & \multicolumn{3}{c}{Accuracy (\%)} \\
\cmidrule(lr){3-5}
 & & ChartQA & DocVQA & \makecell{Text\\VQA} \\
\midrule
\multirow{2}{*}{Qwen2.5-VL} & 3B & 84.0 & 93.9 & 79.3 \\
 & 7B & 87.3 & 95.7 & 84.9 \\
\bottomrule
\end{tabular}"""

FORMULA = r"\int_0^1 \frac{\ln(1+x)}{1+x^2}\,dx = \frac{\pi}{8}\ln 2"

ARTICLE = r"""\documentclass{article}
\usepackage{booktabs}
\begin{document}
\section{Results}
Our model wins: $a^2 + b^2 = c^2$.
\end{document}
"""

BROKEN = "\\begin{tabular}{lr}\n\\toprule\na & 1 \\\\\n\\midrul\nb & 2 \\\\\n\\bottomrule\n\\end{tabular}"


@pytest.fixture(scope="module")
def renderer():
    with get_renderer("latex", timeout=10.0, dpi=200, workers=2) as r:
        yield r


def _arr(image):
    return np.asarray(image.convert("L")).astype(int)


def _our_tex_processes(r: LatexRenderer) -> list[int]:
    """TeX processes of this test process: its descendants, and anything running as ``r``'s worker uids."""
    return lingering_tex_processes(r.uids)


def test_kinds_are_detected():
    assert classify_source(TABLE) == "table"
    assert classify_source(FORMULA) == "formula"
    assert classify_source(r"\[ x^2 \]") == "formula"
    assert classify_source(r"\begin{align*} a &= b \end{align*}") == "formula"
    assert classify_source(ARTICLE) == "document"
    assert classify_source("Some text with $x$ in it.") == "text"
    assert classify_source("% \\documentclass{article}\nx^2") == "formula"


def test_table_renders_cropped_tight(renderer):
    res = renderer.render(TABLE)
    assert res.ok, res.error
    w, h = res.image.size
    assert w > h
    assert h < 600 and w < 1600, "a letter page was rendered instead of the table"
    arr = _arr(res.image)
    # The padding around the ink is white ...
    for border in (arr[0], arr[-1], arr[:, 0], arr[:, -1]):
        assert (border > 245).mean() > 0.95
    # ... but the image is not mostly empty: the crop is tight.
    ink_rows = (arr < 200).any(axis=1)
    ink_cols = (arr < 200).any(axis=0)
    assert ink_rows.mean() > 0.6 and ink_cols.mean() > 0.8
    assert (arr < 128).mean() > 0.02


def test_formula_renders(renderer):
    res = renderer.render(FORMULA)
    assert res.ok, res.error
    w, h = res.image.size
    assert 150 < w < 1500 and 40 < h < 300
    assert renderer.render(f"$${FORMULA}$$").ok


def test_article_document_renders_cropped(renderer):
    res = renderer.render(ARTICLE)
    assert res.ok, res.error
    w, h = res.image.size
    # An A4/letter page at 200 dpi is ~1700x2300: the crop keeps only the heading and one line.
    assert w < 1000 and h < 400


def test_dpi_doubles_the_size(renderer):
    with LatexRenderer(timeout=10.0, dpi=100, workers=1) as low:
        small = low.render(TABLE)
    big = renderer.render(TABLE)
    assert small.ok and big.ok
    for a, b in zip(small.image.size, big.image.size, strict=True):
        assert 1.8 < b / a < 2.2


def test_broken_latex_is_syntax_with_message(renderer):
    res = renderer.render(BROKEN)
    assert not res.ok and res.error_kind == "syntax"
    assert res.image is None
    assert "Undefined control sequence" in res.error
    assert "line 4" in res.error and "\\midrul" in res.error


@pytest.mark.slow
def test_infinite_macro_loop_times_out():
    with LatexRenderer(timeout=3.0, workers=1) as r:
        r.ensure_format()  # the once-per-machine format build is not part of the sample's time
        t0 = time.perf_counter()
        res = r.render(r"\def\a{\a}\a")
        elapsed = time.perf_counter() - t0
        assert res.error_kind == "timeout", res.error
        # not before the timeout; and cut off (the macro loops for ever): the upper bound is generous because
        # a loaded machine can take seconds to kill the TeX process group
        assert 3.0 <= elapsed < 3.0 + 25.0
    assert not _our_tex_processes(r)


def test_reading_etc_passwd_is_a_sandbox_failure(renderer):
    res = renderer.render(r"\input{/etc/passwd}")
    assert res.error_kind == "sandbox", res.error
    assert res.image is None
    assert "root:" not in res.error


def test_write18_is_a_sandbox_failure_and_runs_nothing(renderer):
    target = f"/tmp/pwned_by_latex_{uuid.uuid4().hex}"
    for src in (rf"\immediate\write18{{touch {target}}}x",
                "\\documentclass{article}\\begin{document}\\write18{touch " + target + "}x\\end{document}"):
        res = renderer.render(src)
        assert res.error_kind == "sandbox", res.error
        assert "touch" in res.error
        assert not os.path.exists(target)


def test_secret_in_home_is_unreachable(renderer, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    secret = home / "secret.tex"
    secret.write_text("TOPSECRET-b7f1 the launch codes\n")
    for src in (rf"\input{{{secret}}}", rf"\begin{{tabular}}{{c}}\input{{{secret}}}\end{{tabular}}",
                "\\documentclass{article}\\begin{document}\\input{" + str(secret) + "}\\end{document}"):
        res = renderer.render(src)
        assert not res.ok and res.image is None
        assert res.error_kind == "sandbox", res.error
        assert "TOPSECRET" not in (res.error or "")


def test_writing_outside_the_job_is_refused(renderer):
    target = f"/tmp/latex_out_{uuid.uuid4().hex}"
    res = renderer.render(rf"\immediate\openout1={target}.tex \immediate\write1{{x}}x")
    assert res.error_kind == "sandbox", res.error
    assert not os.path.exists(target + ".tex")


def test_empty_document_and_empty_source(renderer):
    res = renderer.render(r"\documentclass{article}\begin{document}\end{document}")
    assert res.error_kind in ("no_output", "blank")
    assert renderer.render("   \n").error_kind == "no_output"
    invisible = renderer.render(r"\documentclass{article}\begin{document}\phantom{x}\end{document}")
    assert invisible.error_kind == "blank"


def test_capacity_exceeded_is_memory(renderer):
    res = renderer.render(r"\def\a{x\a}\a")
    assert res.error_kind == "memory", res.error


def test_page_over_max_pixels_is_memory():
    with LatexRenderer(timeout=10.0, workers=1, max_pixels=1_000_000) as r:
        res = r.render(ARTICLE)
    assert res.error_kind == "memory" and "max_pixels" in res.error


def test_batch_keeps_order_and_recovers(renderer):
    sources = [r"\def\a{x\a}\a", TABLE, BROKEN, r"\input{/etc/passwd}", FORMULA, "", ARTICLE,
               r"\immediate\write18{true}x", TABLE]
    results = renderer.render_batch(sources)
    kinds = [r.error_kind for r in results]
    assert kinds == ["memory", None, "syntax", "sandbox", None, "no_output", None, "sandbox", None]
    assert results[1].image.size == results[8].image.size


def test_non_string_source_fails_cleanly(renderer):
    res = renderer.render_batch([None, TABLE])  # type: ignore[list-item]
    assert res[0].error_kind == "syntax" and res[1].ok


def test_usepackage_in_body_and_table_float(renderer):
    res = renderer.render("\\usepackage[dvipsnames]{xcolor}\n"
                          r"\begin{tabular}{c}\textcolor{ForestGreen}{green}\end{tabular}")
    assert res.ok, res.error
    res = renderer.render(r"\begin{table}[h]\centering\caption{Scores}" + TABLE + r"\end{table}")
    assert res.ok, res.error
    assert res.image.size[0] < 1600


def test_background_colours_the_paper():
    with LatexRenderer(timeout=10.0, workers=1, background="#ffee00") as r:
        res = r.render(FORMULA)
    assert res.ok
    assert res.image.getpixel((0, 0)) == (255, 238, 0)


def test_missing_pdflatex_is_internal_with_install_hint(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with LatexRenderer(timeout=5.0, workers=1) as r:
        res = r.render(TABLE)
        info = r.info()
    assert res.error_kind == "internal"
    assert "apt-get install texlive-latex-base texlive-latex-recommended texlive-latex-extra" in res.error
    assert info["versions"]["pdflatex"] == "missing"


def test_info(renderer):
    info = renderer.info()
    assert info["backend"] == "pdflatex + pdftoppm"
    assert info["versions"]["pdflatex"].startswith("pdfTeX")
    assert "pdftoppm" in info["versions"]["pdftoppm"]
    assert info["dpi"] == 200
    # the flag reports the format state: in use exactly when ensure_format found or built one
    path = renderer.ensure_format()
    info = renderer.info()
    assert info["preamble_format"] is (path is not None) and info["preamble_format"] is (
        info["preamble_format_state"] == "in use"), info["preamble_format_state"]
    assert info["sandbox"]


def test_plain_compile_without_format_matches():
    with LatexRenderer(timeout=10.0, workers=1, precompile=False) as r:
        res = r.render(TABLE)
        assert r.info()["preamble_format"] is False
    assert res.ok and res.image.size[0] > res.image.size[1]


def test_line_numbers_point_into_the_source():
    p = prepare(BROKEN)
    assert p.tex.split("\n")[p.offset + 3] == "\\midrul"


def test_close_leaves_no_process():
    r = LatexRenderer(timeout=2.0, workers=2)
    r.render_batch([TABLE, FORMULA, r"\def\a{\a}\a"])
    r.close()
    r.close()  # twice is fine
    assert not _our_tex_processes(r)
    assert r.render(TABLE).error_kind == "internal"


def test_format_is_built_lazily_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with LatexRenderer(timeout=10.0, workers=1) as r:
        assert not (tmp_path / "cache").exists()  # nothing is built before the first render
        res = r.render(TABLE)
        info = r.info()
    assert res.ok, res.error
    assert info["preamble_format"] is True, info["preamble_format_state"]
    built = list((tmp_path / "cache" / "visalign" / "latex").glob("visalign-*.fmt"))
    assert len(built) == 1 and built[0].stat().st_mode & 0o777 == 0o644
