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
        "use_lora": True, "lora_r": 4, "lora_target_modules": ["q_proj", "v_proj"], "learning_rate": 1e-3,
        "output_dir": str(tmp_path / "lora"), "progress": False, "num_threads": 1}}))
    summary = train_sft_from_config(path)
    assert summary["steps"] == 3
    assert (tmp_path / "lora" / "adapter_config.json").exists()
    assert yaml.safe_load((tmp_path / "lora" / "sft_config.yaml").read_text())["use_lora"] is True
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
