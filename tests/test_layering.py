"""The layering of DESIGN.md, checked on the source: a top-level part of visalign imports only parts on a
lower floor (module-level and function-level imports alike). Issue 13: ``data`` and ``rewards`` imported
``trainers`` and ``evaluate``; a new import that runs back up fails here, naming the file and line."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "visalign"

#: floor of each top-level module or package (a part may import parts on lower floors only)
FLOORS = {
    "_registry": 0, "languages": 0, "shape_captions": 0,   # plain tables, no visalign imports
    "renderers": 1,                                        # untrusted code in, images out
    "metrics": 2, "models": 2,                             # image/code metrics; model builders and modules
    "rewards": 3,                                          # Sample -> scores
    "data": 4, "report": 4,                                # synthetic sets and loaders; reports
    "evaluate": 5, "score": 5, "doctor": 5,                # scoring files and datasets
    "generate": 6,                                         # a model writes, evaluate scores
    "trainers": 7,                                         # GRPO, ReFL, reward models, SFT
    "cli": 8, "__main__": 9, "__init__": 9,
}


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, top-level visalign part)`` of every import in ``path``."""
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    package = parts[:-1]  # the package a relative import starts from (for __init__ too)
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
            target = [*base, *(node.module.split(".") if node.module else [])]
            if target:
                out.append((node.lineno, target[0]))
            else:  # "from . import x" at the top level: x is a top-level part
                out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "visalign":
            names = node.module.split(".")
            out += [(node.lineno, names[1])] if len(names) > 1 else [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name.split(".")[1]) for a in node.names
                    if a.name.startswith("visalign.") and "." in a.name]
    return out


def test_every_part_has_a_floor():
    parts = {p.stem if p.is_file() else p.name for p in SRC.iterdir()
             if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists()))}
    assert parts <= set(FLOORS), f"give these a floor in FLOORS: {sorted(parts - set(FLOORS))}"


@pytest.mark.slow
def test_no_import_runs_back_up():
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        me = rel.parts[0].removesuffix(".py")
        for line, target in _imports(path):
            if target != me and target in FLOORS and FLOORS[target] >= FLOORS[me]:
                bad.append(f"{rel}:{line}: {me} (floor {FLOORS[me]}) imports {target} (floor {FLOORS[target]})")
    assert not bad, "imports that run back up:\n" + "\n".join(bad)


def test_the_check_sees_a_lazy_import_back_up(tmp_path, monkeypatch):
    """The checker itself: a function-level import of a higher floor is caught."""
    fake = tmp_path / "visalign"
    (fake / "rewards").mkdir(parents=True)
    (fake / "rewards" / "x.py").write_text("def f():\n    from ..trainers.vlm import VLMGRPOTrainer\n")
    monkeypatch.setattr(__import__(__name__), "SRC", fake)
    assert _imports(fake / "rewards" / "x.py") == [(2, "trainers")]
