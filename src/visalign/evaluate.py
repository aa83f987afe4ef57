"""``visalign eval``: render and score a JSONL file of generations, write results and a report.

Each line of the data file is one sample::

    {"id": "q17",                         # optional; the line number otherwise
     "completion": "...```python ...```",  # the model's answer (code is extracted), or
     "code": "import matplotlib ...",      # the code itself, or, for text-to-image,
     "image": "gen/q17.png",               # a generated image
     "reference_image": "ref/q17.png",     # the target image, and/or
     "reference_code": "...",              # the target code (rendered when no reference image)
     "prompt": "...", ...}                 # anything else is kept as metadata

Paths are relative to the data file. Outputs in ``--out``: ``results.jsonl`` (one record per sample:
scores, details, render outcome), ``images/`` (renders), ``summary.json`` and ``report.html``.
Rerunning skips the samples already in ``results.jsonl``. Under ``accelerate launch`` / ``torchrun``
each process takes every N-th sample and process 0 merges the shards.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from .report.eval_report import summarize, write_report
from .rewards import RenderService, Reward, Sample, get_reward

log = logging.getLogger("visalign.eval")

TASKS = {"chart": "matplotlib", "table": "latex", "svg": "svg", "html": "html", "t2i": None}
DEFAULT_REWARDS = {"chart": ["execution", "render_similarity"], "table": ["execution", "teds", "render_similarity"],
                   "svg": ["execution", "render_similarity"], "html": ["execution", "render_similarity"],
                   "t2i": ["ocr"]}  # clip / identity need a model path or a reference face: name them
_KNOWN = {"id", "completion", "code", "image", "reference_image", "reference_code", "prompt"}


def read_rows(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The rows of a JSONL file with an ``id`` each (the line number when missing)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{path}:{i + 1}: not JSON: {exc}") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{i + 1}: each line must be a JSON object")
            row.setdefault("id", str(i))
            row["id"] = str(row["id"])
            rows.append(row)
            if limit is not None and len(rows) >= limit:
                break
    return rows


def to_sample(row: dict[str, Any], kind: str | None, base: Path) -> Sample:
    """Build a :class:`Sample` from a data row (image paths resolved against ``base``)."""
    from .rewards.code import extract_code

    def image(key: str) -> Image.Image | None:
        if not row.get(key):
            return None
        with Image.open(base / row[key]) as img:
            img.load()
            return img.convert("RGB")

    code = row.get("code")
    if code is None and row.get("completion") is not None:
        code = extract_code(str(row["completion"]), kind)
    meta = {k: v for k, v in row.items() if k not in _KNOWN}
    return Sample(prompt=row.get("prompt"), completion=row.get("completion"), code=code, image=image("image"),
                  reference_image=image("reference_image"), reference_code=row.get("reference_code"),
                  kind=kind if (code is not None or row.get("reference_code")) else None, metadata=meta)


def _json_safe(value: Any, depth: int = 0) -> Any:
    if depth > 6:
        return str(value)[:200]
    if isinstance(value, dict):
        return {str(k): _json_safe(v, depth + 1) for k, v in list(value.items())[:64]}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v, depth + 1) for v in list(value)[:64]]
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if value is None or isinstance(value, (int, str, bool)):
        return value if not isinstance(value, str) else value[:2000]
    return str(value)[:200]


def _rank_world() -> tuple[int, int]:
    for rank_var, world_var in (("RANK", "WORLD_SIZE"), ("LOCAL_RANK", "LOCAL_WORLD_SIZE")):
        if world_var in os.environ:
            return int(os.environ.get(rank_var, 0)), int(os.environ[world_var])
    return 0, 1


def _wait_for_everyone(world: int) -> None:
    if world > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()


def _batches(rows: Sequence[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    for i in range(0, len(rows), size):
        yield list(rows[i:i + size])


def build_rewards(names: Sequence[str], service: RenderService,
                  options: dict[str, dict[str, Any]] | None = None) -> dict[str, Reward]:
    """Rewards by name with their ``options`` (name -> keyword arguments), sharing ``service``."""
    options = options or {}
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise ValueError(f"options given for rewards not asked for: {unknown}")
    built = {}
    for n in names:
        kwargs = dict(options.get(n, {}))
        if _takes_service(n):
            kwargs["service"] = service
        built[n] = get_reward(n, **kwargs)
    return built


def _takes_service(name: str) -> bool:
    from .rewards import reward_class

    return "service" in inspect.signature(reward_class(name).__init__).parameters


def run_eval(data: str | Path, task: str, rewards: Sequence[str] | None, out: str | Path, *,
             workers: int | None = None, limit: int | None = None, timeout: float = 10.0, batch_size: int = 32,
             progress: bool = True, reward_options: dict[str, dict[str, Any]] | None = None,
             render_options: dict[str, dict[str, Any]] | None = None, title: str | None = None) -> dict[str, Any]:
    """Render and score every row of ``data``; write results, summary and report into ``out``.

    ``reward_options`` maps a reward name to its keyword arguments, e.g.
    ``{"clip": {"model_name": "ViT-L-14", "pretrained": "/models/clip.pt"}}``; ``render_options`` maps a
    renderer kind to its options (``{"matplotlib": {"dpi": 64}}``, as :class:`RenderService` takes them).
    Returns the summary (also written to ``summary.json``).

    Example:
        >>> import json, tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> svg = '<svg xmlns="http://www.w3.org/2000/svg" width="32" height="32"><circle cx="16" cy="16" r="9"/></svg>'
        >>> _ = (d / "data.jsonl").write_text(json.dumps({"code": svg, "reference_code": svg}) + "\\n")
        >>> s = run_eval(d / "data.jsonl", "svg", ["render_similarity"], d / "out", workers=1, progress=False)
        >>> s["rewards"]["render_similarity"]["mean"]
        1.0
    """
    from tqdm import tqdm

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASKS)}")
    names = list(rewards or DEFAULT_REWARDS[task])
    data, out = Path(data), Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rank, world = _rank_world()
    results_path = out / ("results.jsonl" if world == 1 else f"results.rank{rank}.jsonl")
    done = {r["id"] for r in _read_results(out)}
    rows = [r for r in read_rows(data, limit) if r["id"] not in done]
    mine = rows[rank::world]
    kind = TASKS[task]
    if done:
        log.info("resuming: %d samples already scored, %d to go", len(done), len(rows))
    with RenderService(timeout=timeout, workers=workers, options=render_options) as service:
        built = build_rewards(names, service, reward_options)
        try:
            bar = tqdm(total=len(mine), desc=f"eval {task}", unit="sample", disable=not progress or None)
            _end_with_newline(results_path)
            with open(results_path, "a", encoding="utf-8") as f:
                for batch in _batches(mine, batch_size):
                    samples = [to_sample(r, kind, data.parent) for r in batch]
                    service.render(samples)
                    service.render([s for s in samples if s.reference_image is None], reference=True)
                    outputs = {name: rw(samples) for name, rw in built.items()}
                    for i, (row, s) in enumerate(zip(batch, samples, strict=True)):
                        record = _record(row, s, {n: o.scores[i] for n, o in outputs.items()},
                                         {n: o.details[i] for n, o in outputs.items()}, out)
                        f.write(json.dumps(record) + "\n")
                    f.flush()
                    bar.update(len(batch))
            bar.close()
        finally:
            for rw in built.values():
                rw.close()
    _wait_for_everyone(world)
    if rank != 0:
        return {}
    if world > 1:
        _merge_shards(out, world)
    records = _read_results(out)
    summary = summarize(records, names)
    summary.update(task=task, data=str(data))
    (out / "summary.json").write_text(json.dumps(_json_safe(summary), indent=2))
    images = {r["id"]: {"reference": _load(out, r.get("reference_png")), "generated": _load(out, r.get("generated_png"))}
              for r in records}
    write_report(records, summary, names, out, title=title or f"visalign eval · {task} · {data.name}",
                 images=images)
    return summary


def _record(row: dict[str, Any], s: Sample, scores: dict[str, float | None], details: dict[str, Any],
            out: Path) -> dict[str, Any]:
    rid = row["id"]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in rid)[:100]
    record: dict[str, Any] = {"id": rid, "scores": _json_safe(scores), "details": _json_safe(details)}
    if s.rendered is not None:
        record["render"] = s.rendered.to_json()
    gen = s.generated_image
    if gen is not None:
        gen.save(out / "images" / f"{safe}.png")
        record["generated_png"] = f"images/{safe}.png"
    ref = s.target_image
    if ref is not None:
        ref.save(out / "images" / f"{safe}.ref.png")
        record["reference_png"] = f"images/{safe}.ref.png"
    return record


def _end_with_newline(path: Path) -> None:
    """After an interrupted run the last line may be cut short: start the next record on a new line."""
    if path.exists() and path.stat().st_size:
        with open(path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")


def _load(out: Path, rel: str | None) -> Image.Image | None:
    if not rel:
        return None
    try:
        with Image.open(out / rel) as img:
            img.load()
            return img.copy()
    except OSError:
        return None


def _read_results(out: Path) -> list[dict[str, Any]]:
    path = out / "results.jsonl"
    if not path.exists():
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except ValueError:  # a line cut short by an interrupted run: it is scored again
                continue
    return records


def _merge_shards(out: Path, world: int) -> None:
    with open(out / "results.jsonl", "a", encoding="utf-8") as merged:
        for r in range(world):
            shard = out / f"results.rank{r}.jsonl"
            if shard.exists():
                merged.write(shard.read_text(encoding="utf-8"))
                shard.unlink()
