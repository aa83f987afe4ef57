"""One Flow-GRPO iteration: (a) independent rollouts vs (b) tree rollouts with pruning (issue 5).

Same prompts and the same number of final images in both: (a) ``group_size = B ** len(split_steps)``
independent trajectories per prompt; (b) one tree per prompt splitting into ``B`` at ``split_steps``,
with width pruning (best and worst node per depth) and depth pruning. Prints NFE for rollout and
training, seconds per stage, and the ratio b/a of the iteration time.

    .venv/bin/python benchmarks/flow_grpo_iteration.py                    # tiny SD3 on CPU
    .venv/bin/python benchmarks/flow_grpo_iteration.py --sd35-medium-shape --device cuda --dtype bf16 \\
        --resolution 512 --markdown                                       # SD3.5-Medium-shaped, random weights

The first iteration of each mode is a warm-up (not timed) unless ``--no-warmup``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from visalign.rewards import Reward, RewardOutput
from visalign.trainers.config import load_config
from visalign.trainers.flow import FlowGRPOConfig, FlowGRPOTrainer
from visalign.trainers.flow_policies import SD3Policy, tiny_sd3_pipeline

SD35_MEDIUM = {"num_layers": 24, "num_attention_heads": 24, "attention_head_dim": 64, "joint_attention_dim": 4096,
               "caption_projection_dim": 1536, "pooled_projection_dim": 2048, "patch_size": 2, "in_channels": 16,
               "out_channels": 16, "sample_size": 128, "pos_embed_max_size": 384, "qk_norm": "rms_norm",
               "dual_attention_layers": tuple(range(13))}
PROMPTS = ["a red circle", "a blue square", "a green triangle", "a yellow star", "a photo of a cat",
           "a small house", "a big tree", "a black car"]


class Contrast(Reward):
    """A cheap image-only reward (pixel standard deviation), so the benchmark measures the model."""

    name = "contrast"

    def score(self, samples):
        return RewardOutput([float(np.asarray(s.image, dtype=np.float32).std()) for s in samples],
                            [{} for _ in samples])


def build_policy(args: argparse.Namespace, workdir: Path) -> SD3Policy:
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    if args.sd35_medium_shape:
        pipe = tiny_sd3_pipeline(SD35_MEDIUM, text_dim=32, clip_projection_dims=(768, 1280), vae_channels=(8, 8, 8, 8),
                                 workdir=workdir)
    else:
        pipe = tiny_sd3_pipeline({"num_layers": 2, "attention_head_dim": 16, "num_attention_heads": 2,
                                  "caption_projection_dim": 32}, workdir=workdir)
    pipe.to(dtype=dtype)
    return SD3Policy(pipe, resolution=args.resolution, max_sequence_length=args.max_sequence_length)


def run_mode(args: argparse.Namespace, mode: str, workdir: Path) -> dict[str, float]:
    leaves = args.branch_factor ** len(args.split_steps)
    common = {"num_steps": args.steps, "prompts_per_iteration": args.prompts, "batch_size": args.batch_size,
              "guidance_scale": args.guidance, "beta": args.beta, "lora_r": args.lora_rank,
              "max_steps": 2 if args.warmup else 1, "eval_every": 0, "log_with": "none", "ema": False,
              "cpu": args.device == "cpu", "gradient_checkpointing": args.gradient_checkpointing,
              "mixed_precision": "bf16" if args.dtype == "bf16" else "no", "output_dir": str(workdir / mode)}
    if mode == "independent":
        opts = {**common, "rollout": "independent", "group_size": leaves}
    else:
        opts = {**common, "rollout": "tree", "split_steps": list(args.split_steps),
                "branch_factor": args.branch_factor, "width_pruning": True, "depth_pruning": list(args.depth_pruning)}
    policy = build_policy(args, workdir)
    torch.manual_seed(0)
    trainer = FlowGRPOTrainer(load_config(FlowGRPOConfig, opts), policy, Contrast(), PROMPTS[: args.prompts])
    history = trainer.train()
    m = history[-1]
    return {"nfe_rollout": m["nfe/rollout"], "nfe_train": m["nfe/train"], "nfe_backward": m["nfe/train_backward"],
            "rollout_s": m["time/rollout"], "reward_s": m["time/reward"], "train_s": m["time/train"],
            "total_s": m["time/rollout"] + m["time/reward"] + m["time/train"], "images": args.prompts * leaves}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sd35-medium-shape", action="store_true", help="SD3.5-Medium-shaped transformer, random weights")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--prompts", type=int, default=2)
    p.add_argument("--split-steps", type=int, nargs="*", default=[0, 2, 4, 6])
    p.add_argument("--branch-factor", type=int, default=2)
    p.add_argument("--depth-pruning", type=int, nargs="*", default=[7, 8], help="steps not trained in (b)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--guidance", type=float, default=4.5)
    p.add_argument("--beta", type=float, default=0.0)
    p.add_argument("--lora-rank", type=int, default=32)
    p.add_argument("--max-sequence-length", type=int, default=16)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--no-warmup", dest="warmup", action="store_false")
    p.add_argument("--markdown", action="store_true", help="print a markdown table row")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but no CUDA device")
    with tempfile.TemporaryDirectory() as tmp:
        a = run_mode(args, "independent", Path(tmp))
        b = run_mode(args, "tree", Path(tmp))
    ratio = b["total_s"] / a["total_s"]
    model = "SD3.5-M-shaped" if args.sd35_medium_shape else "tiny SD3"
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({args.threads} thread)"
    if args.markdown:
        print(f"| {model} {args.resolution}px {args.dtype} | {device} | {a['images']} | "
              f"{a['nfe_rollout']} / {a['nfe_train']} | {b['nfe_rollout']} / {b['nfe_train']} | "
              f"{a['rollout_s']:.2f} / {a['train_s']:.2f} | {b['rollout_s']:.2f} / {b['train_s']:.2f} | "
              f"{a['total_s']:.2f} | {b['total_s']:.2f} | {ratio:.2f} |")
    else:
        print(f"{model}, {args.resolution} px, {args.dtype}, {device}; {args.prompts} prompts x {a['images'] // args.prompts} "
              f"images, {args.steps} steps, CFG {args.guidance}")
        for name, r in (("(a) independent", a), ("(b) tree+pruning", b)):
            print(f"{name:18s} NFE rollout {r['nfe_rollout']:5d}  train {r['nfe_train']:5d} "
                  f"(backward {r['nfe_backward']:4d})  rollout {r['rollout_s']:7.2f} s  reward {r['reward_s']:6.2f} s  "
                  f"train {r['train_s']:7.2f} s  total {r['total_s']:7.2f} s")
        print(f"ratio b/a: time {ratio:.2f}, NFE {(b['nfe_rollout'] + b['nfe_train']) / (a['nfe_rollout'] + a['nfe_train']):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
