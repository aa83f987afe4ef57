"""A pool of sandboxed fork servers (zygotes), one per worker slot.

Each slot owns one long-lived sandboxed process that preloaded its handler's imports and forks a
child per job (see ``_sandboxed/zygote.py``). The parent sends one JSON line per job, waits for one
JSON line back with a deadline, and replaces a zygote that dies, hangs or answers garbage; the batch
goes on. Closing the pool, or the interpreter exiting, kills every process it started.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import dataclasses
import json
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._sandboxed.zygote import MAX_RESULT, SANDBOX_MARKERS  # one definition for the worker and us
from .base import DEFAULT_MAX_PIXELS, RenderResult, finish_image, load_png
from .sandbox import (
    SandboxInfo,
    SandboxLimits,
    allocate_uid,
    clean_env,
    detect_sandbox,
    kill_group,
    kill_uid,
    make_preexec,
    make_workdir,
    python_ro_paths,
    release_uid,
    wrap_argv,
)

HANDLER_DIR = str(Path(__file__).with_name("_sandboxed"))
START_TIMEOUT = 120.0   # a cold zygote imports matplotlib: allow a slow first start
REPLY_MARGIN = 10.0     # the zygote enforces the job timeout; this only catches a hung zygote
MAX_SOURCE_BYTES = 16 << 20   # largest program accepted


# bwrap --die-with-parent (PR_SET_PDEATHSIG) fires when the *thread* that forked it exits, so every
# zygote is spawned from this one long-lived thread, never from a batch's short-lived worker threads.
_SPAWNER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="visalign-spawner")


class WorkerDied(RuntimeError):
    """The zygote died or stopped answering."""


class _Zygote:
    def __init__(self, handler: str, info: SandboxInfo, limits: SandboxLimits, timeout: float,
                 extra_env: dict[str, str], ro_paths: list[str], seed_dirs: dict[str, str]) -> None:
        self.handler, self.info, self.limits, self.timeout = handler, info, limits, timeout
        self.extra_env, self.ro_paths, self.seed_dirs = extra_env, ro_paths, seed_dirs
        self.proc: subprocess.Popen | None = None
        self.root = ""      # the worker's writable directory (the jobs' tmpfs is mounted over it)
        self.logdir = ""    # the zygote's stderr, in a directory no job can reach
        self.versions: dict[str, str] = {}
        self.isolation = "unknown"
        self._buf = bytearray()
        self._jobs = 0

    def start(self) -> None:
        self.root = make_workdir("visalign-zygote-", self.info.uid)
        self.logdir = tempfile.mkdtemp(prefix="visalign-zygote-log-")
        # The zygote may kill every process it can signal after each job (kill(-1)) only when those
        # are its jobs' alone: in its own PID namespace, or as a uid of its own.
        own_pidns = self.info.level == "bubblewrap" or (
            self.info.level == "namespaces+rlimits" and os.geteuid() == 0)
        kill_all = own_pidns or self.info.uid is not None
        # bubblewrap binds the install read-only and drops the uid before Python starts; the fallback
        # levels start Python as root and drop after the imports, so a 0700 home still works.
        early_drop = self.info.level == "bubblewrap"
        cfg = {"timeout": self.timeout, "kill_all": kill_all, "own_uid": self.info.uid is not None,
               "quota": {"disk_mb": self.limits.disk_mb, "inodes": self.limits.max_inodes,
                         # tests (and hosts whose namespaces misbehave) can force the weaker mode
                         "shared": os.environ.get("VISALIGN_JOB_ISOLATION") == "shared"},
               "drop_uid": None if early_drop else self.info.uid,
               "seed": dict(self.seed_dirs)}
        ro = self.ro_paths + [HANDLER_DIR] + list(self.seed_dirs.values())
        cfg["keep"] = ro  # a job's tmpfs over /tmp must not hide an install that lives there
        argv = [sys.executable, "-I", os.path.join(HANDLER_DIR, "zygote.py"), self.handler, "{workdir}",
                json.dumps(cfg)]
        full, inner = wrap_argv(argv, self.root, self.info, ro, drop=early_drop)
        full = [a.replace("{workdir}", inner) for a in full]
        env = clean_env(inner, {k: v.replace("{workdir}", inner) for k, v in self.extra_env.items()})
        # The zygote's own CPU limit must outlast many jobs: the per-job limit is set in each child.
        limits = dataclasses.replace(self.limits, cpu_seconds=10**7)
        log_path = os.path.join(self.logdir, "zygote.log")
        with open(log_path, "wb") as log:
            self.proc = _SPAWNER.submit(
                subprocess.Popen, full, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd=self.root,
                env=env, close_fds=True, preexec_fn=make_preexec(limits, self.timeout, self.info.uid)).result()
        try:
            hello = self._read_line(START_TIMEOUT)
        except WorkerDied as exc:
            hello = {"error": f"{exc}: {_tail(log_path)}"}
        if not hello.get("ready"):
            err = hello.get("error", "no greeting")
            self.stop()
            raise WorkerDied(f"{self.handler} worker failed to start ({self.info.level}): {err}")
        self.versions = {str(k): str(v) for k, v in (hello.get("versions") or {}).items()}

    def _fill(self, need: int, deadline: float) -> None:
        """Read from the zygote until ``need`` bytes are buffered (or a newline when need < 0)."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while (self._buf.find(b"\n") < 0) if need < 0 else (len(self._buf) < need):
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkerDied(f"worker gave no answer within {self.timeout + REPLY_MARGIN:.0f} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    log = _tail(os.path.join(self.logdir, "zygote.log"), 300) if self.logdir else ""
                    raise WorkerDied("worker exited" + (f" ({log})" if log else ""))
                self._buf += chunk  # a bytearray: amortised appends, however many chunks
                if need < 0 and len(self._buf) > 1 << 16:
                    raise WorkerDied("worker sent an oversized reply")

    def _take(self, n: int) -> bytes:
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def _read_line(self, timeout: float) -> dict[str, Any]:
        self._fill(-1, time.monotonic() + timeout)
        line = self._take(self._buf.find(b"\n") + 1)
        try:
            msg = json.loads(line)
        except ValueError as exc:
            raise WorkerDied(f"worker sent garbage: {line[:80]!r}") from exc
        if not isinstance(msg, dict):
            raise WorkerDied("worker sent a non-object reply")
        return msg

    def _read_bytes(self, n: int, timeout: float) -> bytes:
        self._fill(n, time.monotonic() + timeout)
        return self._take(n)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def run(self, source: str, options: dict[str, Any]) -> tuple[dict[str, Any], bytes, bytes]:
        """Run one job; returns the zygote's reply, the job's raw result and its output tail."""
        if not self.alive():
            self.stop()
            self.start()
        assert self.proc is not None and self.proc.stdin is not None
        payload = json.dumps({"source": source, "options": options}).encode()
        if len(payload) > MAX_SOURCE_BYTES:
            raise ValueError(f"source of {len(payload)} bytes is over the {MAX_SOURCE_BYTES} byte limit")
        try:
            self.proc.stdin.write(b"%d\n" % len(payload) + payload)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise WorkerDied("worker exited") from exc
        self._jobs += 1
        reply = self._read_line(self.timeout + REPLY_MARGIN)
        if reply.get("n") != self._jobs:
            raise WorkerDied("worker answered out of order")
        sizes = [reply.get("result"), reply.get("output")]
        if not all(isinstance(n, int) and 0 <= n <= MAX_RESULT for n in sizes):
            raise WorkerDied("worker sent a malformed reply")
        result = self._read_bytes(sizes[0], REPLY_MARGIN)
        output = self._read_bytes(sizes[1], REPLY_MARGIN)
        self.isolation = str(reply.get("isolation"))
        return reply, result, output

    def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(OSError):
                if self.proc.stdin:
                    self.proc.stdin.close()
            kill_group(self.proc)
            if self.info.level != "bubblewrap":  # no PID namespace dies with it: a job may have setsid()
                kill_uid(self.info.uid)
            if self.proc.stdout:
                self.proc.stdout.close()
            self.proc = None
        self._buf = bytearray()
        self._jobs = 0
        for d in (self.root, self.logdir):
            if d:  # rmtree never follows a link a job planted (fd-based on Linux)
                shutil.rmtree(d, ignore_errors=True)
        self.root = self.logdir = ""


_LIVE_POOLS: weakref.WeakSet[ZygotePool] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for pool in list(_LIVE_POOLS):
        pool.close()


class ZygotePool:
    """``workers`` sandboxed zygotes running one handler; thread-safe ``run_batch``.

    Example:
        >>> pool = ZygotePool("mpl_handler", workers=2, timeout=10)
        >>> [r.ok for r in pool.run_batch(["import matplotlib.pyplot as plt; plt.plot([1, 2])"], {})]
        [True]
        >>> pool.close()
    """

    def __init__(self, handler: str, workers: int | None = None, timeout: float = 10.0,
                 limits: SandboxLimits | None = None, extra_env: dict[str, str] | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, background: str = "white",
                 extra_ro_paths: list[str] | None = None, seed_dirs: dict[str, str] | None = None) -> None:
        self.handler = handler
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.timeout = timeout
        self.info = detect_sandbox()
        self.limits = limits or SandboxLimits()
        self.max_pixels = max_pixels
        self.background = background
        ro = python_ro_paths() + list(extra_ro_paths or [])
        self._slots = [_Zygote(handler, self._slot_info(i), self.limits, timeout, dict(extra_env or {}), ro,
                               dict(seed_dirs or {}))
                       for i in range(self.workers)]
        self._free: queue.Queue[_Zygote] = queue.Queue()
        self._closed = False
        self._lock = threading.Lock()
        self.restarts = 0
        errors: list[Exception] = []

        def boot(z: _Zygote) -> None:
            try:
                z.start()
            except Exception as exc:
                errors.append(exc)

        threads = [threading.Thread(target=boot, args=(z,)) for z in self._slots]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            self._closed = True
            self.close_slots()
            raise WorkerDied(str(errors[0]))
        for z in self._slots:
            self._free.put(z)
        _LIVE_POOLS.add(self)

    def _slot_info(self, slot: int) -> SandboxInfo:
        """Each slot runs as a uid of its own (when we drop privileges at all)."""
        if self.info.uid is None:
            return self.info
        return dataclasses.replace(self.info, uid=allocate_uid())

    @property
    def uids(self) -> list[int]:
        """The uids the workers run as (empty when they run as the caller)."""
        return [z.info.uid for z in self._slots if z.info.uid is not None]

    def resting_processes(self) -> int:
        """How many processes the workers run between jobs, once each has forked and isolated the
        process for its next job: per live worker its zygote and that process, plus, in namespace
        isolation, the process's waiter (the job is the init of a PID namespace of its own). A worker
        whose isolation is not known yet counts as namespace (the upper bound). What a test that checks
        "nothing outlived the job" compares with: right after a reply the next process may still be
        isolating itself, so the count seen then can be lower."""
        return sum(2 if z.isolation == "shared" else 3 for z in self._slots
                   if z.proc is not None and z.proc.poll() is None)

    @property
    def isolation(self) -> str:
        """How the last jobs were isolated from each other: ``namespace``, ``shared`` or ``unknown``
        (no job yet); see :func:`~visalign.renderers._sandboxed.zygote.isolate`."""
        seen = {z.isolation for z in self._slots} - {"unknown"}
        return "shared" if "shared" in seen else (seen.pop() if seen else "unknown")

    @property
    def versions(self) -> dict[str, str]:
        return self._slots[0].versions if self._slots else {}

    def _one(self, z: _Zygote, source: str, options: dict[str, Any]) -> RenderResult:
        t0 = time.perf_counter()
        if not isinstance(source, str):
            return RenderResult.failure("syntax", f"expected source text, got {type(source).__name__}")
        try:
            reply, result, output = z.run(source, options)
        except WorkerDied as exc:
            seconds = time.perf_counter() - t0
            z.stop()
            with self._lock:
                self.restarts += 1
            # A hung zygote means the job outlived its deadline; a dead one means the program killed it.
            kind = "timeout" if "no answer" in str(exc) else "runtime"
            return RenderResult.failure(kind, f"render worker lost: {exc}", seconds)
        except ValueError as exc:
            return RenderResult.failure("memory", str(exc), time.perf_counter() - t0)
        except Exception as exc:  # e.g. the zygote could not be restarted
            z.stop()
            return RenderResult.failure("internal", f"{type(exc).__name__}: {exc}", time.perf_counter() - t0)
        try:
            return self._result_from(reply, result, output, time.perf_counter() - t0)
        except Exception as exc:  # whatever the job wrote fails this sample only
            return RenderResult.failure("internal", f"unreadable result: {type(exc).__name__}: {exc}",
                                        time.perf_counter() - t0)

    def _result_from(self, reply: dict[str, Any], raw: bytes, output: bytes, seconds: float) -> RenderResult:
        """Turn the zygote's reply and the job's untrusted bytes into a result (all checks here)."""
        seconds = float(reply["seconds"]) if isinstance(reply.get("seconds"), (int, float)) else seconds
        tail = output.decode(errors="replace").strip()
        if reply.get("timed_out"):
            return RenderResult.failure("timeout", f"no result within {self.timeout:g} s", seconds)
        size = reply.get("result_size")
        if isinstance(size, int) and size > MAX_RESULT:
            return RenderResult.failure("memory", f"the result was {size} bytes, over the limit", seconds)
        result = parse_result(raw)
        if result is None:
            status = reply.get("status")
            kind, msg = status_to_error(status if isinstance(status, int) else 0, self.timeout)
            return RenderResult.failure(kind, msg + (f": {tail[-600:]}" if tail else ""), seconds)
        header, blobs = result
        trace = _parse_trace(blobs.get("trace"))
        kind = header.get("error_kind")
        if kind is not None:
            kind = kind if kind in _JOB_KINDS else "internal"
            error = str(header.get("error") or kind)[:2000]
            if kind in ("runtime", "no_output") and any(m in tail[-4000:] for m in SANDBOX_MARKERS):
                kind = "sandbox"  # e.g. os.system() hitting the read-only system
                error = f"{error} (the program tried a forbidden action: {tail[-300:]})"
            res = RenderResult.failure(kind, error, seconds)
            res.trace = trace
            return res
        png = blobs.get("png")
        if not png:
            return RenderResult.failure("internal", "the worker reported success without an image", seconds)
        try:
            image = load_png(png, self.max_pixels, self.background)
        except (OSError, ValueError, SyntaxError) as exc:
            return RenderResult.failure("internal", f"unreadable image from worker: {exc}", seconds)
        except Exception as exc:  # PIL raises DecompressionBombError and friends
            return RenderResult.failure("memory", f"{type(exc).__name__}: {exc}", seconds)
        return finish_image(image, seconds, trace)

    def run_batch(self, sources: list[str], options: dict[str, Any],
                  progress: Callable[[int], None] | None = None) -> list[RenderResult]:
        """Run every source on the first free zygote; results in input order."""
        if self._closed:
            raise RuntimeError("pool is closed")
        results: list[RenderResult | None] = [None] * len(sources)
        todo: queue.Queue[int] = queue.Queue()
        for i in range(len(sources)):
            todo.put(i)

        def worker() -> None:
            while True:
                try:
                    i = todo.get_nowait()
                except queue.Empty:
                    return
                z = self._free.get()
                try:
                    results[i] = self._one(z, sources[i], options)
                except Exception as exc:  # never lose the rest of the batch
                    results[i] = RenderResult.failure("internal", f"{type(exc).__name__}: {exc}")
                finally:
                    self._free.put(z)
                if progress is not None:
                    progress(1)

        n = min(self.workers, len(sources))
        threads = [threading.Thread(target=worker, daemon=True) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return [r if r is not None else RenderResult.failure("internal", "not rendered") for r in results]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.close_slots()
        _LIVE_POOLS.discard(self)

    def close_slots(self) -> None:
        """Stop every zygote (and with it every job process of its uid) and give the uids back."""
        for z in self._slots:
            z.stop()
            if z.info.uid != self.info.uid:
                release_uid(z.info.uid)


def _tail(path: str, n: int = 800) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - n))
            return f.read().decode(errors="replace").strip()
    except OSError:
        return ""


_JOB_KINDS = ("timeout", "memory", "syntax", "runtime", "no_output", "blank", "sandbox", "internal")
MAX_HEADER_BYTES = 64 << 10
MAX_TRACE_DEPTH = 32


def parse_result(raw: bytes) -> tuple[dict[str, Any], dict[str, bytes]] | None:
    """Split a job's result (a JSON header line, then raw blobs) into the header and its blobs.

    Everything in it was written by the untrusted program's process: any malformed, oversized or
    inconsistent result is None (the sample fails; nothing is raised).

    Example:
        >>> parse_result(b'{"error_kind": null, "blobs": [["png", 3]]}\\nabc')
        ({'error_kind': None, 'blobs': [['png', 3]]}, {'png': b'abc'})
        >>> parse_result(b"[" * 100000) is None
        True
    """
    end = raw.find(b"\n", 0, MAX_HEADER_BYTES)
    if end < 0:
        return None
    try:
        header = json.loads(raw[:end])
    except (ValueError, RecursionError):
        return None
    if not isinstance(header, dict) or not isinstance(header.get("blobs", []), list):
        return None
    blobs: dict[str, bytes] = {}
    offset = end + 1
    for item in header.get("blobs", []):
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                and isinstance(item[1], int) and 0 <= item[1] <= len(raw) - offset):
            return None
        blobs[item[0]] = raw[offset:offset + item[1]]
        offset += item[1]
    return header, blobs


def _depth(obj: Any, limit: int) -> bool:
    """True when ``obj`` nests no deeper than ``limit`` (iterative: no recursion on hostile data)."""
    stack = [(obj, 0)]
    while stack:
        cur, d = stack.pop()
        if d > limit:
            return False
        if isinstance(cur, dict):
            stack.extend((v, d + 1) for v in cur.values())
        elif isinstance(cur, list):
            stack.extend((v, d + 1) for v in cur)
    return True


def _parse_trace(data: bytes | None) -> dict[str, Any] | None:
    """The instrumentation trace, if it is a JSON object of bounded size and depth; else a marker."""
    if not data:
        return None
    if len(data) > 32 << 20:
        return {"error": "trace larger than 32 MiB"}
    try:
        trace = json.loads(data)
    except (ValueError, RecursionError):
        return {"error": "malformed trace"}
    if not isinstance(trace, dict) or not _depth(trace, MAX_TRACE_DEPTH):
        return {"error": "malformed trace"}
    return trace


def status_to_error(status: int, timeout: float) -> tuple[str, str]:
    """Error kind and message for a job process that ended (wait status) without a result."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        if sig == signal.SIGXCPU:
            return "timeout", f"CPU time limit ({timeout:g} s) exceeded"
        if sig == signal.SIGXFSZ:
            return "memory", "file size limit exceeded"
        return "runtime", f"the program was killed by {name}"
    code = os.WEXITSTATUS(status)
    return "runtime", f"the program exited with status {code} before it finished"
