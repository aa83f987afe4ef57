"""Use a visalign reward as a TRL ``GRPOTrainer`` reward function.

TRL (0.14 to 1.x) calls every entry of ``reward_funcs`` that is a plain callable as::

    reward_func(prompts=prompts, completions=completions, completion_ids=completion_ids, **reward_kwargs)

where ``prompts`` and ``completions`` are lists of strings (standard format) or of chat messages
(conversational format: each completion is ``[{"role": "assistant", "content": "..."}]``), and
``reward_kwargs`` holds every other dataset column as a list with one entry per completion (a row's
value repeated for each of its generations), plus ``trainer_state`` (a single object, not a list,
in recent versions). It must return one float per completion; ``None`` means "not applicable" and
becomes NaN, which TRL's ``nansum`` over reward functions skips. TRL names the function by its
``__name__`` in its logs.

:func:`as_trl_reward` builds :class:`~visalign.rewards.base.Sample` objects from those arguments and
returns the visalign reward's scores.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from typing import Any

from PIL import Image

from .base import Reward, RewardOutput, Sample

__all__ = ["TrlReward", "as_trl_reward", "message_text"]

# arguments TRL passes that are not dataset columns
_TRL_ARGS = frozenset({"completion_ids", "trainer_state", "log_extra", "log_metric"})


def message_text(value: Any) -> str | None:
    """The text of a TRL prompt or completion: a string, or the last message's text content.

    Message content may be a string or a list of parts (``{"type": "text", "text": ...}``, images
    are skipped).

    Example:
        >>> message_text([{"role": "assistant", "content": "hi"}])
        'hi'
        >>> message_text([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Draw it"}]}])
        'Draw it'
    """
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict):
        content = value.get("content")
        if content is None or isinstance(content, str):
            return content
        if isinstance(content, list):
            texts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
            texts += [p for p in content if isinstance(p, str)]
            return "".join(texts)
        return str(content)
    if isinstance(value, (list, tuple)):
        if not value:
            return ""
        return message_text(value[-1])
    return str(value)


def _first_image(value: Any) -> Image.Image | None:
    """An image column's value: an image, or the first image of a list (TRL's ``images`` column)."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, (list, tuple)):
        for v in value:
            if isinstance(v, Image.Image):
                return v
    if isinstance(value, dict) and isinstance(value.get("bytes"), (bytes, bytearray)):  # undecoded datasets Image
        with Image.open(io.BytesIO(value["bytes"])) as img:
            return img.convert("RGB")
    return None


def _image_digest(image: Image.Image) -> str:
    h = hashlib.blake2b(f"{image.mode}{image.size}".encode(), digest_size=16)
    h.update(image.tobytes())
    return h.hexdigest()


def _stable(obj: Any) -> str:
    """JSON fallback that is equal for equal content (repr of an image holds its address)."""
    return _image_digest(obj) if isinstance(obj, Image.Image) else repr(obj)


def _group_key(prompt: Any, reference_code: str | None, image: Image.Image | None) -> str:
    """A key equal for the generations of one dataset row: its prompt, reference code and image.

    TRL hands each generation its own copy of the row (a freshly decoded image), so the image is
    compared by its pixels.
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(prompt, default=_stable, sort_keys=True).encode())
    h.update(b"\0" + (reference_code or "").encode())
    if image is not None:
        h.update(b"\0" + _image_digest(image).encode())
    return h.hexdigest()


class TrlReward:
    """A visalign reward as a TRL reward function; build it with :func:`as_trl_reward`.

    Attributes:
        reward: the visalign reward.
        last_output: the :class:`RewardOutput` of the last call (details and metrics for logs).
    """

    def __init__(self, reward: Reward, *, kind: str | None, kind_column: str | None, image_column: str | None,
                 reference_code_column: str | None, generated_image_column: str | None, group_column: str | None,
                 name: str | None) -> None:
        self.reward = reward
        self.kind = kind
        self.kind_column = kind_column
        self.image_column = image_column
        self.reference_code_column = reference_code_column
        self.generated_image_column = generated_image_column
        self.group_column = group_column
        self.__name__ = name or reward.name
        self.last_output: RewardOutput | None = None

    def samples(self, prompts: Sequence[Any] | None, completions: Sequence[Any], **kwargs: Any) -> list[Sample]:
        """The samples a call scores (also useful to inspect what the reward sees)."""
        n = len(completions)
        prompts = list(prompts) if prompts is not None else [None] * n
        if len(prompts) != n:
            raise ValueError(f"{len(prompts)} prompts for {n} completions")
        columns = {k: list(v) for k, v in kwargs.items()
                   if k not in _TRL_ARGS and isinstance(v, (list, tuple)) and len(v) == n}

        def col(name: str | None, i: int) -> Any:
            return columns[name][i] if name is not None and name in columns else None

        used = {self.kind_column, self.image_column, self.reference_code_column, self.generated_image_column,
                self.group_column}
        group_ids: dict[Any, int] = {}
        out = []
        for i in range(n):
            reference_image = _first_image(col(self.image_column, i))
            reference_code = col(self.reference_code_column, i)
            kind = self.kind if self.kind is not None else col(self.kind_column, i)
            if self.group_column is not None and self.group_column in columns:
                key = col(self.group_column, i)
            else:
                key = _group_key(prompts[i], reference_code, reference_image)
            group = group_ids.setdefault(key, len(group_ids))
            out.append(Sample(
                prompt=message_text(prompts[i]),
                completion=message_text(completions[i]),
                image=_first_image(col(self.generated_image_column, i)),
                reference_image=reference_image,
                reference_code=reference_code,
                kind=kind,
                group=group,
                metadata={k: v[i] for k, v in columns.items() if k not in used},
            ))
        return out

    def __call__(self, prompts: Sequence[Any] | None = None, completions: Sequence[Any] = (),
                 **kwargs: Any) -> list[float | None]:
        samples = self.samples(prompts, completions, **kwargs)
        if getattr(self.reward, "needs_render", False):
            unknown = [i for i, s in enumerate(samples) if s.completion is not None and s.kind is None]
            if unknown:  # every score would be None: say why instead of training on nothing
                raise ValueError(
                    f"{self.__name__}: the reward renders code but completion {unknown[0]} has no renderer kind; "
                    f"pass as_trl_reward(..., kind='matplotlib' | 'latex' | 'svg' | 'html') or give the dataset "
                    f"a {self.kind_column or 'kind'!r} column")
        self.last_output = self.reward(samples)
        return [None if s is None else float(s) for s in self.last_output.scores]

    def close(self) -> None:
        self.reward.close()

    def __repr__(self) -> str:
        return f"TrlReward({self.__name__})"


def as_trl_reward(reward: Reward, *, kind: str | None = None, kind_column: str | None = "kind",
                  image_column: str | None = "image", reference_code_column: str | None = "reference_code",
                  generated_image_column: str | None = None, group_column: str | None = None,
                  name: str | None = None) -> TrlReward:
    """Wrap ``reward`` as a TRL ``GRPOTrainer`` reward function ``f(prompts, completions, **kwargs)``.

    Each completion becomes a :class:`~visalign.rewards.base.Sample`:

    - ``completion``: the completion text (a string, or the last chat message's text content);
      code is extracted from it by the reward; ``prompt``: the prompt text likewise;
    - ``kind``: ``kind`` when given, else the ``kind_column`` column;
    - ``reference_image``: the ``image_column`` column (an image, or the first of a list such as
      TRL's ``images`` column): in image-to-code tasks the image the policy sees is the target;
    - ``reference_code``: the ``reference_code_column`` column;
    - ``image``: the ``generated_image_column`` column, for rewards on generated images;
    - ``group``: equal for the generations of one dataset row: the ``group_column`` column when
      given, else a key made of the prompt, the reference code and the reference image's pixels
      (prompt text alone is not enough: chart-to-code rows often share one instruction);
    - ``metadata``: every other dataset column's value for that completion.

    TRL's own arguments (``completion_ids``, ``trainer_state``) and columns that are not one value
    per completion are ignored. A reward that renders code (``render_similarity``, ``execution``, ...)
    needs the renderer kind: a call where a completion has none raises ``ValueError`` (it would
    otherwise score every completion None, which TRL reads as "not applicable"). Missing columns are None. The returned function has ``__name__``
    (``name`` or the reward's name), ``last_output`` (the last :class:`RewardOutput`, for logging
    details) and ``close()``.

    Example:
        >>> from visalign.rewards import FormatReward
        >>> f = as_trl_reward(FormatReward(), kind="matplotlib")
        >>> f.__name__
        'format'
        >>> f(prompts=["Draw it"] * 2,
        ...   completions=[[{"role": "assistant", "content": "```python\\nimport matplotlib\\n```"}],
        ...                [{"role": "assistant", "content": "I can't."}]],
        ...   completion_ids=[[1], [2]], trainer_state=object(), solution=["x", "x"])
        [1.0, 0.0]
    """
    if not isinstance(reward, Reward):
        raise TypeError(f"reward must be a visalign Reward, got {type(reward).__name__}")
    return TrlReward(reward, kind=kind, kind_column=kind_column, image_column=image_column,
                     reference_code_column=reference_code_column, generated_image_column=generated_image_column,
                     group_column=group_column, name=name)
