"""Generative VLM judges trained with GRPO (``visalign train reward CONFIG --mode judge``): R1-Reward /
UnifiedReward-Think style reward models that look at one or two images, reason, and give a verdict.

The VLM GRPO trainer (:class:`~visalign.trainers.vlm.VLMGRPOTrainer`) on text answers instead of code:

* rows come from preference pairs (:func:`visalign.data.pairs.load_pairs`: chosen / rejected images,
  an optional reference, prompt, margin, perturbation kind) through :func:`judge_rows`:
  **pairwise** (the two images in a seeded random order, after the reference when there is one; the
  verdict ``1`` or ``2`` names the better one) or **pointwise** (one image, after the reference; the
  verdict ``good`` or ``bad``);
* the prompt asks for R1-Reward's format, ``<think>reasoning</think><answer>verdict</answer>``; it is built
  by :func:`visalign.rewards.judge.prompts.judge_prompt`, as ``vlm_judge`` asks the trained judge;
* rewards (:mod:`visalign.rewards.verdict`, nothing rendered): ``verdict`` (correctness against the
  row's label, times R1-Reward's consistency bonus) + 0.5 ``verdict_format``;
* StableReinforce on (``pre_clip_log_ratio``, ``advantage_filter``);
* held-out evaluation is greedy verdict accuracy with a bootstrap interval (``eval.jsonl``,
  ``eval/<tag>/verdicts.jsonl``), by perturbation kind;
* ``view`` (``raw``, ``diff``, ``ref-diff``, ``mask``; :data:`~visalign.rewards.judge.prompts.VIEWS`):
  what the judge is shown of the images, applied by :func:`judge_prompt` (a judge trained on difference
  images is then asked with difference images);
* every saved model directory holds ``judge.json`` (mode, instruction, verdicts, reference use, view), which
  the ``trained_judge`` preset of ``vlm_judge`` reads so that the judge is asked as it was trained.

Example:
    >>> from PIL import Image
    >>> a, b = Image.new("RGB", (8, 8), "white"), Image.new("RGB", (8, 8), "black")
    >>> rows = judge_rows([{"id": "p0", "chosen": a, "rejected": b, "reference": None, "prompt": "a chart"}],
    ...                   mode="pairwise", seed=0)
    >>> rows[0]["label"], rows[0]["choices"], len(rows[0]["images"])
    ('1', ['1', '2'], 2)
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ..rewards import Sample
from ..rewards.judge.prompts import CHOICES, check_view, judge_instruction, judge_prompt
from ..rewards.verdict import format_ok, parse_verdict
from .config import load_config, option
from .vlm import VLMGRPOConfig, VLMGRPOTrainer, _gather_objects

log = logging.getLogger("visalign.train")

__all__ = ["JUDGE_FILE", "JudgeEval", "JudgeGRPOConfig", "JudgeGRPOTrainer", "judge_instruction", "judge_rows",
           "train_judge_from_config"]

#: Written into every saved judge model directory: how the judge was asked (the ``trained_judge`` preset).
JUDGE_FILE = "judge.json"

def _image_key(im: Image.Image) -> str:
    return hashlib.sha256(im.tobytes() + repr((im.size, im.mode)).encode()).hexdigest()


def judge_rows(pairs: Sequence[Mapping[str, Any]], *, mode: str = "pairwise", reference: str = "auto", seed: int = 0,
               instruction: str | None = None, balance: bool = True, view: str = "raw") -> list[dict[str, Any]]:
    """Judge rows from preference pairs (rows as :func:`visalign.data.pairs.load_pairs` gives them).

    * ``pairwise``: one row per pair; ``images`` = [reference,] then the two sides in an order drawn
      from ``seed`` and the pair's id; ``label`` ``"1"`` when the chosen image comes first, else ``"2"``.
    * ``pointwise``: one row per distinct image (by its pixels) with [reference,] image; ``label``
      ``"good"`` for severity 0 when the pair carries ``chosen_severity`` / ``rejected_severity`` (our
      generated pairs: the reference render itself), else ``"good"`` for the chosen side and ``"bad"``
      for the rejected side. With ``balance`` the more frequent label is subsampled (seeded) to the
      count of the other, so a constant verdict scores 0.5.

    ``reference``: ``"auto"`` shows it when every pair has one, ``"always"`` requires it, ``"never"``
    leaves it out. ``instruction`` overrides :func:`judge_instruction` (``{prompt}`` = the pair's
    prompt). ``view`` (not ``raw``): the candidates are shown as difference images from the reference
    (:func:`~visalign.rewards.judge.prompts.judge_prompt`), which every pair must then have; the reference
    itself is shown only for ``ref-diff`` (``reference`` applies to ``raw``). Rows carry ``id``,
    ``images`` (as shown), ``prompt`` (the instruction), ``label``, ``choices``, ``judge_mode``, ``view``,
    ``perturbation``, ``margin`` and ``pair_id``. A pair without a chosen or rejected image raises
    ``ValueError`` naming the pair and the field.
    """
    if mode not in CHOICES:
        raise ValueError(f"judge mode must be 'pairwise' or 'pointwise', got {mode!r}")
    if reference not in ("auto", "always", "never"):
        raise ValueError(f"reference must be 'auto', 'always' or 'never', got {reference!r}")
    for i, p in enumerate(pairs):
        for f in ("chosen", "rejected"):
            if not isinstance(p.get(f), Image.Image):
                raise ValueError(f"pair {p.get('id', i)!r} (row {i}): field {f!r} must be an image, got "
                                 f"{type(p.get(f)).__name__}")
    check_view(view)
    has_ref = [isinstance(p.get("reference"), Image.Image) for p in pairs]
    if (reference == "always" or view != "raw") and not all(has_ref):
        i = has_ref.index(False)
        why = "reference: always" if view == "raw" else f"view {view!r} shows differences from the reference"
        raise ValueError(f"pair {pairs[i].get('id', i)!r} (row {i}): field 'reference' is missing ({why})")
    if view != "raw" and reference == "never":
        raise ValueError(f"view {view!r} needs the reference image; reference: never leaves it out")
    use_ref = reference == "always" or (reference == "auto" and bool(pairs) and all(has_ref))
    shown_ref = use_ref if view == "raw" else view == "ref-diff"
    template = instruction if instruction is not None else judge_instruction(mode, shown_ref, view)
    rows: list[dict[str, Any]] = []
    if mode == "pairwise":
        for i, p in enumerate(pairs):
            pid = str(p.get("id", i))
            first = random.Random(f"{seed}:{pid}").random() < 0.5
            sides = [p["chosen"], p["rejected"]] if first else [p["rejected"], p["chosen"]]
            shown = judge_prompt(template, sides, reference=p["reference"] if use_ref else None,
                                 prompt=str(p.get("prompt") or ""), view=view)
            rows.append({"id": pid, "pair_id": pid, "images": shown.images, "prompt": shown.text,
                         "label": "1" if first else "2", "choices": list(CHOICES[mode]), "judge_mode": mode,
                         "view": view,
                         "perturbation": str(p.get("perturbation") or "unknown"),
                         "margin": float(p.get("margin") or 0.0)})
        return rows
    seen: set[str] = set()
    for i, p in enumerate(pairs):
        pid = str(p.get("id", i))
        graded = p.get("chosen_severity") is not None and p.get("rejected_severity") is not None
        for side in ("chosen", "rejected"):
            im = p[side]
            key = _image_key(im) + (_image_key(p["reference"]) if use_ref else "")
            if key in seen:
                continue
            seen.add(key)
            if graded:
                label = "good" if int(p[f"{side}_severity"]) == 0 else "bad"
            else:
                label = "good" if side == "chosen" else "bad"
            shown = judge_prompt(template, [im], reference=p["reference"] if use_ref else None,
                                 prompt=str(p.get("prompt") or ""), view=view)
            rows.append({"id": f"{pid}-{side}", "pair_id": pid, "images": shown.images, "prompt": shown.text,
                         "label": label, "choices": list(CHOICES[mode]), "judge_mode": mode, "view": view,
                         "perturbation": str(p.get("perturbation") or "unknown") if label == "bad" else "none",
                         "margin": float(p.get("margin") or 0.0)})
    if balance and rows:
        by = {lab: [r for r in rows if r["label"] == lab] for lab in CHOICES[mode]}
        n = min(len(v) for v in by.values())
        rng = random.Random(seed)
        keep = {id(r) for v in by.values() for r in (v if len(v) == n else rng.sample(v, n))}
        rows = [r for r in rows if id(r) in keep]
    return rows


@dataclass
class JudgeGRPOConfig(VLMGRPOConfig):
    """Options of :class:`JudgeGRPOTrainer`: the GRPO options (``visalign train grpo --describe``) with
    the judge preset's defaults, plus the judge's own."""

    mode: str = option("judge", "'judge' (``visalign train reward --mode judge``)")
    judge_mode: str = option("pairwise", "pairwise (two images, verdict 1/2) or pointwise (one, good/bad)",
                             source="R1-Reward")
    reference: str = option("auto", "show the pair's reference image first: auto (when every pair has one), "
                                    "always or never")
    instruction: str | None = option(None, "the judge's instruction ({prompt} = the pair's prompt); default: "
                                           "the built-in one for judge_mode and reference")
    balance: bool = option(True, "pointwise: subsample the more frequent label to the other's count")
    view: str = option("raw", "what the judge is shown: raw (the images), diff (the candidates' difference images "
                              "from the reference), ref-diff (the reference, then the differences) or mask "
                              "(thickened masks of the changed pixels); recorded in judge.json")
    rewards: list = option([{"name": "verdict", "weight": 1.0, "options": {"consistency": "rules"}},
                            {"name": "verdict_format", "weight": 0.5}],
                           "0.5 * format + acc * (1 + 0.5 * consistency)", source="R1-Reward")
    pre_clip_log_ratio: bool = option(True, "StableReinforce pre-clip (judge preset: on)", source="R1-Reward")
    advantage_filter: bool = option(True, "StableReinforce advantage filter (judge preset: on)", source="R1-Reward")
    max_completion_length: int = option(128, "tokens per answer (reasoning + verdict)")
    output_dir: str = option("out/judge-grpo", "checkpoints, logs, samples and eval")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode != "judge":
            raise ValueError(f"JudgeGRPOConfig is mode 'judge', got {self.mode!r}")
        if self.judge_mode not in CHOICES:
            raise ValueError(f"judge_mode must be 'pairwise' or 'pointwise', got {self.judge_mode!r}")
        if self.reference not in ("auto", "always", "never"):
            raise ValueError(f"reference must be 'auto', 'always' or 'never', got {self.reference!r}")
        check_view(self.view)
        if self.eval_samples:
            raise ValueError("eval_samples: the judge's evaluation scores its greedy verdicts (set it to 0)")


@dataclass
class JudgeEval:
    """Held-out verdict accuracy (greedy): mean, bootstrap 95 % interval, per row and per kind."""

    accuracy: float
    ci95: tuple[float, float]
    n: int
    format_ok: float
    no_verdict: int
    by_perturbation: dict[str, float]
    correct: dict[str, float]  # row id -> 1.0 / 0.0, for paired comparisons

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "ci95": list(self.ci95), "n": self.n, "format_ok": self.format_ok,
                "no_verdict": self.no_verdict, "by_perturbation": self.by_perturbation}


class JudgeGRPOTrainer(VLMGRPOTrainer):
    """GRPO on a VLM judge (see the module docstring). Rows are judge rows (:func:`judge_rows`), or
    loaded from ``train_data`` / ``eval_data`` preference pairs; each row needs ``images`` and ``label``."""

    config: JudgeGRPOConfig

    def __init__(self, config: JudgeGRPOConfig, **kwargs: Any) -> None:
        self.eval_results: list[JudgeEval] = []
        super().__init__(config, **kwargs)

    # data
    def _load(self, source: str, limit: int | None) -> list[dict[str, Any]]:
        from ..data.pairs import load_pairs

        c = self.config
        return judge_rows(load_pairs(source, limit=limit), mode=c.judge_mode, reference=c.reference, seed=c.seed,
                          instruction=c.instruction, balance=c.balance, view=c.view)

    def _checked(self, rows: Sequence[dict[str, Any]], split: str) -> list[dict[str, Any]]:
        for i, r in enumerate(rows):
            rid = r.get("id", i)
            if r.get("label") is None:
                raise ValueError(f"{split} row {rid!r}: field 'label' is missing (a judge row needs its verdict)")
            if not r.get("images") and r.get("image") is None:
                raise ValueError(f"{split} row {rid!r}: field 'images' is missing")
            if r.get("view", self.config.view) != self.config.view:
                raise ValueError(f"{split} row {rid!r} was built with view {r['view']!r}, but the config's view "
                                 f"(recorded in judge.json) is {self.config.view!r}")
        return super()._checked(rows, split)

    def to_samples(self, row: dict[str, Any], texts: Sequence[str], group: int) -> list[Sample]:
        meta = {"row_id": row["id"], "label": row["label"],
                "choices": list(row.get("choices") or CHOICES[self.config.judge_mode])}
        return [Sample(prompt=self._instruction(row), completion=t, group=group, metadata=dict(meta)) for t in texts]

    def _score(self, samples: list[Sample]) -> tuple[list[float | None], dict[str, float], dict[str, float]]:
        import time

        t0 = time.perf_counter()
        out = self.reward(samples)  # text rewards: nothing to extract or render
        return out.scores, out.metrics, {"score": time.perf_counter() - t0}

    def _metrics(self, rollout: Any, train: dict[str, float]) -> dict[str, Any]:
        m = super()._metrics(rollout, train)
        for k in [k for k in m if k.startswith("render/")]:
            del m[k]
        return m

    # eval
    def evaluate(self, tag: str | None = None) -> dict[str, Any]:
        """Greedy verdicts on the held-out rows: accuracy with a bootstrap interval, by perturbation kind
        (``eval.jsonl``, ``eval/<tag>/verdicts.jsonl``); returns :meth:`JudgeEval.to_dict` (main process)."""
        from ..report.eval_report import bootstrap_ci

        c, acc = self.config, self.accelerator
        tag = tag or f"step_{self.step_count:06d}"
        records = []
        for row, text in self.greedy_completions(self.eval_rows):
            v = parse_verdict(text, row.get("choices") or CHOICES[c.judge_mode])
            records.append({"id": row["id"], "label": row["label"], "answer": v.answer,
                            "correct": float(v.answer == str(row["label"]).lower()), "format_ok": format_ok(text),
                            "perturbation": row.get("perturbation", "unknown"), "completion": text})
        gathered = _gather_objects(acc, records)
        summary: dict[str, Any] = {}
        if acc.is_main_process and gathered:
            d = self.out / "eval" / tag
            d.mkdir(parents=True, exist_ok=True)
            with open(d / "verdicts.jsonl", "w", encoding="utf-8") as f:
                for r in gathered:
                    f.write(json.dumps(r) + "\n")
            mean, lo, hi = bootstrap_ci([r["correct"] for r in gathered], seed=c.seed)
            kinds = Counter(r["perturbation"] for r in gathered)
            by = {k: sum(r["correct"] for r in gathered if r["perturbation"] == k) / n for k, n in sorted(kinds.items())}
            result = JudgeEval(accuracy=mean, ci95=(lo, hi), n=len(gathered),
                               format_ok=sum(r["format_ok"] for r in gathered) / len(gathered),
                               no_verdict=sum(r["answer"] is None for r in gathered), by_perturbation=by,
                               correct={r["id"]: r["correct"] for r in gathered})
            self.eval_results.append(result)
            summary = result.to_dict()
            acc.log({"eval/verdict_accuracy": mean, "eval/format_ok": result.format_ok}, step=self.step_count)
            self.eval_steps.append(self.step_count)
            with open(self.out / "eval.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": self.step_count, "tag": tag, "eval/verdict_accuracy/mean": mean,
                                    "eval/format_ok/mean": result.format_ok, "ci95": [lo, hi]}) + "\n")
            log.info("eval %s: verdict accuracy %.4f [%.4f, %.4f] (n=%d), format ok %.3f", tag, mean, lo, hi,
                     result.n, result.format_ok)
        acc.wait_for_everyone()
        return summary

    def train(self) -> list[dict[str, Any]]:
        """GRPO steps, then (with held-out rows) the paired before / after difference in ``judge_eval.json``."""
        from ..report.compare import paired_difference

        history = super().train()
        if self.accelerator.is_main_process and len(self.eval_results) >= 2:
            before, after = self.eval_results[0], self.eval_results[-1]
            d, lo, hi, n = paired_difference(before.correct, after.correct, seed=self.config.seed)
            out = {"before": before.to_dict(), "after": after.to_dict(),
                   "difference": {"mean": d, "ci95": [lo, hi], "paired": n},
                   "steps": [self.eval_steps[0], self.eval_steps[-1]]}
            (self.out / "judge_eval.json").write_text(json.dumps(out, indent=1))
            log.info("held-out verdict accuracy %.4f -> %.4f, paired difference %+.4f [%+.4f, %+.4f] (n=%d)",
                     before.accuracy, after.accuracy, d, lo, hi, n)
        return history

    def save_checkpoint(self, final: bool = False) -> Path:
        d = super().save_checkpoint(final=final)
        if self.accelerator.is_main_process:
            write_judge_file(d / "model", self.config, self.train_rows)
        return d


def write_judge_file(model_dir: str | Path, config: JudgeGRPOConfig, rows: Sequence[Mapping[str, Any]]) -> Path:
    """``judge.json`` in ``model_dir``: how the judge is asked (what the ``trained_judge`` preset reads)."""
    n_images = len(rows[0].get("images") or []) if rows else 0
    reference = n_images == (3 if config.judge_mode == "pairwise" else 2)  # the reference shown first
    view = getattr(config, "view", "raw")
    spec = {"judge_mode": config.judge_mode, "reference": reference, "view": view,
            "instruction": config.instruction or judge_instruction(config.judge_mode, reference, view),
            "choices": CHOICES[config.judge_mode], "system": config.system_prompt,
            "format": "<think>...</think><answer>VERDICT</answer>"}
    path = Path(model_dir) / JUDGE_FILE
    path.write_text(json.dumps(spec, indent=1))
    return path


def train_judge_from_config(source: str | Path | Mapping[str, Any], **overrides: Any) -> dict[str, Any]:
    """``visalign train reward CONFIG --mode judge``: load a :class:`JudgeGRPOConfig` (options at the top
    level or under ``reward:`` / ``judge:``), train, and return the before / after summary."""
    section = "judge"
    if isinstance(source, (str, Path)):
        import yaml

        data = yaml.safe_load(Path(source).read_text()) or {}
        section = "judge" if isinstance(data.get("judge"), Mapping) else "reward"
    config = load_config(JudgeGRPOConfig, source, section=section, **overrides)
    trainer = JudgeGRPOTrainer(config)
    try:
        trainer.train()
    finally:
        trainer.close()
    summary: dict[str, Any] = {"output_dir": str(trainer.out), "steps": trainer.step_count}
    final = trainer.out / "final.txt"
    if final.exists():
        summary["model_dir"] = str(trainer.out / final.read_text().strip())
    if trainer.eval_results:
        summary["eval"] = [e.to_dict() for e in trainer.eval_results]
        print(f"held-out verdict accuracy {trainer.eval_results[0].accuracy:.3f} -> "
              f"{trainer.eval_results[-1].accuracy:.3f} (n={trainer.eval_results[-1].n})")
    if "model_dir" in summary:
        print(f"model: {summary['model_dir']}")
    return summary
