"""The VLM families the GRPO trainer supports, by ``config.model_type``.

:func:`visalign.trainers.prompting.check_vlm` uses this table to tell a user, before a long run,
whether a checkpoint is supported and which processor path it takes
(``visalign train grpo --check-model PATH``). The families are the ones ``tests/test_vlm_families.py`` runs (sampler = trainer log-probs, greedy =
``generate``, a LoRA and a full GRPO step, save and reload) on tiny models built from each family's
real classes.

Example:
    >>> SUPPORTED_VLMS["qwen2_5_vl"].positions
    'M-RoPE (3-D, per-row deltas)'
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SUPPORTED_VLMS", "VLMFamily"]


@dataclass(frozen=True)
class VLMFamily:
    """A supported family: its name, model class, how positions work, and notes for users."""

    name: str
    model_class: str
    positions: str
    notes: str = ""


_MROPE = "M-RoPE (3-D, per-row deltas)"
_ONE_D = "1-D (left padding excluded)"

#: ``config.model_type`` -> family, for every family the test matrix runs.
SUPPORTED_VLMS: dict[str, VLMFamily] = {
    "qwen2_vl": VLMFamily("Qwen2-VL", "Qwen2VLForConditionalGeneration", _MROPE),
    "qwen2_5_vl": VLMFamily("Qwen2.5-VL", "Qwen2_5_VLForConditionalGeneration", _MROPE, "window attention in vision"),
    "qwen3_vl": VLMFamily("Qwen3-VL", "Qwen3VLForConditionalGeneration", _MROPE, "interleaved M-RoPE, deepstack"),
    "qwen3_5": VLMFamily("Qwen3.5", "Qwen3_5ForConditionalGeneration", _MROPE,
                         "hybrid linear (gated delta) + full attention; without flash-linear-attention and "
                         "causal-conv1d installed the linear layers run a slow PyTorch fallback"),
    "idefics3": VLMFamily("Idefics3", "Idefics3ForConditionalGeneration", _ONE_D, "needs pixel_attention_mask"),
    "smolvlm": VLMFamily("SmolVLM", "SmolVLMForConditionalGeneration", _ONE_D, "processor needs num2words"),
    "gemma3": VLMFamily("Gemma 3", "Gemma3ForConditionalGeneration", _ONE_D,
                        "token_type_ids mark image tokens (bidirectional image attention)"),
    "llava": VLMFamily("LLaVA", "LlavaForConditionalGeneration", _ONE_D),
    "llava_onevision": VLMFamily("LLaVA-OneVision", "LlavaOnevisionForConditionalGeneration", _ONE_D,
                                 "anyres image tiles: token count depends on image size"),
    "internvl": VLMFamily("InternVL", "InternVLForConditionalGeneration", _ONE_D, "image tiles as separate crops"),
}
