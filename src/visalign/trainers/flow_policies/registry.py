"""Which policy serves which pipeline: :data:`POLICIES` maps a diffusers pipeline class name (the
``_class_name`` of a checkpoint's ``model_index.json``) to ``"module:Class"`` in this package.

A new family is one module (the policy and its tiny builder) and one line here.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import torch

from .base import FlowPolicy

__all__ = ["POLICIES", "flow_policy_class", "load_flow_policy", "policy_class_for_pipeline"]

POLICIES: dict[str, str] = {
    "StableDiffusion3Pipeline": "sd3:SD3Policy",
    "StableDiffusion3Img2ImgPipeline": "sd3:SD3Policy",
    "StableDiffusion3InpaintPipeline": "sd3:SD3Policy",
    "FluxPipeline": "flux:FluxPolicy",
    "SanaPipeline": "sana:SanaPolicy",
    "StableDiffusionPipeline": "stable_diffusion:StableDiffusionPolicy",
    "StableDiffusionXLPipeline": "sdxl:StableDiffusionXLPolicy",
    "QwenImagePipeline": "qwenimage:QwenImagePolicy",
    "Flux2Pipeline": "flux2:Flux2Policy",
    "Flux2KleinPipeline": "flux2:Flux2KleinPolicy",
    "WanPipeline": "wan:WanPolicy",
}
"""Pipeline class name -> ``"module:Class"`` (a module of this package)."""


def policy_class_for_pipeline(name: str) -> type[FlowPolicy]:
    """The policy class registered for the pipeline class ``name``; ValueError listing the supported ones.

    Example:
        >>> policy_class_for_pipeline("FluxPipeline").__name__
        'FluxPolicy'
    """
    try:
        module, cls = POLICIES[name].split(":")
    except KeyError:
        raise ValueError(f"pipeline {name!r} is not supported ({', '.join(sorted(POLICIES))} are)") from None
    return getattr(importlib.import_module(f"{__package__}.{module}"), cls)


def _pipeline_name(path: Path) -> str | None:
    index = path / "model_index.json"
    return json.loads(index.read_text()).get("_class_name", "") if index.exists() else None


def flow_policy_class(path: str | Path) -> type[FlowPolicy]:
    """The policy class :func:`load_flow_policy` would use for the directory ``path``."""
    name = _pipeline_name(Path(path))
    if name is not None:
        try:
            return policy_class_for_pipeline(name)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
    from .class_unet import ClassConditionalFlowPolicy

    return ClassConditionalFlowPolicy


#: the file a trainer writes into ``final/`` (and ``final_ema/``): what the weights there are (``adapter``:
#: a peft LoRA adapter; ``full``: the policy model's weights) and the base they were trained from
FINAL_MANIFEST = "visalign_final.json"


def load_flow_policy(path: str | Path, *, torch_dtype: torch.dtype | None = None, base: str | Path | None = None,
                     **kwargs: Any) -> FlowPolicy:
    """A policy from a local directory: a pipeline (``model_index.json``; its ``_class_name`` picks the
    policy from :data:`POLICIES`, e.g. ``StableDiffusion3Pipeline`` -> ``SD3Policy``), a
    class-conditional UNet (``config.json`` + ``classes.json``, directly or under ``unet/``), or a
    trainer's ``final/`` directory (:data:`FINAL_MANIFEST`): a LoRA adapter (merged into its base) or a
    pipeline's trained model, on the base it names (``base`` overrides it; needed when the run was given
    the policy as an object). ``kwargs`` go to the policy (``resolution`` for pipelines,
    ``max_sequence_length`` for those with a text encoder that takes it; ``null_class`` for the UNet)."""
    path = Path(path)
    manifest = path / FINAL_MANIFEST
    if manifest.exists():
        info = json.loads(manifest.read_text())
        if not (info.get("weights") == "full" and (path / "config.json").exists()
                and (path / "classes.json").exists()):  # a full class-conditional UNet loads as it is
            return _load_trained(path, info, base, torch_dtype, kwargs)
    if _pipeline_name(path) is not None:
        return flow_policy_class(path).from_pretrained(path, torch_dtype=torch_dtype, **kwargs)  # type: ignore[attr-defined]
    from .class_unet import ClassConditionalFlowPolicy

    for candidate in (path, path / "unet"):
        if (candidate / "config.json").exists() and ((candidate / "classes.json").exists()
                                                     or (path / "classes.json").exists()):
            if (candidate / "classes.json").exists():
                return ClassConditionalFlowPolicy.from_pretrained(candidate, torch_dtype=torch_dtype, **kwargs)
            from diffusers import UNet2DModel

            unet = UNet2DModel.from_pretrained(str(candidate), torch_dtype=torch_dtype)
            return ClassConditionalFlowPolicy(unet, json.loads((path / "classes.json").read_text()), **kwargs)
    raise ValueError(f"{path}: neither a pipeline directory (model_index.json) nor a class-conditional UNet "
                     "directory (config.json + classes.json)")


def _load_trained(path: Path, info: dict[str, Any], base: str | Path | None, torch_dtype: torch.dtype | None,
                  kwargs: dict[str, Any]) -> FlowPolicy:
    """A trainer's ``final/``: the base policy with the adapter merged in, or with the trained weights."""
    weights = info.get("weights")
    if weights not in ("adapter", "full"):
        raise ValueError(f"{path / FINAL_MANIFEST}: field 'weights' must be 'adapter' or 'full', got {weights!r}")
    base = base or info.get("base")
    what = "a LoRA adapter" if weights == "adapter" else f"trained {info.get('model', 'model')} weights"
    if not base:
        raise ValueError(f"{path}: holds {what} of a run whose base policy was given as an object, not a "
                         "directory: load_flow_policy(path, base=BASE_DIR) with the model it was trained from")
    if not Path(base).exists():
        raise ValueError(f"{path}: holds {what} on the base {base}, which does not exist (moved? give base=)")
    policy = load_flow_policy(base, torch_dtype=torch_dtype, **kwargs)
    if weights == "adapter":
        from peft import PeftModel

        merged = PeftModel.from_pretrained(policy.model, str(path)).merge_and_unload()
        policy.model = merged
    else:  # in place: a pipeline policy may hold the same module under another name
        trained = type(policy.model).from_pretrained(str(path), torch_dtype=torch_dtype)
        policy.model.load_state_dict(trained.state_dict())
    return policy
