"""Fork server ("zygote") that runs inside the sandbox. Standalone: imports nothing from visalign.

Started once per worker slot with a handler module (``mpl_handler`` or ``svg_handler``) that preloads
its heavy imports. The zygote never holds any job's content, so no job can find an earlier one in
the memory it inherits (the reference program, another sample's code or image):

1. *Fork first.* Before a job arrives the zygote forks a child that isolates itself (see
   :func:`isolate`: its own user, mount, IPC and PID namespace, a quota'd tmpfs, seccomp) and forks
   the job process, the init of that PID namespace, then waits for it. The job process reads its
   one job straight from the zygote's stdin, closes stdin and tells the zygote it started. The
   zygote itself never reads stdin.
2. The job runs and writes its result (a small JSON header, then raw blobs such as the PNG and the
   trace) into a memfd the zygote made for it; stdout and stderr go to another memfd.
3. The zygote enforces the wall-clock timeout, kills everything the job left, and answers the
   parent with one JSON line ``{"n", "status", "timed_out", "seconds", "result", "output",
   "isolation"}`` followed by ``result`` bytes of the result memfd and ``output`` bytes of the
   output's tail, copied by the kernel (``sendfile``): the zygote never reads them either. The
   parent parses and validates everything the job wrote; nothing is a path.

Job frames on stdin: ``b"<length>\\n"`` then ``length`` bytes of JSON ``{"source", "options"}``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import gc
import importlib
import json
import os
import platform
import re
import resource
import select
import shutil
import signal
import struct
import sys
import time

# EPERM EAGAIN(fork over the process limit) EACCES EROFS ENETUNREACH ECONNREFUSED EHOSTUNREACH
ERRNO_SANDBOX = {1, 11, 13, 30, 101, 111, 113}
SANDBOX_MARKERS = ("Read-only file system", "Permission denied", "Network is unreachable",
                   "Connection refused", "Operation not permitted", "Temporary failure in name resolution",
                   "Name or service not known", "Resource temporarily unavailable",
                   "Directory nonexistent", "can't fork")
MAX_RESULT = 96 << 20      # bytes of result the zygote forwards (the file-size limit is lower)
OUTPUT_TAIL = 4000         # bytes of the program's stdout/stderr forwarded
MAX_TEXT = 4000            # characters kept of a string in the result header (an error message)
MAX_FRAME = 64 << 20       # largest job frame a child accepts
EXIT_NO_JOB = 3            # the child found stdin closed: the pool is shutting down

_libc = ctypes.CDLL(None, use_errno=True)
_state: dict = {"result_fd": -1, "job_pid": -1}
_dumps = json.dumps  # bound before any program runs: a program that breaks json breaks only itself


# ---- what the job child calls ---------------------------------------------------------------------

def write_result(**result: object) -> None:
    """Record the job's outcome: ``bytes`` values travel as raw blobs, the rest as a JSON header.

    Called in the job's process, which the untrusted program shares: the parent treats all of it as
    untrusted data. Processes the program forked share this code; only the job's own process answers.
    """
    if os.getpid() != _state["job_pid"]:
        os._exit(0)
    fd = _state["result_fd"]
    blobs = {k: v for k, v in result.items() if isinstance(v, (bytes, bytearray))}
    header = {k: v[:MAX_TEXT] if isinstance(v, str) else v for k, v in result.items() if k not in blobs}
    header["blobs"] = [[k, len(v)] for k, v in blobs.items()]
    data = _dumps(header, default=str).encode() + b"\n" + b"".join(bytes(v) for v in blobs.values())
    os.ftruncate(fd, 0)
    view, off = memoryview(data), 0
    while off < len(data):
        off += os.pwrite(fd, view[off:], off)


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


# ---- per-job isolation ------------------------------------------------------------------------------

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID = 0x00020000, 0x08000000, 0x10000000, 0x20000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x1, 0x2, 0x4, 0x20, 0x1000, 0x4000, 1 << 18
# Syscalls no job needs that reach state outliving it: SysV IPC, POSIX message queues, kernel keys.
_DENIED = {
    "x86_64": (0xC000003E, {"shmget": 29, "semget": 64, "msgget": 68, "mq_open": 240, "add_key": 248,
                            "request_key": 249, "keyctl": 250}),
    "aarch64": (0xC00000B7, {"shmget": 194, "semget": 190, "msgget": 186, "mq_open": 180, "add_key": 217,
                             "request_key": 218, "keyctl": 219}),
}


def _check(ret: int, what: str) -> None:
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def deny_syscalls() -> bool:
    """Install a seccomp filter that fails the :data:`_DENIED` syscalls with EPERM (x32 calls too).

    Returns False on an architecture without a table (nothing installed).
    """
    machine = platform.machine()
    if machine not in _DENIED:
        return False
    arch, calls = _DENIED[machine]

    def ins(code: int, jt: int, jf: int, k: int) -> bytes:
        return struct.pack("HBBI", code, jt, jf, k)

    ld_w_abs, jeq_k, jge_k, ret_k = 0x20, 0x15, 0x35, 0x06
    allow, deny = 0x7FFF0000, 0x00050000 | errno.EPERM
    nrs = sorted(calls.values())
    prog = [ins(ld_w_abs, 0, 0, 4), ins(jeq_k, 1, 0, arch), ins(ret_k, 0, 0, allow), ins(ld_w_abs, 0, 0, 0)]
    if machine == "x86_64":  # the x32 ABI reaches the same calls with bit 30 set
        prog.append(ins(jge_k, len(nrs) + 1, 0, 0x40000000))
    for i, nr in enumerate(nrs):
        prog.append(ins(jeq_k, len(nrs) - i, 0, nr))
    prog += [ins(ret_k, 0, 0, allow), ins(ret_k, 0, 0, deny)]
    buf = ctypes.create_string_buffer(b"".join(prog))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(prog), ctypes.cast(buf, ctypes.c_void_p))
    _check(_libc.prctl(38, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")
    _check(_libc.prctl(22, 2, ctypes.byref(fprog), 0, 0), "PR_SET_SECCOMP")
    return True


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _drop_capabilities() -> None:
    """Empty every capability set (the job keeps none of the user namespace's)."""
    for cap in range(64):
        if _libc.prctl(24, cap, 0, 0, 0) != 0 and ctypes.get_errno() == errno.EINVAL:  # PR_CAPBSET_DROP
            break
    header = struct.pack("Ii", 0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    data = ctypes.create_string_buffer(24)     # two zeroed __user_cap_data_struct
    _check(_libc.capset(ctypes.c_char_p(header), data), "capset")


REPLACED = ("/tmp", "/var/tmp", "/dev/shm")  # what each job gets a private tmpfs for


def expose_keep(root: str, paths, as_root: bool) -> dict[str, str]:
    """Make the read-only paths jobs need reachable by the unprivileged uid; returns the ones under a
    :data:`REPLACED` place (a virtualenv in a checkout under ``/tmp``), which each job binds back
    over its private tmpfs, as ``{path: path}``.

    At the fallback levels the zygote starts as root and the install may sit below a directory only
    root can enter (``mktemp -d``, a 0700 home): then, still root, the zygote enters a mount namespace
    of its own, mounts an empty 0755 tmpfs over each such directory and binds the needed paths back
    into it, so the uid can reach them (and nothing else that was there).
    """
    kept = [p for p in _outermost(paths) if os.path.exists(p)]
    if as_root:
        blocked = {}
        for p in kept:
            parts = p.strip("/").split("/")
            for i in range(1, len(parts)):
                a = "/" + "/".join(parts[:i])
                if not os.stat(a).st_mode & 0o001 and not (root + "/").startswith(a + "/"):
                    blocked[p] = a
                    break
        if blocked:
            _check(_libc.unshare(CLONE_NEWNS), "unshare mount namespace")
            _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
            fds = {p: os.open(p, os.O_PATH) for p in blocked}
            for a in _outermost(blocked.values()):
                _check(_libc.mount(b"visalign-keep", a.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=0755"),
                       f"cover {a}")
            for p, fd in fds.items():
                _bind_back(p, fd, "expose")
            read_only_mounts(set(fds))
    return {p: p for p in kept if any(p.startswith(d + "/") for d in REPLACED)}


def _bind_back(path: str, fd: int, what: str) -> None:
    """Bind what the ``O_PATH`` descriptor ``fd`` holds back at ``path`` (a directory or a file mount
    point made for it), then close ``fd``; read-only comes after, from :func:`read_only_mounts`."""
    if os.path.isdir(f"/proc/self/fd/{fd}"):
        os.makedirs(path, 0o755, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
    _check(_libc.mount(f"/proc/self/fd/{fd}".encode(), path.encode(), None, MS_BIND | MS_REC, None),
           f"{what} {path}")
    os.close(fd)


def isolate(root: str, quota: dict, keep: dict[str, str] | None = None) -> str:
    """Give this (child) process a file system and IPC namespace of its own; returns how.

    ``"namespace"``: a new user, mount, IPC and PID namespace (the next fork is its init: the job, which
    can then neither see nor signal the zygote or any other job, and whose exit kills every process it
    started); a fresh tmpfs (size and inode quota) is
    mounted over the worker's directory and also serves ``/tmp``, ``/var/tmp`` and ``/dev/shm``, so
    nothing an earlier job wrote is visible and everything this job writes disappears with it. The
    mounts are locked (the job keeps no capability, and a nested namespace cannot unmount them).
    ``"shared"``: namespaces are unavailable here; the zygote wipes the writable places after each job.
    ``keep``: read-only paths the job needs that lie under a replaced place (:func:`expose_keep`): they
    are bound back, read-only, at the same path.
    Both deny the SysV IPC, message-queue and keyring syscalls (:func:`deny_syscalls`).
    """
    uid, gid = os.getuid(), os.getgid()
    how = "shared"
    if not quota.get("shared") and _libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWPID) == 0:
        _libc.prctl(4, 1, 0, 0, 0)  # dumpable for a moment: /proc/self is ours again, maps writable
        try:
            _write("/proc/self/setgroups", "deny")
            _write("/proc/self/uid_map", f"{uid} {uid} 1")
            _write("/proc/self/gid_map", f"{gid} {gid} 1")
        finally:
            _libc.prctl(4, 0, 0, 0, 0)
        _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
        read_only_mounts()
        replaced = [d for d in REPLACED if os.path.isdir(d) and not os.path.islink(d)]
        hidden = {p: os.open(src, os.O_PATH) for p, src in (keep or {}).items()}  # before they are hidden
        opts = f"size={int(quota['disk_mb'])}m,nr_inodes={int(quota['inodes'])},mode=0700".encode()
        _check(_libc.mount(b"visalign-job", root.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, opts), "mount tmpfs")
        root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
        for shared in replaced:
            name = "." + shared.strip("/").replace("/", "-")
            os.mkdir(name, 0o700, dir_fd=root_fd)
            src = f"/proc/self/fd/{root_fd}/{name}".encode()
            _check(_libc.mount(src, shared.encode(), None, MS_BIND, None), f"bind {shared}")
        for path, fd in hidden.items():  # what the job needs from under a replaced place, read-only
            _bind_back(path, fd, "bind")
        read_only_mounts(set(hidden))
        if not (os.path.isdir(root) and os.path.samestat(os.stat(root), os.fstat(root_fd))):
            os.makedirs(root, 0o700)  # the worker's directory was under a place just replaced
            _check(_libc.mount(f"/proc/self/fd/{root_fd}".encode(), root.encode(), None, MS_BIND, None),
                   "bind the job tmpfs")
        os.close(root_fd)
        _drop_capabilities()
        how = "namespace"
    deny_syscalls()
    return how


def read_only_mounts(only: set[str] | None = None) -> int:
    """Remount every mount of this (new) mount namespace (or those at the targets in ``only``)
    read-only; returns how many it could.

    Run before the job's tmpfs goes up, so that the tmpfs is the only writable place left (at the
    fallback levels the host's world-writable directories, such as ``/run/lock``, included). Flags the
    kernel locks (nosuid, nodev, noexec, atime) are kept, as it requires. Device nodes stay usable.
    """
    flags = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": 0x8, "noatime": 0x400, "nodiratime": 0x800,
             "relatime": 1 << 21, "strictatime": 1 << 24}
    done = 0
    with open("/proc/self/mountinfo") as f:
        lines = f.read().splitlines()
    for line in lines:
        fields = line.split(" ")
        if len(fields) < 6:
            continue
        target = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        opts = fields[5].split(",")
        if "ro" in opts or (only is not None and target not in only):
            continue
        mask = MS_REMOUNT | MS_BIND | MS_RDONLY
        for opt in opts:
            mask |= flags.get(opt, 0)
        if _libc.mount(None, target.encode(), None, mask, None) == 0:
            done += 1
    return done


def _outermost(paths) -> list[str]:
    """Real paths with those nested inside another one dropped."""
    out: list[str] = []
    for p in sorted({os.path.realpath(p) for p in paths}):
        if not any(p == o or p.startswith(o.rstrip("/") + "/") for o in out):
            out.append(p)
    return out


# The world-writable places of a Linux system a job could leave something in (sticky directories).
SHARED_WRITABLE = (*REPLACED, "/run/lock", "/dev/mqueue")


def wipe_shared(root: str, own_uid: bool) -> None:
    """After a job in ``shared`` isolation: delete what our uid wrote in the writable places (only
    in the worker's directory unless the uid is the worker's own, never a user's own files)."""
    uid = os.getuid()
    for place in (root, *SHARED_WRITABLE) if own_uid else (root,):
        try:
            names = os.listdir(place)
        except OSError:
            continue
        for name in names:
            path = os.path.join(place, name)
            if path == root or root.startswith(path + "/"):
                continue  # the worker's own directory (under /tmp at the fallback levels)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if st.st_uid != uid:
                continue
            if os.path.isdir(path) and not os.path.islink(path):
                for d, dirs, _ in os.walk(path):  # a job may leave unreadable directories behind
                    for sub in dirs:
                        with contextlib.suppress(OSError):
                            os.chmod(os.path.join(d, sub), 0o700, follow_symlinks=False)
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(path)


# ---- the job child --------------------------------------------------------------------------------

def _read_exact(fd: int, n: int) -> bytes:
    chunks, left = [], n
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_job() -> dict:
    """Read one frame from stdin without reading past it (the next job's bytes stay in the pipe)."""
    head = b""
    while not head.endswith(b"\n"):
        c = os.read(0, 1)
        if not c:
            raise EOFError
        head += c
        if len(head) > 24:
            raise ValueError("bad job frame")
    n = int(head)
    if not 0 < n <= MAX_FRAME:
        raise ValueError("bad job frame length")
    return json.loads(_read_exact(0, n))


def child_main(handler, root: str, cfg: dict, result_fd: int, output_fd: int, started_w: int) -> None:
    """The pre-forked process: isolate, then (in namespace isolation) fork the job as the init of its
    own PID namespace and wait for it, passing its end on to the zygote; the job takes one job."""
    os.setsid()
    try:
        isolation = isolate(root, cfg["quota"], _state.get("keep"))
    except Exception as exc:  # the job must not run half-isolated
        os.write(started_w, b"!" + f"{type(exc).__name__}: {exc}".encode()[:500])
        os._exit(1)
    if isolation == "namespace":
        job_pid = os.fork()
        if job_pid != 0:
            os.closerange(0, 1 << 16)  # this waiter holds nothing, reads nothing
            _, status = os.waitpid(job_pid, 0)
            _exit_like(status)
        _libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: the waiter killed, the job dies too
        os.setsid()  # a group of its own: kill(0) reaches nothing outside its namespace
    job_main(handler, root, cfg, isolation, result_fd, output_fd, started_w)


def _exit_like(status: int) -> None:
    """End this process the way ``status`` says the job ended (a signal or an exit code)."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        with contextlib.suppress(OSError, ValueError):
            signal.signal(sig, signal.SIG_DFL)
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)


def job_main(handler, root: str, cfg: dict, isolation: str, result_fd: int, output_fd: int,
             started_w: int) -> None:
    """Take one job from stdin and run it (the only place untrusted code runs)."""
    _state.update(result_fd=result_fd, job_pid=os.getpid())  # so that a failure below is reported
    try:
        job = _read_job()
    except EOFError:
        os._exit(EXIT_NO_JOB)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the next job's frame must be out of this program's reach
    os.write(started_w, isolation[:1].encode())
    jobdir = os.path.join(root, "job")
    if isolation == "shared":
        jobdir = os.path.join(root, f"job-{os.urandom(8).hex()}")
    os.mkdir(jobdir, 0o700)
    os.chdir(jobdir)
    os.environ.update(HOME=jobdir, TMPDIR=jobdir)
    os.dup2(output_fd, 1)
    os.dup2(output_fd, 2)
    os.closerange(3, result_fd)
    os.closerange(result_fd + 1, 1 << 16)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    limit = int(sum(os.times()[:2])) + int(cfg["timeout"] + 1.999)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (limit, hard))
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    options = job.get("options") or {}
    source = job.get("source")
    del job
    handler.run(source, options, jobdir)


# ---- the zygote -------------------------------------------------------------------------------------

def _wait(pid: int, timeout: float | None) -> tuple[int | None, bool]:
    """Wait for ``pid`` up to ``timeout`` s (None: forever); returns (wait status or None, timed_out)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = None
    try:
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None, True
            if fd is not None:
                select.select([fd], [], [], left)
            else:
                time.sleep(0.005 if left is None else min(0.005, left))
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return status, False
    finally:
        if fd is not None:
            os.close(fd)


REAP_SECONDS = 6.0  # at most, waiting for a job's processes to be gone (returns as soon as they are); under
# the parent's REPLY_MARGIN (10 s), so a slow clean-up is never taken for a hung worker


def _reap_all(kill_all: bool, pgid: int) -> None:
    """Kill whatever the job left running: every process we may signal when they are all ours (a
    PID namespace or a uid of our own), else the job's process group.

    With a uid of our own, this returns only once no other process of the uid is left, or after
    REAP_SECONDS: a fork bomb's thousands of processes (and their zombies, which count against
    RLIMIT_NPROC until init reaps them) can take seconds to go on a loaded machine, and the next job's
    process, forked right after, would otherwise find no room left and die before its job."""
    deadline = time.monotonic() + REAP_SECONDS
    pause = 0.005
    while True:
        try:
            if kill_all:
                os.kill(-1, signal.SIGKILL)  # every process we may signal, except us and init
            elif pgid > 0:
                os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0] != 0:
                pass
        except ChildProcessError:
            pass
        if not kill_all or not _others_alive() or time.monotonic() > deadline:
            return
        time.sleep(pause)
        pause = min(0.05, pause * 1.5)


def _others_alive() -> bool:
    me, uid = os.getpid(), os.getuid()
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) not in (1, me):
            try:
                if os.stat(f"/proc/{d}").st_uid == uid:
                    return True
            except OSError:
                continue
    return False


def _send(out_fd: int, src_fd: int, offset: int, count: int) -> None:
    while count > 0:
        n = os.sendfile(out_fd, src_fd, offset, count)
        if n == 0:
            break
        offset += n
        count -= n


def _fork(handler, root: str, cfg: dict, kill_all: bool):
    """Fork the next job child; returns (pid, result_fd, output_fd, started_r)."""
    result_fd = os.memfd_create("visalign-result", os.MFD_CLOEXEC)
    output_fd = os.memfd_create("visalign-output", os.MFD_CLOEXEC)
    started_r, started_w = os.pipe()
    for attempt in range(50):  # a fork bomb's leftovers may hold the process limit for a moment
        try:
            pid = os.fork()
            break
        except BlockingIOError:
            _reap_all(kill_all, -1)
            time.sleep(0.02 * (attempt + 1))
    else:
        raise OSError("could not fork a render process")
    if pid == 0:
        code = 0
        try:
            os.close(started_r)
            child_main(handler, root, cfg, result_fd, output_fd, started_w)
        except SystemExit:
            pass
        except BaseException as exc:
            with contextlib.suppress(BaseException):
                write_result(error_kind="internal", error=f"{type(exc).__name__}: {exc}")
        finally:
            os._exit(code)
    os.close(started_w)
    return pid, result_fd, output_fd, started_r


def serve(handler, root: str, cfg: dict, kill_all: bool, out) -> None:
    """Run jobs until stdin closes; one reply line (+ blobs) per job.

    The child for the next job is forked (and isolates itself) before the reply of the current one
    goes out, so that its set-up overlaps the parent's handling of the reply.
    """
    n = 0
    child = _fork(handler, root, cfg, kill_all)
    while True:
        pid, result_fd, output_fd, started_r = child
        try:
            started = b""
            while True:  # blocks until the child took a job (or failed): no job content passes here
                chunk = os.read(started_r, 512)
                if not chunk:
                    break
                started += chunk
                if started[:1] != b"!":
                    break
            t0 = time.perf_counter()
            if not started:
                status, _ = _wait(pid, 30.0)
                _reap_all(kill_all, pid)
                if status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == EXIT_NO_JOB:
                    return
                raise RuntimeError(f"job process died before its job (status {status})")
            if started[:1] == b"!":
                _wait(pid, 30.0)
                _reap_all(kill_all, pid)
                raise RuntimeError(f"job isolation failed: {started[1:].decode(errors='replace')}")
            n += 1
            status, timed_out = _wait(pid, float(cfg["timeout"]))
            seconds = time.perf_counter() - t0
            _reap_all(kill_all, pid)
            if started[:1] == b"s":
                wipe_shared(root, bool(cfg.get("own_uid")))
            size = os.fstat(result_fd).st_size
            out_size = os.fstat(output_fd).st_size
            sent = size if 0 < size <= MAX_RESULT and not timed_out else 0
            tail = min(out_size, OUTPUT_TAIL)
            reply = {"n": n, "status": status, "timed_out": timed_out, "seconds": seconds, "result": sent,
                     "result_size": size, "output": tail,
                     "isolation": "namespace" if started[:1] == b"n" else "shared"}
            # The next child inherits this job's fds for a moment; it closes them before any job runs.
            child = _fork(handler, root, cfg, kill_all)
            out.write((json.dumps(reply) + "\n").encode())
            out.flush()
            _send(out.fileno(), result_fd, 0, sent)
            _send(out.fileno(), output_fd, out_size - tail, tail)
        finally:
            for fd in (result_fd, output_fd, started_r):
                with contextlib.suppress(OSError):
                    os.close(fd)


def _no_ptrace() -> None:
    """Make the zygote non-dumpable (inherited by each fork) so a job cannot ptrace it, another
    job, or read their memory and fds."""
    with contextlib.suppress(OSError, AttributeError):
        _libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4


def drop_privileges(uid: int) -> None:
    """From root to ``uid`` (no groups, no capabilities, no way back), after the imports are done.

    Used at the fallback levels: the interpreter and the package are read while still root, so they
    may live under a directory the unprivileged uid cannot enter (a 0700 home).
    """
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    _check(_libc.prctl(38, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")


def main() -> None:
    handler_name, root = sys.argv[1], sys.argv[2]
    cfg = json.loads(sys.argv[3])
    kill_all = bool(cfg.get("kill_all"))
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.modules["zygote"] = sys.modules[__name__]  # handlers import this module: one copy of _state
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    out = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # the protocol has its own fd: nothing else may write replies
    _no_ptrace()
    try:
        for rel, src in (cfg.get("seed") or {}).items():  # e.g. the prebuilt matplotlib font cache
            dest = os.path.join(root, rel)
            shutil.copytree(src, dest, dirs_exist_ok=True)
            if cfg.get("drop_uid") is not None:
                for d, _, files in os.walk(dest):
                    for path in [d] + [os.path.join(d, f) for f in files]:
                        os.chown(path, int(cfg["drop_uid"]), int(cfg["drop_uid"]))
        _state["keep"] = expose_keep(root, cfg.get("keep") or (), cfg.get("drop_uid") is not None and os.geteuid() == 0)
        handler = importlib.import_module(handler_name)
        versions = handler.preload()
        if cfg.get("drop_uid") is not None:
            drop_privileges(int(cfg["drop_uid"]))
            _no_ptrace()  # changing uids resets dumpable
        gc.collect()
        gc.freeze()  # keep the preloaded heap out of GC passes: forks then copy fewer pages
        out.write((json.dumps({"ready": True, "versions": versions}) + "\n").encode())
        out.flush()
    except Exception as exc:
        out.write((json.dumps({"ready": False, "error": f"{type(exc).__name__}: {exc}"}) + "\n").encode())
        out.flush()
        return
    serve(handler, root, cfg, kill_all, out)


if __name__ == "__main__":
    main()
