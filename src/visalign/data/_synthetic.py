"""What every synthetic code + image generator shares: drawing distinct programs from a seeded stream,
rendering them in the sandbox, and redrawing the ones that fail until ``n`` rows rendered."""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def unique_codes(n: int, seed: int, exclude: Collection[str], draw: Callable[[random.Random, int], str],
                 what: str) -> list[str]:
    """``n`` distinct programs from ``draw(rng, i)`` (``i``: how many are drawn so far), none in ``exclude``.

    Example:
        >>> unique_codes(3, 0, {"1"}, lambda rng, i: str(rng.randint(0, 5)), "digits")
        ['3', '0', '2']
    """
    rng = random.Random(seed)
    seen = set(exclude)
    out: list[str] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 50 * n + 1000:
            raise RuntimeError(f"could not draw {n} distinct {what}")
        code = draw(rng, len(out))
        if code not in seen:
            seen.add(code)
            out.append(code)
    return out


def render_codes(kind: str, codes: Sequence[str], defaults: dict[str, Any], render_options: dict[str, Any] | None,
                 workers: int, timeout: float) -> list[Any]:
    """Render ``codes`` in the sandboxed ``kind`` renderer with ``defaults`` updated by ``render_options``;
    returns the ``RenderResult`` of each program."""
    from ..renderers import get_renderer

    opts = {**defaults, **(render_options or {})}
    with get_renderer(kind, workers=workers, timeout=timeout, **opts) as renderer:
        return renderer.render_batch(list(codes))


def rendered_rows(n: int, seed: int, exclude: Collection[str], drawn: list[T],
                  redraw: Callable[[int, int, set[str]], list[T]], code: Callable[[T], str],
                  render: Callable[[list[str]], list[Any]], row: Callable[[T, Any], dict[str, Any]],
                  what: str, renderer: str) -> list[dict[str, Any]]:
    """Render ``drawn`` and make a row of each success; replace failures by ``redraw(missing, seed,
    seen)`` (a fresh stream, distinct from everything seen) for up to 6 rounds. Raises when fewer than
    ``n`` rows rendered."""
    out: list[dict[str, Any]] = []
    seen = set(exclude) | {code(d) for d in drawn}
    round_seed = seed
    while True:
        results = render([code(d) for d in drawn])
        out += [row(d, res.image.convert("RGB")) for d, res in zip(drawn, results, strict=True)
                if res.ok and res.image is not None]
        missing = n - len(out)
        if missing == 0 or round_seed - seed > 5:
            break
        round_seed += 1
        drawn = redraw(missing, seed * 1000 + round_seed, seen)
        seen |= {code(d) for d in drawn}
    if len(out) < n:
        raise RuntimeError(f"only {len(out)} of {n} {what} rendered; is the {renderer} renderer working? "
                           "(try `visalign doctor`)")
    return out
