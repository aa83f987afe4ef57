"""Where the ``latex`` renderer keeps its preamble format (``mylatexformat``, built once per machine):
a private cache directory, the revision that invalidates old formats, and whether another uid (a
sandbox job's) can read a file in place or needs its own hard link. Building and using the format is
the renderer's (:class:`~visalign.renderers.latex.LatexRenderer`), since it runs sandboxed TeX.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile

__all__ = ["FORMAT_REVISION", "format_cache_dir", "reachable_by_others"]

FORMAT_REVISION = 2   # bump when the preamble (latex_source.base_preamble) changes in a way the hash cannot see


def _private_dir(path: str) -> bool:
    """True when ``path`` is a directory owned by us that nobody else can write."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022


def format_cache_dir() -> str | None:
    """Where the preamble format is kept: ``$XDG_CACHE_HOME/visalign/latex``, ``~/.cache/...``, or a
    private temp dir; None when none can be created."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    candidates = [os.path.join(base, "visalign", "latex"),
                  os.path.join(tempfile.gettempdir(), f"visalign-latex-{os.geteuid()}")]
    for path in candidates:
        with contextlib.suppress(OSError):
            os.makedirs(path, mode=0o755, exist_ok=True)
            os.chmod(path, 0o755)
        if _private_dir(path):
            return path
    return None


def reachable_by_others(path: str) -> bool:
    """True when another uid can read ``path`` (every parent searchable, the file readable)."""
    try:
        if not os.stat(path).st_mode & 0o004:
            return False
        p = os.path.dirname(path)
        while p not in ("/", ""):
            if not os.stat(p).st_mode & 0o001:
                return False
            p = os.path.dirname(p)
    except OSError:
        return False
    return True
