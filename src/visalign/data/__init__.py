"""Data: loaders for image-to-code rows (JSONL, parquet, HF ``datasets``, Python lists), seeded
synthetic chart-to-code, table-to-LaTeX and image-to-SVG generators, small graded eval sets
(:mod:`visalign.data.examples`), and preference pairs from renders with their loader
(:mod:`visalign.data.pairs`).

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
from .pairs import PERTURBATIONS, load_pairs, pair_dataset, perturbation_ladders, write_pairs
from .svgs import (
    SVG_RENDER_OPTIONS,
    SVG_SHAPES,
    random_svg_code,
    render_svgs,
    svg_corpus,
    svg_dataset,
    svg_whole_words,
)
from .tables import (
    RULE_STYLES,
    TABLE_RENDER_OPTIONS,
    random_table_code,
    render_tables,
    table_corpus,
    table_dataset,
    table_whole_words,
)

__all__ = [
    "CHART_KINDS",
    "CHART_RENDER_OPTIONS",
    "DEFAULT_CHART_KINDS",
    "PERTURBATIONS",
    "RULE_STYLES",
    "SVG_RENDER_OPTIONS",
    "SVG_SHAPES",
    "TABLE_RENDER_OPTIONS",
    "DataError",
    "chart_corpus",
    "chart_dataset",
    "chart_whole_words",
    "load_pairs",
    "load_rows",
    "pair_dataset",
    "perturbation_ladders",
    "random_chart_code",
    "random_svg_code",
    "random_table_code",
    "render_charts",
    "render_svgs",
    "render_tables",
    "svg_corpus",
    "svg_dataset",
    "svg_whole_words",
    "table_corpus",
    "table_dataset",
    "table_whole_words",
    "to_image",
    "write_jsonl",
    "write_pairs",
]
