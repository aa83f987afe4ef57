"""The `visalign` command: render (files in, PNGs and JSON lines out), doctor, gallery."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from conftest import GOOD_CHART
from visalign.cli import main

SVG = '<svg xmlns="http://www.w3.org/2000/svg" width="30" height="20"><rect width="15" height="20" fill="navy"/></svg>'


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "visalign.cli", *args], capture_output=True, text=True, timeout=300)


def _in_process(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess:
    """``main(args)`` in this process (no interpreter start and imports per call), as ``_run`` returns it."""
    capsys.readouterr()
    try:
        rc = main(list(args))
    except SystemExit as exc:  # argparse's usage errors
        rc = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), rc, captured.out, captured.err)


@pytest.mark.slow
def test_render_json_lines_and_pngs(tmp_path):
    good = tmp_path / "bar.py"
    good.write_text(GOOD_CHART)
    bad = tmp_path / "broken.py"
    bad.write_text("plt.plot(")
    out = tmp_path / "out"
    proc = _run("render", "matplotlib", str(good), str(bad), "-o", str(out), "--json", "--timeout", "5", "--dpi", "50")
    assert proc.returncode == 0, proc.stderr  # failing inputs are data, not errors
    recs = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["input"] for r in recs] == [str(good), str(bad)]
    assert set(recs[0]) >= {"input", "ok", "output", "error_kind", "error", "seconds"}
    assert recs[0]["ok"] and recs[0]["output"] == str(out / "bar.png")
    assert Image.open(out / "bar.png").size == (320, 240)
    assert not recs[1]["ok"] and recs[1]["error_kind"] == "syntax" and recs[1]["output"] is None
    assert not (out / "broken.png").exists()


@pytest.mark.slow
def test_render_auto_by_extension_with_gallery(tmp_path):
    (tmp_path / "a.py").write_text(GOOD_CHART)
    (tmp_path / "b.svg").write_text(SVG)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.svg").write_text(SVG)  # same stem as a.py: must not overwrite
    out = tmp_path / "out"
    rc = main(["render", "auto", str(tmp_path / "a.py"), str(tmp_path / "b.svg"), str(tmp_path / "sub" / "a.svg"),
               "-o", str(out), "--gallery"])
    assert rc == 0
    assert {p.name for p in out.glob("*.png")} == {"a.png", "b.png", "a-1.png"}
    page = (out / "index.html").read_text()
    assert page.count('class="card"') == 3 and "a-1.png" in page and "3 rendered" in page


def test_render_expands_directories_and_skips_what_it_cannot_render(tmp_path, capsys):
    """Issue 13.9: the README's ``visalign render auto examples/* ...`` exited 2 because ``examples/eval`` is
    a directory; one bad path stopped the whole batch."""
    (tmp_path / "a.svg").write_text(SVG)
    (tmp_path / "notes.md").write_text("# not a program")
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "rows.jsonl").write_text("{}\n")  # nothing renderable: skipped with a warning
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "b.svg").write_text(SVG)  # a directory stands for its renderable files
    out = tmp_path / "out"
    rc = main(["render", "auto", str(tmp_path / "a.svg"), str(tmp_path / "notes.md"), str(tmp_path / "eval"),
               str(tmp_path / "more"), "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert {p.name for p in out.glob("*.png")} == {"a.png", "b.png"}
    assert "skipping directory" in err and "skipping" in err and "notes.md" in err
    rc = main(["render", "auto", str(tmp_path / "a.svg"), str(tmp_path / "typo.svg"), "-o", str(tmp_path / "o2")])
    assert rc == 1 and (tmp_path / "o2" / "a.png").exists()  # the others render; the missing path is an error
    assert "no such file" in capsys.readouterr().err


@pytest.mark.slow
def test_usage_errors_exit_nonzero(tmp_path):
    assert _run("render", "matplotlib", str(tmp_path / "missing.py"), "-o", str(tmp_path)).returncode == 2
    (tmp_path / "x.unknown").write_text("?")
    proc = _run("render", "auto", str(tmp_path / "x.unknown"), "-o", str(tmp_path))
    assert proc.returncode == 2 and "extension" in proc.stderr
    assert _run("render", "nope", "x", "-o", str(tmp_path)).returncode == 2
    assert _run("render", "svg", "x").returncode == 2  # -o is required


@pytest.mark.slow
def test_undecodable_file_is_a_failed_render(tmp_path):
    f = tmp_path / "bin.py"
    f.write_bytes(b"\xff\xfe\x00garbage")
    proc = _run("render", "matplotlib", str(f), "-o", str(tmp_path / "o"), "--json")
    rec = json.loads(proc.stdout)
    assert proc.returncode == 0 and not rec["ok"] and rec["error_kind"] == "syntax"


@pytest.mark.slow
def test_doctor_reports_sandbox_backends_and_torch():
    proc = _run("doctor", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["sandbox"]["level"] in ("bubblewrap", "namespaces+rlimits", "rlimits only")
    assert set(report["backends"]) == {"matplotlib", "latex", "svg", "html"}
    assert report["render_check"]["matplotlib"]["ok"] and report["render_check"]["svg"]["ok"]
    assert report["torch"]["device"] in ("cpu",) or report["torch"]["cuda"]
    assert isinstance(report["missing"], list)
    assert not any(v.startswith("MISSING") for v in report["reward_weights"].values()), report["reward_weights"]
    text = _run("doctor", "--quick").stdout
    assert "sandbox:" in text and "torch:" in text


@pytest.mark.slow
def test_score_images_code_and_tables(tmp_path, capsys):
    chart = tmp_path / "chart.py"
    chart.write_text(GOOD_CHART)
    other = tmp_path / "other.py"
    other.write_text(GOOD_CHART.replace("[3, 1, 2]", "[1, 3, 1]").replace("'ok'", "'changed'"))
    assert float(_in_process(capsys, "score", "ssim", str(chart), str(chart)).stdout) == 1.0  # rendered, identical
    lower = float(_in_process(capsys, "score", "ssim", str(other), str(chart)).stdout)
    assert 0.3 < lower < 1.0
    # an image file against the render of the code it came from
    out = tmp_path / "o"
    main(["render", "matplotlib", str(chart), "-o", str(out)])
    assert float(_in_process(capsys, "score", "ssim", str(out / "chart.png"), str(chart)).stdout) == 1.0
    rec = json.loads(_in_process(capsys, "score", "psnr", str(out / "chart.png"), str(out / "chart.png"), "--json").stdout)
    assert rec["score"] == "inf"
    tex = tmp_path / "t.tex"
    tex.write_text(r"\begin{tabular}{cc}\toprule a & b\\ \midrule 1 & 2\\ \bottomrule\end{tabular}")
    tex2 = tmp_path / "t2.tex"
    tex2.write_text(r"\begin{tabular}{cc}\toprule a & b\\ \midrule 1 & 3\\ \bottomrule\end{tabular}")
    assert float(_in_process(capsys, "score", "teds", str(tex), str(tex)).stdout) == 1.0
    assert float(_in_process(capsys, "score", "teds_structure", str(tex2), str(tex)).stdout) == 1.0
    assert float(_in_process(capsys, "score", "teds", str(tex2), str(tex)).stdout) < 1.0


@pytest.mark.slow
def test_score_failures(tmp_path, capsys):
    good = tmp_path / "good.py"
    good.write_text(GOOD_CHART)
    broken = tmp_path / "broken.py"
    broken.write_text("plt.plot(")
    proc = _in_process(capsys, "score", "ssim", str(broken), str(good), "--json")
    rec = json.loads(proc.stdout)
    assert proc.returncode == 0 and rec["score"] == 0.0 and rec["pred_render"]["error_kind"] == "syntax"
    assert _in_process(capsys, "score", "ssim", str(good), str(broken)).returncode == 2  # a broken reference is a usage error
    assert _in_process(capsys, "score", "nope", str(good), str(good)).returncode == 2
    assert _in_process(capsys, "score", "teds", str(good), str(good)).returncode == 2


@pytest.mark.slow
def test_train_options_are_checked_before_anything_loads(tmp_path, capsys):
    """Issue 13.6: ``--set max_steps=two`` was a TypeError traceback after the model loaded, and a typo'd
    key listed 70 keys with no suggestion."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("grpo:\n  model: /nonexistent/model\n  train_data: /nonexistent/train.jsonl\n")
    assert main(["train", "grpo", str(cfg), "--set", "max_steps=two"]) == 2
    err = capsys.readouterr().err
    assert "option 'max_steps' must be an integer, got 'two'" in err and str(cfg) in err
    assert main(["train", "grpo", str(cfg), "--set", "learning_rat=1e-4"]) == 2
    err = capsys.readouterr().err
    assert "'learning_rat' (did you mean 'learning_rate'?)" in err and "--describe" in err


def test_config_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    """Issue 13.4: ``model: models/tiny-chart-vlm`` resolved against the shell's directory (from elsewhere:
    154 s of Hub retries, then a traceback). Paths in a file are relative to the file; a local path that
    does not exist is an immediate error naming the file and option."""
    from visalign.trainers.config import load_config
    from visalign.trainers.vlm import VLMGRPOConfig

    (tmp_path / "cfgs" / "data").mkdir(parents=True)
    (tmp_path / "cfgs" / "data" / "train.jsonl").write_text("")
    cfg = tmp_path / "cfgs" / "run.yaml"
    cfg.write_text("grpo:\n  model: ../models/policy\n  train_data: data/train.jsonl\n  output_dir: ../out/run\n"
                   "  rewards: [{name: model, options: {path: data}}]\n")
    (tmp_path / "models" / "policy").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "models")  # anywhere else
    c = load_config(VLMGRPOConfig, cfg, section="grpo")
    assert c.model == str(tmp_path / "models" / "policy")
    assert c.train_data == str(tmp_path / "cfgs" / "data" / "train.jsonl")
    assert c.output_dir == str(tmp_path / "out" / "run")
    assert c.rewards[0]["options"]["path"] == str(tmp_path / "cfgs" / "data")
    assert load_config(VLMGRPOConfig, cfg, section="grpo", train_data="x.jsonl").train_data == "x.jsonl"  # --set: cwd
    cfg.write_text("grpo:\n  model: ./models/policy\n")
    with pytest.raises(ValueError, match=r"run\.yaml: option 'model': no such file or directory"):
        load_config(VLMGRPOConfig, cfg, section="grpo")
    cfg.write_text("grpo:\n  model: Qwen/Qwen2-VL-2B-Instruct\n  train_data: policy/x.jsonl\n")
    (tmp_path / "models" / "policy" / "x.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"exists relative to the current directory.*write \.\./models/policy/x\.jsonl"):
        load_config(VLMGRPOConfig, cfg, section="grpo")
    cfg.write_text("grpo:\n  model: Qwen/Qwen2-VL-2B-Instruct\n")
    assert load_config(VLMGRPOConfig, cfg, section="grpo").model == "Qwen/Qwen2-VL-2B-Instruct"  # a hub id


def test_a_saved_run_config_loads_back_from_its_own_file(tmp_path, monkeypatch):
    """A run's ``config.yaml`` kept the paths it was given relative to the shell's directory, so loading the
    file (paths relative to the file) failed: "reward 'model' option 'path': no such file or directory:
    out/run/out/rm". Saved paths are absolute; a hub id and a path that no longer exists stay as written."""
    from visalign.trainers.config import load_config, save_config
    from visalign.trainers.vlm import VLMGRPOConfig

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("")
    (tmp_path / "rm").mkdir()
    monkeypatch.chdir(tmp_path)
    c = load_config(VLMGRPOConfig, {"model": "Qwen/Qwen2-VL-2B-Instruct", "train_data": "data/train.jsonl",
                                    "output_dir": "out/run", "rewards": [{"name": "model", "options": {"path": "rm"}},
                                                                        {"name": "execution"}]})
    saved = save_config(c, tmp_path / "out" / "run" / "config.yaml")
    monkeypatch.chdir(tmp_path / "out")  # anywhere else
    back = load_config(VLMGRPOConfig, saved)
    assert back.train_data == str(tmp_path / "data" / "train.jsonl") and back.output_dir == str(tmp_path / "out" / "run")
    assert back.rewards[0]["options"]["path"] == str(tmp_path / "rm") and back.model == "Qwen/Qwen2-VL-2B-Instruct"
    assert back.rewards[1] == {"name": "execution"}


def test_score_warns_when_it_resizes(tmp_path, capsys):
    """Issue 13.9: ``score`` compared images of different sizes silently (the prediction is resized)."""
    Image.new("RGB", (40, 30), "white").save(tmp_path / "pred.png")
    Image.new("RGB", (80, 60), "white").save(tmp_path / "ref.png")
    assert main(["score", "ssim", str(tmp_path / "pred.png"), str(tmp_path / "ref.png")]) == 0
    assert "prediction (40x30) was resized to the reference (80x60)" in capsys.readouterr().err
    Image.new("RGB", (80, 60), "white").save(tmp_path / "same.png")
    assert main(["score", "ssim", str(tmp_path / "same.png"), str(tmp_path / "ref.png")]) == 0
    assert "resized" not in capsys.readouterr().err
