"""The ``latex`` renderer: LaTeX (a table, a formula, a body or a whole document) in, page 1 out.

Each source is compiled by ``pdflatex`` and its first page rasterised by ``pdftoppm``, both in one
sandboxed ``sh`` (see :mod:`.sandbox`), then cropped to the ink with a small padding. Nothing is
rendered on a letter page and called a table: the image is the content.

Input kinds, decided from the source with ``%`` comments removed (:func:`classify_source`):

``document``
    It contains ``\\documentclass``: compiled as is (page styles emptied so that a page number does
    not stretch the crop), page 1 rasterised and cropped. A source with ``\\begin{document}`` but no
    class gets ``\\documentclass{article}`` put in front.
``formula``
    The whole source is one ``$...$``, ``$$...$$``, ``\\[...\\]`` or ``\\(...\\)``, or one display
    environment (``equation``, ``align``, ``gather``, ``multline``, ... starred or not), or it has
    no ``$``, ``\\[``, ``\\(``, blank line or ``\\begin{`` other than math-only environments
    (``pmatrix``, ``cases``, ``aligned``, ...): set in display math (a top-level ``\\\\`` makes it a
    ``gathered``, or ``aligned`` when it has ``&``).
``table``
    It has a ``tabular``, ``tabular*``, ``tabularx``, ``tabulary``, ``longtable``,
    ``threeparttable``, ``table`` or ``table*`` environment.
``text``
    Anything else: a LaTeX body (paragraphs, lists, ``tikzpicture`` ...).

Every kind but ``document`` is wrapped in ``\\documentclass[border=4pt,varwidth=W]{standalone}`` with
the :data:`~visalign.renderers.latex_source.PRELOADED` packages; ``W`` is 40 cm for tables and formulas (the box shrinks to the
natural width, so wide tables are not clipped) and 6.5 in for text (so paragraphs wrap like a page
column). ``table`` and ``figure`` do not float: they are kept in place with a working ``\\caption``.
``\\usepackage`` lines in a body are moved to the preamble.

The wrapped kinds compile against a preamble format (``mylatexformat``) built once per machine, in
the sandbox, into ``$XDG_CACHE_HOME/visalign/latex`` (or ``~/.cache/...``, or a private temp dir)
and bound read-only into each sandbox; when it cannot be built the renderer compiles the whole
preamble every time. ``pdflatex`` runs with ``-no-shell-escape`` and paranoid file access
(``openin_any=p``, ``openout_any=p``): reading or writing outside the job directory and the TeX
tree, and ``\\write18``, are refused and reported as ``sandbox`` failures.

The source rules above live in :mod:`visalign.renderers.latex_source` (pure text), the preamble
format's cache in :mod:`visalign.renderers.latex_format`; this module runs the jobs and reads their results.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageColor

from .base import DEFAULT_MAX_PIXELS, Renderer, RenderResult, finish_image, load_png
from .latex_format import FORMAT_REVISION, format_cache_dir, reachable_by_others
from .latex_source import BORDER_PT, Prepared, base_preamble, classify_source, prepare
from .sandbox import (
    SandboxInfo,
    SandboxLimits,
    allocate_uid,
    detect_sandbox,
    kill_uid,
    make_workdir,
    release_uid,
    run_sandboxed,
)

__all__ = ["LatexRenderer", "classify_source", "first_error", "lingering_tex_processes", "prepare"]

TEX_HINT = "apt-get install texlive-latex-base texlive-latex-recommended texlive-latex-extra"
POPPLER_HINT = "apt-get install poppler-utils"
_FORMAT_FAILED = "pdflatex could not load the preamble format"


LOG_CAP = 1 << 20     # bytes of a log we read (head and tail)
MAX_PNG_BYTES = 256 << 20


# One sandboxed shell per sample: compile, check the page size, rasterise page 1. TeX works in
# ./tex and may write only there; the shell's own outputs live one level up, out of TeX's reach.
_SCRIPT = r"""
dpi=$1 maxpix=$2 latex=$3 info=$4 ppm=$5
shift 5
cd tex || exit 90
TEXMFOUTPUT=$(pwd)
export TEXMFOUTPUT
"$latex" "$@" >../latex.out 2>../latex.err </dev/null
echo $? >../latex.rc
[ -s doc.pdf ] || exit 0
"$info" -f 1 -l 1 doc.pdf >../pdfinfo.txt 2>&1
set -- $(awk -v r="$dpi" '/^Page +1 size:/ { printf "%d %d", $4 * r / 72 + 1, $6 * r / 72 + 1; exit }' ../pdfinfo.txt)
[ $# -eq 2 ] || exit 0
if [ $(($1 * $2)) -gt "$maxpix" ]; then echo "$1 $2" >../toobig; exit 0; fi
mkdir ../out || exit 91
"$ppm" -png -r "$dpi" -singlefile -f 1 -l 1 doc.pdf ../out/page >../ppm.out 2>&1
echo $? >../ppm.rc
"""

_TEX_ENV = {
    "openin_any": "p", "openout_any": "p", "shell_escape": "f", "shell_escape_commands": "",
    "max_print_line": "10000", "error_line": "254", "half_error_line": "238",
}
_LATEX_FLAGS = ("-no-shell-escape", "-no-parse-first-line", "-file-line-error", "-halt-on-error",
                "-interaction=nonstopmode")
# Empties the page styles of a whole document, so that a page number does not stretch the crop.
_NO_PAGE_NUMBERS = (r"\AtBeginDocument{\pagestyle{empty}\thispagestyle{empty}"
                    r"\expandafter\let\csname ps@plain\expandafter\endcsname\csname ps@empty\endcsname}"
                    r"\input{doc.tex}")

_ERROR_LINE = re.compile(r"^(?:(?P<file>[^\s:][^:\n]*):(?P<line>\d+): |! )(?P<msg>.*\S)")
_CONTEXT_LINE = re.compile(r"^l\.(\d+) (.*)$")
# The log scans run in the parent on text the job wrote: each is linear in the text (a closing is
# searched for once, then its opening only back to the previous closing; bounded quantifiers elsewhere).
_REFUSED_END = re.compile(r" \((openin|openout)_any = \w\)")
_REFUSED_OPEN = ("Not reading from ", "Not writing to ")
_RUNSYSTEM_END = re.compile(r"\)\.\.\.(?:disabled|restricted)")
_RUNSYSTEM_OPEN = ("runsystem(",)
_CAPACITY = re.compile(r"TeX capacity exceeded, sorry \[([^\]\n]{0,200})\]")
MAX_FOUND = 8        # refused paths / blocked commands kept from a log




def crop_to_ink(image: Image.Image, pad: int) -> Image.Image:
    """Crop ``image`` (ink on white paper) to its non-white pixels plus ``pad`` pixels each side.

    An image with no ink comes back unchanged (it is blank).

    Example:
        >>> im = Image.new("RGB", (100, 100), "white"); im.putpixel((50, 40), (0, 0, 0))
        >>> crop_to_ink(im, 2).size
        (5, 5)
    """
    arr = np.asarray(image)
    ink = arr.min(axis=2) < 255 if arr.ndim == 3 else arr < 255
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    if rows.size == 0:
        return image
    h, w = ink.shape
    box = (max(0, int(cols[0]) - pad), max(0, int(rows[0]) - pad),
           min(w, int(cols[-1]) + 1 + pad), min(h, int(rows[-1]) + 1 + pad))
    return image.crop(box)


def on_background(image: Image.Image, background: str) -> Image.Image:
    """Paper colour: multiply the white-paper rendering by ``background`` (white stays as is).

    Example:
        >>> on_background(Image.new("RGB", (1, 1), "white"), "#ff0000").getpixel((0, 0))
        (255, 0, 0)
    """
    rgb = ImageColor.getrgb(background)[:3]
    if rgb == (255, 255, 255):
        return image
    arr = np.asarray(image.convert("RGB")).astype(np.uint16)
    out = (arr * np.array(rgb, dtype=np.uint16) + 127) // 255
    return Image.fromarray(out.astype(np.uint8), "RGB")


def _clean(text: str, limit: int = 600) -> str:
    """Untrusted log text made safe to show: printable characters only, one line, capped."""
    text = "".join(c if c.isprintable() else " " for c in text)
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Planted(Exception):
    """A job left a link, FIFO, device or directory where the parent expects a file it wrote."""


class JobFiles:
    """Read-only access to a finished job's directory that never resolves a path the job controls.

    Every name is opened relative to a directory fd, one component at a time, with ``O_NOFOLLOW``
    (intermediate directories with ``O_DIRECTORY`` too) and ``O_NONBLOCK``; only regular files are
    read (checked with ``fstat`` on the open fd) and never more than the cap asked for. A link, FIFO,
    device or directory in the way raises :class:`_Planted`: the job tampered with its outputs.
    Use as a context manager.
    """

    _DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    _FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)

    def __init__(self, workdir: str) -> None:
        self.fd = os.open(workdir, self._DIR_FLAGS)

    def __enter__(self) -> JobFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)

    def _open(self, name: str) -> int | None:
        """An fd of the regular file ``name`` (``a/b/c``: components under the job dir), or None."""
        parts = name.split("/")
        dirfd, opened = self.fd, []
        try:
            for part in parts[:-1]:
                try:
                    dirfd = os.open(part, self._DIR_FLAGS, dir_fd=dirfd)
                except FileNotFoundError:
                    return None
                except (NotADirectoryError, OSError) as exc:  # ELOOP: a link; ENOTDIR: a file
                    raise _Planted(f"{name}: {part} is not a directory ({exc.strerror})") from None
                opened.append(dirfd)
            try:
                fd = os.open(parts[-1], self._FILE_FLAGS, dir_fd=dirfd)
            except FileNotFoundError:
                return None
            except OSError as exc:
                raise _Planted(f"{name} is not a regular file ({exc.strerror})") from None
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise _Planted(f"{name} is not a regular file")
            return fd
        finally:
            for d in opened:
                os.close(d)

    def exists(self, name: str) -> bool:
        """True when ``name`` is a regular file (a planted link or FIFO raises :class:`_Planted`)."""
        fd = self._open(name)
        if fd is None:
            return False
        os.close(fd)
        return True

    def read(self, name: str, cap: int = LOG_CAP) -> bytes | None:
        """Head and tail (``cap`` bytes in all) of the regular file ``name``; None when absent."""
        fd = self._open(name)
        if fd is None:
            return None
        try:
            size = os.fstat(fd).st_size
            if size <= cap:
                return _pread(fd, cap, 0)
            half = cap // 2
            return _pread(fd, half, 0) + b"\n[...]\n" + _pread(fd, half, size - half)
        finally:
            os.close(fd)

    def text(self, name: str, cap: int = LOG_CAP) -> str | None:
        data = self.read(name, cap)
        return None if data is None else data.decode("utf-8", errors="replace")

    def integer(self, name: str) -> int | None:
        text = self.text(name, 64)
        try:
            return int(text.strip()) if text else None
        except ValueError:
            return None

    def copy_to(self, name: str, dest: str, cap: int) -> bool:
        """Copy the regular file ``name`` (at most ``cap`` bytes, else False) to the host path ``dest``."""
        fd = self._open(name)
        if fd is None:
            return False
        try:
            size = os.fstat(fd).st_size
            if not 0 < size <= cap:
                return False
            with open(dest, "wb") as out:
                offset = 0
                while offset < size:
                    chunk = os.pread(fd, min(1 << 20, size - offset), offset)
                    if not chunk:
                        break
                    out.write(chunk)
                    offset += len(chunk)
            return offset == size
        finally:
            os.close(fd)


def _pread(fd: int, n: int, offset: int) -> bytes:
    """Up to ``n`` bytes at ``offset`` (never more, however the file changes meanwhile)."""
    chunks, left = [], n
    while left > 0:
        chunk = os.pread(fd, min(left, 1 << 20), offset)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _spans(text: str, openings: Sequence[str], closing: re.Pattern[str]) -> list[tuple[str, str, re.Match[str]]]:
    """``(opening, inner, closing match)`` for each closing in ``text`` that has an opening before it
    on its line (after the previous closing): the first such opening, like a lazy regex would take.

    Linear in ``text``: each stretch between two closings is searched once.
    """
    found: list[tuple[str, str, re.Match[str]]] = []
    lo = 0
    for m in closing.finditer(text):
        start = max(lo, text.rfind("\n", lo, m.start()) + 1)
        best = -1, ""
        for o in openings:
            i = text.find(o, start, m.start())
            if i >= 0 and (best[0] < 0 or i < best[0]):
                best = i, o
        if best[0] >= 0:
            found.append((best[1], text[best[0] + len(best[1]): m.start()], m))
            if len(found) >= MAX_FOUND:
                break
        lo = m.end()
    return found


@dataclass
class LogFindings:
    """What the parent learns from a job's logs (see :func:`scan_logs`)."""

    refused: list[str]        # file accesses refused by kpathsea's paranoid mode
    shell: list[str]          # \write18 commands that were not run
    capacity: str | None      # the TeX capacity that was exceeded
    error: str | None         # the first TeX error, with its place in the source


def _scan_log(log: str, out: str, err: str, offset: int = 0, lines: int | None = None,
              errors: bool = True) -> LogFindings:
    """Scan ``log``/``out``/``err`` (already capped) in linear time; see :class:`LogFindings`."""
    refused = sorted({f"{o}{inner} ({m.group(1)}_any = {m.group(0)[-2]})"[:300]
                      for o, inner, m in _spans(err, _REFUSED_OPEN, _REFUSED_END)
                      if inner.strip() != "/dev/null"})
    shell = sorted({inner[:300] for text in (log, out) for _, inner, _ in _spans(text, _RUNSYSTEM_OPEN,
                                                                                 _RUNSYSTEM_END)})
    cap = _CAPACITY.search(log) or _CAPACITY.search(out)
    error = None
    if errors:
        error = first_error(log, offset, lines) or first_error(out, offset, lines)
    return LogFindings(refused, shell, cap.group(1) if cap else None, error)


def first_error(log: str, offset: int = 0, lines: int | None = None) -> str | None:
    """The first TeX error in ``log`` with its line in the source and the offending input, or None.

    ``offset`` is the number of wrapper lines before the source in ``doc.tex``.

    Example:
        >>> first_error("./doc.tex:5: Undefined control sequence.\\nl.5 $x \\\\foo\\n", offset=3)
        '! Undefined control sequence. (source line 2: $x \\\\foo)'
    """
    rows = log.split("\n")
    for i, row in enumerate(rows):
        m = _ERROR_LINE.match(row)
        if not m or m.group("msg").startswith("==>"):
            continue
        msg = m.group("msg")
        where, num = None, None
        if m.group("file"):
            num = int(m.group("line"))
            name = m.group("file")
            if os.path.basename(name) not in ("doc.tex", "doc"):
                where = f"{os.path.basename(name)} line {num}"
        context = ""
        for nxt in rows[i + 1: i + 12]:
            c = _CONTEXT_LINE.match(nxt)
            if c:
                num = num if num is not None else int(c.group(1))
                context = c.group(2).strip()
                break
        if where is None and num is not None:
            src_line = num - offset
            if src_line < 1:
                where = f"wrapper preamble line {num}"
            elif lines is not None and src_line > lines:
                where = "end of the source"
            else:
                where = f"source line {src_line}"
        detail = f"{where}: {context}" if where and context else where or context
        return _clean(f"! {msg} ({detail})" if detail else f"! {msg}")
    return None


def _first_line(argv: list[str]) -> str:
    """First output line of a trusted version command ('' when it cannot run)."""
    try:
        out = subprocess.run(argv, capture_output=True, timeout=30, check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return ""
    text = (out.stdout or out.stderr).decode(errors="replace").strip()
    return text.splitlines()[0] if text else ""


@functools.lru_cache(maxsize=4)
def tex_ro_paths(kpse: str | None) -> tuple[str, ...]:
    """Read-only paths the sandboxed TeX needs besides ``/usr`` and ``/etc`` (formats, font maps),
    asked of ``kpse`` (the ``kpsewhich`` binary)."""
    paths = {"/var/lib/texmf"}
    if kpse:
        for var in ("TEXMFSYSVAR", "TEXMFSYSCONFIG", "TEXMFDIST", "TEXMFLOCAL"):
            value = _first_line([kpse, f"-var-value={var}"])
            paths.update(value.split(":"))
    return tuple(sorted(p for p in paths if _tex_tree(p) and os.path.isdir(p)))


def _tex_tree(path: str) -> bool:
    """True for a path that may be bound into the sandbox as a TeX tree: absolute, at least two levels
    deep, named like TeX, and not in a home or temp directory (never ``/`` or ``/home``)."""
    norm = os.path.normpath(path) if path.startswith("/") else ""
    return (norm.count("/") >= 2 and "tex" in norm.lower()
            and not norm.startswith(("/home/", "/root/", "/tmp/", "/var/tmp/", "/proc/", "/dev/", "/sys/")))


def _tool_root(binary: str) -> list[str]:
    """A binary outside ``/usr`` (e.g. an upstream TeX Live in /opt) needs its tree bound too."""
    real = os.path.realpath(binary)
    if real.startswith(("/usr/", "/bin/", "/sbin/", "/lib")):
        return []
    root = os.path.dirname(os.path.dirname(os.path.dirname(real)))
    return [root] if _tex_tree(root) else []


_TEX_PROCESSES = frozenset({"pdflatex", "pdftex", "pdftoppm", "pdfinfo", "mktexpk", "mktextfm", "mf", "mf-nowin"})


def lingering_tex_processes(uids: int | Iterable[int] | None) -> list[int]:
    """Pids of TeX/poppler processes running as a sandbox uid in ``uids`` (or under this process).

    A killed sandbox tears its PID namespace down asynchronously, so its processes can outlive
    ``run_sandboxed`` by a few milliseconds.
    """
    wanted = set() if uids is None else {uids} if isinstance(uids, int) else set(uids)
    procs: dict[int, tuple[int, str, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                st = f.read()
            with open(f"/proc/{entry}/status") as f:
                ruid = next(int(line.split()[1]) for line in f if line.startswith("Uid:"))
            procs[int(entry)] = (int(st[st.rindex(")") + 2:].split()[1]), st[st.index("(") + 1: st.rindex(")")], ruid)
        except (OSError, ValueError, IndexError, StopIteration):
            continue
    mine, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, (ppid, _, _) in procs.items() if ppid in frontier} - mine
        mine |= frontier
    return [pid for pid, (_, name, ruid) in procs.items()
            if name in _TEX_PROCESSES and (pid in mine or ruid in wanted)]


def end_job(info: SandboxInfo) -> None:
    """Kill everything the job's uid still runs, so that nothing changes its directory after the run.

    At the fallback levels a job's process can leave the process group (``setsid``) and outlive the
    run, or a PID namespace is still being torn down; each worker has a uid of its own, so killing
    all of that uid's processes (``kill(-1)`` as the uid) touches no sibling. With bubblewrap the
    PID namespace is gone once ``run_sandboxed`` returns: nothing to do. Without a uid of its own (not
    root) there is nothing we may kill: the reads stay safe (:class:`JobFiles`) but not frozen.
    """
    if info.level != "bubblewrap":
        kill_uid(info.uid)


class LatexRenderer(Renderer):
    """Render LaTeX tables, formulas, bodies and whole documents into images cropped to the ink.

    Args:
        timeout: wall-clock seconds per sample for compiling and rasterising together (CPU time is
            capped too); an endless macro comes back as ``timeout``.
        dpi: rasterising resolution (``pdftoppm -r``).
        workers: threads running sandboxed jobs in parallel (default: CPU count).
        preamble: extra preamble lines for the wrapped kinds (baked into the preamble format).
        background: paper colour; the rendering is multiplied by it (white paper becomes this colour,
            black ink stays black).
        max_pixels: a page 1 larger than this at ``dpi`` fails with ``memory`` before it is rasterised.
        memory_mb: address-space limit per process.
        precompile: use a preamble format built once per machine (falls back to plain compiles).

    Example:
        >>> with LatexRenderer(timeout=10, dpi=200, workers=1) as r:
        ...     res = r.render("\\\\begin{tabular}{lr}\\\\toprule a & 1\\\\\\\\ \\\\bottomrule\\\\end{tabular}")
        >>> res.ok, res.image.size[0] > res.image.size[1]
        (True, True)
    """

    name = "latex"

    def __init__(self, timeout: float = 10.0, dpi: float = 200.0, workers: int | None = None,
                 preamble: Sequence[str] | str = (), background: str = "white",
                 max_pixels: int = DEFAULT_MAX_PIXELS, memory_mb: int = 2048, precompile: bool = True) -> None:
        super().__init__(timeout)
        if dpi <= 0:
            raise ValueError(f"dpi must be positive, got {dpi}")
        ImageColor.getrgb(background)  # raises ValueError on an unknown colour
        self.dpi = float(dpi)
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.preamble = [preamble] if isinstance(preamble, str) else list(preamble)
        self.background = background
        self.max_pixels = int(max_pixels)
        self.precompile = precompile
        self.limits = SandboxLimits(memory_mb=memory_mb, max_processes=max(64, 8 * self.workers), max_file_mb=32)
        self.sandbox_info: SandboxInfo = detect_sandbox()
        self._local = threading.local()       # each thread that runs jobs has its own sandbox uid
        self.uids: list[int] = []              # every uid this renderer took (see _job_info)
        self.tools = {t: shutil.which(t) for t in ("pdflatex", "pdftex", "pdfinfo", "pdftoppm", "kpsewhich")}
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._lock_uids = threading.Lock()
        self._closed = False
        self._format: str | None = None      # host path of the .fmt in use
        self._format_state = "not built"     # "in use", "off", "failed: ..."
        self._format_binds: list[str] = []   # ro paths that expose it in the sandbox ([] -> link it)

    # -- setup -------------------------------------------------------------------------------------

    def _missing(self) -> str | None:
        if not self.tools["pdflatex"] or not self.tools["pdftex"]:
            return f"pdflatex not found: {TEX_HINT}"
        if not self.tools["pdftoppm"] or not self.tools["pdfinfo"]:
            return f"pdftoppm/pdfinfo not found: {POPPLER_HINT}"
        return None

    def _ro_paths(self) -> list[str]:
        paths = list(tex_ro_paths(self.tools["kpsewhich"]))
        for tool in ("pdflatex", "pdftoppm"):
            if self.tools[tool]:
                paths += _tool_root(self.tools[tool] or "")
        return paths + self._format_binds

    def _format_key(self) -> str:
        fmt = _first_line([self.tools["kpsewhich"] or "kpsewhich", "-engine=pdftex", "pdflatex.fmt"])
        try:
            st = os.stat(fmt)
            fmt_id = [fmt, st.st_size, int(st.st_mtime)]
        except OSError:
            fmt_id = [fmt]
        data = json.dumps([FORMAT_REVISION, _first_line([self.tools["pdftex"] or "pdftex", "--version"]),
                           fmt_id, base_preamble(self.preamble)])
        return hashlib.sha256(data.encode()).hexdigest()[:16]

    def ensure_format(self) -> str | None:
        """Build (once per machine) or find the preamble format; its host path, or None when off."""
        with self._lock:
            if self._format_state != "not built":
                return self._format
            if not self.precompile or self._missing():
                self._format_state = "off"
                return None
            try:
                self._format = self._find_or_build_format()
                self._format_state = "in use"
            except Exception as exc:  # any failure: compile the whole preamble every time instead
                self._format, self._format_binds = None, []
                self._format_state = f"failed: {_clean(str(exc), 300)}"
            return self._format

    def _find_or_build_format(self) -> str:
        cache = format_cache_dir()
        if cache is None:
            raise RuntimeError("no private cache directory for the preamble format")
        path = os.path.join(cache, f"visalign-{self._format_key()}.fmt")
        # bwrap mounts a fresh /tmp over binds there: a format kept in /tmp is hard-linked instead.
        in_tmp = os.path.realpath(cache).startswith(("/tmp/", "/var/tmp/"))
        self._format_binds = [cache] if self.sandbox_info.level == "bubblewrap" and not in_tmp else []
        if not os.path.isfile(path):
            self._build_format(path)
            # Smoke test: one table through the new format, so that a bad one is never kept.
            res = self._render_one(r"\begin{tabular}{c}\toprule x\\\bottomrule\end{tabular}", path)
            if not res.ok:
                with contextlib.suppress(OSError):
                    os.remove(path)
                raise RuntimeError(f"format smoke test failed: {res.error_kind}: {res.error}")
        return path

    def _job_info(self) -> SandboxInfo:
        """This thread's sandbox: the renderer's level with a uid of its own (:func:`allocate_uid`).

        No two workers (of this or any other renderer) share a uid, so ``RLIMIT_NPROC`` counts each
        worker alone and everything the uid still runs after a job can be killed without a sibling.
        """
        info = getattr(self._local, "info", None)
        if info is None:
            info = self.sandbox_info
            if info.uid is not None:
                uid = allocate_uid()
                if uid is not None:
                    info = dataclasses.replace(info, uid=uid)
                    with self._lock_uids:
                        self.uids.append(uid)
            self._local.info = info
        return info

    def _build_format(self, dest: str) -> None:
        info = self._job_info()
        workdir = make_workdir("visalign-latexfmt-", info.uid)
        try:
            texdir = self._texdir(workdir, info)
            with open(os.path.join(texdir, "preamble.tex"), "w") as f:
                f.write(base_preamble(self.preamble) + "\n\\begin{document}\n\\end{document}\n")
            run = run_sandboxed(
                ["sh", "-c", 'cd tex && TEXMFOUTPUT=$(pwd) && export TEXMFOUTPUT && exec "$0" -ini '
                 '-jobname=visalign -interaction=nonstopmode -halt-on-error "&pdflatex" mylatexformat.ltx '
                 "preamble.tex >../build.out 2>&1", self.tools["pdftex"] or "pdftex"],
                workdir, timeout=max(120.0, self.timeout), limits=self.limits, ro_paths=self._ro_paths(),
                env=_TEX_ENV, info=info)
            end_job(info)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest), prefix=".fmt-")
            os.close(fd)
            try:
                with JobFiles(workdir) as job:
                    copied = not run.timed_out and run.returncode == 0 and \
                        job.copy_to("tex/visalign.fmt", tmp, 256 << 20)
                    tail = "" if copied else (job.text("build.out", 4096) or "")[-400:]
            except _Planted as exc:
                copied, tail = False, str(exc)
            if not copied:
                os.remove(tmp)
                raise RuntimeError(f"pdftex -ini failed (exit {run.returncode}): {_clean(tail, 300)}")
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    @staticmethod
    def _texdir(workdir: str, info: SandboxInfo) -> str:
        texdir = os.path.join(workdir, "tex")
        os.mkdir(texdir, 0o755)
        if info.uid is not None:
            os.chown(texdir, info.uid, info.uid)
        return texdir

    # -- rendering ---------------------------------------------------------------------------------

    def _render_batch(self, sources: list[str]) -> list[RenderResult]:
        if self._closed:
            raise RuntimeError("renderer is closed")
        missing = self._missing()
        if missing:
            return [RenderResult.failure("internal", missing) for _ in sources]
        fmt = self.ensure_format()
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="visalign-latex")
            pool = self._pool
        return list(pool.map(lambda s: self._safe_one(s, fmt), sources))

    def _safe_one(self, source: str, fmt: str | None) -> RenderResult:
        t0 = time.perf_counter()
        try:
            res = self._render_one(source, fmt)
            if res.error_kind == "internal" and fmt is not None and (res.error or "").startswith(_FORMAT_FAILED):
                with self._lock:  # the format broke under us: stop using it, retry this one plainly
                    self._format, self._format_state = None, f"failed: {res.error}"
                res = self._render_one(source, None)
            return res
        except Exception as exc:
            return RenderResult.failure("internal", f"{type(exc).__name__}: {exc}", time.perf_counter() - t0)

    def _render_one(self, source: str, fmt: str | None) -> RenderResult:
        t0 = time.perf_counter()
        if not source.strip():
            return RenderResult.failure("no_output", "the source is empty", 0.0)
        prep = prepare(source, self.preamble, formatted=fmt is not None)
        info = self._job_info()
        workdir = make_workdir("visalign-latex-", info.uid)
        try:
            texdir = self._texdir(workdir, info)
            with open(os.path.join(texdir, "doc.tex"), "w", encoding="utf-8", errors="replace") as f:
                f.write(prep.tex)
            args = list(_LATEX_FLAGS)
            binds = self._ro_paths()
            if prep.formatted and fmt is not None:
                args.append(f"-fmt={self._expose_format(fmt, workdir, info)}")
            if prep.kind == "document":
                args += ["-jobname=doc", _NO_PAGE_NUMBERS]
            else:
                args.append("doc.tex")
            run = run_sandboxed(
                ["sh", "-c", _SCRIPT, "sh", f"{self.dpi:g}", str(self.max_pixels), self.tools["pdflatex"] or "",
                 self.tools["pdfinfo"] or "", self.tools["pdftoppm"] or "", *args],
                workdir, self.timeout, limits=self.limits, ro_paths=binds, env=_TEX_ENV, info=info)
            end_job(info)  # nothing the job started may still change its directory while we read it
            return self._result(prep, workdir, run.timed_out, t0)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def _expose_format(self, fmt: str, workdir: str, info: SandboxInfo) -> str:
        """The format's path as the sandbox sees it: bound read-only, or hard-linked into the job."""
        if self._format_binds:
            return fmt
        if info.level != "bubblewrap" and (info.uid is None or reachable_by_others(fmt)):
            return fmt
        dest_dir = os.path.join(workdir, "fmt")
        os.mkdir(dest_dir, 0o755)
        dest = os.path.join(dest_dir, "visalign.fmt")
        try:
            os.link(fmt, dest)
        except OSError:
            shutil.copyfile(fmt, dest)
            os.chmod(dest, 0o644)
        inner = "/sandbox" if self.sandbox_info.level == "bubblewrap" else workdir
        return os.path.join(inner, "fmt", "visalign.fmt")

    def _result(self, prep: Prepared, workdir: str, timed_out: bool, t0: float) -> RenderResult:
        def fail(kind: str, msg: str) -> RenderResult:
            return RenderResult.failure(kind, msg, time.perf_counter() - t0)  # the scan counts too

        if timed_out:
            return fail("timeout", f"pdflatex/pdftoppm ran past the {self.timeout:g} s limit")
        try:
            with JobFiles(workdir) as job:
                return self._read_result(prep, job, t0, fail)
        except _Planted as exc:
            return fail("sandbox", _clean(f"the job tampered with its output files: {exc}"))

    def _read_result(self, prep: Prepared, job: JobFiles, t0: float, fail: Any) -> RenderResult:
        rc = job.integer("latex.rc")
        out = job.text("latex.out") or ""
        err = job.text("latex.err", 1 << 16) or ""
        log = job.text("tex/doc.log") or out
        if rc is None:
            return fail("internal", "the sandboxed shell did not run pdflatex")
        if rc != 0 and prep.formatted and "(./doc.tex" not in out and "doc.tex" not in log:
            return fail("internal", f"{_FORMAT_FAILED}: {_clean(out[-300:])}")
        if rc == 128 + 24:  # SIGXCPU
            return fail("timeout", "pdflatex hit the CPU-time limit")
        if rc == 128 + 25:  # SIGXFSZ
            return fail("memory", "pdflatex wrote a file over the size limit (log or PDF too large)")
        found = _scan_log(log, out, err, prep.offset, prep.lines, errors=rc != 0)
        if found.refused or found.shell:
            parts = [f"refused file access: {'; '.join(found.refused[:3])}"] if found.refused else []
            if found.shell:
                parts.append(f"shell escape blocked: {'; '.join(found.shell[:3])}")
            return fail("sandbox", _clean(" | ".join(parts)))
        if found.capacity is not None:
            return fail("memory", _clean(f"TeX capacity exceeded [{found.capacity}]"))
        if rc != 0:
            error = found.error
            if error and "File `|" in error:  # \input{|cmd}: a pipe is a shell command
                return fail("sandbox", f"shell pipe input blocked: {error}")
            if error:
                return fail("syntax", error)
            if rc >= 128:
                return fail("runtime", f"pdflatex was killed by signal {rc - 128}")
            return fail("runtime", _clean(f"pdflatex exited with {rc}: {log[-300:]}"))
        if not job.exists("tex/doc.pdf") or "No pages of output" in log:
            return fail("no_output", "pdflatex produced no pages")
        toobig = job.text("toobig", 64)
        if toobig:
            return fail("memory", _clean(f"page 1 would be {toobig.strip().replace(' ', 'x')} px at "
                                         f"{self.dpi:g} dpi, over max_pixels={self.max_pixels}"))
        ppm_rc = job.integer("ppm.rc")
        if ppm_rc is None:
            return fail("no_output", "the PDF has no readable page 1")
        if ppm_rc != 0:
            msg = job.text("ppm.out", 4096) or ""
            return fail("runtime", _clean(f"pdftoppm exited with {ppm_rc}: {msg[-300:]}"))
        png = job.read("out/page.png", MAX_PNG_BYTES + 1)
        if png is None or len(png) > MAX_PNG_BYTES:
            return fail("internal", "unreadable image from pdftoppm: no regular PNG file under 256 MiB")
        return self._image(png, t0)

    def _image(self, png: bytes, t0: float) -> RenderResult:
        try:
            image = load_png(png, self.max_pixels)
        except (OSError, ValueError, SyntaxError) as exc:
            return RenderResult.failure("internal", f"unreadable image from pdftoppm: {exc}",
                                        time.perf_counter() - t0)
        except Exception as exc:  # PIL raises DecompressionBombError and friends
            return RenderResult.failure("memory", f"{type(exc).__name__}: {exc}", time.perf_counter() - t0)
        pad = max(1, round(BORDER_PT / 72.27 * self.dpi))
        image = on_background(crop_to_ink(image, pad), self.background)
        return finish_image(image, time.perf_counter() - t0)

    # -- housekeeping ------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        self.ensure_format()
        versions = {"pdflatex": _first_line([self.tools["pdflatex"], "--version"]) if self.tools["pdflatex"]
                    else "missing", "pdftoppm": _first_line([self.tools["pdftoppm"], "-v"])
                    if self.tools["pdftoppm"] else "missing"}
        return {**super().info(), "backend": "pdflatex + pdftoppm", "versions": versions, "dpi": self.dpi,
                "workers": self.workers, "preamble_format": self._format_state == "in use",
                "preamble_format_state": self._format_state, "format_path": self._format,
                "sandbox": self.sandbox_info.level, "background": self.background, "max_pixels": self.max_pixels}

    def close(self) -> None:
        self._closed = True
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
            deadline = time.monotonic() + 2.0  # let killed sandboxes finish dying
            while lingering_tex_processes(self.uids) and time.monotonic() < deadline:
                time.sleep(0.01)
        with self._lock_uids:
            uids, self.uids = self.uids, []
        for uid in uids:
            release_uid(uid)
