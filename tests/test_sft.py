"""SFT on a tiny random Qwen2-VL: labels, learning, checkpoints that reload and generate."""

from __future__ import annotations

import json
import random

import pytest
import torch
import yaml
from PIL import Image

from visalign.data import chart_corpus, chart_whole_words, random_chart_code, write_jsonl
from visalign.models.tiny_vlm import build_processor, build_tiny_qwen2vl, build_tokenizer
from visalign.trainers.config import load_config
from visalign.trainers.prompting import DEFAULT_INSTRUCTIONS, PromptTooLongError
from visalign.trainers.sft import (
    SFTConfig,
    SFTTrainer,
    build_sft_batch,
    generate_codes,
    train_sft_from_config,
)

INSTRUCTION = DEFAULT_INSTRUCTIONS["matplotlib"]
COLOURS = ["red", "blue", "green", "orange"]


@pytest.fixture(scope="module")
def processor():
    corpus = chart_corpus(300, seed=0) + [INSTRUCTION, "user", "assistant"] * 50
    return build_processor(build_tokenizer(corpus, vocab_size=320, whole_words=chart_whole_words()), image_size=32)


def tiny_model(processor):
    return build_tiny_qwen2vl(processor, hidden_size=32, num_layers=1, num_heads=2, vision_width=32, vision_depth=1)


def rows(n: int = 4) -> list[dict]:
    """Charts whose picture is a flat colour: the code's colour is readable from the image."""
    rng = random.Random(0)
    out = []
    for i in range(n):
        code = random_chart_code(rng, ("bar", "line")[i % 2])
        out.append({"id": i, "image": Image.new("RGB", (32, 32), COLOURS[i % 4]), "prompt": INSTRUCTION,
                    "code": code, "kind": "matplotlib"})
    return out


def config(tmp_path, **kw) -> SFTConfig:
    base = {"output_dir": str(tmp_path / "run"), "batch_size": 4, "learning_rate": 3e-3, "lr_scheduler": "constant",
            "log_every": 1, "progress": False, "num_threads": 1, "seed": 0}
    return load_config(SFTConfig, {**base, **kw})


@pytest.mark.slow
def test_labels_cover_exactly_the_answer_and_eos(processor) -> None:
    data = rows(3)
    data[1]["code"] = "import matplotlib.pyplot as plt"  # shorter answer: right padding
    batch = build_sft_batch(processor, [r["image"] for r in data], [r["prompt"] for r in data],
                            [r["code"] for r in data])
    tok = processor.tokenizer
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert ids.shape == labels.shape == mask.shape == batch["mm_token_type_ids"].shape
    for i, row in enumerate(data):
        answer = labels[i] != -100
        expected = tok(row["code"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert ids[i][answer].tolist() == expected == labels[i][answer].tolist()
        assert tok.decode(ids[i][answer]) == row["code"] + "<|im_end|>"
        # everything before the answer is prompt (or left padding) and is masked
        first = int(answer.nonzero()[0])
        assert (labels[i][:first] == -100).all() and int(answer.sum()) == len(expected)
        assert tok.decode(ids[i][:first][mask[i][:first] == 1]).endswith("<|im_start|>assistant\n")
        assert (mask[i][first + len(expected):] == 0).all()  # right padding after EOS
    # the image tokens sit in the prompt, where the processor put them
    assert int((ids == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum()) == 3 * 4

    n_prompt = int(batch["attention_mask"][0].sum()) - int((labels[0] != -100).sum())
    cut = build_sft_batch(processor, [data[0]["image"]], [INSTRUCTION], [data[0]["code"]], max_length=n_prompt + 3)
    assert int((cut["labels"] != -100).sum()) == 3
    with pytest.raises(PromptTooLongError, match="visalign never truncates a prompt"):
        build_sft_batch(processor, [data[0]["image"]], [INSTRUCTION], [data[0]["code"]], max_length=10)


@pytest.mark.slow
def test_loss_decreases_and_checkpoints_reload_and_generate(processor, tmp_path) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    data = rows(4)
    cfg = config(tmp_path, max_steps=40, save_every=20)
    trainer = SFTTrainer(cfg, model=tiny_model(processor), processor=processor, train_rows=data, eval_rows=data[:2])
    summary = trainer.train()
    log = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert summary["steps"] == 40 and len(losses) == 40
    assert set(log[0]) >= {"step", "loss", "lr", "seconds"}
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    assert summary["eval_loss"] is not None and log[-1]["eval_loss"] == pytest.approx(summary["eval_loss"], abs=1e-5)

    ckpt = tmp_path / "run" / "checkpoint-20"
    assert (ckpt / "optimizer.pt").exists() and (ckpt / "model.safetensors").exists()
    assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == 20
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "run")
    proc = AutoProcessor.from_pretrained(tmp_path / "run")
    trained = trainer.accelerator.unwrap_model(trainer.model)
    for name, p in trained.state_dict().items():
        assert torch.equal(p, model.state_dict()[name]), name
    for r in data:  # the reloaded tokenizer splits code as the trained one did
        assert proc.tokenizer(r["code"])["input_ids"] == processor.tokenizer(r["code"])["input_ids"]
    outs = generate_codes(model, proc, [r["image"] for r in data[:2]], [INSTRUCTION] * 2, max_new_tokens=20)
    assert len(outs) == 2 and all(isinstance(o, str) and o for o in outs)
    assert all("<|image_pad|>" not in o for o in outs)


def test_yaml_config_with_jsonl_data_and_lora(processor, tmp_path) -> None:
    tiny_model(processor).save_pretrained(tmp_path / "base")
    processor.save_pretrained(tmp_path / "base")
    data = write_jsonl(rows(4), tmp_path / "train.jsonl")
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump({"sft": {
        "model": str(tmp_path / "base"), "train_data": str(data), "max_steps": 3, "batch_size": 2,
        "lora": True, "lora_r": 4, "lora_target_modules": ["q_proj", "v_proj"], "learning_rate": 1e-3,
        "output_dir": str(tmp_path / "lora"), "progress": False, "num_threads": 1}}))
    summary = train_sft_from_config(path)
    assert summary["steps"] == 3
    assert (tmp_path / "lora" / "adapter_config.json").exists()
    assert yaml.safe_load((tmp_path / "lora" / "sft_config.yaml").read_text())["lora"] is True
    with pytest.raises(ValueError, match=r"unknown SFTConfig option\(s\) 'epoch' \(did you mean 'epochs'\?\)"):
        train_sft_from_config({"epoch": 1})
    with pytest.raises(ValueError, match="SFT needs an image and code in every training row"):
        SFTTrainer(config(tmp_path), model=tiny_model(processor), processor=processor,
                   train_rows=[{"id": "x", "image": None, "code": "import matplotlib", "prompt": INSTRUCTION}])


def test_a_reused_output_dir_is_refused_unless_overwritten(processor, tmp_path) -> None:
    """SFT writes its final weights straight into output_dir: a directory holding them (or metrics.jsonl)
    is a previous run, refused without overwrite_output_dir; overwriting deletes only its artefacts."""
    from visalign.trainers.runtime import OutputDirError

    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(b"old")
    (run / "config.json").write_text("{}")
    (run / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirError, match=r"model\.safetensors"):
        SFTTrainer(config(tmp_path), model=tiny_model(processor), processor=processor, train_rows=rows(2))
    SFTTrainer(config(tmp_path, overwrite_output_dir=True), model=tiny_model(processor), processor=processor,
               train_rows=rows(2))
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]


# ------------------------------------------------------------------------------------------- resume
class Preempted(Exception):
    """The job stopped from outside (a preemption, a crash) in the middle of a step."""


class PreemptedTrainer(SFTTrainer):
    """Stops inside the forward pass of the first micro-batch after ``stop_after`` steps, when a later
    checkpoint is not yet written but ``metrics.jsonl`` already holds steps after the last one."""

    stop_after = 0

    def _forward_loss(self, batch):
        if self.model.training and self.step >= self.stop_after:
            raise Preempted
        return super()._forward_loss(batch)


def _losses(run) -> list[tuple[int, float, float]]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["lr"]) for r in lines if "loss" in r]


@pytest.mark.parametrize("variant", ["full", "lora"])
def test_resume_gives_the_weights_of_an_uninterrupted_run(processor, tmp_path, variant: str) -> None:
    """N steps straight vs k steps, a stop, and a new trainer with ``resume_from: latest`` to N.

    full: cosine schedule with warmup and gradient accumulation over 10 rows in micro-batches of 4 (3 per
    epoch: two steps of 2 + 1 micro-batches), save_every 3; the run is preempted during step 6, after
    steps 4 and 5 were logged, so the resume starts from checkpoint-3, inside epoch 1 (micro-batch 5).
    lora: LoRA with dropout (the RNG must be restored), a run of k = 3 steps that finished (its final
    save in output_dir is the latest state), extended to N = 5 (constant learning rate, so the k-step
    run's schedule is the N-step run's).

    Tolerance: on CPU in float32 the resumed run repeats the same operations in the same order on the same
    bits (weights, Adam moments and step, lr, data order, dropout masks: each restored, or recomputed from
    the seed), so the weights come out bitwise equal (seen here). atol 1e-6 is about 8 float32 ulps at
    |w| = 1 (the spacing below 1 is at most 1.2e-7; these weights are mostly ~0.02): room for a kernel that
    reorders a sum, and far below what any lost piece of state does: Adam moves every weight that has a
    gradient by about lr = 3e-3 per step, so a missing optimizer state, a shifted batch, another dropout
    mask or another learning rate shows up at ~1e-4 or more after one step.
    """
    data = rows(10 if variant == "full" else 6)
    if variant == "full":
        opts = {"max_steps": 7, "lr_scheduler": "cosine", "warmup_steps": 2, "gradient_accumulation_steps": 2,
                "save_every": 3}
    else:
        opts = {"max_steps": 5, "batch_size": 2, "lora": True, "lora_r": 4, "lora_dropout": 0.3,
                "lora_target_modules": ["q_proj", "v_proj"]}
    straight = SFTTrainer(config(tmp_path / "a", **opts), model=tiny_model(processor), processor=processor,
                          train_rows=data)
    straight.train()

    run = tmp_path / "b" / "run"
    if variant == "full":
        first = PreemptedTrainer(config(tmp_path / "b", **opts), model=tiny_model(processor), processor=processor,
                                 train_rows=data)
        first.stop_after = 5
        with pytest.raises(Preempted):
            first.train()
        assert [s for s, _, _ in _losses(run)] == [1, 2, 3, 4, 5] and (run / "checkpoint-3").is_dir()
        position = (run / "checkpoint-3", 3, 5)  # micro-batches: 3 in epoch 0, then 2 of epoch 1
    else:
        SFTTrainer(config(tmp_path / "b", **{**opts, "max_steps": 3}), model=tiny_model(processor),
                   processor=processor, train_rows=data).train()
        position = (run, 3, 3)  # the finished run's final save, at the end of epoch 0
    resumed = SFTTrainer(config(tmp_path / "b", **opts, resume_from="latest"), model=tiny_model(processor),
                         processor=processor, train_rows=data)
    assert (resumed.resumed_from, resumed.step, resumed.micro) == position
    summary = resumed.train()
    assert summary["steps"] == opts["max_steps"]

    a = straight.accelerator.unwrap_model(straight.model).state_dict()
    b = resumed.accelerator.unwrap_model(resumed.model).state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=0, atol=1e-6), name
    # the optimizer is where the uninterrupted one is too: Adam's step count and moments
    sa, sb = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert sa.keys() == sb.keys() and all(int(sa[i]["step"]) == int(sb[i]["step"]) == opts["max_steps"] for i in sa)
    for i in sa:
        for moment in ("exp_avg", "exp_avg_sq"):
            assert torch.allclose(sa[i][moment], sb[i][moment], rtol=1e-5, atol=0), (i, moment)
    # metrics: every step once, with the uninterrupted run's losses and learning rates
    logged = _losses(run)
    assert [s for s, _, _ in logged] == list(range(1, opts["max_steps"] + 1))
    expected = _losses(tmp_path / "a" / "run")
    assert [x for r in logged for x in r] == pytest.approx([x for r in expected for x in r], abs=1e-6)


def test_resume_from_a_missing_or_unusable_checkpoint_fails_before_the_model_loads(processor, tmp_path) -> None:
    """``model`` names no directory: loading it would raise OSError, so an OutputDirError means the
    resume point was checked first."""
    from visalign.trainers.runtime import OutputDirError

    absent = str(tmp_path / "no-model")
    with pytest.raises(OutputDirError, match=r"resume_from: .*no-such-checkpoint is not a directory"):
        SFTTrainer(config(tmp_path, model=absent, resume_from=str(tmp_path / "no-such-checkpoint")),
                   train_rows=rows(2))
    run = tmp_path / "run"
    (run / "checkpoint-2").mkdir(parents=True)  # weights only: saved with save_optimizer: false
    (run / "checkpoint-2" / "model.safetensors").write_bytes(b"")
    with pytest.raises(OutputDirError, match=r"no resumable save .*checkpoint-2 have no trainer_state\.json"):
        SFTTrainer(config(tmp_path, model=absent, resume_from="latest"), train_rows=rows(2))
    with pytest.raises(OutputDirError, match="is not a resumable SFT save"):
        SFTTrainer(config(tmp_path, model=absent, resume_from=str(run / "checkpoint-2")), train_rows=rows(2))
    (run / "checkpoint-2" / "trainer_state.json").write_text(json.dumps({"step": 2, "total_steps": 4}))
    with pytest.raises(OutputDirError, match="older visalign without the data position"):
        SFTTrainer(config(tmp_path, model=absent, resume_from="latest"), train_rows=rows(2))
    # 'latest' with nothing saved yet is a fresh start, as in every trainer
    fresh = SFTTrainer(config(tmp_path / "fresh", resume_from="latest"), model=tiny_model(processor),
                       processor=processor, train_rows=rows(2))
    assert fresh.resumed_from is None and fresh.step == 0


def test_cli_resumes_a_full_fine_tune_from_its_final_save(processor, tmp_path) -> None:
    """``visalign train sft CONFIG --set resume_from=latest``: the config file's model is a directory, so a
    resumed full fine-tune loads the save's weights with ``from_pretrained`` (not the base's); a run of
    2 steps (save_every 0: its only save is the final one) extended to 3 equals a run of 3 (constant lr)."""
    from safetensors.torch import load_file

    from visalign.cli import main

    tiny_model(processor).save_pretrained(tmp_path / "base")
    processor.save_pretrained(tmp_path / "base")
    write_jsonl(rows(6), tmp_path / "train.jsonl")
    base = {"model": "base", "train_data": "train.jsonl", "batch_size": 4, "learning_rate": 3e-3,
            "lr_scheduler": "constant", "progress": False, "num_threads": 1, "log_every": 1}
    for name, steps in (("a", 3), ("b", 2)):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({"sft": {**base, "max_steps": steps, "output_dir": name}}))
        assert main(["train", "sft", str(tmp_path / f"{name}.yaml")]) == 0
    # resumed at its last step: nothing to train, nothing logged twice
    assert main(["train", "sft", str(tmp_path / "b.yaml"), "--set", "resume_from=latest"]) == 0
    assert [s for s, _, _ in _losses(tmp_path / "b")] == [1, 2]
    assert main(["train", "sft", str(tmp_path / "b.yaml"), "--set", "resume_from=latest", "--set", "max_steps=3"]) == 0
    assert json.loads((tmp_path / "b" / "trainer_state.json").read_text())["step"] == 3
    assert [s for s, _, _ in _losses(tmp_path / "b")] == [1, 2, 3]
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)
