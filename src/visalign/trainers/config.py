"""Trainer configs: dataclasses whose fields carry their documentation, loaded from YAML or dicts.

Every trainer config is a dataclass; each field is declared with :func:`option`, which records a help
line and where the default comes from (a paper, TRL, Flow-GRPO, or "visalign"). :func:`load_config`
builds a config from a YAML file, a dict and keyword overrides, and refuses unknown keys with the
list of valid ones (a typo never silently trains with a default). :func:`describe_config` prints the
table the docs show.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Demo:
    ...     lr: float = option(1e-5, "learning rate", source="TRL")
    ...     steps: int = option(10, "optimizer steps")
    >>> load_config(Demo, {"lr": 3e-4}, steps=2)
    Demo(lr=0.0003, steps=2)
    >>> load_config(Demo, {"lrr": 1})
    Traceback (most recent call last):
    ...
    ValueError: unknown Demo option(s) 'lrr' (did you mean 'lr'?); valid: lr, steps
    >>> load_config(Demo, {"steps": "two"})
    Traceback (most recent call last):
    ...
    ValueError: option 'steps' must be an integer, got 'two'
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def option(default: Any, help: str, *, source: str = "visalign") -> Any:
    """A dataclass field with a default, a help line and the default's source.

    Mutable defaults (lists, dicts) are copied per instance.

    Example:
        >>> from dataclasses import dataclass, fields
        >>> @dataclass
        ... class C:
        ...     beta: float = option(0.0, "KL weight", source="TRL 1.16")
        >>> fields(C)[0].metadata["source"]
        'TRL 1.16'
    """
    meta = {"help": help, "source": source}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: _copy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


#: options every trainer has, with one meaning and one help text: ``name -> (default, help, source)``.
#: A config declares them with :func:`shared_option` (a trainer may change the default, citing its
#: source, and add a note), so the five configs are composed from these parts.
SHARED_OPTIONS: dict[str, tuple[Any, str, str]] = {
    "overwrite_output_dir": (False, "delete a previous run's artefacts in output_dir (metrics, checkpoints, eval, "
                                    "final weights; nothing else) and start over; without it or resume_from a used "
                                    "output_dir is refused", "HF Trainer"),
    "resume_from": (None, "continue a run: a checkpoint directory, or 'latest': the newest checkpoint in output_dir "
                          "(a fresh start when there is none yet)", "HF Trainer"),
    "save_every": (0, "save a checkpoint-<N> every this many steps (0: only at the end)", "visalign"),
    "max_minutes": (None, "stop after this many minutes of training (a wall-clock budget checked between steps; "
                          "the final eval and weights follow)", "visalign"),
    "num_threads": (None, "torch CPU threads (None: torch's default)", "visalign"),
    "progress": (True, "progress bar with ETA (and each reward's raw mean)", "visalign"),
    "mixed_precision": ("no", "'no', 'bf16' or 'fp16' (accelerate)", "accelerate"),
    "gradient_checkpointing": (False, "recompute activations in the backward pass (less memory, more compute)",
                               "visalign"),
    "lora": (False, "train a LoRA adapter (peft) instead of all weights", "peft"),
    "lora_r": (16, "LoRA rank (peft's r)", "peft"),
    "lora_alpha": (32, "LoRA alpha (the update is scaled by alpha / r)", "peft"),
    "lora_dropout": (0.0, "LoRA dropout", "peft"),
    "weight_decay": (0.0, "AdamW weight decay", "torch"),
    "adam_betas": ((0.9, 0.999), "AdamW betas", "torch"),
    "max_grad_norm": (1.0, "clip the gradient norm to this (None or 0: no clipping)", "TRL 1.16"),
}


def shared_option(name: str, default: Any = dataclasses.MISSING, *, source: str | None = None,
                  note: str | None = None) -> Any:
    """The field of the shared option ``name`` (:data:`SHARED_OPTIONS`): its help text, with this trainer's
    ``default`` (and the ``source`` of that default) when it differs, and a trainer-specific ``note``.

    Example:
        >>> from dataclasses import dataclass, fields
        >>> @dataclass
        ... class C:
        ...     lora_r: int = shared_option("lora_r", 32, source="Flow-GRPO")
        >>> C().lora_r, fields(C)[0].metadata["help"], fields(C)[0].metadata["source"]
        (32, "LoRA rank (peft's r)", 'Flow-GRPO')
    """
    base_default, help_, base_source = SHARED_OPTIONS[name]
    if default is dataclasses.MISSING:
        default = base_default
    return option(default, f"{help_}; {note}" if note else help_, source=source or base_source)


def _copy(value: Any) -> Any:
    return json.loads(json.dumps(value)) if isinstance(value, (list, dict)) else set(value)


def _coerce(tp: Any, value: Any, name: str) -> Any:
    """Bring a YAML value to the field's type where YAML cannot say it (tuples, floats from ints,
    nested dataclasses); leave anything else as given."""
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(args[0], value, name) if len(args) == 1 else value
    if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
        return load_config(tp, dict(value))
    if origin is tuple and isinstance(value, (list, tuple)):
        return tuple(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"option {name!r} must be a number, got {value!r}") from None
    _check_type(tp, value, name)
    return value


_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list",
               dict: "a mapping"}


def _check_type(tp: Any, value: Any, name: str) -> None:
    """Refuse a value of the wrong plain type (``max_steps: two``) before anything loads; fields typed
    ``Any`` or with several types are left to the config's own checks."""
    ok = {int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          bool: lambda v: isinstance(v, bool), str: lambda v: isinstance(v, str),
          list: lambda v: isinstance(v, (list, tuple)), dict: lambda v: isinstance(v, Mapping)}.get(tp)
    if ok is not None and not ok(value):
        raise ValueError(f"option {name!r} must be {_TYPE_WORDS[tp]}, got {value!r}")


def load_config(cls: type[T], source: str | Path | Mapping[str, Any] | None = None, *, section: str | None = None,
                **overrides: Any) -> T:
    """Build ``cls`` from a YAML file path, a mapping, or nothing, then apply ``overrides``.

    With ``section`` (``"grpo"``, ``"sft"``, ``"flow"``), a file or mapping holding that key reads its
    options from under it; without the key the options are at the top level. Unknown keys raise
    ``ValueError`` listing the valid ones.
    """
    if source is None:
        data: dict[str, Any] = {}
    elif isinstance(source, Mapping):
        data = dict(source)
    else:
        loaded = yaml.safe_load(Path(source).read_text())
        if loaded is not None and not isinstance(loaded, Mapping):
            raise ValueError(f"{source}: a config file holds a mapping of options, got {type(loaded).__name__}")
        data = dict(loaded or {})
    if section is not None and isinstance(data.get(section), Mapping):
        data = dict(data[section])
    if isinstance(source, (str, Path)):  # paths written in a file are relative to the file, not the shell
        kept = {k: v for k, v in data.items() if k not in overrides}  # an overridden value is never read
        data = resolve_config_paths(kept, Path(source).resolve().parent, str(source))
    data.update(overrides)
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    where = f"{source}: " if isinstance(source, (str, Path)) else ""
    data = apply_renamed_options(cls, data, where)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        hints_ = []
        for key in unknown:
            near = difflib.get_close_matches(str(key), list(fields), n=3, cutoff=0.6)
            hints_.append(f"{key!r}" + (f" (did you mean {' or '.join(repr(n) for n in near)}?)" if near else ""))
        valid = ", ".join(fields) if len(fields) <= 12 else f"{len(fields)} options, listed by --describe"
        raise ValueError(f"{where}unknown {cls.__name__} option(s) {', '.join(hints_)}; valid: {valid}")
    hints = typing.get_type_hints(cls)
    try:
        kwargs = {k: _coerce(hints.get(k, Any), v, k) for k, v in data.items()}
    except ValueError as exc:
        raise ValueError(f"{where}{exc}") from None
    factory = getattr(cls, "from_options", None)  # configs with presets need to know which keys were given
    return factory(kwargs) if callable(factory) else cls(**kwargs)


#: one vocabulary across the trainers: the old name of an option, the name every trainer now uses, and
#: what the old name meant (a config written before the rename still loads, with a warning)
VOCABULARY = {
    "lora_rank": ("lora_r", "the LoRA rank (peft's r; TRL's lora_r)"),
    "use_lora": ("lora", "train a LoRA adapter instead of all weights"),
    "clip_range": ("epsilon", "the PPO clip range of the importance ratio (TRL's epsilon)"),
    "num_iterations": ("max_steps", "the number of training iterations (in the GRPO trainer, num_iterations is "
                                    "TRL's optimizer steps per generation batch)"),
}


def apply_renamed_options(cls: type, data: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """``data`` with each old option name of ``cls.RENAMED_OPTIONS`` (a subset of :data:`VOCABULARY`)
    moved to its new name and a warning logged; giving both names is an error.

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class C:
        ...     RENAMED_OPTIONS = ("lora_rank",)  # not annotated: a class attribute, not an option
        ...     lora_r: int = option(16, "LoRA rank")
        >>> load_config(C, {"lora_rank": 4})
        C(lora_r=4)
    """
    out = dict(data)
    for old in getattr(cls, "RENAMED_OPTIONS", ()):
        if old not in out:
            continue
        new, meaning = VOCABULARY[old]
        if new in out:
            raise ValueError(f"{where}options {old!r} and {new!r} are one option ({meaning}): give {new!r} only")
        logging.getLogger("visalign.config").warning(
            "%soption %r is now called %r (%s; one name in every trainer): read as %s=%r", where, old, new,
            meaning, new, out[old])
        out[new] = out.pop(old)
    return out


#: options that name a file or directory, by how a relative value in a config file is read: ``input``
#: must exist next to the file, ``output`` is created there, ``model`` is a path next to the file when
#: one exists there and otherwise a hub id / architecture name (``org/name``, ``ViT-B-32``)
PATH_OPTIONS = {"model": "model", "pretrained": "model", "train_data": "input", "eval_data": "input",
                "prompts_file": "input", "eval_prompts_file": "input", "reference_image": "input",
                "pretrain_data": "input", "resume_from": "input", "output_dir": "output"}


def resolve_config_paths(data: Mapping[str, Any], base: Path, where: str = "config", *,
                         strict: bool = True) -> dict[str, Any]:
    """``data`` with the relative paths of :data:`PATH_OPTIONS` (and the ``path`` option of each reward
    in ``rewards``) made absolute against ``base``, the config file's directory, so a config means the
    same run from any directory. A local path that does not exist is an error naming the file and the
    option, before anything loads (``strict=False``: kept as written); ``resume_from: latest`` and hub ids
    are kept.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> (d / "train.jsonl").write_text("")
        0
        >>> out = resolve_config_paths({"train_data": "train.jsonl", "output_dir": "runs/a", "model": "org/name"}, d)
        >>> out["train_data"] == str(d / "train.jsonl"), out["output_dir"] == str(d / "runs/a"), out["model"]
        (True, True, 'org/name')
    """
    out = dict(data)
    for name, role in PATH_OPTIONS.items():
        value = out.get(name)
        if isinstance(value, str):
            out[name] = _resolve(value, role, base, f"{where}: option {name!r}", strict)
        elif isinstance(value, list) and role == "input":
            out[name] = [_resolve(v, role, base, f"{where}: option {name!r}", strict) if isinstance(v, str) else v
                         for v in value]
    rewards = out.get("rewards")
    specs = rewards.values() if isinstance(rewards, Mapping) else rewards if isinstance(rewards, list) else []
    for spec in specs:
        if not isinstance(spec, dict):
            continue
        label = f"reward {spec['name']!r}" if spec.get("name") else "a reward's"
        for holder in (spec, spec.get("options")):
            if isinstance(holder, dict) and isinstance(holder.get("path"), str):
                holder["path"] = _resolve(holder["path"], "input", base, f"{where}: {label} option 'path'", strict)
    return out


def _resolve(value: str, role: str, base: Path, what: str, strict: bool = True) -> str:
    if (role == "input" and value == "latest") or not value:
        return value
    prefix = "local-dir:" if value.startswith("local-dir:") else ""  # open_clip's local model directories
    raw = value[len(prefix):]
    path = Path(raw).expanduser()
    if path.is_absolute():
        return prefix + str(path)
    here = Path(os.path.normpath(base / path))
    if role == "output" or here.exists():
        return prefix + str(here)
    if role == "model" and not prefix and not raw.startswith((".", "~")) and not Path(raw).exists():
        return value  # a hub id or an architecture name
    if not strict:
        return value
    hint = ""
    if Path(raw).exists():
        hint = (f"; {raw} exists relative to the current directory, but paths in a config file are relative "
                f"to the file: write {os.path.relpath(Path(raw).resolve(), base)} or an absolute path")
    raise ValueError(f"{what}: no such file or directory: {here}{hint}")


def parse_overrides(items: Sequence[str] | None) -> dict[str, Any]:
    """``--set KEY=VALUE`` pairs as options, each value read as YAML (numbers, booleans, lists).

    Example:
        >>> parse_overrides(["max_steps=2", "lora=true", "adam_betas=[0.9, 0.95]"])
        {'max_steps': 2, 'lora': True, 'adam_betas': [0.9, 0.95]}
    """
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set takes KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def config_to_dict(config: Any) -> dict[str, Any]:
    """The config as plain YAML-able data (tuples become lists).

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class C:
        ...     size: tuple = option((1.5, 1.5), "figure size")
        >>> config_to_dict(C())
        {'size': [1.5, 1.5]}
    """
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def save_config(config: Any, path: str | Path) -> Path:
    """Write ``config`` as YAML, the file :func:`load_config` reads back from any directory: relative paths
    (data, model, output, a reward's ``path``), which the run read from the current directory, are written
    absolute (a config file's relative paths are relative to the file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = resolve_config_paths(config_to_dict(config), Path.cwd(), strict=False)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def describe_config(cls: type) -> str:
    """A markdown table of ``cls``'s options: name, default, source and help.

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class C:
        ...     beta: float = option(0.0, "KL weight", source="TRL 1.16")
        >>> print(describe_config(C))
        | option | default | source | meaning |
        | --- | --- | --- | --- |
        | `beta` | `0.0` | TRL 1.16 | KL weight |
    """
    rows = ["| option | default | source | meaning |", "| --- | --- | --- | --- |"]
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "required"
        rows.append(f"| `{f.name}` | `{default!r}` | {f.metadata.get('source', '')} | {f.metadata.get('help', '')} |")
    return "\n".join(rows)
