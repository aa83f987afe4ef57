"""Load image-to-code rows from JSONL, parquet, Hugging Face ``datasets`` or Python lists.

Every trainer and evaluator reads rows of one shape::

    {"id": ..., "image": PIL.Image | None, "code": str | None, "prompt": str, "kind": "matplotlib"}

``image`` is the reference image (RGB), ``code`` the reference program (optional: GRPO needs only the
image), ``prompt`` the instruction (the kind's default instruction when a row has none). A row with
neither image nor code is an error that names the row.

Sources:

- a list of dicts (or any iterable of mappings);
- ``*.jsonl``: one JSON object a line; the image is a path (relative to the file or absolute), a
  base64 string or a ``data:image/...;base64,`` URL;
- ``*.parquet``: the image as bytes or as ``{"bytes": ..., "path": ...}`` (how HF ``datasets``
  writes its ``Image`` feature); needs ``pyarrow``;
- a HF ``datasets`` ``Dataset`` / ``DatasetDict`` object, or a directory written by
  ``save_to_disk``; needs ``datasets``.

:func:`write_jsonl` writes rows as JSONL with the images as PNG files beside it, which
:func:`load_rows` reads back.

Example:
    >>> from PIL import Image
    >>> rows = load_rows([{"image": Image.new("RGB", (8, 8)), "code": "import matplotlib"}])
    >>> rows[0]["prompt"], rows[0]["id"], rows[0]["image"].size
    ('Write matplotlib code that reproduces this chart.', 0, (8, 8))
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from PIL import Image

from ..languages import DEFAULT_INSTRUCTIONS

__all__ = ["DataError", "load_rows", "to_image", "write_jsonl"]

Source = str | Path | Iterable[Mapping[str, Any]] | Any


class DataError(ValueError):
    """A source or a row that cannot be read; the message names it."""


def _decode_bytes(data: bytes, where: str) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as e:  # PIL raises several kinds for bad data
        raise DataError(f"{where}: the image bytes are not an image ({type(e).__name__}: {e})") from None
    return img


def to_image(value: Any, base_dir: str | Path | None = None, where: str = "image") -> Image.Image | None:
    """The RGB ``PIL.Image`` that ``value`` stands for, or None for a missing image.

    ``value`` may be a PIL image, encoded bytes, a ``{"bytes": ..., "path": ...}`` dict, a numpy
    array (H x W or H x W x C, uint8), a ``data:`` URL, a base64 string, or a file path (relative to
    ``base_dir``). ``where`` names the row in error messages.

    Example:
        >>> import base64, io
        >>> buf = io.BytesIO(); Image.new("L", (3, 2)).save(buf, "PNG")
        >>> to_image(base64.b64encode(buf.getvalue()).decode()).mode
        'RGB'
    """
    if value is None:
        return None
    if isinstance(value, Image.Image):
        img = value
    elif isinstance(value, (bytes, bytearray, memoryview)):
        img = _decode_bytes(bytes(value), where)
    elif isinstance(value, Mapping):
        if value.get("bytes") is not None:
            img = _decode_bytes(bytes(value["bytes"]), where)
        elif value.get("path"):
            return to_image(str(value["path"]), base_dir, where)
        else:
            return None
    elif isinstance(value, str):
        img = _image_from_string(value, base_dir, where)
    elif hasattr(value, "__array__"):
        import numpy as np

        arr = np.asarray(value)
        if arr.dtype != np.uint8:
            raise DataError(f"{where}: an image array must be uint8, got {arr.dtype}")
        img = Image.fromarray(arr)
    else:
        raise DataError(f"{where}: cannot read an image from a {type(value).__name__}")
    return img if img.mode == "RGB" else img.convert("RGB")


def _image_from_string(value: str, base_dir: str | Path | None, where: str) -> Image.Image:
    if value.startswith("data:"):
        head, _, payload = value.partition(",")
        if ";base64" not in head:
            raise DataError(f"{where}: only base64 data URLs are supported, got {head!r}")
        return _decode_bytes(_b64(payload, where), where)
    path = Path(value).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    looks_like_path = len(value) < 1024 and ("/" in value or "." in value[-6:] or path.exists())
    if path.is_file():
        with Image.open(path) as img:
            img.load()
            return img.copy()
    if looks_like_path and not _is_base64(value):
        raise DataError(f"{where}: image file {str(path)!r} not found")
    return _decode_bytes(_b64(value, where), where)


def _is_base64(value: str) -> bool:
    return len(value) >= 16 and len(value) % 4 == 0 and all(c.isalnum() or c in "+/=\n" for c in value)


def _b64(payload: str, where: str) -> bytes:
    try:
        return base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError) as e:
        raise DataError(f"{where}: the image is neither a file nor valid base64 ({e})") from None


def _normalize(raw: Mapping[str, Any], index: int, at: str, base_dir: str | Path | None, *, image_column: str,
               code_column: str, prompt_column: str, kind: str) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise DataError(f"{at}: expected a mapping of columns, got {type(raw).__name__}")
    row_id = raw.get("id", index)
    where = f"{at} (id {row_id!r})"
    image = to_image(raw.get(image_column), base_dir, where)
    code = raw.get(code_column)
    if code is not None and not isinstance(code, str):
        raise DataError(f"{where}: column {code_column!r} must be a string, got {type(code).__name__}")
    if image is None and not code:
        raise DataError(f"{where} has neither an image (column {image_column!r}) nor code (column "
                        f"{code_column!r}); columns present: {sorted(raw)}")
    row_kind = raw.get("kind") or kind
    if row_kind not in DEFAULT_INSTRUCTIONS:
        raise DataError(f"{where}: unknown kind {row_kind!r} (a renderer kind: {', '.join(DEFAULT_INSTRUCTIONS)})")
    prompt = raw.get(prompt_column)
    if not prompt:
        prompt = DEFAULT_INSTRUCTIONS[row_kind]
    extra = {k: v for k, v in raw.items() if k not in (image_column, code_column, prompt_column, "id", "kind")}
    return {**extra, "id": row_id, "image": image, "code": code or None, "prompt": str(prompt), "kind": row_kind}


def _read_jsonl(path: Path) -> tuple[list[Any], list[int]]:
    """The rows of a JSONL file and each row's line number (blank lines skipped)."""
    rows, numbers = [], []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            numbers.append(n)
    return rows, numbers


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(f"reading {path} needs pyarrow: pip install pyarrow") from None
    return pq.read_table(path).to_pylist()


def _require_datasets(what: str) -> Any:
    try:
        import datasets
    except ImportError:
        raise ImportError(f"{what} needs the Hugging Face datasets library: pip install datasets") from None
    return datasets


def _pick_split(data: Any, split: str, name: str) -> Any:
    if (isinstance(data, Mapping) and not hasattr(data, "column_names")) or type(data).__name__ == "DatasetDict":
        if split not in data:
            raise DataError(f"{name} has no split {split!r}; splits: {sorted(data)}")
        return data[split]
    return data


class RawSource(NamedTuple):
    """What :func:`read_source` found: the raw rows, the name errors give the source (its path, or
    ``rows``), the folder relative image paths are read from, and each row's JSONL line number."""

    rows: Any
    name: str
    base_dir: Path | None
    lines: list[int] | None


def read_source(source: Source, split: str = "train") -> RawSource:
    """The raw rows of ``source``: a JSONL file (``.jsonl`` / ``.jsonl.txt``), a parquet file, a ``datasets``
    ``save_to_disk`` directory, a ``datasets`` object or a list of dicts (``split`` picks a split of a
    ``DatasetDict``). Rows are not checked here; a missing file or an unknown format is a :class:`DataError`.

    Example:
        >>> read_source([{"code": "x"}]).name, read_source([{"code": "x"}]).lines
        ('rows', None)
        >>> read_source("missing.jsonl")
        Traceback (most recent call last):
        ...
        visalign.data.loaders.DataError: missing.jsonl: no such file or directory
    """
    if not isinstance(source, (str, Path)):
        name = "rows" if isinstance(source, (list, tuple)) else type(source).__name__
        return RawSource(_pick_split(source, split, name), name, None, None)
    path = Path(source).expanduser()
    name = str(path)
    lines: list[int] | None = None
    if path.is_dir():
        if not any((path / f).exists() for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
            raise DataError(f"{path} is a directory but not one written by datasets' save_to_disk")
        raw: Any = _pick_split(_require_datasets(f"loading {path}").load_from_disk(str(path)), split, name)
    elif not path.exists():
        raise DataError(f"{path}: no such file or directory")
    elif path.suffix == ".jsonl" or path.name.endswith(".jsonl.txt"):
        raw, lines = _read_jsonl(path)
    elif path.suffix in (".parquet", ".pq"):
        raw = _read_parquet(path)
    else:
        raise DataError(f"{path}: unknown data format {path.suffix!r}; use .jsonl, .parquet, or a directory "
                        "written by datasets' save_to_disk")
    return RawSource(raw, name, path.parent, lines)


def load_rows(source: Source, *, image_column: str = "image", code_column: str = "code",
              prompt_column: str = "prompt", kind: str = "matplotlib", split: str = "train",
              limit: int | None = None) -> list[dict[str, Any]]:
    """Read rows ``dict(id, image, code, prompt, kind)`` from ``source`` (see the module doc).

    ``split`` picks a split of a ``DatasetDict`` (object or saved directory); ``limit`` keeps the
    first rows. Columns are renamed from ``image_column`` / ``code_column`` / ``prompt_column``; an
    ``id`` column is kept (else the row's index), a ``kind`` column (a renderer kind) overrides
    ``kind``, and other columns pass through unchanged.

    Example:
        >>> load_rows([{"code": "import matplotlib.pyplot as plt", "id": "a"}])[0]["image"] is None
        True
        >>> load_rows([{"prompt": "hi"}])
        Traceback (most recent call last):
        ...
        visalign.data.loaders.DataError: rows row 0 (id 0) has neither an image (column 'image') nor code (column 'code'); columns present: ['prompt']
    """
    raw, name, base_dir, lines = read_source(source, split)
    out = []
    for i, row in enumerate(raw):
        if limit is not None and i >= limit:
            break
        where = f"{name}:{lines[i]}" if lines is not None else f"{name} row {i}"
        out.append(_normalize(row, i, where, base_dir, image_column=image_column, code_column=code_column,
                              prompt_column=prompt_column, kind=kind))
    return out


def write_jsonl(rows: Iterable[Mapping[str, Any]], path: str | Path, image_dir: str | Path | None = None,
                ) -> Path:
    """Write rows as JSONL, each image as a PNG in ``image_dir`` (default ``<stem>_images`` beside the
    file), referenced by a path relative to the JSONL file. Returns the path written.

    Keys written: ``id`` (the row's, else its index), ``image``, ``code``, ``prompt``, ``kind``, and
    any other JSON-able scalar columns.

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> p = write_jsonl([{"image": Image.new("RGB", (4, 4), "red"), "code": "x = 1"}], d + "/set.jsonl")
        >>> load_rows(p)[0]["image"].getpixel((0, 0))
        (255, 0, 0)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = Path(image_dir) if image_dir is not None else path.parent / f"{path.stem}_images"
    with path.open("w", encoding="utf-8") as f:
        for i, row in enumerate(rows):
            row_id = row.get("id", i)
            record: dict[str, Any] = {"id": row_id}
            image = to_image(row.get("image"), None, f"row {i}")
            if image is not None:
                images.mkdir(parents=True, exist_ok=True)
                safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(row_id))
                file = images / f"{i:06d}-{safe}.png"[:120]
                image.save(file)
                try:
                    record["image"] = str(file.resolve().relative_to(path.parent.resolve()))
                except ValueError:
                    record["image"] = str(file.resolve())
            for key, value in row.items():
                if key not in ("id", "image") and (value is None or isinstance(value, (str, int, float, bool))):
                    record[key] = value
            f.write(json.dumps(record) + "\n")
    return path
