"""Preference pairs from renders: determinism, label direction, the perturbations, rendering, the
loader's formats and its error messages."""

from __future__ import annotations

import base64
import io
import json
import random
import shutil
from pathlib import Path

import pytest
from PIL import Image

from visalign.data.loaders import DataError
from visalign.data.pairs import (
    MAX_SEVERITY,
    PERTURBATIONS,
    _chart_code,
    _chart_spec,
    _doc_content,
    _visible_text,
    chart_pair_specs,
    doc_html,
    html_pair_specs,
    ladders_from_pairs,
    load_pairs,
    pair_dataset,
    perturb_chart,
    perturb_svg,
    perturb_table,
    svg_pair_specs,
    table_pair_specs,
    write_pairs,
)

SPECS = {"chart": chart_pair_specs, "table": table_pair_specs, "svg": svg_pair_specs, "html": html_pair_specs}


@pytest.mark.parametrize("task", sorted(SPECS))
def test_specs_are_seeded_and_labels_point_the_right_way(task: str) -> None:
    make = SPECS[task]
    a, b, c = make(3, seed=1), make(3, seed=1), make(3, seed=2)
    assert a == b and a != c
    assert len(a) == 12 and len({p["id"] for p in a}) == 12
    for p in a:
        assert p["perturbation"] in PERTURBATIONS[task]
        assert 0 <= p["chosen_severity"] < p["rejected_severity"] <= MAX_SEVERITY
        assert p["margin"] == pytest.approx((p["rejected_severity"] - p["chosen_severity"]) / MAX_SEVERITY, abs=1e-4)
        assert p["chosen_code"] != p["rejected_code"]
        if p["chosen_severity"] == 0 and task != "html":
            assert p["chosen_code"] == p["reference_code"]  # severity 0 is the reference itself
    # every kind appears for every reference (kinds balanced), and pairs of one reference share its ladder
    for group in range(3):
        kinds = {p["perturbation"] for p in a if p["group"] == group}
        assert len(kinds) == min(4, len(PERTURBATIONS[task]))
    full = make(1, seed=0, pairs_per_reference=None)
    assert len(full) == 6 * len(PERTURBATIONS[task])  # all C(4, 2) pairs of every ladder
    rung: dict = {}
    for p in full:
        for sev, code in ((p["chosen_severity"], p["chosen_code"]), (p["rejected_severity"], p["rejected_code"])):
            assert rung.setdefault((p["perturbation"], sev), code) == code


def test_chart_perturbations_are_graded() -> None:
    spec = {"type": "bar", "values": [2, 4, 6, 8, 5], "colour": "red", "title": "Cost"}
    rng = random.Random(0)
    changed = [sum(a != b for a, b in zip(spec["values"], perturb_chart(spec, "values", s, rng)["values"],
                                          strict=True)) for s in (1, 2, 3)]
    assert changed == [1, 3, 5]
    assert perturb_chart(spec, "values", 0, rng) == spec
    assert len(perturb_chart(spec, "missing", 2, rng)["values"]) == 3
    assert perturb_chart(spec, "missing", 3, rng)["values"] == []
    assert perturb_chart(spec, "missing", 1, rng)["title"] is None
    assert perturb_chart(spec, "layout", 3, rng)["type"] == "line"
    assert "alpha=0.55" in _chart_code(perturb_chart(spec, "colour", 1, rng))
    assert _chart_code(spec) == ("import matplotlib.pyplot as plt\nplt.bar(range(5), [2, 4, 6, 8, 5], color='red')\n"
                                 "plt.title('Cost')")
    with pytest.raises(ValueError, match="severity"):
        perturb_chart(spec, "values", 4, rng)
    with pytest.raises(ValueError, match="unknown chart perturbation"):
        perturb_chart(spec, "size", 1, rng)
    assert _chart_spec(random.Random(5)) == _chart_spec(random.Random(5))


def test_table_svg_and_document_perturbations() -> None:
    code = "\\begin{tabular}{lcr}\nName & Year & Size \\\\\ncat & 12 & 34 \\\\\ndog & 56 & 78 \\\\\n\\end{tabular}"
    rng = random.Random(0)
    assert perturb_table(code, "missing", 1, rng).count(" \\\\") == 2
    two_cols = perturb_table(code, "missing", 2, rng)
    assert two_cols.startswith("\\begin{tabular}{lc}") and "Size" not in two_cols
    assert perturb_table(code, "layout", 2, rng).startswith("\\begin{tabular}{|r|l|c|}")
    v1 = perturb_table(code, "values", 1, rng)
    assert sum(a != b for a, b in zip(code.split(), v1.split(), strict=True)) == 1
    assert perturb_table(code, "values", 3, rng).split()[6:] != code.split()[6:]

    svg = ('<svg xmlns="http://www.w3.org/2000/svg" width="96" height="96" viewBox="0 0 96 96">\n'
           '<rect x="10" y="10" width="30" height="30" fill="red"/>\n<circle cx="60" cy="60" r="10" fill="blue"/>\n'
           '</svg>')
    moved = perturb_svg(svg, "values", 2, rng)
    assert 'x="10"' not in moved and 'cx="60"' not in moved
    assert perturb_svg(svg, "colour", 3, rng).count('fill="red"') == 0
    assert perturb_svg(svg, "missing", 1, rng).count("<") == 3

    content = _doc_content(random.Random(3))
    good = doc_html(content)
    for kind in PERTURBATIONS["html"]:
        pages = [doc_html(content, kind, s, random.Random(0)) for s in (1, 2, 3)]
        assert len({good, *pages}) == 4, kind  # every severity differs from the others
        # identical text (the table flattened to a line keeps its words)
        assert all(_visible_text(p) == _visible_text(good) for p in pages), kind
    with pytest.raises(ValueError, match="unknown document perturbation"):
        doc_html(content, "colours", 1)


def test_rendered_pairs_write_and_load_back(tmp_path: Path) -> None:
    rows = pair_dataset("svg", 8, seed=0, pairs_per_reference=24, workers=1)
    assert len(rows) == 8 and all(r["chosen"].size == (96, 96) for r in rows)
    assert all(r["chosen"].tobytes() != r["rejected"].tobytes() for r in rows)
    assert all(r["reference"].tobytes() == r["chosen"].tobytes() for r in rows if r["chosen_severity"] == 0)
    path = write_pairs(rows, tmp_path / "p.jsonl")
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines[0]["chosen"].startswith("p_images/") and lines[0]["margin"] == rows[0]["margin"]
    files = list((tmp_path / "p_images").iterdir())
    assert len(files) < 3 * len(rows)  # a reference shared by several pairs is written once
    back = load_pairs(path)
    for a, b in zip(rows, back, strict=True):
        assert a["chosen"].tobytes() == b["chosen"].tobytes() and a["reference"].tobytes() == b["reference"].tobytes()
        assert (b["perturbation"], b["margin"], b["chosen_severity"]) == (a["perturbation"], a["margin"],
                                                                          a["chosen_severity"])
    ladders = ladders_from_pairs(back)  # one reference, all 12 pairs of 3 kinds -> ... 8 rows cover what they cover
    assert all(len(lad["images"]) == MAX_SEVERITY + 1 for lad in ladders)
    # the file moves with its images: paths are relative
    shutil.move(str(tmp_path), str(tmp_path.parent / "moved"))
    assert len(load_pairs(tmp_path.parent / "moved" / "p.jsonl")) == 8


def test_cli_data_pairs(tmp_path: Path) -> None:
    from visalign.cli import main

    assert main(["data", "pairs", "svg", "4", str(tmp_path / "s.jsonl"), "--seed", "3", "--workers", "1"]) == 0
    rows = load_pairs(tmp_path / "s.jsonl")
    assert len(rows) == 4 and {r["task"] for r in rows} == {"svg"}
    assert main(["data", "pairs", "svg", "0", str(tmp_path / "z.jsonl")]) == 2


@pytest.mark.slow
def test_html_document_pairs_render() -> None:
    if shutil.which("chromium") is None and shutil.which("chromium-browser") is None:
        pytest.skip("no Chromium")
    rows = pair_dataset("html", 2, seed=0, workers=1)
    assert len(rows) == 2 and rows[0]["reference"] is None and rows[0]["chosen"].size == (240, 320)
    assert rows[0]["chosen"].tobytes() != rows[0]["rejected"].tobytes()


# ---------------------------------------------------------------------------------------- loader formats

def _png(colour: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), colour).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.slow
def test_load_pairs_formats(tmp_path: Path) -> None:
    white, black = _png("white"), _png("black")
    # chosen / rejected columns with base64 strings and a data: URL, in a list
    rows = load_pairs([{"chosen": base64.b64encode(white).decode(), "prompt": "p",
                        "rejected": "data:image/png;base64," + base64.b64encode(black).decode()}])
    assert rows[0]["chosen"].getpixel((0, 0)) == (255, 255, 255) and rows[0]["margin"] == 0.0
    assert rows[0]["reference"] is None and rows[0]["perturbation"] == "unknown"
    # Pick-a-Pic: image_0 / image_1 + label_0 (1: first preferred, 0: second, 0.5: tie -> skipped)
    pap = [{"jpg_0": white, "jpg_1": black, "label_0": 0, "caption": "a night"},
           {"jpg_0": white, "jpg_1": black, "label_0": 1, "caption": "a day"},
           {"jpg_0": white, "jpg_1": black, "label_0": 0.5, "caption": "tie"}]
    got = load_pairs(pap)
    assert [r["chosen"].getpixel((0, 0)) for r in got] == [(0, 0, 0), (255, 255, 255)]
    assert [r["prompt"] for r in got] == ["a night", "a day"] and len(load_pairs(pap, keep_ties=True)) == 3
    # HPDv2: image_path list + human_preference (train) or rank (test: 1 is best, every pair of ranks)
    Image.new("RGB", (4, 4), "red").save(tmp_path / "r.png")
    Image.new("RGB", (4, 4), "blue").save(tmp_path / "b.png")
    Image.new("RGB", (4, 4), "green").save(tmp_path / "g.png")
    hpd = tmp_path / "hpd.jsonl"
    hpd.write_text(json.dumps({"prompt": "p", "image_path": ["r.png", "b.png"], "human_preference": [0, 1]}) + "\n"
                   + json.dumps({"prompt": "q", "image_path": ["r.png", "b.png", "g.png"], "rank": [2, 1, 3]}) + "\n")
    got = load_pairs(hpd)
    colours = [(r["chosen"].getpixel((0, 0)), r["rejected"].getpixel((0, 0))) for r in got]
    red, blue, green = (255, 0, 0), (0, 0, 255), (0, 128, 0)
    assert colours == [(blue, red), (red, green), (blue, red), (blue, green)]
    assert len(load_pairs(hpd, limit=2)) == 2
    hpd.write_text(json.dumps({"image_path": ["r.png", "b.png"], "human_preference": [1, 1]}) + "\n")
    with pytest.raises(DataError, match=r"hpd\.jsonl:1: field 'human_preference' must mark one"):
        load_pairs(hpd)
    # parquet with HF-datasets-style image structs
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist([{"chosen": {"bytes": white, "path": None}, "rejected": {"bytes": black, "path": None},
                                   "margin": 0.5, "perturbation": "colour"}])
    pq.write_table(table, tmp_path / "p.parquet")
    pr = load_pairs(tmp_path / "p.parquet")
    assert pr[0]["margin"] == 0.5 and pr[0]["perturbation"] == "colour"
    # a datasets object and a save_to_disk directory (DatasetDict: the split is picked)
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list([{"chosen": white, "rejected": black, "prompt": "x"}])
    assert load_pairs(ds)[0]["rejected"].getpixel((0, 0)) == (0, 0, 0)
    datasets.DatasetDict({"test": ds}).save_to_disk(str(tmp_path / "dd"))
    assert load_pairs(tmp_path / "dd", split="test")[0]["prompt"] == "x"
    with pytest.raises(DataError, match="no split 'train'"):
        load_pairs(tmp_path / "dd")


def test_load_pairs_errors_name_file_line_and_field(tmp_path: Path) -> None:
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    path = tmp_path / "bad.jsonl"
    path.write_text('{"chosen": "a.png", "rejected": "a.png"}\n\n{"chosen": "a.png"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:3: field 'rejected' is missing"):
        load_pairs(path)
    path.write_text('{"chosen": "a.png", "rejected": "missing.png"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:1 field 'rejected': image file .*missing\.png.* not found"):
        load_pairs(path)
    path.write_text('{"chosen": "a.png", "rejected": "a.png", "margin": -1}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:1: field 'margin' must be >= 0"):
        load_pairs(path)
    path.write_text('{"chosen": "a.png", "rejected": "a.png", "margin": "big"}\n')
    with pytest.raises(DataError, match="field 'margin' must be a number"):
        load_pairs(path)
    path.write_text('{"chosen": "a.png", "rejected": "a.png"}\n{not json\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: not valid JSON"):
        load_pairs(path)
    path.write_text('{"image": "a.png"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:1: no pair found.*fields present: \['image'\]"):
        load_pairs(path)
    path.write_text('{"image_0": "a.png", "image_1": "a.png"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:1: field 'label_0'"):
        load_pairs(path)
    with pytest.raises(DataError, match="unknown data format"):
        load_pairs(tmp_path / "a.png")
    with pytest.raises(DataError, match="no such file"):
        load_pairs(tmp_path / "none.jsonl")
