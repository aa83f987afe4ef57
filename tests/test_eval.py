"""`visalign eval`: results, summary, resumability, and the report opened in real Chromium."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from visalign.cli import main
from visalign.data.examples import write_example_sets
from visalign.evaluate import run_eval
from visalign.report.eval_report import bootstrap_ci

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "eval"


def test_bootstrap_ci_matches_the_normal_approximation():
    rng = np.random.default_rng(1)
    x = rng.normal(0.5, 0.1, size=400)
    mean, low, high = bootstrap_ci(x, n_resamples=4000, seed=3)
    half = 1.96 * x.std(ddof=1) / math.sqrt(x.size)  # the CLT interval the bootstrap approximates
    assert mean == pytest.approx(x.mean())
    assert (high - low) / 2 == pytest.approx(half, rel=0.1)
    assert low < mean < high
    assert all(math.isnan(v) for v in bootstrap_ci([]))
    assert bootstrap_ci([0.3]) == (0.3, 0.3, 0.3)


def test_shipped_example_sets_are_what_the_generator_writes(tmp_path):
    for path in write_example_sets(tmp_path):
        assert path.read_text() == (EXAMPLES / path.name).read_text(), f"regenerate {path.name}"


@pytest.fixture(scope="module")
def svg_eval(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "svg"
    rc = main(["eval", str(EXAMPLES / "svg.jsonl"), "--task", "svg", "--rewards", "execution,render_similarity",
               "--out", str(out), "--workers", "2"])
    assert rc == 0
    return out


def test_eval_outputs(svg_eval):
    records = [json.loads(line) for line in (svg_eval / "results.jsonl").read_text().splitlines()]
    rows = [json.loads(line) for line in (EXAMPLES / "svg.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == [r["id"] for r in rows]
    by = {r["id"]: r for r in records}
    assert by["svg0-exact"]["scores"] == {"execution": 1.0, "render_similarity": 1.0}
    assert by["svg0-broken"]["scores"]["execution"] == 0.0
    assert by["svg0-broken"]["render"]["error_kind"] == "syntax"
    assert 0 < by["svg0-colour"]["scores"]["render_similarity"] < 1
    summary = json.loads((svg_eval / "summary.json").read_text())
    assert summary["rows"] == len(rows)
    assert summary["execution_rate"] == pytest.approx(12 / 15)
    assert summary["failures"] == {"syntax": 3}
    s = summary["rewards"]["render_similarity"]
    assert s["ci95"][0] <= s["mean"] <= s["ci95"][1]


def test_eval_resumes(svg_eval, tmp_path):
    out = tmp_path / "resume"
    shutil.copytree(svg_eval, out)
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text("\n".join(lines[:5]) + "\n" + lines[5][:20])  # cut mid-record
    run_eval(EXAMPLES / "svg.jsonl", "svg", ["execution", "render_similarity"], out, workers=1, progress=False)
    again = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines() if x.startswith("{\"id")
             and x.endswith("}")]
    assert sorted(r["id"] for r in again) == sorted(json.loads(x)["id"] for x in lines)
    before = (out / "results.jsonl").read_text()
    run_eval(EXAMPLES / "svg.jsonl", "svg", ["execution", "render_similarity"], out, workers=1, progress=False)
    assert (out / "results.jsonl").read_text() == before  # nothing left to score


def test_report_in_chromium(svg_eval):
    from playwright.sync_api import sync_playwright

    from visalign.renderers.html import CHROMIUM_ARGS, chromium_path

    args = [*CHROMIUM_ARGS, "--no-sandbox"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=args, headless=True)
        try:
            page = browser.new_page()
            page.goto((svg_eval / "report.html").as_uri())
            rows = page.locator("table.metrics tbody tr")
            assert rows.count() == 2
            assert "render_similarity" in rows.nth(1).inner_text()
            # every embedded image (plots, thumbnails, differences) decodes
            widths = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
            assert len(widths) >= 2 + 12 and all(w > 0 for w in widths)
            ids = page.eval_on_selector_all("#gallery .row", "els => els.map(e => e.dataset.id)")
            first_scores = page.eval_on_selector_all("#gallery .row", "els => els.map(e => e.dataset.renderSimilarity)")
            vals = [float(v) for v in first_scores if v]
            assert vals == sorted(vals)  # worst first
            page.click("button[data-key='render-similarity'][data-dir='-1']")
            after = page.eval_on_selector_all("#gallery .row", "els => els.map(e => e.dataset.renderSimilarity)")
            vals = [float(v) for v in after if v]
            assert vals == sorted(vals, reverse=True) and vals[0] == 1.0
            assert sorted(ids) == sorted(page.eval_on_selector_all("#gallery .row", "els => els.map(e => e.dataset.id)"))
        finally:
            browser.close()


def test_eval_shards_across_processes(tmp_path):
    """Under torchrun / accelerate launch each process scores every N-th row; process 0 merges."""
    import subprocess
    import sys

    torchrun = Path(sys.executable).with_name("torchrun")
    out = tmp_path / "sharded"
    proc = subprocess.run([str(torchrun), "--nproc_per_node", "2", "-m", "visalign.cli", "eval",
                           str(EXAMPLES / "svg.jsonl"), "--task", "svg", "--rewards", "execution",
                           "--out", str(out), "--workers", "1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ids = [json.loads(x)["id"] for x in (out / "results.jsonl").read_text().splitlines()]
    rows = [json.loads(x)["id"] for x in (EXAMPLES / "svg.jsonl").read_text().splitlines()]
    assert sorted(ids) == sorted(rows)  # every row once, none twice
    assert not list(out.glob("results.rank*.jsonl"))
    assert json.loads((out / "summary.json").read_text())["rows"] == len(rows)


def test_text_to_image_eval_with_reward_options(tmp_path):
    """Generated images (no code) scored by the face identity reward, options from the command line."""
    from PIL import Image, ImageOps
    from skimage import data

    face = Image.fromarray(data.astronaut()).resize((256, 256))
    face.save(tmp_path / "ref.png")
    face.save(tmp_path / "same.png")
    ImageOps.mirror(face).save(tmp_path / "flip.png")
    Image.fromarray(data.coffee()).resize((256, 256)).save(tmp_path / "coffee.png")
    rows = [{"id": name, "image": f"{name}.png", "reference_image": "ref.png", "prompt": "an astronaut"}
            for name in ("same", "flip", "coffee")]
    (tmp_path / "t2i.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    assert main(["eval", str(tmp_path / "t2i.jsonl"), "--task", "t2i", "--rewards", "identity", "--out", str(out),
                 "--reward-options", '{"identity": {"no_face_score": 0.0, "upsample": 1}}']) == 0
    scores = {r["id"]: r["scores"]["identity"] for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert scores["same"] == pytest.approx(1.0, abs=1e-6)
    assert 0.5 < scores["flip"] < 1.0  # the same person: dlib distance under 0.6
    assert scores["coffee"] == 0.0  # no face found
    assert (out / "report.html").exists()
    assert main(["eval", str(tmp_path / "t2i.jsonl"), "--task", "t2i", "--rewards", "identity", "--out", str(out),
                 "--reward-options", '{"clip": {}}']) == 2  # options for a reward not asked for
