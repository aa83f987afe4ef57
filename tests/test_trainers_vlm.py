"""The VLM GRPO trainer end to end on a tiny random Qwen2-VL built offline (CPU, seconds per test).

What could break and is checked here: the KV-cached sampler (greedy output equals ``generate``; the
log-probs it samples with equal the training forward's, so the on-policy ratio is exactly 1), tree
sampling (exact group sizes, fewer tokens than independent sampling), train steps in every mode
(independent / tree, LoRA / full, beta 0 / > 0, num_iterations 1 / 2), exact resume, 2 processes
equal to 1, hostile and garbage completions, over-long prompts, dynamic sampling and evaluation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from visalign.models.tiny_vlm import build_processor, build_tiny_llava, build_tiny_qwen2vl, build_tokenizer
from visalign.rewards import Reward, RewardOutput, Sample
from visalign.trainers.config import load_config
from visalign.trainers.prompting import encode_prompts, vision_token_ids
from visalign.trainers.tree import SampledGroup, TreeSampling, sample_groups
from visalign.trainers.vlm import VLMGRPOConfig, VLMGRPOTrainer, completion_logps

CORPUS = ["import matplotlib.pyplot as plt\nplt.bar(['a', 'b'], [3, 4])\nplt.title('Sales')\n",
          "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [2, 5, 1], color='red')\n",
          "Write matplotlib code that reproduces this chart."] * 4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny random Qwen2-VL + processor saved where ``from_pretrained`` reads them."""
    tok = build_tokenizer(CORPUS, vocab_size=320)
    processor = build_processor(tok, image_size=32)
    model = build_tiny_qwen2vl(processor, hidden_size=32, num_layers=2, num_heads=2, vision_width=16,
                               vision_depth=1, vision_heads=2)
    path = tmp_path_factory.mktemp("tiny-vlm")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return {"path": str(path), "processor": processor, "model": model}


def load(tiny: dict[str, Any]) -> tuple[Any, Any]:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    return AutoModelForImageTextToText.from_pretrained(tiny["path"]), AutoProcessor.from_pretrained(tiny["path"])


def rows(n: int = 4) -> list[dict[str, Any]]:
    colours = ["red", "blue", "green", "orange", "purple", "black", "grey", "yellow"]
    return [{"id": f"r{i}", "image": Image.new("RGB", (32, 32), colours[i % len(colours)]),
             "prompt": "Write matplotlib code that reproduces this chart."} for i in range(n)]


class CharReward(Reward):
    """A text reward with spread on random completions: the share of characters that are letters."""

    name = "letters"

    def score(self, samples: list[Sample]) -> RewardOutput:
        scores = [sum(ch.isalpha() for ch in (s.completion or "")) / max(1, len(s.completion or "")) for s in samples]
        return RewardOutput(scores, [{} for _ in samples], {"calls": 1.0})


def config(tmp_path: Path, **overrides: Any) -> VLMGRPOConfig:
    base = {"num_generations": 4, "prompts_per_step": 2, "generation_batch_size": 1, "max_completion_length": 10,
            "max_steps": 1, "learning_rate": 1e-3, "per_device_train_batch_size": 3, "output_dir": str(tmp_path / "run"),
            "progress": False, "log_with": "none", "tree_segment_length": 3, "render_workers": 1, "seed": 3}
    base.update(overrides)
    return load_config(VLMGRPOConfig, base)


# ---------------------------------------------------------------------------------------- sampling
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["independent", "segment", "entropy"])
def test_greedy_tree_sampling_equals_generate(tiny: dict[str, Any], mode: str) -> None:
    """Split branches continue from copied KV-cache rows with the right M-RoPE positions: with top-k 1
    every leaf is a prefix of ``generate``'s greedy output."""
    model, processor = tiny["model"].eval(), tiny["processor"]
    inputs = encode_prompts(processor, [Image.new("RGB", (40, 24), "red"), Image.new("RGB", (32, 32), "blue")],
                            ["Write code.", "Write matplotlib code that reproduces this chart."])
    suppress = [*vision_token_ids(model), processor.tokenizer.pad_token_id]
    model.model.rope_deltas = None
    ref = model.generate(**inputs, max_new_tokens=12, do_sample=False, suppress_tokens=suppress)
    ref = ref[:, inputs["input_ids"].shape[1]:]
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    groups = sample_groups(model, inputs, TreeSampling(4, mode=mode, segment_length=3, entropy_threshold=0.0),
                           max_new_tokens=12, eos_token_ids=[model.generation_config.eos_token_id], generators=gens,
                           top_k=1, suppress_tokens=suppress)
    for p, g in enumerate(groups):
        assert len(g.completions) == 4
        for c in g.completions:
            assert c == ref[p, :len(c)].tolist()


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "top_k", "top_p"), [("independent", 0, 1.0), ("segment", 0, 1.0),
                                                     ("independent", 0, 0.9), ("segment", 20, 0.8)])
def test_sampling_logprobs_equal_training_logprobs(tiny: dict[str, Any], mode: str, top_k: int, top_p: float) -> None:
    """The training forward gives the log-probs the sampler drew with (same temperature, suppressed
    tokens, top-k / top-p truncation, positions, padding): the policy optimised is the one sampled."""
    model, processor = tiny["model"].eval(), tiny["processor"]
    images = [Image.new("RGB", (32, 32), "green"), Image.new("RGB", (48, 16), "black")]
    texts = ["Write code.", "Write matplotlib code."]
    inputs = encode_prompts(processor, images, texts)
    suppress = [*vision_token_ids(model), processor.tokenizer.pad_token_id]
    gens = [torch.Generator().manual_seed(7 + i) for i in range(2)]
    groups = sample_groups(model, inputs, TreeSampling(4, mode=mode, segment_length=3), max_new_tokens=9,
                           eos_token_ids=[model.generation_config.eos_token_id], generators=gens, temperature=0.7,
                           top_k=top_k, top_p=top_p, suppress_tokens=suppress)
    for p, g in enumerate(groups):
        prompt = encode_prompts(processor, [images[p]] * 4, [texts[p]] * 4)
        T = max(len(c) for c in g.completions)
        ids = torch.zeros(4, T, dtype=torch.long)
        mask = torch.zeros(4, T, dtype=torch.long)
        for i, c in enumerate(g.completions):
            ids[i, :len(c)] = torch.tensor(c)
            mask[i, :len(c)] = 1
        with torch.no_grad():
            logps, _ = completion_logps(model, dict(prompt), ids, mask, temperature=0.7, top_k=top_k, top_p=top_p,
                                        suppress=suppress)
        for i, lp in enumerate(g.logprobs):
            assert logps[i, :len(lp)].tolist() == pytest.approx(lp, abs=2e-5)


@pytest.mark.slow
def test_one_d_position_models_sample_and_score_alike() -> None:
    """LLaVA-style models (1-D positions, image tokens in the sequence): with left padding, greedy tree
    sampling equals ``generate`` and the sampler's log-probs equal the training forward's."""
    model, processor = build_tiny_llava(CORPUS)
    model.eval()
    images = [Image.new("RGB", (32, 32), "red"), Image.new("RGB", (32, 32), "blue")]
    texts = ["Write code.", "Write matplotlib code that reproduces this chart."]
    inputs = encode_prompts(processor, images, texts)
    assert inputs["attention_mask"].sum(1).tolist()[0] < inputs["input_ids"].shape[1]  # row 0 is left-padded
    eos = [model.generation_config.eos_token_id]
    suppress = [*vision_token_ids(model), processor.tokenizer.pad_token_id]
    ref = model.generate(**inputs, max_new_tokens=10, do_sample=False, suppress_tokens=suppress)
    ref = ref[:, inputs["input_ids"].shape[1]:]
    greedy = sample_groups(model, inputs, TreeSampling(3, mode="segment", segment_length=3), max_new_tokens=10,
                           eos_token_ids=eos, generators=[torch.Generator().manual_seed(i) for i in range(2)],
                           top_k=1, suppress_tokens=suppress)
    for p, g in enumerate(greedy):
        assert all(c == ref[p, :len(c)].tolist() for c in g.completions)
    groups = sample_groups(model, inputs, TreeSampling(3, mode="segment", segment_length=3), max_new_tokens=8,
                           eos_token_ids=eos, generators=[torch.Generator().manual_seed(i) for i in range(2)],
                           temperature=0.8)
    for p, g in enumerate(groups):
        prompt = encode_prompts(processor, [images[p]] * 3, [texts[p]] * 3)
        T = max(len(c) for c in g.completions)
        ids, mask = torch.zeros(3, T, dtype=torch.long), torch.zeros(3, T, dtype=torch.long)
        for i, c in enumerate(g.completions):
            ids[i, :len(c)], mask[i, :len(c)] = torch.tensor(c), 1
        with torch.no_grad():
            logps, _ = completion_logps(model, dict(prompt), ids, mask, temperature=0.8)
        for i, lp in enumerate(g.logprobs):
            assert logps[i, :len(lp)].tolist() == pytest.approx(lp, abs=2e-5)


@pytest.mark.slow
def test_tree_shares_prefixes_and_keeps_group_size(tiny: dict[str, Any]) -> None:
    model, processor = tiny["model"].eval(), tiny["processor"]
    inputs = encode_prompts(processor, [Image.new("RGB", (32, 32), "red")] * 3, ["Write code."] * 3)
    eos = [model.generation_config.eos_token_id]
    out = {}
    for mode in ("independent", "segment"):
        gens = [torch.Generator().manual_seed(i) for i in range(3)]
        out[mode] = sample_groups(model, inputs, TreeSampling(8, mode=mode, segment_length=4), max_new_tokens=16,
                                  eos_token_ids=eos, generators=gens)
    for g in out["independent"]:
        assert len(g.completions) == 8 and g.tokens_sampled == sum(len(c) for c in g.completions)
    for g in out["segment"]:
        assert len(g.completions) == len(g.truncated) == len(g.logprobs) == 8
        assert g.tokens_sampled < 0.7 * sum(len(c) for c in g.completions)
        assert all(c[:4] == g.completions[0][:4] for c in g.completions)  # the trunk is shared


# ------------------------------------------------------------------------------------------ training
@pytest.mark.slow
@pytest.mark.parametrize(("sampling", "lora", "beta", "iterations"), [
    ("independent", False, 0.0, 1), ("tree", True, 0.04, 2), ("tree", False, 0.04, 1), ("independent", True, 0.0, 2)])
def test_train_step(tiny: dict[str, Any], tmp_path: Path, sampling: str, lora: bool, beta: float,
                    iterations: int) -> None:
    model, processor = load(tiny)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = config(tmp_path, sampling=sampling, lora=lora, lora_r=4, lora_alpha=8, lora_target_modules=["q_proj", "v_proj"],
                 beta=beta, num_iterations=iterations, max_steps=2)
    trainer = VLMGRPOTrainer(cfg, model=model, processor=processor, reward=CharReward(), train_rows=rows())
    try:
        history = trainer.train()
    finally:
        trainer.close()
    assert [m["step"] for m in history] == [1, 2]
    m = history[-1]
    assert all(torch.isfinite(torch.tensor(m[k])) for k in ("loss", "reward/mean", "grad_norm", "entropy"))
    assert m["logprob/sampler_gap_max"] < 1e-4  # the trainer's policy is the sampler's, to float rounding
    assert ("kl" in m) == (beta > 0)
    if sampling == "tree":
        assert m["tokens/per_leaf"] < m["tokens/per_leaf_if_independent"]
    else:
        assert m["tokens/per_leaf"] == pytest.approx(m["tokens/per_leaf_if_independent"])
    trained = trainer.accelerator.unwrap_model(trainer.model)
    changed = [n for n, p in trained.named_parameters() if p.requires_grad]
    assert changed and all(("lora_" in n) == lora for n in changed)
    if not lora:
        assert any(not torch.equal(p, before[n]) for n, p in trained.named_parameters())
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["step"] == 1
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000
    assert list((tmp_path / "run").glob("checkpoint-000002/model/*.safetensors"))


@pytest.mark.slow
def test_resume_continues_exactly(tiny: dict[str, Any], tmp_path: Path) -> None:
    def run(out: Path, steps: int, resume: str | None = None) -> list[dict[str, Any]]:
        model, processor = load(tiny)
        cfg = config(out, max_steps=steps, save_every=2, sampling="tree", num_iterations=2, resume_from=resume)
        trainer = VLMGRPOTrainer(cfg, model=model, processor=processor, reward=CharReward(), train_rows=rows(6))
        try:
            return trainer.train()
        finally:
            trainer.close()

    whole = run(tmp_path / "a", 4)
    run(tmp_path / "b", 2)
    resumed = run(tmp_path / "b", 4, resume="latest")
    assert [m["step"] for m in resumed] == [3, 4]
    for a, b in zip(whole[2:], resumed, strict=True):
        for k in ("loss", "reward/mean", "grad_norm", "data/cursor", "tokens/sampled"):
            assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-7), k
    logged = [json.loads(x)["step"] for x in (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4]


TWO_PROC = """
import sys, json, torch
from PIL import Image
sys.path.insert(0, {tests!r})
from test_trainers_vlm import CharReward, rows
from visalign.trainers.config import load_config
from visalign.trainers.vlm import VLMGRPOConfig, VLMGRPOTrainer
cfg = load_config(VLMGRPOConfig, dict(model={model!r}, num_generations=4, prompts_per_step=int(sys.argv[1]),
    max_completion_length=8, max_steps=2, learning_rate=1e-2, per_device_train_batch_size=4, output_dir=sys.argv[2],
    progress=False, log_with="none", sampling="tree", tree_segment_length=3, seed=5, num_threads=1))
trainer = VLMGRPOTrainer(cfg, reward=CharReward(), train_rows=rows(8))
trainer.train()
trainer.close()
"""


@pytest.mark.slow
def test_two_processes_match_one(tiny: dict[str, Any], tmp_path: Path) -> None:
    """Each prompt samples with its own seeded generator and DAPO normalises by the tokens of the whole
    generation batch, so 2 processes x 2 prompts train the same weights as 1 process x 4 prompts."""
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(TWO_PROC.format(tests=str(Path(__file__).parent), model=tiny["path"])))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    one = subprocess.run([sys.executable, str(script), "4", str(tmp_path / "one")], env=env, capture_output=True,
                         text=True, timeout=240)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                          str(script), "2", str(tmp_path / "two")], env=env, capture_output=True, text=True,
                         timeout=240)  # --standalone: the rendezvous takes a free port
    assert two.returncode == 0, two.stderr[-3000:]
    from safetensors.torch import load_file

    a = load_file(next((tmp_path / "one").glob("checkpoint-*/model/model.safetensors")))
    b = load_file(next((tmp_path / "two").glob("checkpoint-*/model/model.safetensors")))
    assert a.keys() == b.keys()
    # The same gradients, summed in another order: one process accumulates 4 micro-batches, two processes
    # 2 each and then all-reduce, and the float32 kernels' own reduction order is not fixed from run to run
    # either. A gradient element that is a nearly cancelling sum (the key bias: attention is almost
    # invariant to shifting the keys) keeps only a few correct bits, so its relative error can reach ~1e-4;
    # AdamW's step lr * m / sqrt(v) is scale-free and turns that relative error into an absolute one of
    # lr * 1e-4 per step. Measured: up to 3.6e-6 on 2 x 1e-2 of movement (an atol of 1e-6 failed under load).
    # The bound: a 1e-3 share of the largest possible movement, max_steps x lr = 2e-2, i.e. 2e-5. A real
    # mismatch (a wrong token normaliser, unsynchronised sampling) moves weights by O(lr), 500x more.
    movement = 2 * 1e-2  # max_steps x learning_rate of TWO_PROC
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-3 * movement)
    base = load_file(Path(tiny["path"]) / "model.safetensors")
    assert any(not torch.allclose(a[k], base[k]) for k in a if k in base)  # it did train


def scripted(trainer: VLMGRPOTrainer, texts: list[str]) -> None:
    """Replace the policy's sampling with fixed completions (hostile / garbage code) for this trainer."""
    tok = trainer.tokenizer

    def sample(rows_: Any, positions: Any, plan: Any = None, greedy: bool = False) -> list[SampledGroup]:
        out = []
        for _ in rows_:
            ids = [tok(t, add_special_tokens=False)["input_ids"][:40] + trainer.eos_ids[:1] for t in texts]
            out.append(SampledGroup(completions=ids, logprobs=[[0.0] * len(i) for i in ids],
                                    truncated=[False] * len(ids), tokens_sampled=sum(map(len, ids))))
        return out

    trainer.sample = sample  # type: ignore[method-assign]


@pytest.mark.slow
def test_hostile_and_garbage_completions_are_failed_renders(tiny: dict[str, Any], tmp_path: Path) -> None:
    model, processor = load(tiny)
    cfg = config(tmp_path, max_steps=1, max_completion_length=48, render_timeout=3,
                 rewards=["execution", {"name": "render_similarity", "weight": 1.0}])
    ref = {"id": "ref", "image": Image.new("RGB", (32, 32), "white"),
           "code": "import matplotlib.pyplot as plt\nplt.bar(['a'], [1])\n"}
    trainer = VLMGRPOTrainer(cfg, model=model, processor=processor, train_rows=[ref, dict(ref, id="ref2")])
    scripted(trainer, ["no code here at all",
                       "import matplotlib.pyplot as plt\nwhile True:\n    pass\n",
                       "import matplotlib.pyplot as plt\nimport os\nos.system('curl x')\nraise SystemExit(3)\n",
                       "import matplotlib.pyplot as plt\nplt.bar(['a'], [1])\n"])
    try:
        history = trainer.train()
    finally:
        trainer.close()
    m = history[0]
    assert m["render/failed/no_code"] == 2  # one per group
    assert m["render/failed/timeout"] == 2
    assert sum(v for k, v in m.items() if k.startswith("render/failed/")) == 6
    assert m["render/ok"] == pytest.approx(0.25)
    assert m["reward/execution/mean"] == pytest.approx(0.25)


@pytest.mark.slow
def test_overlong_prompt_is_rejected_not_truncated(tiny: dict[str, Any], tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    model, processor = load(tiny)
    data = rows(3)
    data[1]["prompt"] = "Write matplotlib code " * 30
    trainer = VLMGRPOTrainer(config(tmp_path, max_prompt_length=60), model=model, processor=processor,
                             reward=CharReward(), train_rows=data)
    trainer.close()
    assert [r["id"] for r in trainer.train_rows] == ["r0", "r2"]
    assert "r1 rejected" in caplog.text and "image tokens" in caplog.text


class FlatForSomeRows(Reward):
    name = "flat_for_some"

    def score(self, samples: list[Sample]) -> RewardOutput:
        out = [0.5 if s.metadata["row_id"] not in ("r6", "r7") else len(s.completion or "") / 10 for s in samples]
        return RewardOutput(out, [{} for _ in samples])


@pytest.mark.slow
def test_dynamic_sampling_refills_groups_without_signal(tiny: dict[str, Any], tmp_path: Path) -> None:
    model, processor = load(tiny)
    cfg = config(tmp_path, dynamic_sampling=True, dynamic_sampling_rounds=4, prompts_per_step=2)
    trainer = VLMGRPOTrainer(cfg, model=model, processor=processor, reward=FlatForSomeRows(), train_rows=rows(8))
    try:
        m = trainer.train()[0]
        rollout = trainer._last_rollout
    finally:
        trainer.close()
    assert rollout is not None and len(rollout.rows) == 2 and len(rollout.completion_ids) == 8
    assert sorted(r["id"] for r in rollout.rows) == ["r6", "r7"]  # the only rows with signal
    assert m["dynamic_sampling/dropped_groups"] >= 1


@pytest.mark.slow
def test_evaluation_writes_the_report(tiny: dict[str, Any], tmp_path: Path) -> None:
    model, processor = load(tiny)
    code = "import matplotlib.pyplot as plt\nplt.bar(['a', 'b'], [1, 2])\n"
    evals = [{"id": "e0", "image": Image.new("RGB", (32, 32), "white"), "code": code}]
    cfg = config(tmp_path, rewards=["render_similarity"], render_options={"matplotlib": {"dpi": 20, "figsize": [1.6, 1.6]}})
    trainer = VLMGRPOTrainer(cfg, model=model, processor=processor, train_rows=rows(2), eval_rows=evals)
    scripted(trainer, [code])
    try:
        summary = trainer.evaluate("check")
    finally:
        trainer.close()
    out = tmp_path / "run" / "eval" / "check"
    assert (out / "report" / "report.html").exists()
    assert summary["rewards"]["execution"]["mean"] == 1.0
    assert 0.0 <= summary["rewards"]["render_similarity"]["mean"] <= 1.0
    assert json.loads((tmp_path / "run" / "eval.jsonl").read_text().splitlines()[0])["tag"] == "check"


@pytest.mark.slow
def test_cli_trains_from_a_yaml_config(tiny: dict[str, Any], tmp_path: Path) -> None:
    """``visalign data charts`` writes rows; ``visalign train grpo CONFIG --set ...`` trains on them with
    rewards by name and leaves metrics, a checkpoint and the final model."""
    from visalign.cli import main

    data = tmp_path / "data" / "train.jsonl"
    assert main(["data", "charts", "3", str(data), "--seed", "4", "--workers", "1"]) == 0
    cfg = tmp_path / "grpo.yaml"
    cfg.write_text(textwrap.dedent(f"""\
        grpo:
          model: {tiny["path"]}
          train_data: {data}
          rewards: [execution, {{name: render_similarity, weight: 2.0}}]
          render_options: {{matplotlib: {{dpi: 20, figsize: [1.6, 1.6]}}}}
          num_generations: 2
          prompts_per_step: 2
          max_completion_length: 6
          log_with: none
          progress: false
          render_workers: 1
        """))
    assert main(["train", "grpo", str(cfg), "--set", "max_steps=1", "--set", f"output_dir={tmp_path / 'out'}"]) == 0
    m = json.loads((tmp_path / "out" / "metrics.jsonl").read_text())
    assert m["step"] == 1 and "reward/render_similarity/mean" in m
    assert (tmp_path / "out" / "final.txt").read_text().strip() == "checkpoint-000001/model"
    assert main(["train", "grpo", str(cfg), "--set", "num_generations=1"]) == 2  # bad option: one line, exit 2
    assert main(["train", "grpo", str(cfg), "--set", "no_such_option=1"]) == 2


# ------------------------------------------------------------------------------ one run per directory
@pytest.mark.slow
def test_reused_output_dir_is_refused_and_overwrite_starts_clean(tiny: dict[str, Any], tmp_path: Path) -> None:
    """Issue 13.1: a second run into the same output_dir appended to metrics.jsonl and mixed the curves."""
    from visalign.trainers.runtime import OutputDirError

    def run(**overrides: Any) -> list[dict[str, Any]]:
        model, processor = load(tiny)
        trainer = VLMGRPOTrainer(config(tmp_path, **overrides), model=model, processor=processor, reward=CharReward(),
                                 train_rows=rows())
        try:
            return trainer.train()
        finally:
            trainer.close()

    run(max_steps=2)
    with pytest.raises(OutputDirError) as error:
        run(max_steps=1, learning_rate=1e-2)
    assert str(tmp_path / "run") in str(error.value) and "overwrite_output_dir" in str(error.value)
    run(max_steps=1, learning_rate=1e-2, overwrite_output_dir=True)
    logged = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged] == [1]
    assert not (tmp_path / "run" / "checkpoint-000002").exists()


@pytest.mark.slow
def test_eval_never_reads_an_earlier_score(tiny: dict[str, Any], tmp_path: Path) -> None:
    """Issue 13.1: the held-out eval resumed from the previous scoring in its directory ("resuming: 8
    samples already scored") and logged the old scores as "after"."""
    model, processor = load(tiny)
    code = "import matplotlib.pyplot as plt\nplt.bar(['a', 'b'], [1, 2])\n"
    evals = [{"id": "e0", "image": Image.new("RGB", (32, 32), "white"), "code": code}]
    cfg = config(tmp_path, rewards=["execution"], render_options={"matplotlib": {"dpi": 20, "figsize": [1.6, 1.6]}})
    trainer = VLMGRPOTrainer(cfg, model=model, processor=processor, train_rows=rows(2), eval_rows=evals)
    try:
        scripted(trainer, [code])
        assert trainer.evaluate("step_000000")["rewards"]["execution"]["mean"] == 1.0
        scripted(trainer, ["this is not code"])
        assert trainer.evaluate("step_000000")["rewards"]["execution"]["mean"] == 0.0
    finally:
        trainer.close()


def test_headroom_counts_samples_above_the_greedy_answer(tiny: dict[str, Any], tmp_path: Path) -> None:
    """scripts/grpo_headroom.py on scripted completions: the reward of greedy "abc1" is 3/4 letters; the
    samples "abcd", "ab12", "a123", "abc1" score 1, 1/2, 1/4, 3/4: mean 5/8, best 1, one of four above greedy."""
    from conftest import load_script
    from visalign.rewards import CompositeReward

    headroom = load_script("grpo_headroom")
    model, processor = load(tiny)
    trainer = VLMGRPOTrainer(config(tmp_path), model=model, processor=processor, train_rows=rows(2),
                             reward=CompositeReward([CharReward()]))
    tok, seen = trainer.tokenizer, []

    def sample(rows_: Any, positions: Any, plan: Any = None, greedy: bool = False,
               temperature: float | None = None) -> list[SampledGroup]:
        seen.append(None if greedy else temperature)
        texts = ["abc1"] if greedy else ["abcd", "ab12", "a123", "abc1"]
        ids = [tok(t, add_special_tokens=False)["input_ids"] + trainer.eos_ids[:1] for t in texts]
        return [SampledGroup(completions=ids, logprobs=[[0.0] * len(i) for i in ids], truncated=[False] * len(ids),
                             tokens_sampled=sum(map(len, ids))) for _ in rows_]

    trainer.sample = sample  # type: ignore[method-assign]
    try:
        table = headroom.headroom(trainer, trainer.train_rows, temperature=0.4)
    finally:
        trainer.close()
    assert tok.decode(tok("abc1", add_special_tokens=False)["input_ids"]) == "abc1"  # the tokenizer round-trips
    assert table == {"letters": {"greedy": 0.75, "sample_mean": 0.625, "best_of_g": 1.0, "above_greedy": 0.25}}
    assert seen == [None, 0.4, None, 0.4]  # per batch of generation_batch_size (1) rows: greedy, then T=0.4


def test_sample_takes_a_temperature_for_one_call(tiny: dict[str, Any], tmp_path: Path) -> None:
    model, processor = load(tiny)
    trainer = VLMGRPOTrainer(config(tmp_path, temperature=1.0), model=model, processor=processor, train_rows=rows(2))
    try:
        default, same, hot = (trainer.sample(trainer.train_rows, [0, 1], temperature=t) for t in (None, 1.0, 3.0))
    finally:
        trainer.close()
    assert [g.completions for g in default] == [g.completions for g in same]  # None: the config's temperature
    assert [g.logprobs for g in default] == [g.logprobs for g in same]
    assert [g.logprobs for g in hot] != [g.logprobs for g in default]  # drawn from another distribution


@pytest.mark.slow
def test_sampled_evaluation_scores_k_samples_a_row(tiny: dict[str, Any], tmp_path: Path) -> None:
    """eval_samples=3: every row gets three completions drawn at eval_temperature from the "eval" stream, at
    the row's index in the eval rows; each is scored (ids ``<row>#s<k>``) and the mean is over all of them:
    one program that renders in three completions gives execution 1/3."""
    model, processor = load(tiny)
    code = "import matplotlib.pyplot as plt\nplt.bar(['a', 'b'], [1, 2])\n"
    evals = [{"id": f"e{i}", "image": Image.new("RGB", (32, 32), "white"), "code": code} for i in range(3)]
    cfg = config(tmp_path, rewards=["execution"], eval_samples=3, eval_temperature=0.5, generation_batch_size=2,
                 render_options={"matplotlib": {"dpi": 20, "figsize": [1.6, 1.6]}})
    trainer = VLMGRPOTrainer(cfg, model=model, processor=processor, train_rows=rows(2), eval_rows=evals)
    tok, calls = trainer.tokenizer, []

    def sample(rows_: Any, positions: Any, plan: Any = None, greedy: bool = False, temperature: float | None = None,
               stream: str = "sample") -> list[SampledGroup]:
        calls.append((list(positions), plan.num_leaves, plan.mode, greedy, temperature, stream))
        ids = [tok(t, add_special_tokens=False)["input_ids"] + trainer.eos_ids[:1] for t in (code, "no", "no")]
        return [SampledGroup(completions=ids, logprobs=[[0.0] * len(i) for i in ids], truncated=[False] * 3,
                             tokens_sampled=sum(map(len, ids))) for _ in rows_]

    trainer.sample = sample  # type: ignore[method-assign]
    try:
        summary = trainer.evaluate("check")
    finally:
        trainer.close()
    assert calls == [([0, 1], 3, "independent", False, 0.5, "eval"), ([2], 3, "independent", False, 0.5, "eval")]
    gen = [json.loads(line) for line in (tmp_path / "run" / "eval" / "check" / "generations.jsonl").read_text().splitlines()]
    assert [r["id"] for r in gen] == [f"e{i}#s{k}" for i in range(3) for k in range(3)]
    assert {r["reference_image"] for r in gen} == {"refs/e0.png", "refs/e1.png", "refs/e2.png"}
    assert summary["rewards"]["execution"]["mean"] == pytest.approx(1 / 3)


def test_sampled_evaluation_draws_do_not_depend_on_batching(tiny: dict[str, Any], tmp_path: Path) -> None:
    model, processor = load(tiny)
    got = []
    for batch in (1, 3):
        trainer = VLMGRPOTrainer(config(tmp_path / str(batch), eval_samples=2, generation_batch_size=batch),
                                 model=model, processor=processor, train_rows=rows(2), eval_rows=rows(3))
        try:
            got.append(trainer.eval_completions(trainer.eval_rows))
        finally:
            trainer.close()
    assert [(r["id"], t, k) for r, t, k in got[0]] == [(r["id"], t, k) for r, t, k in got[1]]
    assert [k for _, _, k in got[0]] == [0, 1, 0, 1, 0, 1]


@pytest.mark.parametrize("bad", [{"eval_samples": -1}, {"eval_temperature": 0.0}])
def test_bad_eval_sampling_is_refused(tmp_path: Path, bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="eval_samples must be >= 0 and eval_temperature > 0"):
        config(tmp_path, **bad)
