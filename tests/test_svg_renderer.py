"""The svg renderer (resvg in sandboxed fork servers)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import resvg_py
from PIL import Image

from visalign.renderers import get_renderer

RECT = ('<svg xmlns="http://www.w3.org/2000/svg" width="120" height="60">'
        '<rect x="0" y="0" width="60" height="60" fill="#ff0000"/></svg>')


@pytest.fixture(scope="module")
def renderer():
    with get_renderer("svg", timeout=3, workers=2) as r:
        yield r


def test_rect_pixels_match_in_process_resvg(renderer):
    res = renderer.render(RECT)
    assert res.ok and res.image.size == (120, 60)
    arr = np.asarray(res.image)
    assert tuple(arr[30, 10]) == (255, 0, 0) and tuple(arr[30, 100]) == (255, 255, 255)  # white background
    # the same pixels as resvg called directly (the reference backend), composited on white
    ref = Image.open(io.BytesIO(resvg_py.svg_to_bytes(svg_string=RECT, background="white"))).convert("RGB")
    assert np.array_equal(arr, np.asarray(ref))


def test_width_scales_preserving_aspect():
    with get_renderer("svg", width=240, workers=1) as r:
        assert r.render(RECT).image.size == (240, 120)


def test_transparent_background_is_composited_on_white():
    with get_renderer("svg", background=None, workers=1) as r:
        arr = np.asarray(r.render(RECT).image)
    assert tuple(arr[30, 100]) == (255, 255, 255)


@pytest.mark.parametrize(("source", "kind"), [
    ("", "no_output"),
    ("<svg", "syntax"),
    ("not xml at all", "syntax"),
    ('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "blank"),
    ('<svg xmlns="http://www.w3.org/2000/svg" width="200000" height="200000"><rect width="9" height="9"/></svg>',
     "memory"),
])
def test_bad_documents(renderer, source, kind):
    res = renderer.render(source)
    assert not res.ok and res.error_kind == kind, res.error  # a hang would be "timeout", not ``kind``
    assert renderer.render(RECT).ok


def test_billion_laughs_does_not_hang(renderer):
    ents = '<!ENTITY a0 "xxxxxxxxxx">' + "".join(
        f'<!ENTITY a{i} "{("&a" + str(i - 1) + ";") * 10}">' for i in range(1, 10))
    doc = (f'<?xml version="1.0"?><!DOCTYPE svg [{ents}]><svg xmlns="http://www.w3.org/2000/svg" '
           'width="10" height="10"><text>&a9;</text></svg>')
    res = renderer.render(doc)
    # refused by the parser (10 levels of 10 references would expand to 10**10 characters and run into
    # the timeout instead): the kind, not a wall-clock bound, says it did not hang
    assert not res.ok and res.error_kind == "syntax" and "entity" in res.error, (res.error_kind, res.error)
    assert renderer.render(RECT).ok


def test_local_files_are_not_embedded(renderer, tmp_path):
    img = tmp_path / "secret.png"
    Image.new("RGB", (10, 10), (0, 200, 0)).save(img)
    doc = (f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="10" '
           f'height="10"><image href="{img}" xlink:href="file://{img}" width="10" height="10"/></svg>')
    res = renderer.render(doc)
    # the host's /tmp is not visible in the sandbox: nothing green can come back
    if res.ok:
        assert not (np.asarray(res.image)[..., 1] == 200).any()
    else:
        assert res.error_kind == "blank"


def test_batch_order(renderer):
    docs = [RECT, "", RECT.replace("#ff0000", "#0000ff")]
    res = renderer.render_batch(docs)
    assert [r.ok for r in res] == [True, False, True]
    assert tuple(np.asarray(res[2].image)[30, 10]) == (0, 0, 255)
