"""Every VLM family visalign trains, tiny and offline (issue 11): each is built from its real config,
model and processor classes with random weights (``visalign.models.tiny_vlm.build_tiny_vlm``), saved
and loaded back the way users load checkpoints, and held to:

- sampler log-probs = training log-probs under the trainer's real processing (temperature, suppressed
  vision / pad tokens, top-k and top-p), on left-padded batches of two prompts of different lengths;
- greedy sampling = ``generate`` (with the same suppressed tokens);
- one LoRA and one full GRPO step through :class:`VLMGRPOTrainer`, the checkpoint loaded back equal.

Models are built once per family (module scope) at 32x32 images; the file is meant for CI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from visalign.models.tiny_vlm import VLM_FAMILIES, build_tiny_vlm
from visalign.rewards import Reward, RewardOutput, Sample
from visalign.trainers.config import load_config
from visalign.trainers.prompting import encode_prompts, vision_token_ids
from visalign.trainers.tree import TreeSampling, sample_groups
from visalign.trainers.vlm import VLMGRPOConfig, VLMGRPOTrainer, completion_logps

CORPUS = ["import matplotlib.pyplot as plt\nplt.bar(['a', 'b'], [3, 4])\nplt.title('Sales')\n",
          "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [2, 5, 1], color='red')\n",
          "Write matplotlib code that reproduces this chart."] * 4
IMAGES = [Image.new("RGB", (32, 32), "green"), Image.new("RGB", (48, 20), "navy")]
TEXTS = ["Write code.", "Write matplotlib code that reproduces this chart, please."]  # different lengths
# (temperature, top_k, top_p) of the trainer's sampling distribution checked per family
PROCESSING = (0.8, 40, 0.9)

_BUILT: dict[str, dict[str, Any]] = {}


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``family -> {model, processor, path}``: built once per family, saved, and loaded back."""

    def get(family: str) -> dict[str, Any]:
        if family not in _BUILT:
            from transformers import AutoModelForImageTextToText, AutoProcessor

            model, processor = build_tiny_vlm(family, CORPUS)
            path = tmp_path_factory.mktemp(family)
            model.save_pretrained(path)
            processor.save_pretrained(path)
            loaded = AutoModelForImageTextToText.from_pretrained(path).eval()
            loaded_processor = AutoProcessor.from_pretrained(path)
            assert type(loaded) is type(model) and type(loaded_processor) is type(processor)
            for (n, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
                assert torch.equal(a, b), n
            _BUILT[family] = {"model": loaded, "processor": loaded_processor, "path": str(path)}
        return _BUILT[family]

    yield get
    _BUILT.clear()


def suppressed(model: Any, processor: Any) -> list[int]:
    """The trainer's suppress list (vision markup and padding, never EOS)."""
    eos = model.generation_config.eos_token_id
    return sorted({*vision_token_ids(model, processor=processor), processor.tokenizer.pad_token_id} - {eos})


def padded(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(s) for s in seqs)
    ids, mask = torch.zeros(len(seqs), T, dtype=torch.long), torch.zeros(len(seqs), T, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], mask[i, :len(s)] = torch.tensor(s), 1
    return ids, mask


@pytest.mark.slow
@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_sampler_logprobs_equal_training_logprobs(saved: Any, family: str) -> None:
    """Tokens drawn by the KV-cached tree sampler score the same under the training forward (one
    left-padded batch mixing both prompts), with the trainer's suppression and top-k / top-p."""
    model, processor = saved(family)["model"], saved(family)["processor"]
    inputs = encode_prompts(processor, IMAGES, TEXTS)
    lengths = inputs["attention_mask"].sum(1).tolist()
    assert lengths[0] < lengths[1] == inputs["input_ids"].shape[1]  # row 0 is left-padded
    temperature, top_k, top_p = PROCESSING
    suppress = suppressed(model, processor)
    G = 3
    groups = sample_groups(model, inputs, TreeSampling(G, mode="segment", segment_length=2), max_new_tokens=7,
                           eos_token_ids=[model.generation_config.eos_token_id],
                           generators=[torch.Generator().manual_seed(11 + p) for p in range(2)],
                           temperature=temperature, top_k=top_k, top_p=top_p, suppress_tokens=suppress)
    completions = [c for g in groups for c in g.completions]
    sampled = [lp for g in groups for lp in g.logprobs]
    assert not any(t in suppress for c in completions for t in c)
    prompt = encode_prompts(processor, [IMAGES[0]] * G + [IMAGES[1]] * G, [TEXTS[0]] * G + [TEXTS[1]] * G)
    ids, mask = padded(completions)
    with torch.no_grad():
        logps, entropy = completion_logps(model, dict(prompt), ids, mask, temperature, top_k=top_k, top_p=top_p,
                                          suppress=suppress)
    assert torch.isfinite(entropy).all()
    for i, lp in enumerate(sampled):
        # float32 reductions in another order (full forward vs KV cache, other batch shapes): ~1e-6 here
        torch.testing.assert_close(logps[i, :len(lp)], torch.tensor(lp), rtol=0, atol=2e-4)


@pytest.mark.slow
@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_greedy_sampling_equals_generate(saved: Any, family: str) -> None:
    model, processor = saved(family)["model"], saved(family)["processor"]
    inputs = encode_prompts(processor, IMAGES, TEXTS)
    suppress = suppressed(model, processor)
    inner = getattr(model, "model", None)
    if hasattr(inner, "rope_deltas"):
        inner.rope_deltas = None
    ref = model.generate(**inputs, max_new_tokens=6, do_sample=False, suppress_tokens=suppress)
    ref = ref[:, inputs["input_ids"].shape[1]:]
    groups = sample_groups(model, inputs, TreeSampling(2, mode="segment", segment_length=2), max_new_tokens=6,
                           eos_token_ids=[model.generation_config.eos_token_id],
                           generators=[torch.Generator().manual_seed(p) for p in range(2)], top_k=1,
                           suppress_tokens=suppress)
    for p, g in enumerate(groups):
        for c in g.completions:
            assert c == ref[p, :len(c)].tolist()


class Letters(Reward):
    """A text reward with spread on random completions: the share of letters."""

    name = "letters"

    def score(self, samples: list[Sample]) -> RewardOutput:
        scores = [sum(ch.isalpha() for ch in (s.completion or "")) / max(1, len(s.completion or "")) + 0.01 * i
                  for i, s in enumerate(samples)]
        return RewardOutput(scores, [{} for _ in samples])


@pytest.mark.slow
@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_grpo_step_saves_and_reloads(saved: Any, tmp_path: Path, family: str, lora: bool) -> None:
    """One GRPO step from the saved checkpoint (as users load it), then its final checkpoint loads back
    with the trained weights."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = saved(family)["path"]
    temperature, top_k, top_p = PROCESSING
    cfg = load_config(VLMGRPOConfig, {
        "model": path, "num_generations": 2, "prompts_per_step": 2, "generation_batch_size": 2,
        "max_completion_length": 5, "max_steps": 1, "learning_rate": 1e-2, "per_device_train_batch_size": 4,
        "output_dir": str(tmp_path / "run"), "progress": False, "log_with": "none", "render_workers": 1, "seed": 1,
        "temperature": temperature, "top_k": top_k, "top_p": top_p, "eval_before": False,
        "lora": lora, "lora_r": 2, "lora_alpha": 4, "lora_target_modules": ["q_proj", "v_proj"]})
    rows = [{"id": f"r{i}", "image": IMAGES[i], "prompt": TEXTS[i]} for i in range(2)]
    trainer = VLMGRPOTrainer(cfg, reward=Letters(), train_rows=rows)
    try:
        m = trainer.train()[0]
        trained = trainer.accelerator.unwrap_model(trainer.model)
    finally:
        trainer.close()
    assert torch.isfinite(torch.tensor([m["loss"], m["grad_norm"]])).all() and m["grad_norm"] > 0
    assert m["logprob/sampler_gap_max"] < 2e-4
    out = tmp_path / "run" / (tmp_path / "run" / "final.txt").read_text().strip()
    if lora:
        from peft import PeftModel

        base = AutoModelForImageTextToText.from_pretrained(path)
        reloaded = PeftModel.from_pretrained(base, out)
        names = [n for n, _ in trained.named_parameters() if "lora_" in n]
        assert names
    else:
        reloaded = AutoModelForImageTextToText.from_pretrained(out)
        names = [n for n, _ in trained.named_parameters()]
    assert type(AutoProcessor.from_pretrained(out)) is type(saved(family)["processor"])
    mine, theirs = dict(trained.named_parameters()), dict(reloaded.named_parameters())
    for n in names:
        torch.testing.assert_close(theirs[n], mine[n], rtol=0, atol=0)
    if lora:  # LoRA B starts at zero: a step moved it
        assert any(bool(mine[n].abs().sum() > 0) for n in names if "lora_B" in n)
    else:
        base = saved(family)["model"].state_dict()
        assert any(not torch.equal(mine[n], base[n]) for n in names if n in base)


@pytest.mark.parametrize("family", ["qwen3_vl", "smolvlm", "gemma3", "internvl"])
def test_check_model_names_family_and_processor_path(saved: Any, family: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from visalign.cli import main
    from visalign.models.support import SUPPORTED_VLMS

    assert main(["train", "grpo", "--check-model", saved(family)["path"]]) == 0
    out = capsys.readouterr().out
    assert f"family: {SUPPORTED_VLMS[family].name} " in out and "supported: yes" in out
    assert f"processor: {type(saved(family)['processor']).__name__}" in out


def test_check_model_refuses_an_unsupported_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from visalign.cli import main
    from visalign.models.tiny_vlm import build_tokenizer

    tok = build_tokenizer(CORPUS, vocab_size=300)
    Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2)).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert main(["train", "grpo", "--check-model", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "model_type 'qwen2' is not a supported VLM family" in out and "supported: no" in out


@pytest.mark.slow
@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_multi_image_prompts(saved: Any, family: str) -> None:
    """Prompts showing two images (a pairwise judge's), batched with a one-image prompt: each image gets
    its own image tokens, the one-image prompt encodes as it does alone, and sampler log-probs equal
    training log-probs on the left-padded batch."""
    model, processor = saved(family)["model"], saved(family)["processor"]
    image_id = getattr(model.config, "image_token_id", None) or getattr(model.config, "image_token_index", None)
    one = encode_prompts(processor, [IMAGES[0]], [TEXTS[1]])
    two = encode_prompts(processor, [[IMAGES[0], IMAGES[1]]], [TEXTS[1]])
    n_one, n_two = int((one["input_ids"] == image_id).sum()), int((two["input_ids"] == image_id).sum())
    assert n_one > 0 and n_two > 0
    if family == "llava_onevision":  # several images: base features only, no anyres tiles (transformers' rule)
        assert n_two < 2 * n_one
    else:  # the second image has tokens of its own
        assert n_two > n_one
    batch = encode_prompts(processor, [[IMAGES[0], IMAGES[1]], IMAGES[0]], [TEXTS[0], TEXTS[1]])
    lengths = batch["attention_mask"].sum(1).tolist()
    row = batch["input_ids"][1][batch["attention_mask"][1].bool()]
    assert torch.equal(row, one["input_ids"][0])  # a one-image prompt is unchanged by its batch-mate's two images
    temperature, top_k, top_p = PROCESSING
    suppress = suppressed(model, processor)
    groups = sample_groups(model, batch, TreeSampling(2), max_new_tokens=5,
                           eos_token_ids=[model.generation_config.eos_token_id],
                           generators=[torch.Generator().manual_seed(5 + p) for p in range(2)],
                           temperature=temperature, top_k=top_k, top_p=top_p, suppress_tokens=suppress)
    completions = [c for g in groups for c in g.completions]
    sampled = [lp for g in groups for lp in g.logprobs]
    prompt = encode_prompts(processor, [[IMAGES[0], IMAGES[1]]] * 2 + [IMAGES[0]] * 2, [TEXTS[0]] * 2 + [TEXTS[1]] * 2)
    ids, mask = padded(completions)
    with torch.no_grad():
        logps, _ = completion_logps(model, dict(prompt), ids, mask, temperature, top_k=top_k, top_p=top_p,
                                    suppress=suppress)
    assert lengths[0] != lengths[1]
    for i, lp in enumerate(sampled):
        torch.testing.assert_close(logps[i, :len(lp)], torch.tensor(lp), rtol=0, atol=2e-4)


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_the_tiny_model_sees_its_image(saved: Any, family: str) -> None:
    """Every family's tiny model reads the image (Gemma 3 initialises its image projection to zeros, so
    its tiny model once answered the same whatever it was shown and the tests above checked text only)."""
    model, processor = saved(family)["model"], saved(family)["processor"]
    shown = Image.new("RGB", (32, 32), "green"), Image.new("RGB", (32, 32), "navy")
    with torch.no_grad():
        last = [model(**encode_prompts(processor, [image], [TEXTS[0]])).logits[0, -1] for image in shown]
    assert (last[0] - last[1]).abs().max() > 1e-4, family  # float32 logits of width-32 models differ ~1e-2
