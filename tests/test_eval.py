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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_eval_shards_across_processes(tmp_path):
    """Under torchrun / accelerate launch each process scores every N-th row; process 0 merges."""
    import subprocess
    import sys

    torchrun = Path(sys.executable).with_name("torchrun")
    out = tmp_path / "sharded"
    # --standalone: a free port for the rendezvous (the default 29500 collides with concurrent runs)
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "visalign.cli", "eval",
                           str(EXAMPLES / "svg.jsonl"), "--task", "svg", "--rewards", "execution",
                           "--out", str(out), "--workers", "1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ids = [json.loads(x)["id"] for x in (out / "results.jsonl").read_text().splitlines()]
    rows = [json.loads(x)["id"] for x in (EXAMPLES / "svg.jsonl").read_text().splitlines()]
    assert sorted(ids) == sorted(rows)  # every row once, none twice
    assert not list(out.glob("results.rank*.jsonl"))
    assert json.loads((out / "summary.json").read_text())["rows"] == len(rows)


@pytest.mark.slow
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


SVG_OK = '<svg xmlns="http://www.w3.org/2000/svg" width="32" height="32"><circle cx="16" cy="16" r="9"/></svg>'


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_eval_with_misnamed_fields_fails_naming_the_file_and_fields(tmp_path, capsys):
    """Issue 13.2: ``{"answer": ..., "ref": ...}`` rows used to give ``nan n=0`` and exit 0."""
    data = _jsonl(tmp_path / "data.jsonl", [{"answer": SVG_OK, "ref": SVG_OK}] * 3)
    with pytest.raises(ValueError, match=r"data\.jsonl.*no row has .*completion.*answer"):
        run_eval(data, "svg", ["execution"], tmp_path / "out", workers=1, progress=False)
    assert main(["eval", str(data), "--task", "svg", "--out", str(tmp_path / "out2")]) == 2
    assert "completion" in capsys.readouterr().err
    assert not (tmp_path / "out2" / "results.jsonl").exists()  # nothing slow started


@pytest.mark.slow
def test_eval_counts_a_row_without_completion_as_a_failed_sample(tmp_path):
    """Issue 13.2: a row with no completion dropped out of ``n`` and the execution rate stayed 100 %."""
    data = _jsonl(tmp_path / "data.jsonl", [{"id": "a", "completion": SVG_OK, "reference_code": SVG_OK},
                                            {"id": "b", "reference_code": SVG_OK}])
    summary = run_eval(data, "svg", ["execution", "render_similarity"], tmp_path / "out", workers=1, progress=False)
    assert summary["rewards"]["execution"]["n"] == 2
    assert summary["rewards"]["execution"]["mean"] == 0.5
    assert summary["rewards"]["render_similarity"]["n"] == 2
    assert summary["execution_rate"] == 0.5
    by = {r["id"]: r for r in map(json.loads, (tmp_path / "out" / "results.jsonl").read_text().splitlines())}
    assert by["b"]["render"]["error_kind"] == "missing_completion"


def test_eval_missing_reference_image_names_file_line_row_and_field(tmp_path):
    """Issue 13.2: a missing image was a bare FileNotFoundError traceback, found mid-run."""
    data = _jsonl(tmp_path / "data.jsonl", [{"id": "a", "completion": SVG_OK, "reference_code": SVG_OK},
                                            {"id": "row-7", "completion": SVG_OK, "reference_image": "nope.png"}])
    with pytest.raises(ValueError) as err:
        run_eval(data, "svg", ["execution"], tmp_path / "out", workers=1, progress=False)
    message = str(err.value)
    assert "data.jsonl:2" in message and "row-7" in message and "reference_image" in message and "nope.png" in message
    assert not (tmp_path / "out" / "results.jsonl").exists()


@pytest.mark.slow
def test_eval_rerun_computes_a_reward_added_later(tmp_path):
    """Issue 13.3: a reward added on a rerun was never computed (``nan n=0``): resume per reward."""
    data = _jsonl(tmp_path / "data.jsonl", [{"id": str(i), "completion": SVG_OK, "reference_code": SVG_OK}
                                            for i in range(3)])
    out = tmp_path / "out"
    run_eval(data, "svg", ["execution"], out, workers=1, progress=False)
    summary = run_eval(data, "svg", ["execution", "render_similarity"], out, workers=1, progress=False)
    assert summary["rewards"]["render_similarity"] == {"mean": 1.0, "ci95": [1.0, 1.0], "n": 3, "not_applicable": 0}
    assert summary["rows"] == 3
    records = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert {r["id"] for r in records} == {"0", "1", "2"}


def test_eval_rerun_with_options_for_rewards_already_scored(tmp_path):
    """A rerun whose rows were all scored builds no reward: the options it was given again are not
    'options for rewards not asked for' (they failed that way, seen rescoring GRPO evals with a reward
    model); options for a reward really not asked for still fail, before anything renders."""
    data = _jsonl(tmp_path / "data.jsonl", [{"id": str(i), "completion": SVG_OK, "reference_code": SVG_OK}
                                            for i in range(2)])
    out, options = tmp_path / "out", {"render_similarity": {"metric": "ssim"}}
    first = run_eval(data, "svg", ["render_similarity"], out, workers=1, progress=False, reward_options=options)
    again = run_eval(data, "svg", ["render_similarity"], out, workers=1, progress=False, reward_options=options)
    assert again["rewards"] == first["rewards"] and again["rows"] == 2
    with pytest.raises(ValueError, match=r"not asked for: \['clip'\]"):
        run_eval(data, "svg", ["render_similarity"], tmp_path / "other", workers=1, progress=False,
                 reward_options={"clip": {}})
    assert not (tmp_path / "other").exists()


def test_eval_keeps_every_scored_sample_when_interrupted(tmp_path, monkeypatch):
    """Issue 13.3: Ctrl-C kept nothing (results written in batches of 32): write as samples finish."""
    from visalign.rewards import Reward, RewardOutput

    class Interrupting(Reward):
        name = "interrupting"
        seen = 0

        def score(self, samples):
            Interrupting.seen += len(samples)
            if Interrupting.seen > 5:
                raise KeyboardInterrupt
            return RewardOutput([1.0] * len(samples), [{} for _ in samples])

    import visalign.evaluate as ev

    real = ev.build_rewards
    monkeypatch.setattr(ev, "build_rewards", lambda names, service, options=None: {
        **real([n for n in names if n != "interrupting"], service, options), "interrupting": Interrupting()})
    data = _jsonl(tmp_path / "data.jsonl", [{"id": str(i), "completion": SVG_OK, "reference_code": SVG_OK}
                                            for i in range(40)])
    with pytest.raises(KeyboardInterrupt):
        run_eval(data, "svg", ["execution", "interrupting"], tmp_path / "out", workers=1, progress=False)
    kept = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    assert len(kept) >= 4  # every sample scored before the interrupt (at most one small batch is lost)


def test_eval_cli_fails_when_a_reward_scores_no_row(tmp_path, capsys):
    """A reward that applies to no row (here: no reference to compare with) is an error, not ``nan n=0``."""
    data = _jsonl(tmp_path / "data.jsonl", [{"id": "a", "completion": SVG_OK}])
    rc = main(["eval", str(data), "--task", "svg", "--rewards", "execution,render_similarity",
               "--out", str(tmp_path / "out"), "--workers", "1"])
    assert rc == 1
    assert "'render_similarity' scored no row" in capsys.readouterr().err


def test_eval_report_shows_code_diff_and_full_size_images(tmp_path):
    """Issue 13.10: the report hid the code; thumbnails could not be enlarged."""
    other = SVG_OK.replace('r="9"', 'r="5"')
    data = _jsonl(tmp_path / "data.jsonl", [{"id": "a", "completion": f"```svg\n{other}\n```", "reference_code": SVG_OK},
                                            {"id": "b", "completion": "I cannot draw.", "reference_code": SVG_OK}])
    run_eval(data, "svg", ["execution", "render_similarity"], tmp_path / "out", workers=1, progress=False)
    page = (tmp_path / "out" / "report.html").read_text()
    assert "diff to the reference code" in page
    assert "<span class='del'>-" in page and 'r=&quot;9&quot;' in page and 'r=&quot;5&quot;' in page
    assert "completion (no code found)" in page and "I cannot draw." in page
    assert "href='images/a.png'" in page and (tmp_path / "out" / "images" / "a.png").is_file()
