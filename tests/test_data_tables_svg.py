"""Synthetic LaTeX tables and SVG drawings (rendered by the real sandboxed renderers)."""

from __future__ import annotations

import json
import random
import re
import shutil

import numpy as np
import pytest

from visalign.data import (
    RULE_STYLES,
    SVG_RENDER_OPTIONS,
    SVG_SHAPES,
    TABLE_RENDER_OPTIONS,
    load_rows,
    random_svg_code,
    random_table_code,
    render_svgs,
    render_tables,
    svg_corpus,
    svg_dataset,
    svg_whole_words,
    table_corpus,
    table_dataset,
    table_whole_words,
    write_jsonl,
)
from visalign.data.svgs import SVG_FOOTER, SVG_HEADER, svg_shapes
from visalign.data.tables import table_shape
from visalign.metrics.latex_table import latex_table_to_html
from visalign.metrics.teds import teds
from visalign.rewards.code import extract_code
from visalign.trainers.prompting import DEFAULT_INSTRUCTIONS

requires_latex = pytest.mark.skipif(shutil.which("pdflatex") is None or shutil.which("pdftoppm") is None,
                                    reason="pdflatex / pdftoppm not installed")

# ---------------------------------------------------------------- tables


def test_table_codes_are_seeded_unique_and_short() -> None:
    a = table_corpus(300, seed=0)
    assert a == table_corpus(300, seed=0)
    assert a != table_corpus(300, seed=1)
    assert len(set(a)) == 300
    assert all(c.startswith("\\begin{tabular}{") and c.endswith("\\end{tabular}") for c in a)
    assert max(len(c.splitlines()) for c in a) <= 11  # 4 rows, each with a rule, plus top and ends
    assert {table_shape(c) for c in a} == {f"{r}x{c}" for r in (2, 3, 4) for c in (2, 3, 4)}
    # every option appears across the corpus
    assert any("\\multicolumn{" in c for c in a) and any("\\toprule" in c for c in a)
    assert any("{|" in c for c in a) and any("\\hline" not in c and "rule" not in c for c in a)
    # the policy's answer is bare code: the rewards' extractor must give it back unchanged
    assert all(extract_code(c, "latex") == c for c in a[:50])


def test_table_options_are_honoured_and_checked() -> None:
    rng = random.Random(0)
    code = random_table_code(rng, rows=4, cols=2, header_prob=1.0, rule_style="booktabs", multicolumn_prob=1.0)
    lines = code.splitlines()
    assert lines[1] == "\\toprule" and lines[3] == "\\midrule" and lines[-2] == "\\bottomrule"
    assert lines[-3].startswith("\\multicolumn{2}{c}{") and table_shape(code) == "4x2"
    plain = random_table_code(rng, rows=2, cols=3, header_prob=0.0, rule_style="none", label_prob=0.0,
                              multicolumn_prob=0.0)
    assert all(cell.strip().isdigit() for line in plain.splitlines()[1:3] for cell in line[:-3].split("&"))
    with pytest.raises(ValueError, match="unknown rule_style 'double'"):
        random_table_code(rng, rule_style="double")
    with pytest.raises(ValueError, match=r"cols must be in \[2, 4\], got 9"):
        random_table_code(rng, cols=9)


def test_table_teds_of_itself_is_one_and_of_another_is_less() -> None:
    codes = table_corpus(40, seed=5, multicolumn_prob=0.5)
    for code in codes:
        html = latex_table_to_html(code)
        assert html.startswith("<table>") and teds(html, html) == 1.0
        # every source row is one HTML row: the converter reads the generated tables exactly
        assert html.count("<tr>") == int(table_shape(code).split("x")[0])
    assert any('colspan="' in latex_table_to_html(c) for c in codes)
    ref = latex_table_to_html(codes[0])
    assert all(teds(latex_table_to_html(c), ref) < 1.0 for c in codes[1:])
    # the rules do not change the table: only its cells count
    a = random_table_code(random.Random(7), rows=3, cols=3, rule_style="none")
    b = random_table_code(random.Random(7), rows=3, cols=3, rule_style="hline")
    assert a != b and teds(latex_table_to_html(a), latex_table_to_html(b)) == 1.0


@pytest.mark.slow
@requires_latex
def test_every_table_option_renders_with_the_real_latex_renderer() -> None:
    rng = random.Random(2)
    codes = [random_table_code(rng, rows=r, cols=c, header_prob=1.0, rule_style=s, multicolumn_prob=1.0)
             for s, (r, c) in zip(RULE_STYLES, [(2, 2), (3, 4), (4, 3), (4, 4)], strict=True)]
    codes += table_corpus(4, seed=9)
    results = render_tables(codes, workers=2)
    assert [r.error for r in results if not r.ok] == []
    assert TABLE_RENDER_OPTIONS == {"dpi": 120}
    for res in results:
        w, h = res.image.size
        assert 40 <= w <= 320 and 25 <= h <= 160, (w, h)
        assert np.asarray(res.image.convert("L")).min() < 100  # black ink on white


@pytest.mark.slow
@requires_latex
def test_table_dataset_rows_load_and_held_out_set_is_disjoint(tmp_path) -> None:
    rows = table_dataset(4, seed=3, workers=2)
    assert len({r["code"] for r in rows}) == 4
    assert all(r["kind"] == "latex" and r["prompt"] == DEFAULT_INSTRUCTIONS["latex"] for r in rows)
    assert all(r["image"].mode == "RGB" and r["table_shape"] == table_shape(r["code"]) for r in rows)
    assert [r["code"] for r in rows] == table_corpus(4, seed=3)  # render=True draws what the corpus draws
    back = load_rows(write_jsonl(rows, tmp_path / "tables.jsonl"))
    for a, b in zip(rows, back, strict=True):
        assert b["code"] == a["code"] and b["kind"] == "latex" and b["table_shape"] == a["table_shape"]
        assert np.array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
    assert json.loads((tmp_path / "tables.jsonl").read_text().splitlines()[0])["kind"] == "latex"

    train = {r["code"] for r in table_dataset(400, seed=0, render=False)}
    held = table_dataset(200, seed=1, render=False, exclude=train)
    assert len(held) == 200 and not train & {r["code"] for r in held}
    assert all(r["image"] is None for r in held)
    assert load_rows(held)[0]["kind"] == "latex"


def test_table_whole_words_cover_the_syntax() -> None:
    words = table_whole_words()
    assert len(words) == len(set(words))
    assert {"\\begin{tabular}{", "\\end{tabular}", " \\\\", " & ", "\\hline", "0", "99"} <= set(words)


# ---------------------------------------------------------------- svg


def test_svg_codes_are_seeded_unique_and_inside_the_canvas() -> None:
    a = svg_corpus(300, seed=0)
    assert a == svg_corpus(300, seed=0)
    assert a != svg_corpus(300, seed=1)
    assert len(set(a)) == 300
    assert all(c.startswith(SVG_HEADER + "\n") and c.endswith("\n" + SVG_FOOTER) for c in a)
    counts = {len(svg_shapes(c)) for c in a}
    assert counts == {1, 2, 3, 4}
    assert {s for c in a for s in svg_shapes(c)} == set(SVG_SHAPES)
    for code in a:
        body = code.splitlines()[1:-1]
        assert len(body) == len(svg_shapes(code))
        colours = [re.search(r' (?:fill|stroke)="([a-z]+)"', line).group(1) for line in body]
        assert len(set(colours)) == len(body)  # one distinct colour per shape
        numbers = [int(v) for line in body for v in re.findall(r"\d+", line)]
        assert all(0 <= v <= 96 for v in numbers)
        kinds = svg_shapes(code)
        assert kinds == sorted(kinds, key=lambda k: k == "line")  # lines are drawn last
    assert all(extract_code(c, "svg") == c for c in a[:50])


def test_svg_options_are_honoured_and_checked() -> None:
    rng = random.Random(0)
    code = random_svg_code(rng, n_shapes=3, shapes=("circle",))
    assert svg_shapes(code) == ["circle"] * 3
    with pytest.raises(ValueError, match="unknown shape 'star'"):
        random_svg_code(rng, shapes=("star",))
    with pytest.raises(ValueError, match=r"n_shapes must be in \[1, 4\], got 0"):
        random_svg_code(rng, n_shapes=0)


def test_every_svg_shape_renders_with_the_real_svg_renderer() -> None:
    rng = random.Random(4)
    codes = [random_svg_code(rng, n_shapes=1, shapes=(s,)) for s in SVG_SHAPES]
    codes += [random_svg_code(rng, n_shapes=4) for _ in range(3)]
    results = render_svgs(codes, workers=2)
    assert [r.error for r in results if not r.ok] == []
    assert SVG_RENDER_OPTIONS == {"width": 96, "height": 96}
    assert {r.image.size for r in results} == {(96, 96)}
    for res in results:
        arr = np.asarray(res.image.convert("RGB"))
        assert arr.min() < 200 and (arr == 255).all(axis=2).mean() > 0.2  # something drawn on white


def test_svg_dataset_rows_load_and_held_out_set_is_disjoint(tmp_path) -> None:
    rows = svg_dataset(4, seed=3, workers=2)
    assert [r["code"] for r in rows] == svg_corpus(4, seed=3)
    assert all(r["kind"] == "svg" and r["prompt"] == DEFAULT_INSTRUCTIONS["svg"] for r in rows)
    assert all(r["image"].mode == "RGB" and r["image"].size == (96, 96) for r in rows)
    assert all(r["shapes"] == ",".join(svg_shapes(r["code"])) for r in rows)
    back = load_rows(write_jsonl(rows, tmp_path / "svgs.jsonl"))
    for a, b in zip(rows, back, strict=True):
        assert b["code"] == a["code"] and b["kind"] == "svg" and b["shapes"] == a["shapes"]
        assert np.array_equal(np.asarray(a["image"]), np.asarray(b["image"]))

    train = {r["code"] for r in svg_dataset(400, seed=0, render=False)}
    held = svg_dataset(200, seed=1, render=False, exclude=train)
    assert len(held) == 200 and not train & {r["code"] for r in held}
    assert load_rows(held)[0]["kind"] == "svg"


def test_svg_whole_words_cover_the_syntax() -> None:
    words = svg_whole_words()
    assert len(words) == len(set(words)) and SVG_HEADER in words and '"red"' in words
