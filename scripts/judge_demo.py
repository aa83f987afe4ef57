"""Generative judge demo (issue 12, section 3): chart pairs -> judge rows -> a tiny VLM judge trained
with GRPO (R1-Reward's format, rewards and StableReinforce) -> held-out verdict accuracy before / after,
with a paired bootstrap interval.

1. ``visalign.data.pairs``: seeded chart pairs (reference render vs graded perturbations of values,
   colour, layout, missing elements), rendered in the sandbox; held-out pairs come from other
   reference charts. Written as JSONL + PNG and read back with ``load_pairs``.
2. ``judge_rows``: pairwise rows with the reference first, then the two candidates in a seeded random
   order; the verdict names the candidate closer to the reference (``1`` / ``2``). ``--min-gap`` keeps
   pairs whose severities differ by at least that much, ``--kinds`` the perturbation kinds (default the
   visible ones, ``missing`` and ``layout``); ``balance_pairwise`` then swaps a seeded subset so labels
   1 / 2 are even within each kind (a constant verdict scores 0.5). ``--mode pointwise``: reference +
   one image, verdict ``good`` / ``bad``. ``--data DIR`` shares rendered pairs between runs, so the
   held-out set stays the same across attempts.
3. Starting point: the shipped ``models/tiny-chart-vlm`` (a Qwen2-VL SFT'd to write chart code) with the
   four format tags added to its vocabulary and a short *format* warm-up (``build_sft_batch``): answers
   ``<think>image K is closer</think><answer>K</answer>`` with K drawn at random, independent of the
   label, so the warm-up teaches the format and nothing about which image is closer.
   ``--short-think``: ``<think>K</think><answer>K</answer>`` (the verdict token right after the prompt).
   ``--warmup-embeddings-only``: the warm-up trains the token embeddings only (in full at lr 2e-3 it
   leaves the verdict logit independent of the image on some seeds, and no cold start recovers).
   ``--sft-warmup-labelled N``: R1-Reward's supervised cold start, at most N steps on the training rows'
   correct verdicts (``--sft-until-val``: stopped at a validation accuracy; ``--sft-restarts``: restarted
   with another data order when it ends below ``--sft-min-val``); GRPO's "before" is the model after it.
4. ``JudgeGRPOTrainer``: GRPO with ``verdict`` (rules consistency) + 0.5 ``verdict_format``,
   StableReinforce on; greedy held-out verdict accuracy before and after, paired difference.

Options are chosen on a validation split of the *training* references (``--val-refs N``, ``--eval-split
val``), never on the held-out pairs. ``--diagnose`` (training / validation split only): linear probes on
the vision tower's features and on the last hidden state, the greedy validation accuracy along a labelled
SFT, and the share of GRPO groups whose sampled verdicts differ (``signal_*``; a group with one verdict
has zero advantage). ``--view diff`` shows the two candidates as difference images from the reference
(what the BT reward model's input carries) instead of reference + candidates; the view is the library's
(``judge_rows(..., view=)``), written into ``judge.json``, so ``get_reward("vlm_judge",
preset="trained_judge", path=...)`` shows the trained judge difference images too.

Run: ``.venv/bin/python scripts/judge_demo.py --out out/demo-judge``. Use ``--threads 1`` on a shared
machine: with 2 torch threads on 2 busy cores one forward/backward took 3-15 s, with 1 thread 0.45 s.
Recipe (issue 12; README, *A tiny judge that learns*, has the held-out numbers for seeds 0, 1, 2):
``--train-refs 48 --eval-refs 20 --val-refs 8 --view diff --short-think --warmup-embeddings-only
--sft-warmup-labelled 150 --sft-lr 3e-4 --sft-batch 16 --sft-until-val 0.7 --sft-restarts 2 --sft-min-val 0.6
--lr 1e-4 --steps 150 --signal-rows 48 --threads 1 --seed S``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

from visalign.data.pairs import load_pairs, pair_dataset, write_pairs
from visalign.models.rope import reset_rope_deltas
from visalign.rewards.judge.prompts import VIEWS
from visalign.trainers.config import load_config
from visalign.trainers.judge import JudgeGRPOConfig, JudgeGRPOTrainer, judge_rows
from visalign.trainers.sft import build_sft_batch

TAGS = ["<think>", "</think>", "<answer>", "</answer>"]
#: A short instruction: the tiny model's tokenizer was trained on chart code, so English is long in it.
INSTRUCTION = "Reference, image 1, image 2: which is closer? <think>...</think><answer>1/2</answer>"
POINTWISE_INSTRUCTION = "Reference, image: does it match? <think>...</think><answer>good/bad</answer>"
DIFF_INSTRUCTION = "Differences of image 1, image 2 from the reference: which is smaller? <think>...</think><answer>1/2</answer>"


def _reference_code(row: dict[str, Any]) -> str:
    return row.get("reference_code") or ""


def make_pairs(data: Path, train_refs: int, eval_refs: int, workers: int) -> tuple[Path, Path]:
    """Rendered pairs in ``data`` (kept: a second run with the same ``data`` reuses them)."""
    train_path, eval_path = data / "train.jsonl", data / "heldout.jsonl"
    if not (train_path.exists() and eval_path.exists()):
        per_ref = 24  # every pair of every ladder (4 kinds x 6 pairs from 13 renders)
        train = pair_dataset("chart", per_ref * train_refs, seed=0, pairs_per_reference=per_ref, workers=workers)
        held = pair_dataset("chart", per_ref * eval_refs, seed=1, pairs_per_reference=per_ref, workers=workers)
        seen = {_reference_code(r) for r in train}
        held = [r for r in held if _reference_code(r) not in seen]  # held-out references only
        write_pairs(train, train_path)
        write_pairs(held, eval_path)
    return train_path, eval_path


def gap_filter(pairs: list[dict[str, Any]], min_gap: int, kinds: list[str] | None = None) -> list[dict[str, Any]]:
    """Pairs whose severities differ by at least ``min_gap``, of the perturbation ``kinds`` (None: all)."""
    return [p for p in pairs if int(p.get("rejected_severity", 3)) - int(p.get("chosen_severity", 0)) >= min_gap
            and (kinds is None or p.get("perturbation") in kinds)]


def balance_pairwise(rows: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Pairwise rows with the two candidates swapped in a seeded subset so that, within each perturbation
    kind, labels 1 and 2 differ in count by at most one: a constant verdict then scores 0.5 and a
    before / after difference cannot come from a bias towards one position."""
    rng = random.Random(f"balance:{seed}")
    out = [dict(r) for r in rows]
    for kind in sorted({r["perturbation"] for r in out}):
        group = [r for r in out if r["perturbation"] == kind]
        ones = [r for r in group if r["label"] == "1"]
        twos = [r for r in group if r["label"] == "2"]
        major, new = (ones, "2") if len(ones) > len(twos) else (twos, "1")
        for r in rng.sample(major, abs(len(ones) - len(twos)) // 2):
            r["images"] = r["images"][:-2] + [r["images"][-1], r["images"][-2]]
            r["label"] = new
    return out


def random_answer(rng: random.Random, mode: str, short: bool = False) -> str:
    """A well-formed answer with a random verdict (not the label): what the format warm-up teaches
    (``short``: the verdict is the whole reasoning, ``<think>K</think>``, so it comes right after the prompt)."""
    if mode == "pointwise":
        good = rng.random() < 0.5
        return f"<think>the charts {'match' if good else 'differ'}</think><answer>{'good' if good else 'bad'}</answer>"
    k = rng.choice("12")
    return f"<think>{k}</think><answer>{k}</answer>" if short else f"<think>image {k} is closer</think><answer>{k}</answer>"


def format_warmup(model: Any, processor: Any, rows: list[dict[str, Any]], steps: int, batch_size: int, lr: float,
                  seed: int, mode: str = "pairwise", short: bool = False, embeddings_only: bool = False) -> list[float]:
    """Supervised steps on label-free answers (:func:`random_answer`): ``<think>image K is
    closer</think><answer>K</answer>`` with K random, or ``good`` / ``bad`` at random (pointwise); the
    row's label is never read. ``embeddings_only``: only the token embeddings (tied to the LM head in the
    tiny model) are trained, so the format is learned without flattening what the transformer passes on
    about the images. Returns the losses."""
    params = [model.get_input_embeddings().weight] if embeddings_only else None
    losses = supervised_steps(model, processor, rows, lambda rng, _row: random_answer(rng, mode, short), steps,
                              batch_size, lr, seed, params=params)
    model.eval()
    return losses


def split_by_reference(pairs: list[dict[str, Any]], val_refs: int, seed: int) -> tuple[list, list]:
    """Training pairs split by reference chart: ``val_refs`` seeded references become the validation
    split (for choosing options and for the diagnostics; the held-out pairs are never used for that)."""
    refs = sorted({_reference_code(p) for p in pairs})
    val = set(random.Random(f"val:{seed}").sample(refs, min(val_refs, len(refs)))) if val_refs > 0 else set()
    return [p for p in pairs if _reference_code(p) not in val], [p for p in pairs if _reference_code(p) in val]


def verdict_answer(label: str, mode: str = "pairwise", short: bool = False) -> str:
    """The labelled answer (the supervised cold start, R1-Reward's SFT stage): the correct verdict."""
    if mode == "pointwise":
        good = label == "good"
        return f"<think>the charts {'match' if good else 'differ'}</think><answer>{label}</answer>"
    return f"<think>{label}</think><answer>{label}</answer>" if short else \
        f"<think>image {label} is closer</think><answer>{label}</answer>"


def _encode(processor: Any, rows: list[dict[str, Any]]) -> Any:
    from visalign.trainers.prompting import encode_prompts

    return encode_prompts(processor, [r["images"] for r in rows], [r["prompt"] for r in rows])


def _reset_rope(model: Any) -> None:
    reset_rope_deltas(model)  # a stale Qwen-VL M-RoPE offset would shift the next batch's positions


@torch.no_grad()
def generate_verdicts(model: Any, processor: Any, rows: list[dict[str, Any]], *, samples: int = 1,
                      temperature: float = 0.0, max_new_tokens: int = 16, batch: int = 8,
                      seed: int = 0) -> list[list[str | None]]:
    """Per row, ``samples`` parsed verdicts: greedy (``temperature`` 0) or sampled at ``temperature``."""
    from visalign.rewards.verdict import parse_verdict

    tok = processor.tokenizer
    model.eval()
    torch.manual_seed(seed)
    out: list[list[str | None]] = []
    for b in range(0, len(rows), batch):
        chunk = rows[b:b + batch]
        inputs = _encode(processor, chunk)
        _reset_rope(model)
        kw = {"do_sample": False} if temperature <= 0 else {"do_sample": True, "temperature": temperature,
                                                             "top_k": 0, "top_p": 1.0}
        ids = model.generate(**inputs, max_new_tokens=max_new_tokens, num_return_sequences=samples,
                             pad_token_id=tok.pad_token_id, **kw)
        texts = tok.batch_decode(ids[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        for i, r in enumerate(chunk):
            out.append([parse_verdict(t, r["choices"]).answer for t in texts[i * samples:(i + 1) * samples]])
    return out


def accuracy(rows: list[dict[str, Any]], verdicts: list[list[str | None]]) -> tuple[float, float, float]:
    """Share of rows whose (first) verdict equals the label, with a bootstrap 95 % interval."""
    from visalign.report.eval_report import bootstrap_ci

    return bootstrap_ci([float(v[0] == r["label"]) for r, v in zip(rows, verdicts, strict=True)], seed=0)


def group_signal(rows: list[dict[str, Any]], verdicts: list[list[str | None]]) -> dict[str, float]:
    """How often a GRPO group has signal: the share of groups whose sampled verdicts are not all the same
    (the verdict reward then differs within the group, so some advantage is non-zero), the share of
    sampled verdicts that are correct, and the share without a parseable verdict."""
    flat = [x for v in verdicts for x in v]
    return {"groups": len(verdicts), "mixed_verdicts": sum(len(set(v)) > 1 for v in verdicts) / max(1, len(verdicts)),
            "sampled_correct": sum(x == r["label"] for r, v in zip(rows, verdicts, strict=True) for x in v)
            / max(1, len(flat)), "no_verdict": sum(x is None for x in flat) / max(1, len(flat)),
            "answer_1": sum(x == "1" for x in flat) / max(1, len(flat))}


def supervised_steps(model: Any, processor: Any, rows: list[dict[str, Any]], answers: Any, steps: int, batch_size: int,
                     lr: float, seed: int, on_eval: Any = None, eval_every: int = 0,
                     params: list[torch.Tensor] | None = None) -> list[float]:
    """At most ``steps`` AdamW steps of next-token loss on ``answers(rng, row)`` (random or labelled answers),
    on ``params`` (default: every trainable parameter); ``on_eval(step, losses)`` every ``eval_every`` steps
    stops them by returning True."""
    rng = random.Random(seed)
    opt = torch.optim.AdamW(params if params is not None else [p for p in model.parameters() if p.requires_grad],
                            lr=lr)
    losses = []
    for step in range(1, steps + 1):
        model.train()
        batch = rng.sample(rows, min(batch_size, len(rows)))
        inputs = build_sft_batch(processor, [r["images"] for r in batch], [r["prompt"] for r in batch],
                                 [answers(rng, r) for r in batch])
        _reset_rope(model)
        loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        model.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if on_eval is not None and eval_every and step % eval_every == 0 and on_eval(step, losses):
            break  # the callback asked to stop
    model.eval()
    return losses


@torch.no_grad()
def last_hidden(model: Any, processor: Any, rows: list[dict[str, Any]], batch: int = 8) -> torch.Tensor:
    """The language model's last hidden state at the last prompt position (what the verdict is read from)."""
    model.eval()
    feats = []
    for b in range(0, len(rows), batch):
        inputs = _encode(processor, rows[b:b + batch])
        _reset_rope(model)
        hs = model(**inputs, output_hidden_states=True).hidden_states[-1]
        feats.append(hs[:, -1].float())
    return torch.cat(feats)


@torch.no_grad()
def vision_features(model: Any, processor: Any, rows: list[dict[str, Any]]) -> torch.Tensor:
    """Per pairwise row, |e1 - e_ref| - |e2 - e_ref| over the vision tower's merged image tokens (flattened;
    e1 - e2 for the difference view without the reference):
    what the vision tower passes on about which candidate is closer, before the language model."""
    model.eval()
    feats = []
    for r in rows:
        inputs = _encode(processor, [r])
        emb = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
        emb = getattr(emb, "pooler_output", emb)
        *ref, one, two = (e.float() for e in emb)
        feats.append(((one - ref[0]).abs() - (two - ref[0]).abs() if ref else one - two).flatten())
    return torch.stack(feats)


def linear_probe(xtr: torch.Tensor, ytr: torch.Tensor, xva: torch.Tensor, yva: torch.Tensor,
                 weight_decays: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)) -> dict[str, Any]:
    """Logistic regression (standardised features, L2, full-batch LBFGS) fitted on ``xtr`` and scored on
    ``xva``; every weight decay is reported (the choice among them is made on the validation split)."""
    from visalign.report.eval_report import bootstrap_ci

    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    a, b = (xtr - mu) / sd, (xva - mu) / sd
    res = {}
    for wd in weight_decays:
        w = torch.zeros(a.shape[1], requires_grad=True)
        c = torch.zeros(1, requires_grad=True)
        opt = torch.optim.LBFGS([w, c], max_iter=200, line_search_fn="strong_wolfe")

        def closure(opt: Any = opt, w: torch.Tensor = w, c: torch.Tensor = c, wd: float = wd) -> torch.Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(a @ w + c, ytr) + wd * (w * w).sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            tr = float(((a @ w + c > 0).float() == ytr).float().mean())
            m, lo, hi = bootstrap_ci((((b @ w + c) > 0).float() == yva).float().tolist(), seed=0)
        res[str(wd)] = {"train": round(tr, 3), "val": round(m, 3), "val_ci95": [round(lo, 3), round(hi, 3)]}
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="out/demo-judge")
    ap.add_argument("--model", default="models/tiny-chart-vlm")
    ap.add_argument("--data", default=None, help="pairs directory (default OUT/data; reused when it holds them)")
    ap.add_argument("--train-refs", type=int, default=24)
    ap.add_argument("--eval-refs", type=int, default=12)
    ap.add_argument("--val-refs", type=int, default=0, help="training references held back as a validation split "
                    "(never trained on; options are chosen on it, never on the held-out pairs)")
    ap.add_argument("--eval-split", default="heldout", choices=["heldout", "val"],
                    help="what GRPO's before / after eval reads: the held-out pairs or the validation split")
    ap.add_argument("--diagnose", action="store_true", help="diagnostics on the training / validation split only "
                    "(no GRPO, no held-out pairs): linear probes on the vision tower and on the last hidden "
                    "state, a supervised verdict fine-tune, and the share of GRPO groups with mixed verdicts")
    ap.add_argument("--view", default="raw", choices=list(VIEWS), help="what the judge is shown "
                    "(visalign.rewards.judge.prompts.judge_prompt, recorded in judge.json): raw (reference, "
                    "image 1, image 2), diff (the candidates' difference images from the reference), ref-diff "
                    "(the reference, then the difference images) or mask (thickened black-on-white masks of the "
                    "changed pixels)")
    ap.add_argument("--short-think", action="store_true", help="warm-up answers <think>K</think><answer>K</answer>: "
                    "the first verdict token right after the prompt (default: <think>image K is closer</think>...)")
    ap.add_argument("--min-gap", type=int, default=2, help="keep pairs whose severities differ by at least this")
    ap.add_argument("--kinds", default="missing,layout", help="perturbation kinds kept (comma-separated; 'all': "
                    "values, colour, layout, missing)")
    ap.add_argument("--mode", default="pairwise", choices=["pairwise", "pointwise"],
                    help="pairwise (reference, image 1, image 2: verdict 1/2) or pointwise (reference, image: good/bad)")
    ap.add_argument("--max-eval", type=int, default=160, help="held-out rows")
    ap.add_argument("--warmup-steps", type=int, default=120)
    ap.add_argument("--warmup-batch", type=int, default=4)
    ap.add_argument("--warmup-lr", type=float, default=2e-3)
    ap.add_argument("--warmup-embeddings-only", action="store_true", help="the format warm-up trains the token "
                    "embeddings (tied LM head) only: trained in full, it leaves the verdict logits independent of "
                    "the images on some seeds (see the README)")
    ap.add_argument("--sft-warmup-labelled", type=int, default=0, help="supervised cold start (R1-Reward's SFT "
                    "stage): steps on the training rows' correct verdicts after the format warm-up; GRPO's "
                    "'before' is the model after it")
    ap.add_argument("--sft-lr", type=float, default=1e-3)
    ap.add_argument("--sft-until-val", type=float, default=None, help="stop the labelled cold start at the first "
                    "check (every 10 steps) where greedy validation accuracy reaches this (needs --val-refs; "
                    "--sft-warmup-labelled is then the most steps)")
    ap.add_argument("--sft-batch", type=int, default=8)
    ap.add_argument("--sft-restarts", type=int, default=0, help="model selection on the validation split (needs "
                    "--val-refs): when the labelled cold start ends below --sft-min-val greedy validation accuracy, "
                    "restart it from the same weights with another data order, at most this many times (the "
                    "last attempt is kept)")
    ap.add_argument("--sft-min-val", type=float, default=0.6, help="validation accuracy a cold start must reach "
                    "(--sft-restarts)")
    ap.add_argument("--signal-rows", type=int, default=32, help="training rows sampled at the start to measure the "
                    "share of groups with mixed verdicts (0: skip)")
    ap.add_argument("--steps", type=int, default=400, help="GRPO steps (max_steps)")
    ap.add_argument("--minutes", type=float, default=None, help="GRPO wall-clock budget (default: none, --steps "
                    "decides; a budget makes the result depend on the machine's load)")
    ap.add_argument("--grpo-freeze-embeddings", action="store_true", help="GRPO leaves the token embeddings (tied "
                    "LM head) as the cold start left them")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--beta", type=float, default=0.0, help="KL weight to the reference (the warmed-up model)")
    ap.add_argument("--max-completion", type=int, default=16, help="answer tokens")
    ap.add_argument("--eval-every", type=int, default=0, help="held-out eval every N steps (0: before and after)")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--generations", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=8, help="prompts per GRPO step")
    ap.add_argument("--dynamic-sampling", action="store_true", help="DAPO: refill groups whose rewards are all equal")
    ap.add_argument("--image-size", type=int, default=48, help="judge input side in px (a multiple of 16; the "
                    "shipped model was trained at 96: smaller is faster, the vision tower's cost grows with it)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (on a busy machine 1 is several times "
                    "faster than 2)")
    ap.add_argument("--workers", type=int, default=2, help="render workers")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    train_path, eval_path = make_pairs(Path(args.data) if args.data else out / "data", args.train_refs, args.eval_refs, args.workers)
    kinds = None if args.kinds == "all" else [k.strip() for k in args.kinds.split(",") if k.strip()]
    fit_pairs, val_pairs = split_by_reference(gap_filter(load_pairs(train_path), args.min_gap, kinds), args.val_refs,
                                              args.seed)
    instruction = POINTWISE_INSTRUCTION if args.mode == "pointwise" else (
        INSTRUCTION if args.view == "raw" else DIFF_INSTRUCTION)
    view = args.view  # applied by the library (judge_prompt), recorded in judge.json, so vlm_judge shows the same
    train = judge_rows(fit_pairs, mode=args.mode, seed=args.seed, instruction=instruction, view=view)
    val = judge_rows(val_pairs, mode=args.mode, seed=args.seed + 2, instruction=instruction, view=view) \
        if val_pairs else []
    if args.mode == "pairwise":
        train, val = balance_pairwise(train, args.seed), balance_pairwise(val, args.seed + 2)
    held: list[dict[str, Any]] = []
    if args.eval_split == "val":
        held = val
    elif not args.diagnose:
        eval_pairs = gap_filter(load_pairs(eval_path), args.min_gap, kinds)
        held = judge_rows(eval_pairs, mode=args.mode, seed=args.seed + 1, instruction=instruction, view=view)
        held = random.Random(args.seed).sample(held, min(args.max_eval, len(held)))  # fixed by the seed, not the run
        if args.mode == "pairwise":
            held = balance_pairwise(held, args.seed + 1)
    t_data = time.perf_counter() - t0
    labels = sorted({r["label"] for r in train})
    print(f"judge rows ({args.mode}, kinds {args.kinds}, min gap {args.min_gap}): {len(train)} train, {len(val)} "
          f"validation ({args.val_refs} training references), {len(held)} {args.eval_split} eval rows (labels "
          f"{'/'.join(labels)}: {'/'.join(str(sum(r['label'] == k for r in held)) for k in labels)}); data "
          f"{t_data:.0f} s", flush=True)

    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(args.model)
    ip = processor.image_processor
    ip.min_pixels = ip.max_pixels = args.image_size * args.image_size
    if isinstance(getattr(ip, "size", None), dict):
        ip.size = {"shortest_edge": ip.min_pixels, "longest_edge": ip.max_pixels}
    model = AutoModelForImageTextToText.from_pretrained(args.model)
    added = processor.tokenizer.add_tokens(TAGS)
    if added:
        model.resize_token_embeddings(len(processor.tokenizer))
    report: dict[str, Any] = {"args": vars(args), "train_rows": len(train), "val_rows": len(val)}

    def log_report() -> None:
        (out / ("diagnose.json" if args.diagnose else "summary.json")).write_text(json.dumps(report, indent=1))

    if args.diagnose and args.mode == "pairwise" and val:
        t = time.perf_counter()
        ytr = torch.tensor([float(r["label"] == "1") for r in train])
        yva = torch.tensor([float(r["label"] == "1") for r in val])
        report["probe_vision"] = linear_probe(vision_features(model, processor, train), ytr,
                                              vision_features(model, processor, val), yva)
        print(f"linear probe, vision tower (|e1-ref|-|e2-ref|, or e1-e2 in the difference views; base model): {report['probe_vision']} "
              f"({time.perf_counter() - t:.0f} s)", flush=True)
        t = time.perf_counter()
        report["probe_last_hidden_base"] = linear_probe(last_hidden(model, processor, train), ytr,
                                                        last_hidden(model, processor, val), yva)
        print(f"linear probe, last hidden state (base model): {report['probe_last_hidden_base']} "
              f"({time.perf_counter() - t:.0f} s)", flush=True)
        log_report()

    t1 = time.perf_counter()
    losses = format_warmup(model, processor, train, args.warmup_steps, args.warmup_batch, args.warmup_lr, args.seed,
                           args.mode, args.short_think, embeddings_only=args.warmup_embeddings_only)
    t_warm = time.perf_counter() - t1
    report["warmup"] = {"steps": args.warmup_steps, "loss_first": losses[0] if losses else None,
                        "loss_last": losses[-1] if losses else None}
    print(f"format warm-up: {args.warmup_steps} steps, loss {report['warmup']['loss_first']} -> "
          f"{report['warmup']['loss_last']} ({t_warm:.0f} s)", flush=True)

    def signal(tag: str) -> None:
        if not args.signal_rows:
            return
        rows = random.Random(f"signal:{args.seed}").sample(train, min(args.signal_rows, len(train)))
        t = time.perf_counter()
        v = generate_verdicts(model, processor, rows, samples=args.generations, temperature=args.temperature,
                              max_new_tokens=args.max_completion, seed=args.seed)
        report[f"signal_{tag}"] = sig = group_signal(rows, v)
        print(f"{tag}: GRPO groups on {len(rows)} training rows, {args.generations} samples at temperature "
              f"{args.temperature}: {sig} ({time.perf_counter() - t:.0f} s)", flush=True)

    def val_eval(tag: str) -> float | None:
        if not val:
            return None
        v = generate_verdicts(model, processor, val, max_new_tokens=args.max_completion)
        m, lo, hi = accuracy(val, v)
        fit_rows = random.Random(f"fit:{args.seed}").sample(train, min(len(val), len(train)))
        fit = accuracy(fit_rows, generate_verdicts(model, processor, fit_rows, max_new_tokens=args.max_completion))[0]
        ones = sum(x[0] == "1" for x in v) / len(v)
        report.setdefault("val_curve", []).append({"at": tag, "accuracy": m, "ci95": [lo, hi], "answer_1": ones,
                                                   "train_subset_accuracy": fit})
        print(f"validation greedy verdict accuracy at {tag}: {m:.3f} [{lo:.3f}, {hi:.3f}] (n={len(val)}; answer "
              f"'1' {ones:.2f}; on {len(fit_rows)} training rows {fit:.3f})", flush=True)
        log_report()
        return m

    if args.diagnose:
        signal("after_format_warmup")
        val_eval("format warm-up")
        if args.mode == "pairwise" and val:
            ytr = torch.tensor([float(r["label"] == "1") for r in train])
            yva = torch.tensor([float(r["label"] == "1") for r in val])
            report["probe_last_hidden_warm"] = linear_probe(last_hidden(model, processor, train), ytr,
                                                            last_hidden(model, processor, val), yva)
            print(f"linear probe, last hidden state (after the format warm-up): {report['probe_last_hidden_warm']}",
                  flush=True)
    if args.sft_warmup_labelled:
        t = time.perf_counter()
        every = max(1, args.sft_warmup_labelled // 6) if args.diagnose else 0
        if args.sft_until_val is not None and val:
            every = 10

        def check(step: int, _: list[float]) -> bool:
            m = val_eval(f"labelled SFT step {step}")
            return args.sft_until_val is not None and m is not None and m >= args.sft_until_val

        start = {k: v.detach().clone() for k, v in model.state_dict().items()} if args.sft_restarts else None
        attempts = []
        for attempt in range(args.sft_restarts + 1):
            if attempt:  # model selection on the validation split: the same start, another data order
                model.load_state_dict(start)
            sft = supervised_steps(model, processor, train,
                                   lambda rng, r: verdict_answer(r["label"], args.mode, args.short_think),
                                   args.sft_warmup_labelled, args.sft_batch, args.sft_lr, args.seed + 7 + 1000 * attempt,
                                   on_eval=check, eval_every=every)
            m = val_eval(f"labelled SFT attempt {attempt} end ({len(sft)} steps)") if args.sft_restarts else None
            attempts.append({"attempt": attempt, "steps": len(sft), "val_accuracy": m})
            if m is None or m >= args.sft_min_val:
                break
        report["sft_labelled"] = {"steps": len(sft), "loss_first": sft[0], "loss_last": sft[-1],
                                  "seconds": round(time.perf_counter() - t, 1), "attempts": attempts}
        print(f"labelled SFT: {len(sft)} steps, loss {sft[0]:.3f} -> {sft[-1]:.3f}, attempts {attempts} "
              f"({time.perf_counter() - t:.0f} s)", flush=True)
        if args.diagnose:
            signal("after_labelled_sft")
    if args.diagnose:
        log_report()
        print(f"diagnostics in {out}/diagnose.json ({time.perf_counter() - t0:.0f} s)")
        return 0
    signal("grpo_start")
    log_report()

    config = load_config(JudgeGRPOConfig, {
        "model": args.model, "judge_mode": args.mode, "instruction": instruction,
        "num_generations": args.generations, "prompts_per_step": args.prompts, "generation_batch_size": args.prompts,
        "per_device_train_batch_size": args.prompts * args.generations, "max_completion_length": args.max_completion,
        "max_prompt_length": 1024, "learning_rate": args.lr, "max_steps": args.steps, "max_minutes": args.minutes,
        "temperature": args.temperature, "beta": args.beta, "eval_every": args.eval_every,
        "dynamic_sampling": args.dynamic_sampling, "view": view,
        "max_eval_rows": None, "output_dir": str(out / "run"), "progress": False, "log_with": "none",
        "log_completions_every": 25, "render_workers": 1, "num_threads": args.threads, "seed": args.seed})
    if args.grpo_freeze_embeddings:  # the trainer optimises the parameters that require grad
        model.get_input_embeddings().weight.requires_grad_(False)
    trainer = JudgeGRPOTrainer(config, model=model, processor=processor, train_rows=train, eval_rows=held)
    t2 = time.perf_counter()
    try:
        trainer.train()
    finally:
        trainer.close()
    t_grpo = time.perf_counter() - t2
    result = json.loads((out / "run" / "judge_eval.json").read_text())
    before, after, diff = result["before"], result["after"], result["difference"]
    report.update({"eval_split": args.eval_split, "eval_rows": len(held), "min_gap": args.min_gap,
                   "grpo_steps": trainer.step_count, "before": before, "after": after, "difference": diff,
                   "seconds": {"data": round(t_data, 1), "warmup": round(t_warm, 1), "grpo_and_eval": round(t_grpo, 1),
                               "total": round(time.perf_counter() - t0, 1)},
                   "threads": args.threads,
                   "model_dir": str(out / "run" / (out / "run" / "final.txt").read_text().strip())})
    log_report()
    print(f"{args.eval_split} verdict accuracy (greedy, n={after['n']}): before {before['accuracy']:.3f} "
          f"[{before['ci95'][0]:.3f}, {before['ci95'][1]:.3f}] -> after {after['accuracy']:.3f} "
          f"[{after['ci95'][0]:.3f}, {after['ci95'][1]:.3f}]")
    print(f"paired difference {diff['mean']:+.3f} [{diff['ci95'][0]:+.3f}, {diff['ci95'][1]:+.3f}] "
          f"(n={diff['paired']}); format ok {before['format_ok']:.3f} -> {after['format_ok']:.3f}")
    print(f"by kind after: {after['by_perturbation']}")
    print(f"GRPO steps {trainer.step_count}; seconds {report['seconds']}; outputs in {out}/")
    return 0

if __name__ == "__main__":
    sys.exit(main())
