"""An exponential moving average of trainable parameters (Flow-GRPO's ``EMAModuleWrapper``), swapped in
for evaluation and saved with checkpoints."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

__all__ = ["ParameterEMA"]


class ParameterEMA:
    """Exponential moving average of parameters (Flow-GRPO's ``EMAModuleWrapper``): every ``update_every``
    calls of :meth:`step`, ``shadow <- d * shadow + (1 - d) * p`` with ``d = min(decay, (1 + n) / (10 + n))``.

    Example:
        >>> p = torch.nn.Parameter(torch.zeros(2))
        >>> ema = ParameterEMA([p], decay=0.5, update_every=1)
        >>> p.data += 1.0; ema.step([p])  # d = min(0.5, 1 / 10)
        >>> [round(x, 4) for x in ema.shadow[0].tolist()]
        [0.9, 0.9]
    """

    def __init__(self, parameters: Sequence[torch.nn.Parameter], decay: float = 0.9, update_every: int = 8) -> None:
        self.decay, self.update_every = decay, max(1, update_every)
        self.shadow = [p.detach().float().clone() for p in parameters]
        self.calls = 0
        self.updates = 0

    @torch.no_grad()
    def step(self, parameters: Sequence[torch.nn.Parameter]) -> None:
        self.calls += 1
        if self.calls % self.update_every:
            return
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for s, p in zip(self.shadow, parameters, strict=True):
            s.mul_(d).add_(p.detach().float(), alpha=1 - d)
        self.updates += 1

    @contextlib.contextmanager
    def swapped_in(self, parameters: Sequence[torch.nn.Parameter]) -> Iterator[None]:
        """Within the context the parameters hold the EMA weights."""
        backup = [p.detach().clone() for p in parameters]
        with torch.no_grad():
            for s, p in zip(self.shadow, parameters, strict=True):
                p.copy_(s.to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for b, p in zip(backup, parameters, strict=True):
                    p.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        return {"shadow": [s.cpu() for s in self.shadow], "calls": self.calls, "updates": self.updates}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.shadow = [s.to(old.device) for s, old in zip(state["shadow"], self.shadow, strict=True)]
        self.calls, self.updates = int(state["calls"]), int(state["updates"])
