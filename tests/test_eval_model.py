"""``visalign eval DATA --model PATH_OR_ENDPOINT`` (issue 13.12): generate, then score, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_judge import Action, JudgeServer
from visalign.cli import main

ROOT = Path(__file__).resolve().parents[1]
CHART = "import matplotlib.pyplot as plt\nplt.bar(range(3), [5, 2, 8], color='cyan')"


def _rows(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"r{i}", "reference_code": CHART.replace("5", str(i + 3))}) + "\n"
                            for i in range(n)))
    return path


@pytest.mark.slow
def test_eval_generates_with_a_local_hf_model_and_resumes(tmp_path):
    data = _rows(tmp_path / "rows.jsonl", 3)
    out = tmp_path / "out"
    args = ["eval", str(data), "--task", "chart", "--model", str(ROOT / "models" / "tiny-chart-vlm"),
            "--max-new-tokens", "40", "--rewards", "execution,render_similarity", "--out", str(out),
            "--workers", "1", "--log-samples"]
    assert main(args) == 0
    gens = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
    assert [g["id"] for g in gens] == ["r0", "r1", "r2"] and all(g["completion"] for g in gens)
    results = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert {r["id"] for r in results} == {"r0", "r1", "r2"}
    assert all("plt." in r["completion"] and r["prompt"] is None for r in results)  # --log-samples
    before = (out / "generations.jsonl").read_text()
    assert main(args) == 0  # resumes: nothing generated or scored again
    assert (out / "generations.jsonl").read_text() == before


@pytest.mark.slow
def test_eval_generates_through_an_openai_endpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("VISALIGN_TEST_KEY", "sk-test")
    server = JudgeServer()
    try:
        server.behave = lambda seen: Action(answer="```python\n" + CHART + "\n```" if seen.n else "I can't.")
        data = _rows(tmp_path / "rows.jsonl", 2)
        out = tmp_path / "out"
        rc = main(["eval", str(data), "--task", "chart", "--model", server.url, "--model-name", "m",
                   "--api-key-env", "VISALIGN_TEST_KEY", "--rewards", "execution", "--out", str(out), "--workers", "1"])
        assert rc == 0
        assert len(server.seen) == 2 and all(s.body["model"] == "m" for s in server.seen)
        assert sum(p["type"] == "image_url" for p in server.seen[0].body["messages"][-1]["content"]) == 1
        summary = json.loads((out / "summary.json").read_text())
        assert summary["rewards"]["execution"]["n"] == 2 and summary["rewards"]["execution"]["mean"] == 0.5
    finally:
        server.close()


def test_eval_model_errors_before_anything_loads(tmp_path, capsys):
    data = _rows(tmp_path / "rows.jsonl", 1)
    assert main(["eval", str(data), "--task", "chart", "--model", "./no/such/model", "--out", str(tmp_path / "o")]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert main(["eval", str(data), "--task", "chart", "--model", "http://127.0.0.1:9/v1", "--out",
                 str(tmp_path / "o")]) == 2
    assert "--model-name" in capsys.readouterr().err
    (tmp_path / "bare.jsonl").write_text(json.dumps({"id": "x", "prompt": "draw"}) + "\n")
    with pytest.raises(ValueError, match=r"bare\.jsonl:1: row 'x': no 'reference_image' or 'reference_code'"):
        from visalign.generate import generate_completions
        from visalign.rewards.judge import CallableJudgeBackend

        generate_completions(tmp_path / "bare.jsonl", "chart", tmp_path / "o",
                             backend=CallableJudgeBackend(lambda r: "x"))
