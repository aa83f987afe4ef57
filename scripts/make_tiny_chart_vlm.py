"""Make the embedded default chart-to-code policy: a tiny Qwen2-VL trained from scratch on CPU.

Steps (all seeded): render synthetic bar / line charts (visalign.data.charts), train a BPE tokenizer
on the chart code corpus and the instructions, build the FIELD_NOTES-sized Qwen2-VL (text hidden
128, 4 layers, 4 heads; vision width 96, 3 layers, patch 8, merge 2: 96x96 charts -> 36 image
tokens), supervised fine-tuning with visalign's SFTTrainer, then greedy evaluation on held-out charts
(rendered with the same options the rewards use) and a model card.

The shipped checkpoint is deliberately short-trained: good enough to write runnable code of the right
chart type, not converged, so that GRPO has something to improve (FIELD_NOTES: the biggest GRPO gain
came from a ~2-minute SFT checkpoint on the SSIM plateau).

    .venv/bin/python scripts/make_tiny_chart_vlm.py --out models/tiny-chart-vlm          # ~15 min, 1 thread
    .venv/bin/python scripts/make_tiny_chart_vlm.py --steps 20 --n-train 256 --out /tmp/t  # smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

#: Files this script writes into --out (stale ones are removed first; nothing else is touched).
OUTPUTS = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
           "processor_config.json", "preprocessor_config.json", "chat_template.jinja", "chat_template.json",
           "special_tokens_map.json", "video_preprocessor_config.json", "metrics.jsonl", "sft_config.yaml",
           "eval.json", "README.md", "heldout.jsonl", "trainer_state.json", "optimizer.pt", "scheduler.pt")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="models/tiny-chart-vlm", help="output directory")
    p.add_argument("--seed", type=int, default=0, help="seed of data, weights and shuffling")
    p.add_argument("--n-train", type=int, default=5000, help="synthetic training charts")
    p.add_argument("--n-eval", type=int, default=100, help="held-out charts (disjoint by code)")
    p.add_argument("--kinds", default="bar,line", help="chart kinds, comma separated")
    p.add_argument("--steps", type=int, default=500, help="SFT optimizer steps")
    p.add_argument("--minutes", type=float, default=None, help="stop SFT after this wall time")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=20, help="warmup steps")
    p.add_argument("--vocab-size", type=int, default=400, help="BPE vocabulary (256 bytes + merges)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    p.add_argument("--workers", type=int, default=2, help="render workers")
    return p.parse_args(argv)


def build_policy(train_codes: list[str], args: argparse.Namespace) -> tuple[Any, Any]:
    """Tokenizer (trained on the code corpus + instructions) -> processor -> random tiny Qwen2-VL."""
    from visalign.data.charts import chart_corpus, chart_whole_words
    from visalign.models.tiny_vlm import build_processor, build_tiny_qwen2vl, build_tokenizer
    from visalign.trainers.prompting import DEFAULT_INSTRUCTIONS

    # every chart kind, so the tokenizer also covers scatter / pie / multi for later fine-tuning
    corpus = train_codes + chart_corpus(2000, seed=args.seed + 7)
    # repeated so that BPE merges the instruction's words and the chat roles (short prompts)
    corpus += [*DEFAULT_INSTRUCTIONS.values(), "system", "user", "assistant"] * 200
    tokenizer = build_tokenizer(corpus, vocab_size=args.vocab_size, whole_words=chart_whole_words())
    processor = build_processor(tokenizer, image_size=96, patch_size=8, merge_size=2)
    model = build_tiny_qwen2vl(processor, hidden_size=128, num_layers=4, num_heads=4, vision_width=96,
                               vision_depth=3, seed=args.seed)
    return processor, model


def evaluate(model: Any, processor: Any, rows: list[dict[str, Any]], workers: int) -> dict[str, Any]:
    """Greedy decoding on ``rows`` -> extract code -> render with CHART_RENDER_OPTIONS -> SSIM."""
    from visalign.data.charts import render_charts
    from visalign.metrics import ssim
    from visalign.rewards.code import extract_code
    from visalign.trainers.sft import generate_codes

    start = time.perf_counter()
    completions = generate_codes(model, processor, [r["image"] for r in rows], [r["prompt"] for r in rows],
                                 max_new_tokens=96, batch_size=25)
    codes = [extract_code(c, "matplotlib") for c in completions]
    results = render_charts([c or "" for c in codes], workers=workers)
    scores, per_type, samples = [], {}, []
    for row, completion, code, res in zip(rows, completions, codes, results, strict=True):
        score = ssim(res.image, row["image"]) if res.ok and code else 0.0
        scores.append(score)
        ref_call = row["code"].splitlines()[1].split("(")[0]
        t = per_type.setdefault(row["chart_type"], {"n": 0, "renders": 0, "type_right": 0, "exact": 0, "ssim": []})
        t["n"] += 1
        t["renders"] += bool(res.ok and code)
        t["type_right"] += bool(code and len(code.splitlines()) > 1 and code.splitlines()[1].startswith(ref_call))
        t["exact"] += code == row["code"]
        t["ssim"].append(score)
        if len(samples) < 6:
            samples.append({"reference": row["code"], "completion": completion, "ssim": round(score, 4)})
    n = len(rows)
    summary = {
        "n": n,
        "execution_rate": sum(t["renders"] for t in per_type.values()) / n,
        "chart_type_accuracy": sum(t["type_right"] for t in per_type.values()) / n,
        "exact_match": sum(t["exact"] for t in per_type.values()) / n,
        "ssim_mean": statistics.fmean(scores),
        "ssim_stderr": statistics.stdev(scores) / n ** 0.5 if n > 1 else 0.0,
        "ssim_rendered_mean": statistics.fmean([s for s, r in zip(scores, results, strict=True) if r.ok] or [0.0]),
        "per_type": {k: {**{m: v for m, v in t.items() if m != "ssim"}, "ssim_mean": statistics.fmean(t["ssim"])}
                     for k, t in per_type.items()},
        "seconds": time.perf_counter() - start,
        "samples": samples,
    }
    return summary


def model_card(args: argparse.Namespace, info: dict[str, Any]) -> str:
    ev, sft = info["eval"], info["sft"]
    rows = "\n".join(f"| {k} | {t['n']} | {t['renders'] / t['n']:.2f} | {t['type_right'] / t['n']:.2f} | "
                     f"{t['exact'] / t['n']:.2f} | {t['ssim_mean']:.3f} |" for k, t in sorted(ev["per_type"].items()))
    sample = ev["samples"][0]
    return f"""# tiny-chart-vlm

The embedded default policy of visalign's chart-to-code demo: a {info['parameters'] / 1e6:.2f} M-parameter
`Qwen2VLForConditionalGeneration` trained from scratch on CPU on synthetic matplotlib charts. It looks at
a 96x96 chart and writes the short program that draws it (bare code, then `<|im_end|>`). It is
deliberately **not converged**: it writes runnable code of the right chart type but reads the values
only roughly, so that GRPO with visual rewards has something real to improve.

Load it like any Qwen2-VL checkpoint:

```python
from transformers import AutoModelForImageTextToText, AutoProcessor
model = AutoModelForImageTextToText.from_pretrained("{args.out}")
processor = AutoProcessor.from_pretrained("{args.out}")
```

Prompt it with `visalign.trainers.prompting.encode_prompts` (the instruction
`DEFAULT_INSTRUCTIONS["matplotlib"]`), suppress the vision tokens when generating
(`vision_token_ids(model)`), reset `model.model.rope_deltas = None` before each generate / forward,
and render its code with `visalign.data.charts.CHART_RENDER_OPTIONS` (`{info['render_options']}`),
the options the references were rendered with.

## How it was made

```
{info['command']}
```

| what | value |
| --- | --- |
| seed | {args.seed} |
| training charts | {args.n_train} ({args.kinds}; `chart_dataset(n, seed={args.seed})`), rendered in {info['data_seconds']:.0f} s |
| held-out charts | {args.n_eval} (`chart_dataset(n, seed={args.seed + 1}, exclude=training codes)`), shipped as `heldout.jsonl` |
| tokenizer | byte-level BPE, {info['vocab']} tokens; chart code averages {info['code_tokens']:.1f} tokens |
| model | text hidden 128, 4 layers, 4 heads (M-RoPE {info['mrope']}); vision width 96, 3 layers, patch 8, merge 2; 36 image tokens |
| SFT | {sft['steps']} steps, batch {args.batch_size}, AdamW lr {args.lr:g}, {args.warmup} warmup steps, cosine; {sft['epochs']:.2f} epochs |
| SFT wall time | {sft['seconds'] / 60:.1f} min on {args.threads} CPU thread(s) ({info['machine']}, shared) |
| final training loss | {sft['loss']:.4f} (per answer token) |
| held-out loss | {sft['eval_loss']:.4f} |

## Held-out evaluation (greedy, {ev['n']} charts)

| metric | value |
| --- | --- |
| execution rate (code renders) | {ev['execution_rate']:.2f} |
| right chart type | {ev['chart_type_accuracy']:.2f} |
| exact code match | {ev['exact_match']:.2f} |
| mean SSIM vs reference (failed render = 0) | {ev['ssim_mean']:.3f} ± {ev['ssim_stderr']:.3f} (s.e.) |
| mean SSIM over rendered | {ev['ssim_rendered_mean']:.3f} |

| chart type | n | renders | right type | exact | SSIM |
| --- | --- | --- | --- | --- | --- |
{rows}

One held-out example (SSIM {sample['ssim']}):

```
reference:  {sample['reference'].splitlines()[1]}
completion: {sample['completion'].splitlines()[1] if len(sample['completion'].splitlines()) > 1 else sample['completion']}
```

Numbers from one seed on a shared 2-core machine; `eval.json` holds them all and `metrics.jsonl` the
training curve. The optimizer state is not shipped (GRPO starts its own).
"""


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from visalign.data.charts import CHART_RENDER_OPTIONS, chart_dataset
    from visalign.data.loaders import write_jsonl
    from visalign.trainers.config import load_config
    from visalign.trainers.sft import SFTConfig, SFTTrainer

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "heldout_images", ignore_errors=True)
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())

    t0 = time.perf_counter()
    train = chart_dataset(args.n_train, seed=args.seed, kinds=kinds, workers=args.workers)
    data_seconds = time.perf_counter() - t0
    heldout = chart_dataset(args.n_eval, seed=args.seed + 1, kinds=kinds, workers=args.workers,
                            exclude={r["code"] for r in train})
    print(f"data: {len(train)} training charts rendered in {data_seconds:.0f} s", flush=True)

    processor, model = build_policy([r["code"] for r in train], args)
    tok = processor.tokenizer
    code_tokens = statistics.fmean(len(tok(r["code"], add_special_tokens=False)["input_ids"]) for r in train[:1000])
    parameters = sum(p.numel() for p in model.parameters())
    print(f"model: {parameters / 1e6:.2f} M parameters, vocabulary {len(tok)}, code {code_tokens:.1f} tokens",
          flush=True)

    config = load_config(SFTConfig, {
        "output_dir": str(out), "overwrite_output_dir": True,  # the script rebuilds the model directory
        "max_steps": args.steps, "max_minutes": args.minutes,
        "batch_size": args.batch_size, "learning_rate": args.lr, "warmup_steps": args.warmup,
        "lr_scheduler": "cosine", "weight_decay": 0.0, "max_grad_norm": 1.0, "max_length": 256,
        "seed": args.seed, "log_every": 10, "num_threads": args.threads, "save_optimizer": False})
    trainer = SFTTrainer(config, model=model, processor=processor, train_rows=train, eval_rows=heldout)
    sft = trainer.train()
    sft["epochs"] = sft["steps"] * args.batch_size / len(train)
    print(f"sft: {sft['steps']} steps in {sft['seconds']:.0f} s, loss {sft['loss']:.4f}", flush=True)

    model = trainer.accelerator.unwrap_model(trainer.model)
    ev = evaluate(model, processor, heldout, args.workers)
    print(f"eval: execution {ev['execution_rate']:.2f}, chart type {ev['chart_type_accuracy']:.2f}, "
          f"SSIM {ev['ssim_mean']:.3f}", flush=True)

    write_jsonl(heldout, out / "heldout.jsonl")
    text_rope = model.config.get_text_config().rope_parameters
    info = {
        "command": "python scripts/make_tiny_chart_vlm.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "args": vars(args), "render_options": CHART_RENDER_OPTIONS, "data_seconds": data_seconds,
        "parameters": parameters, "vocab": len(tok), "code_tokens": code_tokens,
        "mrope": text_rope.get("mrope_section"), "sft": sft, "eval": ev,
        "machine": f"{platform.machine()}, torch {torch.__version__}",
        "checkpoint_bytes": (out / "model.safetensors").stat().st_size,
    }
    (out / "eval.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    (out / "README.md").write_text(model_card(args, info))
    print(f"wrote {out} ({info['checkpoint_bytes'] / 1e6:.1f} MB of weights)", flush=True)
    return info


if __name__ == "__main__":
    main()
