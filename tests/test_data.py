"""Synthetic charts (rendered by the real sandboxed renderer) and the row loaders."""

from __future__ import annotations

import base64
import io
import json
import random

import numpy as np
import pytest
from PIL import Image

from visalign.data import (
    CHART_KINDS,
    CHART_RENDER_OPTIONS,
    DataError,
    chart_corpus,
    chart_dataset,
    load_rows,
    random_chart_code,
    render_charts,
    write_jsonl,
)
from visalign.data.charts import HEADER
from visalign.rewards.code import extract_code
from visalign.trainers.prompting import DEFAULT_INSTRUCTIONS

# ---------------------------------------------------------------- synthetic charts


def test_chart_codes_are_seeded_unique_and_short() -> None:
    a = chart_corpus(300, seed=0)
    assert a == chart_corpus(300, seed=0)
    assert len(set(a)) == 300
    assert all(c.startswith(HEADER + "\n") and not c.endswith("\n") for c in a)
    assert max(len(c.splitlines()) for c in a) <= 6
    # the policy's answer is bare code: the rewards' extractor must give it back unchanged
    assert all(extract_code(c, "matplotlib") == c for c in a[:50])


@pytest.mark.slow
def test_every_kind_and_option_renders_at_96_pixels() -> None:
    rng = random.Random(1)
    codes = [random_chart_code(rng, k, title_prob=1.0, label_prob=1.0, legend_prob=1.0) for k in CHART_KINDS]
    results = render_charts(codes, workers=2)
    assert [r.error for r in results if not r.ok] == []
    assert {r.image.size for r in results} == {(96, 96)}
    assert CHART_RENDER_OPTIONS == {"dpi": 64, "figsize": (1.5, 1.5)}
    with pytest.raises(ValueError, match="unknown chart kind 'area'"):
        random_chart_code(rng, "area")


@pytest.mark.slow
def test_chart_dataset_rows_and_disjoint_held_out_set() -> None:
    rows = chart_dataset(6, seed=3, kinds=("bar", "line", "pie"), workers=2)
    assert [r["chart_type"] for r in rows] == ["bar", "line", "pie"] * 2
    assert all(r["kind"] == "matplotlib" and r["prompt"] == DEFAULT_INSTRUCTIONS["matplotlib"] for r in rows)
    assert all(r["image"].mode == "RGB" and r["image"].size == (96, 96) for r in rows)
    # a pure-white image would mean nothing was drawn
    assert all(np.asarray(r["image"]).min() < 200 for r in rows)

    train = {r["code"] for r in chart_dataset(400, seed=0, render=False)}
    held = chart_dataset(200, seed=1, render=False, exclude=train)
    assert not train & {r["code"] for r in held}
    assert all(r["image"] is None for r in held)


# ---------------------------------------------------------------- loaders


def _png(colour: str = "red", size: tuple[int, int] = (6, 4)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def test_list_rows_accept_every_image_form_and_fill_defaults() -> None:
    data = _png("blue")
    rows = load_rows([
        {"image": Image.open(io.BytesIO(data)).convert("L"), "code": "import matplotlib"},
        {"image": data, "id": "b"},
        {"image": {"bytes": data, "path": None}, "prompt": "Draw it."},  # HF datasets' Image(decode=False)
        {"image": np.zeros((4, 6, 3), np.uint8)},
        {"image": "data:image/png;base64," + base64.b64encode(data).decode(), "kind": "svg"},
        {"image": base64.b64encode(data).decode(), "extra": 7},
    ])
    assert [r["image"].size for r in rows] == [(6, 4)] * 6
    assert {r["image"].mode for r in rows} == {"RGB"}
    assert rows[1]["image"].getpixel((0, 0)) == (0, 0, 255)
    assert [r["id"] for r in rows] == [0, "b", 2, 3, 4, 5]
    assert rows[0]["prompt"] == DEFAULT_INSTRUCTIONS["matplotlib"] and rows[2]["prompt"] == "Draw it."
    assert rows[4]["kind"] == "svg" and rows[4]["prompt"] == DEFAULT_INSTRUCTIONS["svg"]
    assert rows[1]["code"] is None and rows[5]["extra"] == 7


def test_column_names_limit_and_splits() -> None:
    src = {"train": [{"png": _png(), "program": "import matplotlib"}] * 3,
           "test": [{"png": _png("green"), "program": "x", "instruction": "Go."}]}
    rows = load_rows(src, image_column="png", code_column="program", prompt_column="instruction", limit=2)
    assert len(rows) == 2 and rows[0]["code"] == "import matplotlib"
    test = load_rows(src, image_column="png", code_column="program", prompt_column="instruction", split="test")
    assert test[0]["prompt"] == "Go." and test[0]["image"].getpixel((0, 0)) == (0, 128, 0)
    with pytest.raises(DataError, match=r"no split 'validation'; splits: \['test', 'train'\]"):
        load_rows(src, split="validation")


@pytest.mark.slow
def test_jsonl_round_trip_with_png_files_and_relative_paths(tmp_path) -> None:
    charts = chart_dataset(3, seed=0, workers=1)
    path = write_jsonl(charts, tmp_path / "sub" / "charts.jsonl")
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines[0]["image"].startswith("charts_images/") and lines[0]["chart_type"] == "bar"
    back = load_rows(path)
    for a, b in zip(charts, back, strict=True):
        assert b["code"] == a["code"] and b["prompt"] == a["prompt"] and b["kind"] == "matplotlib"
        assert np.array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
    # paths relative to the JSONL file, whatever the working directory
    (tmp_path / "elsewhere.jsonl").write_text(json.dumps({"image": "sub/" + lines[0]["image"]}) + "\n")
    assert load_rows(tmp_path / "elsewhere.jsonl")[0]["image"].size == (96, 96)


def test_errors_name_the_row_and_the_fix(tmp_path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"code": "import matplotlib"}\n{"id": "r7", "prompt": "hi"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2 \(id 'r7'\) has neither an image .* nor code"):
        load_rows(bad)
    bad.write_text('{"code": "import matplotlib"}\n\n{"id": "r9"}\n')  # the line in the file, blank lines counted
    with pytest.raises(DataError, match=r"bad\.jsonl:3 \(id 'r9'\) has neither"):
        load_rows(bad)
    bad.write_text('{"image": "missing.png"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:1 \(id 0\): image file .*missing\.png' not found"):
        load_rows(bad)
    bad.write_text('{"code": "x"}\nnot json\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: not valid JSON"):
        load_rows(bad)
    with pytest.raises(DataError, match="the image bytes are not an image"):
        load_rows([{"image": b"not a png"}])
    with pytest.raises(DataError, match="unknown kind 'pdf'"):
        load_rows([{"code": "x", "kind": "pdf"}])
    with pytest.raises(DataError, match=r"unknown data format '\.csv'"):
        (tmp_path / "rows.csv").write_text("a,b\n")
        load_rows(tmp_path / "rows.csv")
    with pytest.raises(DataError, match="no such file"):
        load_rows(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="not one written by datasets' save_to_disk"):
        load_rows(tmp_path)


def test_parquet_rows(tmp_path) -> None:
    path = tmp_path / "rows.parquet"
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        path.write_bytes(b"PAR1")
        with pytest.raises(ImportError, match="needs pyarrow: pip install pyarrow"):
            load_rows(path)
        return
    table = pa.table({"image": [{"bytes": _png("red"), "path": None}], "code": ["import matplotlib"]})
    pq.write_table(table, path)
    rows = load_rows(path)
    assert rows[0]["image"].getpixel((0, 0)) == (255, 0, 0) and rows[0]["code"] == "import matplotlib"


def test_hf_datasets_objects_and_saved_directories(tmp_path) -> None:
    try:
        import datasets
    except ImportError:
        (tmp_path / "dataset_dict.json").write_text('{"splits": ["train"]}')
        with pytest.raises(ImportError, match="needs the Hugging Face datasets library: pip install datasets"):
            load_rows(tmp_path)
        return
    ds = datasets.Dataset.from_dict({"image": [Image.new("RGB", (5, 5), "red")], "code": ["import matplotlib"]},
                                    features=datasets.Features({"image": datasets.Image(),
                                                                "code": datasets.Value("string")}))
    dd = datasets.DatasetDict({"train": ds, "test": ds})
    assert load_rows(ds)[0]["image"].size == (5, 5)
    assert load_rows(dd, split="test")[0]["code"] == "import matplotlib"
    dd.save_to_disk(str(tmp_path / "saved"))
    assert load_rows(tmp_path / "saved")[0]["image"].getpixel((0, 0)) == (255, 0, 0)
