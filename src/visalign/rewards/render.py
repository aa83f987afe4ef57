"""Render the code of a batch of samples once, with the matching renderer, for every reward."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..renderers import RENDERERS, Renderer, RenderResult, get_renderer
from .base import Sample


class RenderService:
    """Owns one renderer per kind (created on first use) and fills ``Sample.rendered``.

    Every reward that needs an image or a trace goes through one shared service, so a batch is
    rendered once whatever the number of rewards. Samples already rendered are skipped.

    Args:
        timeout: seconds per render.
        workers: sandboxed workers per renderer (default: CPU count).
        options: per-kind renderer options, e.g. ``{"matplotlib": {"dpi": 100}, "svg": {"width": 336}}``.

    Example:
        >>> service = RenderService(timeout=10, workers=1)
        >>> s = Sample(code='<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4">'
        ...            '<rect width="2" height="4"/></svg>', kind="svg")
        >>> service.render([s]); s.rendered.ok
        True
        >>> service.close()
    """

    def __init__(self, timeout: float = 10.0, workers: int | None = None,
                 options: dict[str, dict[str, Any]] | None = None) -> None:
        self.timeout = timeout
        self.workers = workers
        self.options = {k: dict(v) for k, v in (options or {}).items()}
        self._renderers: dict[str, Renderer] = {}

    def require_instrument(self, kind: str, name: str) -> None:
        """Ask renderers of ``kind`` to record instrumentation ``name`` (before their first use)."""
        opts = self.options.setdefault(kind, {})
        current = tuple(opts.get("instrument", ()))
        if name not in current:
            if kind in self._renderers:  # restart it with the hook on
                self._renderers.pop(kind).close()
            opts["instrument"] = (*current, name)

    def renderer(self, kind: str) -> Renderer:
        """The renderer for ``kind``, started on first use."""
        if kind not in self._renderers:
            opts = {"timeout": self.timeout, **self.options.get(kind, {})}
            if self.workers is not None:
                opts.setdefault("workers", self.workers)
            self._renderers[kind] = get_renderer(kind, **opts)
        return self._renderers[kind]

    def render(self, samples: Sequence[Sample], reference: bool = False) -> None:
        """Render ``code`` (or ``reference_code`` with ``reference=True``) of every sample not yet done.

        Each distinct ``(kind, source)`` renders once and its result is shared: a GRPO group holds one
        reference program for all its generations, and repeated generations are common. A sample that
        already holds a render lends it to the others with the same source.
        """
        attr, src = ("reference_rendered", "reference_code") if reference else ("rendered", "code")
        same: dict[tuple[str, str], list[Sample]] = {}
        for s in samples:
            source = getattr(s, src)
            if source is None:
                continue
            if s.kind not in RENDERERS:
                if getattr(s, attr) is None:
                    setattr(s, attr, RenderResult.failure("internal", f"unknown renderer kind {s.kind!r}"))
                continue
            same.setdefault((s.kind, source), []).append(s)
        todo: dict[str, list[tuple[str, str]]] = {}
        for key, group in same.items():
            if all(getattr(s, attr) is None for s in group):
                todo.setdefault(key[0], []).append(key)
        done: dict[tuple[str, str], RenderResult] = {}
        for kind, keys in todo.items():
            results = self.renderer(kind).render_batch([source for _, source in keys])
            done.update(zip(keys, results, strict=True))
        for key, group in same.items():
            result = done.get(key) or next(getattr(s, attr) for s in group if getattr(s, attr) is not None)
            for s in group:
                if getattr(s, attr) is None:
                    setattr(s, attr, result)

    def close(self) -> None:
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()

    def __enter__(self) -> RenderService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
