"""The run plumbing every trainer shares: the output directory, checkpoints, the time budget, trackers,
``metrics.jsonl``, curves, the progress bar and per-iteration callbacks.

The trainers (:mod:`~visalign.trainers.vlm`, :mod:`~visalign.trainers.flow` and ReFL on it,
:mod:`~visalign.trainers.reward_model`, :mod:`~visalign.trainers.judge` on the VLM trainer,
:mod:`~visalign.trainers.sft`) keep their own math and call these functions for the rest, so a run
behaves alike whichever trainer runs it:

- **one run per output directory** (:func:`prepare_output_dir`): a directory that holds a previous
  run's artefacts (``metrics.jsonl``, ``checkpoint-*``, ``eval/``, final weights, ...) is refused with an
  error naming it and the two ways out, ``resume_from: latest`` (continue that run) or
  ``overwrite_output_dir: true`` (clear its artefacts first; the HF / TRL name). Files that are not a
  run's artefacts are never touched.
- **``resume_from: latest``** means the newest ``checkpoint-<N>`` (by N) in ``output_dir`` in every
  trainer; with none yet the run starts at step 0 and says so (a preemptible job can always pass it),
  unless the directory holds a run without checkpoints, which is refused as above.
- **``metrics.jsonl``** is written by :class:`MetricsLog`: a fresh run starts it empty, a resumed run
  drops the lines logged after its checkpoint, so a file never mixes runs.
- :func:`progress_bar` (tqdm, with ETA) prints the output directory when it starts;
  :func:`reward_postfix` shows the raw mean of each reward (never a z-scored composite).
- callbacks (:data:`Callback`) run after every logged step / iteration; one that returns True stops the
  run between iterations, so a script adds its own logs or budget without copying the loop.

Example:
    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp()) / "run"
    >>> prepare_output_dir(out).name
    'run'
    >>> MetricsLog(out / "metrics.jsonl").append({"step": 1, "loss": 0.5})
    >>> try:
    ...     prepare_output_dir(out)
    ... except OutputDirError as error:
    ...     print("holds a previous run" in str(error), "overwrite_output_dir: true" in str(error))
    True True
    >>> prepare_output_dir(out, overwrite=True) == out and not (out / "metrics.jsonl").exists()
    True
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..models.rope import reset_rope_deltas  # re-exported: the trainers' name for it

log = logging.getLogger("visalign.train")

__all__ = ["RUN_ARTEFACTS", "Callback", "MetricsLog", "OutputDirError", "TimeBudget", "checkpoint_step",
           "find_run_artefacts", "latest_checkpoint", "make_accelerator", "plot_curves", "prepare_output_dir",
           "progress_bar", "reset_rope_deltas", "resolve_checkpoint", "reward_postfix", "rng_state", "run_callbacks",
           "set_rng_state", "trackers"]

#: Names (glob patterns) a trainer writes into ``output_dir``: what makes a directory "a previous run",
#: and what ``overwrite_output_dir`` clears. Trainers add their own (e.g. SFT's final weights).
RUN_ARTEFACTS: tuple[str, ...] = (
    "metrics.jsonl", "eval.jsonl", "curves.png", "comparison.html", "final.txt", "summary.json",
    "before_after.png", "judge_eval.json", "config.yaml", "reward_config.yaml", "sft_config.yaml",
    "checkpoint-*", "eval", "completions", "final", "final_ema", "model",
    "visalign-grpo", "flow_grpo")

#: ``callback(trainer, metrics) -> stop?``: called after each step's metrics are logged; True stops
#: the run before the next step (the final save, eval and curves still happen).
Callback = Callable[[Any, dict[str, Any]], "bool | None"]

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


class OutputDirError(ValueError):
    """``output_dir`` holds a previous run and neither ``resume_from`` nor ``overwrite_output_dir`` was given
    (or ``resume_from`` names nothing to resume)."""


# ------------------------------------------------------------------------------------ output dir
def find_run_artefacts(output_dir: str | Path, extra: Iterable[str] = ()) -> list[Path]:
    """The previous run's artefacts in ``output_dir`` (sorted; empty when the directory is new).

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp()); (d / "notes.txt").write_text("mine"); (d / "checkpoint-000002").mkdir()
        4
        >>> [p.name for p in find_run_artefacts(d)]
        ['checkpoint-000002']
    """
    d = Path(output_dir)
    if not d.is_dir():
        return []
    found = {p for pattern in (*RUN_ARTEFACTS, *extra) for p in d.glob(pattern)}
    return sorted(found)


def checkpoint_step(path: str | Path) -> int | None:
    """N of a ``checkpoint-<N>`` directory name, None for any other name.

    Example:
        >>> checkpoint_step("out/checkpoint-000010"), checkpoint_step("checkpoint-9"), checkpoint_step("final")
        (10, 9, None)
    """
    m = _CHECKPOINT.match(Path(path).name)
    return int(m.group(1)) if m else None


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The ``checkpoint-<N>`` directory of ``output_dir`` with the largest N (numeric order, so
    ``checkpoint-10`` comes after ``checkpoint-9``), or None.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> for n in ("checkpoint-9", "checkpoint-10"): (d / n).mkdir()
        >>> latest_checkpoint(d).name
        'checkpoint-10'
    """
    d = Path(output_dir)
    found = [(checkpoint_step(p), p) for p in d.glob("checkpoint-*") if p.is_dir()] if d.is_dir() else []
    found = [(n, p) for n, p in found if n is not None]
    return max(found)[1] if found else None


def resolve_checkpoint(output_dir: str | Path, resume_from: str | Path | None) -> Path | None:
    """The checkpoint ``resume_from`` names: ``"latest"`` is :func:`latest_checkpoint` (None when there is
    none yet: the run starts fresh and the log says so); a path must exist.

    Raises:
        OutputDirError: ``resume_from`` is a path that does not exist.
    """
    if not resume_from:
        return None
    if str(resume_from) == "latest":
        found = latest_checkpoint(output_dir)
        if found is None:
            log.warning("resume_from: latest: no checkpoint-* in %s yet: starting a fresh run at step 0", output_dir)
        return found
    path = Path(resume_from)
    if not path.is_dir():
        raise OutputDirError(f"resume_from: {path} is not a directory (give a checkpoint-<N> directory of a "
                             f"previous run, or 'latest' for the newest one in output_dir)")
    return path


def prepare_output_dir(output_dir: str | Path, *, overwrite: bool = False, resume_from: str | Path | None = None,
                       extra: Iterable[str] = (), main_process: bool = True, check_only: bool = False) -> Path:
    """Make ``output_dir`` ready for one run, before anything slow starts; returns it as a Path.

    - ``resume_from`` given: the directory is kept (the trainer continues its run); ``"latest"`` with no
      checkpoint but a previous run's artefacts is refused (there is nothing to continue, and a fresh
      run would mix with them).
    - else, a directory with a previous run's artefacts (:func:`find_run_artefacts`) is refused unless
      ``overwrite``, which deletes those artefacts (only them: other files stay).

    Only ``main_process`` checks and deletes: the others return at once (their trainer then waits at a
    barrier for the main one). Had every process checked, a process of a multi-process run could look at
    the directory after the main one had begun writing this run into it, and refuse its own run.
    ``check_only``: refuse as above but change nothing (an early check before a model loads, in every
    process, before any trainer exists).

    Raises:
        OutputDirError: naming the directory, what is in it, and the ways out.
    """
    out = Path(output_dir)
    if not main_process:
        return out
    artefacts = find_run_artefacts(out, extra)
    shown = ", ".join(p.name for p in artefacts[:5]) + (", ..." if len(artefacts) > 5 else "")
    if resume_from:
        if str(resume_from) == "latest" and artefacts and latest_checkpoint(out) is None and not overwrite:
            raise OutputDirError(f"output_dir {out} holds a previous run ({shown}) without a checkpoint-*: "
                                 f"resume_from: latest has nothing to resume; set overwrite_output_dir: true to "
                                 f"start over there, or choose another output_dir")
        if str(resume_from) != "latest":
            resolve_checkpoint(out, resume_from)  # a named checkpoint must exist
    elif artefacts:
        if not overwrite:
            raise OutputDirError(
                f"output_dir {out} holds a previous run ({shown}): set resume_from: latest to continue it, or "
                f"overwrite_output_dir: true to delete its artefacts and start over (or choose another output_dir; "
                f"--set overwrite_output_dir=true on the command line)")
        if check_only:
            return out
        for p in artefacts:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
        log.info("overwrite_output_dir: deleted the previous run's %d artefacts in %s", len(artefacts), out)
    if not check_only:
        out.mkdir(parents=True, exist_ok=True)
    return out


# --------------------------------------------------------------------------------------- metrics
@dataclass
class MetricsLog:
    """``metrics.jsonl``: one JSON object per line, each with the step under ``step_key``.

    Example:
        >>> import tempfile
        >>> m = MetricsLog(Path(tempfile.mkdtemp()) / "metrics.jsonl")
        >>> for s in (1, 2, 3): m.append({"step": s, "loss": 1.0 / s})
        >>> m.truncate(after=2); [r["step"] for r in m.read()]
        [1, 2]
    """

    path: Path
    step_key: str = "step"

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    def read(self) -> list[dict[str, Any]]:
        """The records logged so far (empty when there is no file)."""
        if not self.path.exists():
            return []
        return [json.loads(ln) for ln in self.path.read_text(encoding="utf-8").splitlines() if ln.strip()]

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one record (non-finite floats as JSON ``NaN`` / ``Infinity``, as ``json.dumps`` does)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(dict(record)) + "\n")

    def start(self, step: int) -> None:
        """Begin a run at ``step``: 0 starts an empty file; a resumed run keeps the lines up to ``step``."""
        if step == 0:
            self.path.unlink(missing_ok=True)
        else:
            self.truncate(after=step)

    def truncate(self, after: int) -> None:
        """Drop the records whose step is greater than ``after`` (logged after a checkpoint)."""
        if self.path.exists():
            kept = [r for r in self.read() if int(r.get(self.step_key, 0)) <= after]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")


# ------------------------------------------------------------------------------- budget, trackers
@dataclass
class TimeBudget:
    """The ``max_minutes`` check, decided alike on every process (the slowest clock wins).

    Example:
        >>> clock = iter([0.0, 30.0, 61.0]).__next__
        >>> budget = TimeBudget(1.0, clock=clock)
        >>> budget.spent(), budget.spent()
        (False, True)
    """

    max_minutes: float | None
    accelerator: Any = None
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self.started = self.clock()

    def seconds(self) -> float:
        """Seconds since the budget started (on this process)."""
        return self.clock() - self.started

    def spent(self) -> bool:
        """Whether ``max_minutes`` have passed (never, without a budget)."""
        if self.max_minutes is None:
            return False
        elapsed = self.seconds()
        acc = self.accelerator
        if acc is not None and getattr(acc, "num_processes", 1) > 1:
            import torch

            elapsed = float(acc.gather(torch.tensor([elapsed], device=acc.device)).max())
        return elapsed >= 60.0 * float(self.max_minutes)


def make_accelerator(*, cpu: bool = False, **kwargs: Any) -> Any:
    """The ``accelerate.Accelerator`` every trainer runs under: on the CPU when asked or when there is no
    CUDA device. (``Accelerator(cpu=False)`` on a CPU-only host under ``torchrun`` sets up no process
    group: every rank would train alone, writing one ``output_dir``.)

    Example:
        >>> make_accelerator(cpu=True).device.type
        'cpu'
    """
    import torch
    from accelerate import Accelerator

    return Accelerator(cpu=bool(cpu) or not torch.cuda.is_available(), **kwargs)


def rng_state() -> dict[str, Any]:
    """This process's RNG states (Python, NumPy, torch, CUDA) in types ``torch.load(weights_only=True)``
    reads back: what a checkpoint saves per process so a resumed run draws what the run would have.

    Example:
        >>> import random
        >>> saved = rng_state(); a = random.random(); set_rng_state(saved); a == random.random()
        True
    """
    import numpy as np
    import torch

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore :func:`rng_state` (also the older form whose NumPy state is NumPy's own tuple); CUDA
    states only on as many devices as were saved."""
    import numpy as np
    import torch

    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    np.random.set_state((kind, keys.astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def trackers(log_with: str | None) -> list[str]:
    """accelerate trackers for ``log_with``: ``auto`` is tensorboard and wandb when installed (wandb only
    when ``WANDB_API_KEY`` or ``WANDB_MODE`` is set: never a login prompt); ``none`` / empty is none.

    Example:
        >>> trackers("none"), trackers("wandb")
        ([], ['wandb'])
    """
    if not log_with or log_with == "none":
        return []
    if log_with != "auto":
        return [log_with]
    import importlib.util

    found = []
    for name in ("tensorboard", "wandb"):
        if importlib.util.find_spec(name) is None:
            continue
        if name == "wandb" and not os.environ.get("WANDB_API_KEY") and not os.environ.get("WANDB_MODE"):
            continue  # installed but not set up: never prompt or reach the network unasked
        found.append(name)
    return found


# ------------------------------------------------------------------------------ progress, callbacks
def progress_bar(total: int, *, initial: int = 0, desc: str, unit: str = "step", enabled: bool = True,
                 output_dir: str | Path | None = None) -> Any:
    """A tqdm bar (rate and ETA) on stderr; prints ``output_dir`` first so a user knows where to look."""
    from tqdm.auto import tqdm

    if output_dir is not None:
        log.info("%s: writing to %s", desc, output_dir)
        if enabled:
            print(f"{desc}: writing to {output_dir}", file=sys.stderr, flush=True)
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True)


def reward_postfix(metrics: Mapping[str, Any], digits: int = 3) -> dict[str, str]:
    """The progress bar's reward fields: each reward's raw mean (``reward/<name>/mean``), else the raw
    ``reward/mean``; never the composite of z-scored rewards (always about 0 with ``normalize_then_sum``).

    Example:
        >>> reward_postfix({"reward/mean": 0.0, "reward/format/mean": 0.75, "reward/ssim/mean": 0.41234})
        {'format': '0.750', 'ssim': '0.412'}
        >>> reward_postfix({"reward/mean": 0.5})
        {'reward': '0.500'}
    """
    per_reward = {k[len("reward/"):-len("/mean")]: v for k, v in metrics.items()
                  if k.startswith("reward/") and k.endswith("/mean") and k != "reward/mean"
                  and k.count("/") == 2 and isinstance(v, (int, float))}
    if not per_reward and isinstance(metrics.get("reward/mean"), (int, float)):
        per_reward = {"reward": metrics["reward/mean"]}
    return {k: f"{float(v):.{digits}f}" for k, v in per_reward.items()}


def run_callbacks(callbacks: Sequence[Callback], trainer: Any, metrics: dict[str, Any]) -> bool:
    """Call every callback (in order, all of them); True when one asks to stop.

    Example:
        >>> seen = []
        >>> run_callbacks([lambda t, m: seen.append(m["step"]), lambda t, m: m["step"] >= 2], None, {"step": 2})
        True
    """
    stop = False
    for callback in callbacks:
        stop = bool(callback(trainer, metrics)) or stop
    return stop


# ---------------------------------------------------------------------------------------- curves
def plot_curves(metrics_path: str | Path, out_path: str | Path,
                keys: Sequence[str] = ("reward/mean", "loss", "tokens/per_leaf", "completion/length_mean", "render/ok"),
                *, step_key: str = "step", eval_path: str | Path | None = None,
                eval_keys: Sequence[str] | None = None) -> Path | None:
    """Training curves from ``metrics.jsonl`` into one PNG: each reward's mean first, then ``keys`` (raw
    line and a moving average), and one panel of held-out evaluations: the ``eval/*`` keys of
    ``eval_path`` (default ``eval.jsonl`` beside the metrics) or, when ``eval_keys`` is given, those keys
    of the metrics lines. Curves that do not move (the total of group-normalised rewards, always 0)
    are left out. Returns the path, or None when there is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = MetricsLog(Path(metrics_path), step_key).read()
    if not rows:
        return None
    eval_file = Path(eval_path) if eval_path is not None else Path(metrics_path).with_name("eval.jsonl")
    if eval_keys is not None:
        evals = [r for r in rows if any(isinstance(r.get(k), (int, float)) for k in eval_keys)]
        eval_names = [k for k in eval_keys if any(k in e for e in evals)]
    else:
        evals = MetricsLog(eval_file, step_key).read()
        eval_names = sorted({k for e in evals for k in e if k.startswith("eval/")
                             and isinstance(e[k], (int, float))})
    children = sorted({k for r in rows for k in r if k.startswith("reward/") and k.endswith("/mean")
                       and k != "reward/mean" and k.count("/") == 2})

    def moves(k: str) -> bool:
        vals = [r[k] for r in rows if isinstance(r.get(k), (int, float)) and math.isfinite(r[k])]
        return len(vals) == 1 or (len(vals) > 1 and max(vals) - min(vals) > 1e-6)

    keys = [k for k in dict.fromkeys((*children, *keys)) if k not in eval_names and moves(k)]
    panels = len(keys) + (1 if eval_names else 0)
    if not panels:
        return None
    cols = min(4, panels)
    nrows = math.ceil(panels / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.8 * cols, 2.8 * nrows), squeeze=False)
    flat = list(axes.flat)
    for ax, k in zip(flat, keys, strict=False):
        pts = [(r[step_key], float(r[k])) for r in rows if isinstance(r.get(k), (int, float))]
        xs, ys = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
        ax.plot(xs, ys, lw=0.8, alpha=0.45, color="tab:blue", marker="." if len(ys) < 3 else None)
        w = max(1, len(ys) // 10)
        if w > 1:
            ax.plot(xs[w - 1:], np.convolve(ys, np.ones(w) / w, mode="valid"), lw=1.8, color="tab:blue")
        ax.set_title(k, fontsize=9)
        ax.set_xlabel(step_key, fontsize=8)
    if eval_names:
        ax = flat[len(keys)]
        for k in eval_names:
            pts = [(e[step_key], e[k]) for e in evals if isinstance(e.get(k), (int, float))]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=k.removeprefix("eval/").removesuffix("/mean"))
        ax.set_title("held-out eval", fontsize=9)
        ax.set_xlabel(step_key, fontsize=8)
        ax.legend(fontsize=7)
    for ax in flat[panels:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return Path(out_path)
