"""Process sandbox for untrusted renders.

Three levels, best first, chosen once per process by :func:`detect_sandbox` (``VISALIGN_SANDBOX`` can
force a lower one):

``bubblewrap``
    ``bwrap`` gives the child its own network, PID, IPC and UTS namespaces, a read-only view of the
    system (``/usr``, ``/etc``, the Python prefixes) and no home directories or caller data; the only
    writable places are the fresh work directory and a private ``/tmp``. As root, the child also drops
    to an unprivileged uid (``setpriv``), so ``RLIMIT_NPROC`` applies and it has no capabilities.
``namespaces+rlimits``
    ``unshare`` gives a private network namespace (and PID namespace as root); the file system is the
    host's, so the child can read whatever its uid can read.
``rlimits only``
    rlimits, a process group, a clean environment and a fresh work directory. No network isolation.

At every level: a wall-clock timeout that kills the whole process group, CPU-time, address-space,
process-count and file-size limits, and a clean environment (no tokens, keys or proxies).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

# What each level guarantees, and what it does not (``visalign doctor`` and SECURITY.md say the same).
GUARANTEES: dict[str, dict[str, str]] = {
    "bubblewrap": {
        "holds": "no network; own PID/IPC/UTS namespaces; read-only /usr, /etc and Python prefixes only (no "
                 "home, repository or host /tmp); an unprivileged uid of its own with no capabilities",
        "not": "the kernel itself (a kernel exploit); CPU and memory bandwidth shared with the host",
    },
    "namespaces+rlimits": {
        "holds": "no network (a private network namespace; PID namespace as root); as root, an unprivileged "
                 "uid of its own, switched to after the imports",
        "not": "file system reads: the program reads whatever its uid can read (world-readable files)",
    },
    "rlimits only": {
        "holds": "as root, an unprivileged uid of its own, switched to after the imports",
        "not": "the network and file system reads (world-readable files)",
    },
}
PER_JOB = ("every level: rlimits (CPU, memory, processes, file size), a wall-clock kill of everything the "
           "job started, a clean environment, results returned as bytes (the parent opens no path a job "
           "names), SysV IPC / message queues / kernel keys denied (seccomp); where user namespaces work "
           "(isolation 'namespace'), each pooled job also gets its own mount and IPC namespace with a "
           "size- and inode-limited tmpfs over every writable place, gone when the job ends; otherwise "
           "(isolation 'shared') the worker deletes what the job wrote before the next one starts")

# Unprivileged uid/gid the sandbox runs as when we are root (none of them exist in /etc/passwd).
SANDBOX_UID_BASE = 61000
LEVELS = ("bubblewrap", "namespaces+rlimits", "rlimits only")


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits applied to every sandboxed process (inherited by its children).

    Attributes:
        memory_mb: address-space limit (``RLIMIT_AS``) per process, in MiB.
        cpu_seconds: CPU-time limit (``RLIMIT_CPU``); ``None`` derives it from the timeout.
        max_processes: process/thread limit for the sandbox uid (``RLIMIT_NPROC``).
        max_file_mb: largest file a process may write (``RLIMIT_FSIZE``), in MiB.
        max_open_files: ``RLIMIT_NOFILE``.
        disk_mb: size of the tmpfs each pooled job writes into (its directory, ``/tmp``, ``/var/tmp``
            and ``/dev/shm`` together), where per-job namespaces are available.
        max_inodes: files and directories that tmpfs holds.
    """

    memory_mb: int = 2048
    cpu_seconds: float | None = None
    max_processes: int = 64
    max_file_mb: int = 64
    max_open_files: int = 256
    disk_mb: int = 256
    max_inodes: int = 4096


@dataclass(frozen=True)
class SandboxInfo:
    """Which sandbox level is in force, and why."""

    level: str
    uid: int | None          # uid the child runs as (None: the caller's own)
    bwrap: str | None
    note: str

    def as_dict(self) -> dict[str, object]:
        return {"level": self.level, "uid": self.uid, "bwrap": self.bwrap, "note": self.note}


UIDS_PER_PROCESS = 64
_uid_lock = threading.Lock()
_uids_in_use: set[int] = set()  # slots held by live workers; slot 0 is the probe's


#: ranges of :data:`UIDS_PER_PROCESS` uids above :data:`SANDBOX_UID_BASE`, one per live visalign process
UID_RANGES = 1000
#: where the ranges are claimed: one file per range, flock'd by the process holding it (root only)
UID_LOCK_DIRS = ("/run/visalign-sandbox-uids", os.path.join(tempfile.gettempdir(), "visalign-sandbox-uids-0"))
_range_lock = threading.Lock()
_range: tuple[int, int] | None = None  # (pid, range) this process claimed
_range_fds: list[int] = []  # the open, flock'd files (kept for the process's life; close-on-exec)


def _private_dir(path: str) -> bool:
    """``path`` exists (created if missing) as a directory owned by root that nobody else may write."""
    with contextlib.suppress(FileExistsError, FileNotFoundError, PermissionError):
        os.mkdir(path, 0o700)
    try:
        st = os.lstat(path)
    except OSError:
        return False
    import stat

    return stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and not st.st_mode & 0o022


def _claim_range() -> int:
    """This process's uid range, claimed host-wide the first time it is needed (by pid: a forked child
    claims its own): ``pid % UID_RANGES`` when free, else the next free one. A range is held by an
    flock on its file, which the kernel drops when the process (and every fork still holding the file)
    is gone, so a crashed process never leaks its range. Where no private lock directory can be made,
    the range is ``pid % UID_RANGES`` unclaimed (the old rule), with a warning."""
    global _range
    pid = os.getpid()
    with _range_lock:
        if _range is not None and _range[0] == pid:
            return _range[1]
        import fcntl

        start = pid % UID_RANGES
        folder = next((d for d in UID_LOCK_DIRS if _private_dir(d)), None)
        if folder is None:
            logging.getLogger("visalign").warning(
                "no private directory to claim a sandbox uid range in (%s): using pid %% %d, which two visalign "
                "processes may share", ", ".join(UID_LOCK_DIRS), UID_RANGES)
            _range = (pid, start)
            return start
        for k in range(UID_RANGES):
            index = (start + k) % UID_RANGES
            fd = os.open(os.path.join(folder, f"{index}.lock"),
                         os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            _range_fds.append(fd)
            _range = (pid, index)
            return index
    raise RuntimeError(f"all {UID_RANGES} sandbox uid ranges are held by live visalign processes")


def sandbox_uid(slot: int = 0) -> int | None:
    """The unprivileged uid of sandbox slot ``slot`` of this process when running as root, else None.

    Different live visalign processes get disjoint ranges of :data:`UIDS_PER_PROCESS` uids, claimed
    host-wide (:func:`_claim_range`; ``pid % 1000`` alone let two processes share one).
    """
    if os.geteuid() != 0:
        return None
    return SANDBOX_UID_BASE + _claim_range() * UIDS_PER_PROCESS + slot % UIDS_PER_PROCESS


def allocate_uid() -> int | None:
    """A uid no live renderer instance or worker of this process uses (None when not root).

    Every sandboxed worker (each zygote slot, each LaTeX worker, each Chromium) takes its own, so
    their ``RLIMIT_NPROC`` counts never add up and one can kill everything its uid runs without
    touching a sibling. Give it back with :func:`release_uid` once nothing of it runs any more; a
    process that holds all :data:`UIDS_PER_PROCESS` uids at once gets a ``RuntimeError``.

    Example:
        >>> a, b = allocate_uid(), allocate_uid()
        >>> a is None or a != b
        True
        >>> release_uid(a); release_uid(b)
    """
    if os.geteuid() != 0:
        return None
    with _uid_lock:
        for slot in range(1, UIDS_PER_PROCESS):
            if slot not in _uids_in_use:
                _uids_in_use.add(slot)
                return sandbox_uid(slot)
    raise RuntimeError(f"all {UIDS_PER_PROCESS - 1} sandbox uids of this process are in use: close renderers")


def release_uid(uid: int | None) -> None:
    """Return a uid from :func:`allocate_uid` (None and unknown uids are ignored)."""
    if uid is None or os.geteuid() != 0:
        return
    base = sandbox_uid(0)
    if base is not None and 0 < uid - base < UIDS_PER_PROCESS:
        with _uid_lock:
            _uids_in_use.discard(uid - base)


def kill_uid(uid: int | None) -> None:
    """SIGKILL every process ``uid`` runs (as that uid: ``kill(-1)``, repeated until none is left).

    For the fallback levels, where a job's process may leave its process group (``setsid``) and no
    PID namespace dies with the worker; each worker has a uid of its own, so no sibling is touched.
    Does nothing for None (not root: there is no uid of our own to clean).
    """
    if uid is None or os.geteuid() != 0:
        return
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(_drop_argv(uid) + ["sh", "-c", "n=0; while kill -9 -1 2>/dev/null && [ $n -lt 100 ]; "
                                          "do n=$((n+1)); done"],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=10, check=False, env={"PATH": "/usr/bin:/bin"})


def python_ro_paths() -> list[str]:
    """Read-only paths the sandboxed Python needs: its prefixes and the site-packages under them."""
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    paths = set(prefixes)
    for p in sys.path:
        rp = os.path.realpath(p) if p else ""
        if rp and os.path.isdir(rp) and any(rp.startswith(pre + os.sep) or rp == pre for pre in prefixes):
            continue  # covered by its prefix
        if rp and os.path.isdir(rp) and "site-packages" in rp:
            paths.add(rp)
    exe_dir = os.path.dirname(os.path.realpath(sys.executable))
    paths.add(exe_dir)
    return sorted(paths)


def clean_env(workdir: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """A minimal environment: nothing from the caller (no tokens, keys, proxies)."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "NUMEXPR_NUM_THREADS": "1",
    }
    if extra:
        env.update(extra)
    return env


def _set_limits(limits: SandboxLimits, timeout: float, uid: int | None) -> None:
    cpu = limits.cpu_seconds if limits.cpu_seconds is not None else max(2.0, timeout * 1.5 + 1.0)
    cpu_i = int(cpu + 0.999)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_i, cpu_i + 1))
    mem = limits.memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    fsize = limits.max_file_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits.max_open_files, limits.max_open_files))
    nproc = limits.max_processes
    if uid is None:  # our own uid: the limit counts all our processes, so leave room for them
        nproc += _count_own_processes()
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))


def _count_own_processes() -> int:
    uid, n = os.getuid(), 0
    with contextlib.suppress(OSError):
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    if os.stat(f"/proc/{d}").st_uid == uid:
                        n += len(os.listdir(f"/proc/{d}/task"))
                except OSError:
                    continue
    return n


def make_preexec(limits: SandboxLimits, timeout: float, uid: int | None):
    """The function run in the child between fork and exec: new session, rlimits."""

    def preexec() -> None:
        os.setsid()
        _set_limits(limits, timeout, uid)
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)

    return preexec


def _drop_argv(uid: int | None) -> list[str]:
    if uid is None:
        return []
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all", "--"]


def wrap_argv(argv: Sequence[str], workdir: str, info: SandboxInfo, ro_paths: Sequence[str] = (),
              inner_workdir: str = "/sandbox", drop: bool = True) -> tuple[list[str], str]:
    """Wrap ``argv`` for the sandbox level in ``info``.

    ``drop=False`` leaves the switch to ``info.uid`` to the command itself (the zygote drops after
    its imports). Returns the full argv and the path of the work directory as the child sees it.
    """
    drop_argv = _drop_argv(info.uid) if drop else []
    if info.level == "bubblewrap":
        cmd = [info.bwrap or "bwrap", "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
               "--unshare-cgroup-try", "--die-with-parent", "--new-session"]
        if os.geteuid() != 0:
            cmd.append("--unshare-user")
        for d in ("/usr", "/etc"):
            cmd += ["--ro-bind", d, d]
        for d in ("lib", "lib64", "lib32", "bin", "sbin"):
            if os.path.islink(f"/{d}"):
                cmd += ["--symlink", os.readlink(f"/{d}"), f"/{d}"]
            elif os.path.isdir(f"/{d}"):
                cmd += ["--ro-bind", f"/{d}", f"/{d}"]
        # the private /tmp first: binds of paths under /tmp (a venv there) must land on top of it
        cmd += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/var/tmp"]
        binds = _outermost(p for p in ro_paths if os.path.exists(p) and not p.startswith(("/usr/", "/etc/")))
        parents = sorted({a for p in binds for a in _ancestors(p)} - {"/", "/usr", "/etc", "/tmp", "/var/tmp"})
        for a in parents:  # bwrap would create them 0700, unreadable by the sandbox uid
            cmd += ["--perms", "0755", "--dir", a]
        for p in binds:
            cmd += ["--ro-bind", p, p]
        cmd += ["--bind", workdir, inner_workdir, "--chdir", inner_workdir, "--"]
        return cmd + drop_argv + list(argv), inner_workdir
    if info.level == "namespaces+rlimits":
        ns = ["unshare", "--net"]
        ns += ["--pid", "--fork", "--kill-child", "--mount-proc"] if os.geteuid() == 0 else [
            "--user", "--map-current-user"]
        return ns + ["--"] + drop_argv + list(argv), workdir
    return drop_argv + list(argv), workdir


def _outermost(paths) -> list[str]:
    """Paths with those nested inside another one dropped."""
    out: list[str] = []
    for p in sorted({os.path.normpath(p) for p in paths}):
        if not any(p == o or p.startswith(o.rstrip("/") + "/") for o in out):
            out.append(p)
    return out


def _ancestors(path: str) -> list[str]:
    parts = path.strip("/").split("/")[:-1]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def make_workdir(prefix: str = "visalign-", uid: int | None = None) -> str:
    """A fresh private directory, writable by the sandbox uid."""
    d = tempfile.mkdtemp(prefix=prefix)
    if uid is not None:
        os.chown(d, uid, uid)
    os.chmod(d, 0o700)
    return d


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group of ``proc`` (it was started with ``setsid``) and reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


@dataclass
class SandboxRun:
    """What a sandboxed command did."""

    returncode: int | None
    timed_out: bool
    stdout: bytes
    stderr: bytes
    seconds: float

    @property
    def signal(self) -> int | None:
        """The signal that killed the process, if any.

        bwrap and shells report a child killed by signal N as exit status 128 + N; so do we.
        """
        rc = self.returncode
        if rc is None:
            return None
        if rc < 0:
            return -rc
        return rc - 128 if 128 < rc < 128 + 65 else None


def run_sandboxed(argv: Sequence[str], workdir: str, timeout: float, *,
                  limits: SandboxLimits | None = None, ro_paths: Sequence[str] = (),
                  env: dict[str, str] | None = None, stdin: bytes | None = None,
                  info: SandboxInfo | None = None, max_output: int = 1 << 20, drop: bool = True) -> SandboxRun:
    """Run ``argv`` once in the sandbox with ``workdir`` as its only writable directory.

    ``argv`` paths inside the work dir must use the returned inner path; use ``{workdir}`` in an
    argument and it is replaced by the directory as the child sees it.

    Example:
        >>> d = make_workdir(uid=sandbox_uid())
        >>> run_sandboxed(["echo", "hi"], d, timeout=5).stdout
        b'hi\\n'
    """
    info = info or detect_sandbox()
    limits = limits or SandboxLimits()
    full, inner = wrap_argv(argv, workdir, info, ro_paths, drop=drop)
    full = [a.replace("{workdir}", inner) for a in full]
    t0 = time.perf_counter()
    proc = subprocess.Popen(full, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=workdir,
                            env=clean_env(inner, env), preexec_fn=make_preexec(limits, timeout, info.uid),
                            close_fds=True)
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
        timed_out = True
    finally:
        kill_group(proc)
    return SandboxRun(proc.returncode, timed_out, out[:max_output], err[:max_output], time.perf_counter() - t0)


_PROBE = ("import os, sys\nu = int(sys.argv[1])\nif u >= 0:\n    os.setgroups([]); os.setresgid(u, u, u); "
          "os.setresuid(u, u, u)\nprint(os.getcwd(), os.getuid())")


def _probe(info: SandboxInfo) -> tuple[bool, str]:
    """Can Python start at this level, and (below bubblewrap) switch to the sandbox uid itself?"""
    d = make_workdir("visalign-probe-", info.uid)
    early = info.level == "bubblewrap"
    uid = -1 if early or info.uid is None else info.uid
    try:
        run = run_sandboxed([sys.executable, "-I", "-c", _PROBE, str(uid)], d, timeout=20,
                            ro_paths=python_ro_paths(), info=info, drop=early)
        ok = run.returncode == 0 and not run.timed_out
        return ok, run.stderr.decode(errors="replace").strip()[-300:]
    except OSError as exc:
        return False, str(exc)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@functools.lru_cache(maxsize=1)
def detect_sandbox() -> SandboxInfo:
    """Find the strongest sandbox level that works here (cached for the process).

    ``VISALIGN_SANDBOX`` = ``bubblewrap`` | ``namespaces`` | ``rlimits`` caps the level (for tests and
    for machines where a probe hangs).
    """
    info = _detect()
    if info.level != "bubblewrap" and not os.environ.get("VISALIGN_SANDBOX"):
        logging.getLogger("visalign").warning("sandbox level %r: %s (see `visalign doctor`)", info.level, info.note)
    return info


def _detect() -> SandboxInfo:
    want = os.environ.get("VISALIGN_SANDBOX", "").lower()
    uid = sandbox_uid()
    notes = []
    bwrap = shutil.which("bwrap")
    if want in ("", "bubblewrap", "bwrap"):
        if bwrap:
            info = SandboxInfo("bubblewrap", uid, bwrap, "bwrap: private net/pid namespaces, read-only system")
            ok, why = _probe(info)
            if ok:
                return info
            notes.append(f"bwrap failed: {why}")
        else:
            notes.append("bwrap not found (apt-get install bubblewrap)")
    if want in ("", "bubblewrap", "bwrap", "namespaces") and shutil.which("unshare"):
        info = SandboxInfo("namespaces+rlimits", uid, None, "; ".join(notes + ["unshare: private network"]))
        ok, why = _probe(info)
        if ok:
            return info
        notes.append(f"unshare failed: {why}")
    info = SandboxInfo("rlimits only", uid, None, "; ".join(notes + ["no network isolation"]))
    ok, why = _probe(info)
    if not ok and uid is not None:
        info = SandboxInfo("rlimits only", None, None,
                           "; ".join(notes + ["no network isolation", f"uid drop failed: {why}"]))
    return info
