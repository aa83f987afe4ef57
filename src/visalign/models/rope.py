"""The Qwen-VL M-RoPE offset cache, reset in one place.

Qwen2-VL / Qwen2.5-VL models keep ``rope_deltas`` (the M-RoPE position offsets of the last batch) on their
inner model between calls; a stale value from a previous ``generate`` or forward shifts the positions of
the next batch. Every caller (trainers, the reward model's VLM backbone, the judge backend, tree sampling)
clears it with :func:`reset_rope_deltas` before a new batch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["reset_rope_deltas"]


def reset_rope_deltas(model: Any) -> bool:
    """Forget the M-RoPE offsets Qwen-VL models cache between calls (a stale one shifts the positions
    of the next batch), through peft / DDP wrappers; returns whether the model keeps them (then it
    derives positions from the mask itself, and 1-D ``position_ids`` must not be passed).

    Example:
        >>> import torch
        >>> m = torch.nn.Sequential(torch.nn.Linear(1, 1)); m[0].rope_deltas = 3
        >>> reset_rope_deltas(m), m[0].rope_deltas, reset_rope_deltas(torch.nn.Linear(1, 1))
        (True, None, False)
    """
    found = False
    modules = model.modules() if hasattr(model, "modules") else [model]
    for module in modules:
        if hasattr(module, "rope_deltas"):
            module.rope_deltas = None
            found = True
    return found
