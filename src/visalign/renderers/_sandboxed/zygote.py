"""Fork server ("zygote") that runs inside the sandbox. Standalone: imports nothing from visalign.

Started once per worker slot with a handler module (``mpl_handler`` or ``svg_handler``) that preloads
its heavy imports. Then, per job read from stdin as one JSON line, it forks a child that runs the job
in a fresh directory with its own process group and CPU limit; the zygote enforces the wall-clock
timeout, kills everything the job left behind, and answers one JSON line on stdout:

    {"id": 3, "error_kind": null | "timeout" | ..., "error": str | null, "png": "job-3/out.png" | null,
     "trace": "job-3/trace.json" | null, "seconds": 0.12}

The child's result file is written by code that shares its address space with the untrusted program,
so the zygote reads it as plain JSON data and the parent validates the PNG again.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import json
import os
import resource
import select
import signal
import sys
import time

# EPERM EAGAIN(fork over the process limit) EACCES EROFS ENETUNREACH ECONNREFUSED EHOSTUNREACH
ERRNO_SANDBOX = {1, 11, 13, 30, 101, 111, 113}
SANDBOX_MARKERS = ("Read-only file system", "Permission denied", "Network is unreachable",
                   "Connection refused", "Operation not permitted", "Temporary failure in name resolution",
                   "Name or service not known", "Resource temporarily unavailable",
                   "Directory nonexistent", "can't fork")


def classify_exception(exc: BaseException, workdir: str) -> str:
    """Map an exception raised by the untrusted program to an error kind."""
    if isinstance(exc, MemoryError):
        return "memory"
    if isinstance(exc, RecursionError):
        return "runtime"
    if isinstance(exc, (SyntaxError, IndentationError)):
        return "syntax"
    cur: BaseException | None = exc
    while cur is not None:
        if isinstance(cur, OSError):
            if cur.errno in ERRNO_SANDBOX or type(cur).__name__ == "gaierror":
                return "sandbox"
            fn = getattr(cur, "filename", None)
            if (isinstance(cur, FileNotFoundError) and isinstance(fn, str) and os.path.isabs(fn)
                    and not os.path.realpath(fn).startswith(workdir)):
                return "sandbox"
        cur = cur.__cause__ or cur.__context__
    text = f"{exc}"
    if any(m in text for m in SANDBOX_MARKERS):
        return "sandbox"
    return "runtime"


def write_result(jobdir: str, **result: object) -> None:
    """Called in the child: record the outcome for the zygote.

    Processes the program forked share this code; only the job's own process may answer.
    """
    if str(os.getpid()) != os.environ.get("VISALIGN_JOB_PID"):
        os._exit(0)
    tmp = os.path.join(jobdir, ".result.tmp")
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, os.path.join(jobdir, "result.json"))


def _wait(pid: int, timeout: float) -> tuple[int | None, bool]:
    """Wait for ``pid`` up to ``timeout`` s; returns (wait status or None, timed_out)."""
    deadline = time.monotonic() + timeout
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = None
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None, True
            if fd is not None:
                select.select([fd], [], [], left)
            else:
                time.sleep(min(0.005, left))
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return status, False
    finally:
        if fd is not None:
            os.close(fd)


def _reap_all(kill_all: bool, pgid: int) -> None:
    """Kill whatever the job left running: every process we may signal when they are all ours (a
    PID namespace or a uid of our own), else the job's process group."""
    for _ in range(50):
        try:
            if kill_all:
                os.kill(-1, signal.SIGKILL)  # every process we may signal, except us and init
            else:
                if pgid > 0:
                    os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            while True:
                pid, _ = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
        except ChildProcessError:
            pass
        if not kill_all or not _others_alive():
            return
        time.sleep(0.01)


def _others_alive() -> bool:
    me = os.getpid()
    uid = os.getuid()
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) not in (1, me):
            try:
                if os.stat(f"/proc/{d}").st_uid == uid:
                    return True
            except OSError:
                continue
    return False


def run_child(handler, job: dict, jobdir: str) -> None:
    """In the forked child: isolate, then let the handler run the untrusted source."""
    os.setsid()
    os.environ["VISALIGN_JOB_PID"] = str(os.getpid())
    os.chdir(jobdir)
    os.environ["HOME"] = jobdir
    os.environ["TMPDIR"] = jobdir
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    out = os.open(os.path.join(jobdir, "output.txt"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.closerange(3, 65536)
    cpu = int(job["timeout"] + 1.999)
    _soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
    used = int(sum(os.times()[:2]))
    limit = used + cpu
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (limit, hard))
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    handler.run(job["source"], job.get("options") or {}, jobdir)


def _status_to_error(status: int, timeout: float) -> tuple[str, str]:
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


def handle(handler, job: dict, root: str, kill_all: bool) -> dict:
    jid = int(job["id"])
    rel = f"job-{jid}"
    jobdir = os.path.join(root, rel)
    os.mkdir(jobdir, 0o700)
    t0 = time.perf_counter()
    pid = -1
    for attempt in range(50):  # a fork bomb's leftovers may hold the process limit for a moment
        try:
            pid = os.fork()
            break
        except BlockingIOError:
            _reap_all(kill_all, -1)
            time.sleep(0.02 * (attempt + 1))
    if pid < 0:
        return {"id": jid, "error_kind": "internal", "error": "could not fork a render process",
                "png": None, "trace": None, "seconds": time.perf_counter() - t0}
    if pid == 0:  # child
        try:
            run_child(handler, job, jobdir)
        except BaseException as exc:
            try:
                write_result(jobdir, error_kind="internal", error=f"{type(exc).__name__}: {exc}")
            except BaseException:
                pass
        finally:
            os._exit(0)
    status, timed_out = _wait(pid, float(job["timeout"]))
    seconds = time.perf_counter() - t0
    _reap_all(kill_all, pid)
    reply: dict = {"id": jid, "error_kind": None, "error": None, "png": None, "trace": None,
                   "seconds": seconds}
    if timed_out:
        reply.update(error_kind="timeout", error=f"no result within {job['timeout']:g} s")
        return reply
    result = None
    path = os.path.join(jobdir, "result.json")
    try:
        if os.path.getsize(path) < 4 << 20:
            with open(path) as f:
                result = json.load(f)
    except (OSError, ValueError):
        result = None
    if not isinstance(result, dict):
        kind, msg = _status_to_error(status if status is not None else 0, float(job["timeout"]))
        reply.update(error_kind=kind, error=msg + _tail(jobdir))
        return reply
    kind = result.get("error_kind")
    reply["error_kind"] = kind if isinstance(kind, str) else None
    err = result.get("error")
    reply["error"] = str(err)[:2000] if err is not None else None
    if reply["error_kind"] in ("runtime", "no_output"):
        output = _tail(jobdir, 4000)
        if any(m in output for m in SANDBOX_MARKERS):  # e.g. os.system() hitting the read-only system
            reply["error_kind"] = "sandbox"
            reply["error"] = f"{reply['error']} (the program tried a forbidden action{output[:300]})"
    for key in ("png", "trace"):
        name = result.get(key)
        if isinstance(name, str) and os.path.basename(name) == name and os.path.isfile(os.path.join(jobdir, name)):
            reply[key] = f"{rel}/{name}"
    if reply["error_kind"] is None and reply["png"] is None:
        reply.update(error_kind="internal", error="the worker reported success without an image")
    return reply


def _tail(jobdir: str, n: int = 600) -> str:
    try:
        with open(os.path.join(jobdir, "output.txt"), "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - n))
            text = f.read().decode(errors="replace").strip()
    except OSError:
        return ""
    return f": {text}" if text else ""


def _no_ptrace() -> None:
    """Make the zygote non-dumpable so a job (same uid) cannot ptrace it or read its fds."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4
    except OSError:
        pass


def main() -> None:
    handler_name, root, kill_all = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    handler = importlib.import_module(handler_name)
    _no_ptrace()
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    out = sys.stdout
    try:
        versions = handler.preload()
        gc.collect()
        gc.freeze()  # keep the preloaded heap out of GC passes: forks then copy fewer pages
        out.write(json.dumps({"ready": True, "versions": versions}) + "\n")
    except Exception as exc:
        out.write(json.dumps({"ready": False, "error": f"{type(exc).__name__}: {exc}"}) + "\n")
        out.flush()
        return
    out.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        try:
            reply = handle(handler, job, root, kill_all)
        except Exception as exc:
            reply = {"id": job.get("id"), "error_kind": "internal", "error": f"{type(exc).__name__}: {exc}",
                     "png": None, "trace": None, "seconds": 0.0}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
