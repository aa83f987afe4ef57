"""Compatibility shims: names matplotlib 3.9+ and numpy 2 removed that chart-code answers still use.

Runs inside the sandbox, in the forked job child, before the untrusted program (standalone: stdlib,
numpy and matplotlib only, never visalign). Each shim restores a name that matplotlib 3.8.4 and
numpy 1.26 (ChartMimic's pinned environment) accepted, as a pure rename of what the current version
offers, so that the drawing is the one the old version made. A shim records its name in
:data:`USED` the first time the program reaches it; the handler reports them and the renderer
passes them on as ``RenderResult.shims`` (validated against :data:`SHIMS`: the program can write
to this list too, so it is only ever a report, never trusted for anything else).

Shims (name → what it restores):

- ``cm.get_cmap``: ``matplotlib.cm.get_cmap(name=None, lut=None)`` (removed in 3.9), as
  ``matplotlib.colormaps[name]`` (the default colormap when None), ``.resampled(lut)`` when given;
  a Colormap passed in is returned as is, as 3.8 did.
- ``cm.register_cmap``: ``matplotlib.cm.register_cmap`` and ``pyplot.register_cmap`` (removed in
  3.9), as ``matplotlib.colormaps.register``.
- ``boxplot.labels``: ``Axes.boxplot(labels=...)`` / ``Axes.bxp(labels=...)`` (renamed
  ``tick_labels`` in 3.9, the old name removed in 3.11).
- ``legend.legendHandles``: ``Legend.legendHandles`` (renamed ``legend_handles`` in 3.7, removed 3.9).
- ``numpy.aliases``: the numpy 1.x aliases numpy 2 removed (``np.NaN``, ``np.Inf``, ``np.float_``,
  ``np.product``, ...: :data:`NUMPY_ALIASES`), resolved only when the program asks for one.

Not shimmed: numpy 2's stricter integer promotion (``np.uint8(200) + 100`` overflowing instead of
widening): it changes arithmetic, not names, and cannot be undone per program.
"""

from __future__ import annotations

import functools

SHIMS: tuple[str, ...] = ("boxplot.labels", "cm.get_cmap", "cm.register_cmap", "legend.legendHandles",
                          "numpy.aliases")
# numpy 1.x names numpy 2 removed → the name that replaces them.
NUMPY_ALIASES: dict[str, str] = {
    "NaN": "nan", "NAN": "nan", "Inf": "inf", "Infinity": "inf", "infty": "inf", "PINF": "inf",
    "float_": "float64", "complex_": "complex128", "cfloat": "complex128", "longfloat": "longdouble",
    "singlecomplex": "complex64", "clongfloat": "clongdouble", "longcomplex": "clongdouble",
    "string_": "bytes_", "unicode_": "str_", "int0": "intp", "uint0": "uintp",
    "product": "prod", "cumproduct": "cumprod", "alltrue": "all", "sometrue": "any", "round_": "round",
    "trapz": "trapezoid", "in1d": "isin", "row_stack": "vstack",
}
_NEGATIVE = {"NINF"}

USED: list[str] = []


def _used(name: str) -> None:
    if name not in USED:
        USED.append(name)


def install() -> None:
    """Apply every shim whose name is missing here; safe to call once per job (in the forked child)."""
    import matplotlib
    import matplotlib.cm as cm
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes
    from matplotlib.legend import Legend

    if not hasattr(cm, "get_cmap"):
        def get_cmap(name=None, lut=None):
            _used("cm.get_cmap")
            if isinstance(name, matplotlib.colors.Colormap):
                return name
            cmap = matplotlib.colormaps[matplotlib.rcParams["image.cmap"] if name is None else name]
            return cmap if lut is None else cmap.resampled(lut)

        cm.get_cmap = get_cmap
    if not hasattr(cm, "register_cmap"):
        def register_cmap(name=None, cmap=None, *, override_builtin=False):
            _used("cm.register_cmap")
            matplotlib.colormaps.register(cmap, name=name, force=override_builtin)

        cm.register_cmap = register_cmap
        if not hasattr(plt, "register_cmap"):
            plt.register_cmap = register_cmap
    for method in ("boxplot", "bxp"):
        _rename_keyword(Axes, method, "labels", "tick_labels")
    if not hasattr(Legend, "legendHandles"):
        def legend_handles(self):
            _used("legend.legendHandles")
            return self.legend_handles

        Legend.legendHandles = property(legend_handles)
    _numpy_aliases()


def _rename_keyword(cls, method: str, old: str, new: str) -> None:
    """Let ``cls.method`` take ``old=`` again where the current version only knows ``new=``."""
    import inspect

    func = cls.__dict__.get(method)
    if func is None:
        return
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return
    if old in params or new not in params:
        return

    @functools.wraps(func)
    def wrapper(self, *args, **kwargs):
        if old in kwargs and new not in kwargs:
            _used(f"{method if method != 'bxp' else 'boxplot'}.{old}")
            kwargs[new] = kwargs.pop(old)
        return func(self, *args, **kwargs)

    setattr(cls, method, wrapper)


def _numpy_aliases() -> None:
    """Resolve the removed numpy 1.x names through numpy's module ``__getattr__`` (only when asked)."""
    import numpy as np

    if hasattr(np, "float_"):  # numpy 1.x: nothing to restore
        return
    current = np.__dict__.get("__getattr__")

    def __getattr__(name: str):
        if name in NUMPY_ALIASES and hasattr(np, NUMPY_ALIASES[name]):
            _used("numpy.aliases")
            return getattr(np, NUMPY_ALIASES[name])
        if name in _NEGATIVE:
            _used("numpy.aliases")
            return -np.inf
        if current is None:
            raise AttributeError(f"module 'numpy' has no attribute {name!r}")
        return current(name)

    np.__getattr__ = __getattr__
