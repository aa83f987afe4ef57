"""One GRPO step on chart-to-code prompts: independent sampling vs prefix-tree sampling.

Same prompts, same group size, same model, same rewards; prints the tokens sampled per leaf, the
seconds of each stage and the ratio tree / independent. Goal (issue 4): tree sampling samples at least
30 % fewer tokens per leaf at equal group size.

    .venv/bin/python benchmarks/vlm_grpo_step.py                          # the shipped tiny policy, CPU
    .venv/bin/python benchmarks/vlm_grpo_step.py --markdown --steps 3
    python benchmarks/vlm_grpo_step.py --qwen25-vl-7b-shape --device cuda  # random 7B-shaped model, bf16

The 7B-shaped model (Qwen2.5-VL-7B's text and vision sizes, random weights, the tiny tokenizer's
vocabulary padded to 152,064 rows) never emits EOS, so every leaf runs to ``--max-new-tokens``: what is
measured there is the sampler and the update at that size, not chart quality.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("generate", "render", "score", "train", "step")


def tiny_or_shipped(path: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    if (path / "config.json").exists():
        return AutoModelForImageTextToText.from_pretrained(path), AutoProcessor.from_pretrained(path)
    from visalign.data.charts import chart_corpus, chart_whole_words
    from visalign.models.tiny_vlm import build_processor, build_tiny_qwen2vl, build_tokenizer

    print(f"# {path} not found: a random tiny policy instead (its completions are not chart code)")
    tok = build_tokenizer(chart_corpus(500, seed=1), vocab_size=400, whole_words=chart_whole_words())
    processor = build_processor(tok, image_size=96)
    return build_tiny_qwen2vl(processor), processor


def qwen25_vl_7b_shaped(processor: Any, dtype: torch.dtype) -> Any:
    """Qwen2.5-VL-7B's sizes with random weights (text 3584 x 28 layers, GQA 28/4, vision 1280 x 32)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tok = processor.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>", "<|image_pad|>", "<|video_pad|>",
                                                    "<|vision_start|>", "<|vision_end|>")}
    config = Qwen2_5_VLConfig(
        text_config={"vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                     "num_attention_heads": 28, "num_key_value_heads": 4, "max_position_embeddings": 32768,
                     "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"], "bos_token_id": None,
                     "rope_parameters": {"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1e6}},
        vision_config={"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                       "out_hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
                       "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31]},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    with torch.device("cuda"):
        model = Qwen2_5_VLForConditionalGeneration(config).to(dtype)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    return model


def run(mode: str, args: argparse.Namespace, rows: list[dict[str, Any]], out: Path) -> dict[str, float]:
    from visalign.data.charts import CHART_RENDER_OPTIONS
    from visalign.trainers.config import load_config
    from visalign.trainers.vlm import VLMGRPOConfig, VLMGRPOTrainer

    model, processor = tiny_or_shipped(Path(args.model))
    if args.qwen25_vl_7b_shape:
        model = qwen25_vl_7b_shaped(processor, torch.bfloat16)
    cfg = load_config(VLMGRPOConfig, {
        "num_generations": args.group, "prompts_per_step": args.prompts, "generation_batch_size": args.prompts,
        "max_completion_length": args.max_new_tokens, "max_steps": args.steps, "sampling": mode,
        "tree_segment_length": args.segment, "tree_branch_factor": 2, "learning_rate": 1e-5,
        "rewards": [{"name": "render_similarity", "weight": 1.0}, {"name": "chart_code", "weight": 1.0}],
        "render_options": {"matplotlib": dict(CHART_RENDER_OPTIONS)}, "render_workers": args.workers,
        "per_device_train_batch_size": args.micro_batch, "output_dir": str(out / mode), "log_with": "none",
        "progress": False, "log_completions": 0, "seed": 0, "eval_before": False,
        "mixed_precision": "bf16" if args.device == "cuda" else "no", "gradient_checkpointing": args.device == "cuda",
        "num_threads": args.threads})
    trainer = VLMGRPOTrainer(cfg, model=model, processor=processor, train_rows=rows)
    try:
        history = [trainer.step() for _ in range(args.steps)]
    finally:
        trainer.close()
    keep = history[1:] if len(history) > 1 else history  # the first step also starts the render workers
    mean = {k: statistics.mean(h[k] for h in keep) for k in ("tokens/per_leaf", "tokens/per_leaf_if_independent",
                                                              "reward/mean", "completion/length_mean",
                                                              "completion/distinct_per_group")}
    for s in STAGES:
        mean[s] = statistics.mean(h.get(f"time/{s}", 0.0) for h in keep)
    return mean


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "models" / "tiny-chart-vlm"))
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--segment", type=int, default=8, help="tree: tokens between splits")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--qwen25-vl-7b-shape", action="store_true")
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args()
    if args.qwen25_vl_7b_shape and args.device != "cuda":
        p.error("--qwen25-vl-7b-shape needs --device cuda")
    logging.basicConfig(level=logging.WARNING)
    from visalign.data.charts import chart_dataset

    t0 = time.perf_counter()
    rows = chart_dataset(args.prompts * args.steps, seed=2026, workers=args.workers)
    print(f"# {len(rows)} held-out charts rendered in {time.perf_counter() - t0:.1f}s")
    with tempfile.TemporaryDirectory() as tmp:
        results = {mode: run(mode, args, rows, Path(tmp)) for mode in ("independent", "tree")}
    a, b = results["independent"], results["tree"]
    ratio = b["tokens/per_leaf"] / a["tokens/per_leaf"]
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    model = "Qwen2.5-VL-7B-shaped (random)" if args.qwen25_vl_7b_shape else Path(args.model).name
    if args.markdown:
        print("| sampling | tokens/leaf | completion length | distinct / group | reward | generate s | render s | "
              "score s | train s | step s |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for mode, r in results.items():
            print(f"| {mode} | {r['tokens/per_leaf']:.1f} | {r['completion/length_mean']:.1f} | "
                  f"{r['completion/distinct_per_group']:.2f} | {r['reward/mean']:.3f} | "
                  f"{r['generate']:.2f} | {r['render']:.2f} | {r['score']:.2f} | {r['train']:.2f} | {r['step']:.2f} |")
        print(f"\n{model} on {device}; {args.prompts} prompts x {args.group} leaves, segment {args.segment}: "
              f"tree/independent tokens per leaf = {ratio:.2f} ({1 - ratio:.0%} fewer), step time ratio "
              f"{b['step'] / a['step']:.2f}")
    else:
        for mode, r in results.items():
            print(mode, {k: round(v, 3) for k, v in r.items()})
        print(f"tokens per leaf, tree / independent: {ratio:.3f} ({1 - ratio:.0%} fewer); "
              f"step seconds ratio {b['step'] / a['step']:.2f}; {model} on {device}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
