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
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .base import DEFAULT_MAX_PIXELS, RenderResult, finish_image, load_png
from .sandbox import (
    SandboxInfo,
    SandboxLimits,
    clean_env,
    detect_sandbox,
    kill_group,
    make_preexec,
    make_workdir,
    python_ro_paths,
    allocate_uid,
    wrap_argv,
)

HANDLER_DIR = str(Path(__file__).with_name("_sandboxed"))
START_TIMEOUT = 120.0   # a cold zygote imports matplotlib: allow a slow first start
REPLY_MARGIN = 10.0     # the zygote enforces the job timeout; this only catches a hung zygote


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
        self.root = ""
        self.inner_root = ""
        self.versions: dict[str, str] = {}
        self._buf = b""
        self._next_id = 0

    def start(self) -> None:
        self.root = make_workdir("visalign-zygote-", self.info.uid)
        for rel, src in self.seed_dirs.items():  # e.g. a prebuilt font cache the worker may update
            dest = os.path.join(self.root, rel)
            shutil.copytree(src, dest)
            if self.info.uid is not None:
                for d, _, files in os.walk(dest):
                    os.chown(d, self.info.uid, self.info.uid)
                    for f in files:
                        os.chown(os.path.join(d, f), self.info.uid, self.info.uid)
        # The zygote may kill every process it can signal after each job (kill(-1)) only when those
        # are its jobs' alone: in its own PID namespace, or as a uid of its own.
        own_pidns = self.info.level == "bubblewrap" or (
            self.info.level == "namespaces+rlimits" and os.geteuid() == 0)
        kill_all = own_pidns or self.info.uid is not None
        argv = [sys.executable, "-I", os.path.join(HANDLER_DIR, "zygote.py"),
                self.handler, "{workdir}", "1" if kill_all else "0"]
        full, inner = wrap_argv(argv, self.root, self.info, self.ro_paths + [HANDLER_DIR])
        self.inner_root = inner
        full = [a.replace("{workdir}", inner) for a in full]
        env = clean_env(inner, {k: v.replace("{workdir}", inner) for k, v in self.extra_env.items()})
        # The zygote's own CPU limit must outlast many jobs: the per-job limit is set in each child.
        limits = SandboxLimits(memory_mb=self.limits.memory_mb, cpu_seconds=10**7,
                               max_processes=self.limits.max_processes, max_file_mb=self.limits.max_file_mb,
                               max_open_files=self.limits.max_open_files)
        log_path = os.path.join(self.root, "zygote.log")
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

    def _read_line(self, timeout: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkerDied(f"worker gave no answer within {timeout:.0f} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    raise WorkerDied("worker exited")
                self._buf += chunk
                if len(self._buf) > 1 << 22:
                    raise WorkerDied("worker sent an oversized reply")
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            msg = json.loads(line)
        except ValueError as exc:
            raise WorkerDied(f"worker sent garbage: {line[:80]!r}") from exc
        if not isinstance(msg, dict):
            raise WorkerDied("worker sent a non-object reply")
        return msg

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def run(self, source: str, options: dict[str, Any], timeout: float) -> dict[str, Any]:
        if not self.alive():
            self.stop()
            self.start()
        assert self.proc is not None and self.proc.stdin is not None
        self._next_id += 1
        jid = self._next_id
        job = {"id": jid, "source": source, "timeout": timeout, "options": options}
        try:
            self.proc.stdin.write((json.dumps(job) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise WorkerDied("worker exited") from exc
        reply = self._read_line(timeout + REPLY_MARGIN)
        if reply.get("id") != jid:
            raise WorkerDied("worker answered out of order")
        return reply

    def job_path(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def clean_job(self, jid_rel: str) -> None:
        shutil.rmtree(os.path.join(self.root, jid_rel.split("/")[0]), ignore_errors=True)

    def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(OSError):
                if self.proc.stdin:
                    self.proc.stdin.close()
            kill_group(self.proc)
            if self.proc.stdout:
                self.proc.stdout.close()
            self.proc = None
        self._buf = b""
        if self.root:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = ""


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
            for z in self._slots:
                z.stop()
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

    @property
    def versions(self) -> dict[str, str]:
        return self._slots[0].versions if self._slots else {}

    def _one(self, z: _Zygote, source: str, options: dict[str, Any]) -> RenderResult:
        t0 = time.perf_counter()
        try:
            reply = z.run(source, options, self.timeout)
        except WorkerDied as exc:
            seconds = time.perf_counter() - t0
            z.stop()
            with self._lock:
                self.restarts += 1
            # A hung zygote means the job outlived its deadline; a dead one means the program killed it.
            kind = "timeout" if "no answer" in str(exc) else "runtime"
            return RenderResult.failure(kind, f"render worker lost: {exc}", seconds)
        except Exception as exc:  # e.g. the zygote could not be restarted
            z.stop()
            return RenderResult.failure("internal", f"{type(exc).__name__}: {exc}", time.perf_counter() - t0)
        rel_dir = f"job-{reply.get('id')}"
        try:
            return self._result_from(z, reply, time.perf_counter() - t0)
        finally:
            z.clean_job(rel_dir)

    def _result_from(self, z: _Zygote, reply: dict[str, Any], seconds: float) -> RenderResult:
        seconds = float(reply.get("seconds") or seconds)
        trace = None
        if isinstance(reply.get("trace"), str):
            trace = _read_json(z.job_path(reply["trace"]))
        kind = reply.get("error_kind")
        if kind is not None:
            kind = kind if kind in ("timeout", "memory", "syntax", "runtime", "no_output", "blank",
                                    "sandbox", "internal") else "internal"
            res = RenderResult.failure(kind, str(reply.get("error") or kind), seconds)
            res.trace = trace
            return res
        png = reply.get("png")
        if not isinstance(png, str):
            return RenderResult.failure("internal", "worker returned no image", seconds)
        try:
            path = z.job_path(png)
            if os.path.getsize(path) > 256 << 20:
                raise ValueError("PNG larger than 256 MiB")
            with open(path, "rb") as f:
                image = load_png(f.read(), self.max_pixels, self.background)
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
        for z in self._slots:
            z.stop()
        _LIVE_POOLS.discard(self)


def _tail(path: str, n: int = 800) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - n))
            return f.read().decode(errors="replace").strip()
    except OSError:
        return ""


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        if os.path.getsize(path) > 32 << 20:
            return {"error": "trace larger than 32 MiB"}
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None
