"""Train the embedded tiny class-conditional flow-matching model on synthetic coloured shapes.

Makes ``models/tiny-shapes-flow/``: a diffusers ``UNet2DModel`` (32x32 RGB, channels 24/48/96, one
layer per block, no attention in the down/up blocks (the mid block keeps its one), 18 class embeddings = :data:`visalign.data.shapes.CAPTIONS`; 1.43 M
parameters) trained with rectified flow, plus ``classes.json``, ``samples.png``, ``training.json``
and a model card ``README.md``. It is the policy of the Flow-GRPO demo (issue 5).

Convention (the GRPO trainer uses exactly this):

* pixels in ``[-1, 1]``; ``x_t = (1 - sigma) * x0 + sigma * noise`` with ``sigma ~ U(0, 1)``;
* the UNet predicts the velocity ``v = noise - x0``; its timestep input is ``sigma * 1000``;
  ``class_labels`` = the caption's index in ``CAPTIONS``;
* sampling integrates from sigma 1 (pure noise) to 0 with Euler steps ``x <- x + (s' - s) * v`` on
  ``sigmas = linspace(1, 0, steps + 1)``.

Usage (CPU, one thread, ~10 minutes; rerunning the same command reproduces the checkpoint)::

    .venv/bin/python scripts/make_tiny_flow_model.py --steps 800 --batch-size 64 --seed 0 --threads 1

Training is deterministic for a fixed seed, thread count and torch build.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from PIL import Image, ImageDraw

from visalign.data.shapes import CAPTIONS, shapes_dataset

UNET_CONFIG = {
    "sample_size": 32,
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (24, 48, 96),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "DownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "UpBlock2D", "UpBlock2D"),
    "norm_num_groups": 8,  # 24 channels: groups of 3
    "num_class_embeds": len(CAPTIONS),
}


def build_unet(seed: int) -> UNet2DModel:
    """The untrained model, initialised from ``seed``."""
    torch.manual_seed(seed)
    return UNet2DModel(**UNET_CONFIG)


def images_to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """PIL RGB images -> float tensor ``(n, 3, h, w)`` in ``[-1, 1]``."""
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0


def tensor_to_images(x: torch.Tensor) -> list[Image.Image]:
    """Float tensor ``(n, 3, h, w)`` in ``[-1, 1]`` -> PIL RGB images (clamped, rounded)."""
    arr = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


@torch.no_grad()
def euler_sample(unet: UNet2DModel, labels: torch.Tensor, *, steps: int = 10,
                 generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Integrate the flow ODE from sigma 1 to 0 with ``steps`` Euler steps; returns ``x0`` in ~[-1, 1]."""
    size = unet.config.sample_size
    if noise is None:
        noise = torch.randn(len(labels), 3, size, size, generator=generator)
    x = noise
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    for s, s_next in itertools.pairwise(sigmas):
        t = torch.full((len(labels),), float(s) * 1000.0)
        v = unet(x, t, class_labels=labels).sample
        x = x + (s_next - s) * v
    return x


def sample_grid(unet: UNet2DModel, seeds: list[int], steps: int, scale: int = 3) -> Image.Image:
    """Grid: one row per caption, one column per seed (noise from ``torch.Generator().manual_seed``)."""
    size = unet.config.sample_size
    pad, label_w = 2, 110
    cell = size * scale + pad
    grid = Image.new("RGB", (label_w + cell * len(seeds), cell * len(CAPTIONS)), (200, 200, 200))
    draw = ImageDraw.Draw(grid)
    for c, caption in enumerate(CAPTIONS):
        draw.text((4, c * cell + cell // 2 - 5), caption, fill=(0, 0, 0))
        noise = torch.cat([torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(s)) for s in seeds])
        images = tensor_to_images(euler_sample(unet, torch.full((len(seeds),), c), steps=steps, noise=noise))
        for j, im in enumerate(images):
            grid.paste(im.resize((size * scale, size * scale), Image.NEAREST), (label_w + j * cell, c * cell))
    return grid


def evaluate(unet: UNet2DModel, per_caption: int, steps: int, seed: int) -> dict[str, float]:
    """Sample ``per_caption`` images of every caption and score them with the shape/colour classifier
    and :class:`ShapeColourReward` (true caption vs the mean over the 17 wrong captions)."""
    from visalign.data.shapes import split_prompts
    from visalign.rewards.base import Sample
    from visalign.rewards.shapes import ShapeColourReward, classify_shape_colour

    held_out = set(split_prompts()[1])
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(CAPTIONS)).repeat_interleave(per_caption)
    images: list[Image.Image] = []
    for chunk in labels.split(64):
        images += tensor_to_images(euler_sample(unet, chunk, steps=steps, generator=gen))
    reward = ShapeColourReward()
    true_caps = [CAPTIONS[int(lab)] for lab in labels]
    right = reward([Sample(prompt=c, image=im) for c, im in zip(true_caps, images, strict=True)]).scores
    wrong = []
    for im, lab in zip(images, labels, strict=True):
        others = [c for k, c in enumerate(CAPTIONS) if k != int(lab)]
        wrong.append(float(np.mean(reward([Sample(prompt=c, image=im) for c in others]).scores)))
    preds = [classify_shape_colour(im) for im in images]
    shape_ok = [p[0] == c.split()[2] for p, c in zip(preds, true_caps, strict=True)]
    colour_ok = [p[1] == c.split()[1] for p, c in zip(preds, true_caps, strict=True)]
    both_ok = [a and b for a, b in zip(shape_ok, colour_ok, strict=True)]
    by_shape = {s: float(np.mean([ok for ok, c in zip(shape_ok, true_caps, strict=True) if c.endswith(s)]))
                for s in ("circle", "square", "triangle")}
    return {
        "n_images": len(images),
        "accuracy": float(np.mean(both_ok)),
        "shape_accuracy": float(np.mean(shape_ok)),
        "colour_accuracy": float(np.mean(colour_ok)),
        "shape_accuracy_by_shape": by_shape,
        "reward_true_caption_mean": float(np.mean(right)),
        "reward_wrong_captions_mean": float(np.mean(wrong)),
        "reward_true_caption_mean_held_out": float(np.mean([r for r, c in zip(right, true_caps, strict=True)
                                                             if c in held_out])),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=800, help="optimizer steps")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0, help="seeds the data, the init, the noise and the eval")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "models" / "tiny-shapes-flow")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (the machine is shared)")
    ap.add_argument("--n-images", type=int, default=6000, help="size of the synthetic training set")
    ap.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate (cosine decay to 5%%)")
    ap.add_argument("--warmup", type=int, default=40, help="linear warm-up steps")
    ap.add_argument("--eval-per-caption", type=int, default=16, help="samples per caption for the model card")
    ap.add_argument("--sample-steps", type=int, default=10, help="Euler steps for samples and eval")
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--eval-only", action="store_true",
                    help="reload --out, redo samples.png, the eval and the model card (training.json is kept)")
    args = ap.parse_args(argv)
    if args.eval_only:
        return eval_only(args)

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    t_start = time.perf_counter()

    rows = shapes_dataset(args.n_images, seed=args.seed)
    data = images_to_tensor([r["image"] for r in rows])
    labels = torch.tensor([r["label"] for r in rows])
    unet = build_unet(args.seed)
    n_params = sum(p.numel() for p in unet.parameters())
    print(f"{len(rows)} images, UNet2DModel with {n_params / 1e6:.2f} M parameters, {args.threads} thread(s)",
          flush=True)

    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return (step + 1) / args.warmup
        progress = (step - args.warmup) / max(1, args.steps - args.warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(args.seed)
    losses: list[float] = []
    log: list[dict[str, float]] = []
    t_train, cpu_train = time.perf_counter(), time.process_time()
    unet.train()
    for step in range(args.steps):
        idx = torch.randint(0, len(data), (args.batch_size,), generator=gen)
        x0, y = data[idx], labels[idx]
        noise = torch.randn(x0.shape, generator=gen)
        sigma = torch.rand(args.batch_size, generator=gen)
        s = sigma.view(-1, 1, 1, 1)
        xt = (1 - s) * x0 + s * noise
        v = unet(xt, sigma * 1000.0, class_labels=y).sample
        loss = F.mse_loss(v, noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % args.log_every == 0 or step == 0 or step + 1 == args.steps:
            recent = float(np.mean(losses[-args.log_every:]))
            elapsed = time.perf_counter() - t_train
            log.append({"step": step + 1, "loss": recent, "seconds": round(elapsed, 1)})
            print(f"step {step + 1:5d}/{args.steps}  loss {recent:.4f}  lr {sched.get_last_lr()[0]:.2e}  "
                  f"{elapsed:6.0f} s", flush=True)
    train_seconds = time.perf_counter() - t_train
    cpu_seconds = time.process_time() - cpu_train

    unet.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(args.out)  # config.json + diffusion_pytorch_model.safetensors (fp32)
    (args.out / "classes.json").write_text(json.dumps(CAPTIONS, indent=1) + "\n")
    first_loss = float(np.mean(losses[: args.log_every]))
    final_loss = float(np.mean(losses[-args.log_every * 2:]))
    command = "python scripts/make_tiny_flow_model.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("out", "eval_only"))
    record = {
        "command": command, "args": {k: str(v) for k, v in vars(args).items()}, "parameters": n_params,
        "train_seconds": round(train_seconds, 1), "train_cpu_seconds": round(cpu_seconds, 1), "total_seconds": round(time.perf_counter() - t_start, 1),
        "first_loss": first_loss, "final_loss": final_loss, "log": log, "torch": torch.__version__,
        "python": platform.python_version(), "machine": platform.processor() or platform.machine(),
    }
    (args.out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"saved to {args.out} ({train_seconds / 60:.1f} min of training)", flush=True)
    finish(unet, args.out, record)
    return 0


def finish(unet: UNet2DModel, out: Path, record: dict) -> None:
    """Samples grid, eval on fresh samples, ``training.json`` and the model card."""
    a = record["args"]
    steps = int(a["sample_steps"])
    sample_grid(unet, seeds=[0, 1, 2, 3], steps=steps).save(out / "samples.png")
    record["eval"] = evaluate(unet, int(a["eval_per_caption"]), steps, seed=int(a["seed"]) + 1)
    print(json.dumps(record["eval"], indent=1), flush=True)
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    (out / "README.md").write_text(model_card(record))


def eval_only(args: argparse.Namespace) -> int:
    """Redo the samples, the eval and the card of a saved model (e.g. after the reward changed)."""
    torch.set_num_threads(args.threads)
    unet = UNet2DModel.from_pretrained(args.out).eval()
    record = json.loads((args.out / "training.json").read_text())
    finish(unet, args.out, record)
    return 0


def model_card(r: dict) -> str:
    """The model card (``README.md``) from the training record."""
    m = r["eval"]
    a = r["args"]
    timing_note = ""
    if "train_cpu_seconds" in r:
        timing_note += f" CPU time of training: {r['train_cpu_seconds'] / 60:.1f} min."
    if r.get("note"):
        timing_note += " " + r["note"]
    return f"""# tiny-shapes-flow

A tiny class-conditional rectified-flow model of 32x32 coloured shapes: the embedded policy of
visalign's Flow-GRPO demo (issue 5). Not a useful image generator; a fast, honest test bed.

- **Architecture**: diffusers `UNet2DModel` (`config.json`): 32x32 RGB, block channels 24/48/96, one
  layer per block, `DownBlock2D` / `UpBlock2D` (no attention in them; the default `UNetMidBlock2D`
  keeps its one self-attention at 8x8), `norm_num_groups=8`, `num_class_embeds=18`;
  {r["parameters"]:,} parameters, fp32 safetensors (5.7 MB).
- **Classes**: `classes.json` = `visalign.data.shapes.CAPTIONS` (18 captions, "a red circle" ... ,
  shape-major); `class_labels` = the caption's index.
- **Data**: `visalign.data.shapes.shapes_dataset({a["n_images"]}, seed={a["seed"]})`: one anti-aliased circle,
  square or triangle in one of 6 colours on white, random size and position.
- **Convention**: pixels in [-1, 1]; `x_t = (1 - sigma) * x0 + sigma * noise`, `sigma ~ U(0, 1)`;
  the model predicts `v = noise - x0` from `(x_t, timestep = sigma * 1000, class_labels)`. Sample by
  integrating sigma from 1 to 0 with Euler steps `x <- x + (sigma_next - sigma) * v` on
  `linspace(1, 0, steps + 1)`.

## How it was made

```
{r["command"]}
```

AdamW, peak lr {a["lr"]} ({a["warmup"]} warm-up steps, cosine decay to 5%), gradient norm clipped at 1,
{a["steps"]} steps of batch {a["batch_size"]}, seed {a["seed"]} (data, init, noise, eval), {a["threads"]} CPU
thread(s): **{r["train_seconds"] / 60:.1f} min** of training ({r["total_seconds"] / 60:.1f} min with making
the data) on {r["machine"]}, torch {r["torch"]}.{timing_note} Loss (MSE on the velocity) {r["first_loss"]:.3f} over the
first {a["log_every"]} steps -> **{r["final_loss"]:.3f}** over the last {2 * int(a["log_every"])}. The run is seeded and deterministic
(`torch.use_deterministic_algorithms`): rerunning the command with the same torch build and thread
count reproduces this checkpoint. `training.json` holds the loss curve and these numbers.

## Samples and accuracy ({a["sample_steps"]} Euler steps)

`samples.png`: each caption (rows) x noise seeds 0-3 (columns, `torch.Generator().manual_seed(s)`).

On {m["n_images"]} samples ({a["eval_per_caption"]} per caption, generator seed {int(a["seed"]) + 1}), read back by
`visalign.rewards.shapes.classify_shape_colour`:

| metric | value |
|---|---|
| shape and colour right | {m["accuracy"]:.3f} (chance 0.056) |
| shape right | {m["shape_accuracy"]:.3f} (chance 0.333) |
| colour right | {m["colour_accuracy"]:.3f} (chance 0.167) |
| shape right, by prompted shape | {", ".join(f"{k} {v:.3f}" for k, v in m["shape_accuracy_by_shape"].items())} |
| `shape_colour` reward, true caption | {m["reward_true_caption_mean"]:.3f} |
| `shape_colour` reward, true caption, the 6 held-out prompts of `split_prompts()` | {m["reward_true_caption_mean_held_out"]:.3f} |
| `shape_colour` reward, the 17 wrong captions | {m["reward_wrong_captions_mean"]:.3f} |

Colours are learnt first and shapes later: corners and straight edges come last, and about a
quarter of the samples are still rounded or lumpy blobs that read as another shape. The remaining errors are what GRPO with the
`shape_colour` reward is meant to reduce (on held-out prompts, `visalign.data.shapes.split_prompts`).
"""


if __name__ == "__main__":
    sys.exit(main())
