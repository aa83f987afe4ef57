"""Generate the completions an eval scores: ``visalign eval DATA --model PATH_OR_ENDPOINT``.

lm-eval-harness and VLMEvalKit users evaluate a *model*, not completions they already have. This module
asks a model to write the code of each row's reference image (the image it sees: ``reference_image``,
else the render of ``reference_code``) with the task's instruction (the row's ``prompt`` when given),
and writes ``generations.jsonl`` next to the results: one line per row as soon as its batch is done,
so an interrupted run resumes where it stopped. The model is a local Hugging Face VLM (any
``AutoModelForImageTextToText`` + ``AutoProcessor`` directory or hub id, greedy) or an
OpenAI-compatible chat endpoint (``http(s)://host/v1``, with ``--model-name`` and the key in
``OPENAI_API_KEY`` or the variable named by ``api_key_env``); both are the judge backends of
:mod:`visalign.rewards.judge`, so images, retries and timeouts behave as they do for judges.

Example:
    >>> from visalign.rewards.judge import CallableJudgeBackend
    >>> import json, tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> svg = '<svg xmlns="http://www.w3.org/2000/svg" width="32" height="32"><circle cx="16" cy="16" r="9"/></svg>'
    >>> _ = (d / "rows.jsonl").write_text(json.dumps({"id": "r0", "reference_code": svg}) + "\\n")
    >>> path = generate_completions(d / "rows.jsonl", "svg", d / "out",
    ...                             backend=CallableJudgeBackend(lambda req: "```svg\\n" + svg + "\\n```"))
    >>> json.loads(path.read_text())["completion"].startswith("```svg")
    True
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from .evaluate import check_rows, read_numbered_rows
from .languages import DEFAULT_INSTRUCTIONS, TASKS
from .rewards import RenderService, Sample
from .rewards.judge import JudgeBackend, JudgeRequest

log = logging.getLogger("visalign.eval")

__all__ = ["generate_completions", "make_backend"]


def make_backend(model: str, *, model_name: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 max_new_tokens: int = 1024, batch_size: int = 8, timeout: float = 120.0) -> JudgeBackend:
    """The generator for ``model``: an OpenAI-compatible endpoint when it is an ``http(s)://`` URL
    (``model_name`` is then required), else a local Hugging Face VLM (a directory or hub id). A path
    that looks local (``./``, ``../``, ``/``, ``~``) and does not exist is an error before anything loads."""
    if model.startswith(("http://", "https://")):
        if not model_name:
            raise ValueError("--model is an endpoint: name the served model with --model-name")
        from .rewards.judge import OpenAIJudgeBackend

        return OpenAIJudgeBackend(model, model_name, api_key_env=api_key_env, timeout=timeout,
                                  max_tokens=max_new_tokens)
    local = Path(model).expanduser()
    if model.startswith((".", "/", "~")) and not local.exists():
        raise ValueError(f"--model {model}: no such directory (a local path; hub ids look like org/name)")
    from .rewards.judge import TransformersJudgeBackend

    return TransformersJudgeBackend(str(local) if local.exists() else model, max_new_tokens=max_new_tokens,
                                    batch_size=batch_size)


def _done(path: Path) -> set[str]:
    if not path.exists():
        return set()
    done = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            done.add(str(json.loads(line)["id"]))
        except (ValueError, KeyError, TypeError):  # a line cut short by an interrupted run
            continue
    return done


def generate_completions(data: str | Path, task: str, out: str | Path, *, backend: JudgeBackend,
                         limit: int | None = None, batch_size: int = 8, instruction: str | None = None,
                         render_options: dict[str, dict[str, Any]] | None = None, workers: int | None = None,
                         progress: bool = False) -> Path:
    """Ask ``backend`` for the code of each row's reference image; append to ``out/generations.jsonl``
    (rows already there are skipped) and return its path. The written rows keep every field of the
    input row, with image paths made absolute, plus ``completion`` (``None`` when the request failed:
    the eval then counts a failed sample) and ``generation_error``."""
    from tqdm import tqdm

    if task not in TASKS or TASKS[task] is None:
        raise ValueError(f"--model generates code from images: task must be one of "
                         f"{sorted(t for t, k in TASKS.items() if k)}, got {task!r}")
    kind = TASKS[task]
    data, out = Path(data), Path(out)
    numbered = read_numbered_rows(data, limit)
    check_rows(data, [(n, dict(r, completion="")) for n, r in numbered], task)  # images exist; answers come later
    no_input = [f"{data}:{n}: row {r['id']!r}: no 'reference_image' or 'reference_code' to show the model"
                for n, r in numbered if not r.get("reference_image") and not r.get("reference_code")]
    if no_input:
        raise ValueError("\n".join(no_input[:5]))
    out.mkdir(parents=True, exist_ok=True)
    path = out / "generations.jsonl"
    done = _done(path)
    todo = [r for _, r in numbered if r["id"] not in done]
    if done:
        log.info("generation: %d rows already generated, %d to go", len(done), len(todo))
    bar = tqdm(total=len(todo), desc=f"generate {task}", unit="row", disable=not progress or None)
    with RenderService(workers=workers, options=render_options) as service, open(path, "a", encoding="utf-8") as f:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            images = _reference_images(batch, kind, data.parent, service)
            asked = [i for i, (img, _) in enumerate(images) if img is not None]
            requests = [JudgeRequest(parts=[images[i][0], batch[i].get("prompt") or instruction
                                            or DEFAULT_INSTRUCTIONS.get(kind, "Write the code of this image.")])
                        for i in asked]
            answers = dict(zip(asked, backend.generate(requests), strict=True)) if requests else {}
            for i, row in enumerate(batch):
                rec = {k: v for k, v in row.items() if k not in ("completion", "code")}
                for key in ("image", "reference_image"):
                    if isinstance(rec.get(key), str) and rec[key]:
                        rec[key] = str((data.parent / rec[key]).resolve())
                resp = answers.get(i)
                rec["completion"] = resp.text if resp is not None else None
                if resp is None or not resp.ok:  # the eval counts it as a failed sample
                    rec["generation_error"] = images[i][1] if resp is None else resp.error
                f.write(json.dumps(rec) + "\n")
            f.flush()
            bar.update(len(batch))
    bar.close()
    return path


def _reference_images(rows: Sequence[dict[str, Any]], kind: str, base: Path,
                      service: RenderService) -> list[tuple[Image.Image | None, str | None]]:
    """The image each row shows the model (its reference image, else the render of its reference
    code), or None and why (the reference code does not render)."""
    samples = []
    for r in rows:
        img = None
        if r.get("reference_image"):
            with Image.open(base / r["reference_image"]) as im:
                img = im.convert("RGB")
        samples.append(Sample(reference_image=img, reference_code=r.get("reference_code"), kind=kind))
    service.render([s for s in samples if s.reference_image is None], reference=True)
    out: list[tuple[Image.Image | None, str | None]] = []
    for s in samples:
        target = s.target_image
        rendered = s.reference_rendered
        why = None if target is not None else (
            f"the reference code does not render ({rendered.error_kind}: {rendered.error})" if rendered is not None
            else "no reference image")
        out.append((target, why))
    return out
