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

import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from .languages import DEFAULT_REWARDS, TASKS
from .report.eval_report import summarize, write_report
from .rewards import RenderService, Reward, Sample
from .rewards.specs import build_reward_map

log = logging.getLogger("visalign.eval")

_KNOWN = {"id", "completion", "code", "image", "reference_image", "reference_code", "prompt"}


def read_rows(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The rows of a JSONL file with an ``id`` each (the line number when missing)."""
    return [row for _, row in read_numbered_rows(path, limit)]


def read_numbered_rows(path: str | Path, limit: int | None = None) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, row)`` for the rows of a JSONL file, each with an ``id`` (the line index when
    missing); a line that is not a JSON object is an error naming the file and line."""
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
            rows.append((i + 1, row))
            if limit is not None and len(rows) >= limit:
                break
    return rows


#: the field holding what the model produced, by task
ANSWER_FIELDS = {"t2i": ("image",)}
_IMAGE_FIELDS = ("image", "reference_image")


def check_rows(path: str | Path, rows: Sequence[tuple[int, dict[str, Any]]], task: str) -> None:
    """Fail before anything slow starts when the data cannot be what ``task`` expects: no row holds the
    model's answer (``completion`` / ``code``, or ``image`` for ``t2i``: misnamed fields), or an image
    field names a file that does not exist. Errors name the file, line, row id and field.

    Example:
        >>> check_rows("data.jsonl", [(1, {"id": "0", "answer": "x"})], "svg")
        Traceback (most recent call last):
        ...
        ValueError: data.jsonl: no row has a 'completion' or 'code' field (the model's answer, task svg); the rows have: answer, id
    """
    answer = ANSWER_FIELDS.get(task, ("completion", "code"))
    if rows and not any(row.get(f) is not None for _, row in rows for f in answer):
        seen = sorted({k for _, row in rows for k in row})
        raise ValueError(f"{path}: no row has a {' or '.join(repr(f) for f in answer)} field (the model's answer, "
                         f"task {task}); the rows have: {', '.join(seen)}")
    base = Path(path).parent
    missing = [f"{path}:{line}: row {row['id']!r}: field {key!r}: no such file {base / row[key]}"
               for line, row in rows for key in _IMAGE_FIELDS
               if isinstance(row.get(key), str) and row[key] and not (base / row[key]).is_file()]
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise ValueError("\n".join(missing[:5]) + more)


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
                  kind=kind, metadata=meta)  # an answer of a code task with no code is a failed sample


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
    """Rewards by name with their ``options`` (name -> keyword arguments), sharing ``service``
    (a thin wrapper of :func:`visalign.rewards.specs.build_reward_map`)."""
    options = options or {}
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise ValueError(f"options given for rewards not asked for: {unknown}")
    return build_reward_map([{"name": n, "options": options.get(n) or {}} for n in names], service)


def run_eval(data: str | Path, task: str, rewards: Sequence[str] | None, out: str | Path, *,
             workers: int | None = None, limit: int | None = None, timeout: float = 10.0,
             batch_size: int | None = None,
             progress: bool = True, reward_options: dict[str, dict[str, Any]] | None = None,
             render_options: dict[str, dict[str, Any]] | None = None, title: str | None = None,
             log_samples: bool = False) -> dict[str, Any]:
    """Render and score every row of ``data``; write results, summary and report into ``out``.

    ``reward_options`` maps a reward name to its keyword arguments, e.g.
    ``{"clip": {"model_name": "ViT-L-14", "pretrained": "/models/clip.pt"}}``; ``render_options`` maps a
    renderer kind to its options (``{"matplotlib": {"dpi": 64}}``, as :class:`RenderService` takes them).
    ``log_samples`` keeps each row's prompt and whole completion in its record. ``batch_size`` (default
    twice the workers, at most 32) is how many samples render and score together: an interrupted run
    keeps every batch it finished, and a rerun scores only the rows and rewards still missing.
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
    reward_options = reward_options or {}
    unknown = sorted(set(reward_options) - set(names))
    if unknown:  # checked against every reward asked for, not only those a rerun still has to compute
        raise ValueError(f"options given for rewards not asked for: {unknown}")
    data, out = Path(data), Path(out)
    numbered = read_numbered_rows(data, limit)
    check_rows(data, numbered, task)  # before anything slow: misnamed fields, missing images
    (out / "images").mkdir(parents=True, exist_ok=True)
    rank, world = _rank_world()
    results_path = out / ("results.jsonl" if world == 1 else f"results.rank{rank}.jsonl")
    previous = {r["id"]: r for r in _read_results(out)}
    todo = []  # (row, the rewards it still lacks): a reward added on a rerun is computed for every row
    for _, row in numbered:
        have = previous.get(row["id"], {}).get("scores", {})
        missing = [n for n in names if n not in have]
        if missing:
            todo.append((row, missing))
    mine = todo[rank::world]
    kind = TASKS[task]
    if previous:
        log.info("resuming: %d samples already scored, %d to score", len(numbered) - len(todo), len(todo))
    if batch_size is None:  # small batches: an interrupted run keeps every batch it finished
        batch_size = max(2, min(32, 2 * (workers or os.cpu_count() or 1)))
    with RenderService(timeout=timeout, workers=workers, options=render_options) as service:
        needed = [n for n in names if any(n in m for _, m in mine)]
        built = build_rewards(needed, service, {n: o for n, o in reward_options.items() if n in needed})
        try:
            bar = tqdm(total=len(mine), desc=f"eval {task}", unit="sample", disable=not progress or None)
            _end_with_newline(results_path)
            with open(results_path, "a", encoding="utf-8") as f:
                for batch in _batches(mine, batch_size):
                    samples = [to_sample(_answered(r, kind), kind, data.parent) for r, _ in batch]
                    service.render(samples)
                    service.render([s for s in samples if s.reference_image is None], reference=True)
                    need = [n for n in built if any(n in m for _, m in batch)]
                    outputs = {name: built[name](samples) for name in need}
                    for i, ((row, missing), s) in enumerate(zip(batch, samples, strict=True)):
                        record = _record(row, s, {n: outputs[n].scores[i] for n in missing},
                                         {n: outputs[n].details[i] for n in missing}, out, kind)
                        if log_samples:  # lm-eval-harness's --log_samples: what was asked and answered, whole
                            record.update(prompt=row.get("prompt"), completion=row.get("completion"))
                        old = previous.get(row["id"])
                        if old:  # keep the rewards scored before
                            record["scores"] = {**old.get("scores", {}), **record["scores"]}
                            record["details"] = {**old.get("details", {}), **record["details"]}
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
    _compact(out, records)
    summary = summarize(records, names)
    summary.update(task=task, data=str(data))
    (out / "summary.json").write_text(json.dumps(_json_safe(summary), indent=2))
    images = {r["id"]: {"reference": _load(out, r.get("reference_png")), "generated": _load(out, r.get("generated_png"))}
              for r in records}
    write_report(records, summary, names, out, title=title or f"visalign eval · {task} · {data.name}",
                 images=images)
    return summary


def _answered(row: dict[str, Any], kind: str | None) -> dict[str, Any]:
    """A row with no answer scores as a failed sample (an empty completion), never as an absent one."""
    if kind is not None and row.get("code") is None and row.get("completion") is None:
        return dict(row, completion="")
    return row


def _record(row: dict[str, Any], s: Sample, scores: dict[str, float | None], details: dict[str, Any],
            out: Path, kind: str | None = None) -> dict[str, Any]:
    rid = row["id"]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in rid)[:100]
    record: dict[str, Any] = {"id": rid, "scores": _json_safe(scores), "details": _json_safe(details)}
    if s.code is not None:  # for the report: the code and its diff to the reference code
        record["code"] = s.code[:20_000]
    elif s.completion:
        record["completion"] = s.completion[:4_000]
    if isinstance(row.get("reference_code"), str):
        record["reference_code"] = row["reference_code"][:20_000]
    if s.rendered is not None:
        record["render"] = s.rendered.to_json()
    elif kind is not None and s.code is None:  # nothing to render: a failure of the sample, counted as one
        absent = row.get("completion") is None and row.get("code") is None
        record["render"] = {"ok": False, "error_kind": "missing_completion" if absent else "no_code",
                            "error": "the row has no 'completion' or 'code' field" if absent
                            else f"no {kind} code found in the completion", "seconds": 0.0}
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
    """The records of ``out/results.jsonl``, the last one of each id (a rerun that adds a reward appends
    the merged record), in the order the ids first appear."""
    path = out / "results.jsonl"
    if not path.exists():
        return []
    records: dict[str, dict[str, Any]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:  # a line cut short by an interrupted run: it is scored again
                continue
            if isinstance(record, dict) and "id" in record:
                records[str(record["id"])] = record
    return list(records.values())


def _compact(out: Path, records: Sequence[dict[str, Any]]) -> None:
    """Rewrite ``results.jsonl`` with one record per id when a rerun appended newer ones."""
    path = out / "results.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    if len(lines) != len(records):
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        os.replace(tmp, path)


def _merge_shards(out: Path, world: int) -> None:
    with open(out / "results.jsonl", "a", encoding="utf-8") as merged:
        for r in range(world):
            shard = out / f"results.rank{r}.jsonl"
            if shard.exists():
                merged.write(shard.read_text(encoding="utf-8"))
                shard.unlink()
