"""Data: loaders for image-to-code rows (JSONL, parquet, HF ``datasets``, Python lists), seeded
synthetic chart-to-code generators, and small graded eval sets (:mod:`visalign.data.examples`).

Example:
    >>> from visalign.data import chart_dataset, load_rows
    >>> rows = load_rows(chart_dataset(2, seed=0, render=False))
    >>> [(r["kind"], r["chart_type"]) for r in rows]
    [('matplotlib', 'bar'), ('matplotlib', 'line')]
"""

from .charts import (
    CHART_KINDS,
    CHART_RENDER_OPTIONS,
    DEFAULT_CHART_KINDS,
    chart_corpus,
    chart_dataset,
    chart_whole_words,
    random_chart_code,
    render_charts,
)
from .loaders import DataError, load_rows, to_image, write_jsonl

__all__ = [
    "CHART_KINDS",
    "CHART_RENDER_OPTIONS",
    "DEFAULT_CHART_KINDS",
    "DataError",
    "chart_corpus",
    "chart_dataset",
    "chart_whole_words",
    "load_rows",
    "random_chart_code",
    "render_charts",
    "to_image",
    "write_jsonl",
]
