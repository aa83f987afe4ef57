"""The judge's contract: a request (system prompt and ordered text / image parts), a response, and
the :class:`JudgeBackend` interface that answers a batch; :class:`CallableJudgeBackend` answers with a
Python function. The HTTP and local-model backends live in their own modules.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image

__all__ = ["CallableJudgeBackend", "JudgeBackend", "JudgeRequest", "JudgeResponse"]


@dataclass
class JudgeRequest:
    """One conversation for the judge: a system prompt and the user turn's parts, in order.

    ``parts`` mixes text (``str``) and images (``PIL.Image``); backends keep the order.

    Example:
        >>> r = JudgeRequest(parts=["Rate this image.", Image.new("RGB", (4, 4))])
        >>> r.images[0].size, r.text
        ((4, 4), 'Rate this image.')
    """

    parts: list[str | Image.Image]
    system: str | None = None

    @property
    def images(self) -> list[Image.Image]:
        return [p for p in self.parts if isinstance(p, Image.Image)]

    @property
    def text(self) -> str:
        return "\n".join(p for p in self.parts if isinstance(p, str))


@dataclass
class JudgeResponse:
    """What a backend got for one request.

    Attributes:
        text: the answer, or None when the request failed.
        latency: seconds of the attempt that produced the outcome.
        attempts: how many times the request was sent.
        error: why the request failed (never contains the API key), else None.
        elapsed: seconds from the first attempt to the outcome (retries and back-off included).
        finish_reason: the server's finish reason when it gives one (``stop``, ``length``).
    """

    text: str | None
    latency: float = 0.0
    attempts: int = 1
    error: str | None = None
    elapsed: float = 0.0
    finish_reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.text is not None


class JudgeBackend(ABC):
    """Answers a batch of :class:`JudgeRequest`; one :class:`JudgeResponse` per request, in order.

    A failed request comes back as a response with ``text=None`` and an ``error``, never as an
    exception, so one bad request does not sink the batch.
    """

    @abstractmethod
    def generate(self, requests: Sequence[JudgeRequest]) -> list[JudgeResponse]:
        """Answer every request."""

    def close(self) -> None:
        """Release models and connections."""


class CallableJudgeBackend(JudgeBackend):
    """A judge that is a Python function ``request -> answer text`` (replays, fakes, rule-based judges).

    An exception raised by the function fails that request only.

    Example:
        >>> backend = CallableJudgeBackend(lambda request: "Score: 9/10")
        >>> backend.generate([JudgeRequest(parts=["hi"])])[0].text
        'Score: 9/10'
    """

    def __init__(self, answer: Callable[[JudgeRequest], str]) -> None:
        self.answer = answer

    def generate(self, requests: Sequence[JudgeRequest]) -> list[JudgeResponse]:
        out = []
        for request in requests:
            t0 = time.perf_counter()
            try:
                text: str | None = self.answer(request)
                error = None
            except Exception as e:
                text, error = None, f"{type(e).__name__}: {e}"
            dt = time.perf_counter() - t0
            out.append(JudgeResponse(text=text, latency=dt, elapsed=dt, error=error))
        return out
