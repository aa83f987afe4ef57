"""The zygote's own isolation primitives, each checked in a throwaway child process.

The black-box attacks live in test_attacks_zygote.py; these pin the mechanisms they rely on: the
seccomp filter, the per-job namespace and its tmpfs quota, the read-only remount, the result framing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pytest

from visalign.renderers.pool import parse_result

ZYGOTE_DIR = os.path.join(os.path.dirname(__file__), "..", "src", "visalign", "renderers", "_sandboxed")


def run_child(code: str, uid: int | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` with the zygote module importable, optionally after dropping to ``uid``."""
    prelude = f"import sys, os\nsys.path.insert(0, {os.path.abspath(ZYGOTE_DIR)!r})\nimport zygote\n"
    if uid is not None:
        prelude += f"zygote.drop_privileges({uid})\n"
    return subprocess.run([sys.executable, "-I", "-c", prelude + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=60)


def test_seccomp_denies_ipc_and_keys_and_allows_the_rest():
    out = run_child("""
        import ctypes, errno
        libc = ctypes.CDLL(None, use_errno=True)
        assert zygote.deny_syscalls()
        import platform
        nrs = zygote._DENIED[platform.machine()][1]
        res = {}
        for name, nr in nrs.items():
            r = libc.syscall(nr, 0, 0, 0, 0, 0)
            res[name] = (r, ctypes.get_errno())
        print(res)
        assert set(res) >= {"shmget", "semget", "msgget", "mq_open", "add_key", "keyctl", "request_key"}
        assert all(r == -1 and e == errno.EPERM for r, e in res.values()), res
        assert os.getpid() > 0 and open("/dev/null").read() == ""  # everything else still works
        print("ok")
    """)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stdout + out.stderr


def _userns_works() -> bool:
    out = run_child("import ctypes; print(ctypes.CDLL(None).unshare(0x10000000))")
    return out.stdout.strip() == "0"


@pytest.fixture
def worker_root():
    """A worker directory as the pool makes it: under the system temp dir, owned by the job uid."""
    base = tempfile.mkdtemp(prefix="visalign-test-root-")
    os.chown(base, JOB_UID, JOB_UID)
    yield base
    shutil.rmtree(base, ignore_errors=True)


JOB_UID = 60999  # below visalign's own range of sandbox uids


@pytest.mark.skipif(os.geteuid() != 0, reason="drops to an unprivileged uid: needs root")
def test_job_namespace_has_a_private_quota_tmpfs_and_read_only_elsewhere(worker_root):
    if not _userns_works():
        pytest.skip("user namespaces unavailable here: jobs run in 'shared' isolation")
    with open(os.path.join(worker_root, "left-by-an-earlier-job"), "w") as f:
        f.write("secret")
    first = worker_root.strip("/").split("/")[1] if worker_root.startswith("/tmp/") else None
    out = run_child(f"""
        root = {worker_root!r}
        os.chdir(root)
        assert zygote.isolate(root, {{"disk_mb": 1, "inodes": 64}}) == "namespace"
        assert set(os.listdir(root)) <= {{".tmp", ".var-tmp", ".dev-shm"}}, os.listdir(root)
        for place in ("/var/tmp", "/dev/shm"):
            if os.path.isdir(place):
                assert os.listdir(place) == [], (place, os.listdir(place))
        assert os.listdir("/tmp") in ([], [{first!r}]), os.listdir("/tmp")  # only the way back to root
        try:  # the size quota: 1 MiB
            with open(os.path.join(root, "big"), "wb") as f:
                f.write(b"x" * (2 << 20))
            raise SystemExit("wrote past the quota")
        except OSError as exc:
            assert exc.errno == 28, exc  # ENOSPC
        os.unlink(os.path.join(root, "big"))
        try:  # the inode quota: 64
            for i in range(100):
                open(os.path.join(root, f"f{{i}}"), "w").close()
            raise SystemExit("made more files than the quota")
        except OSError as exc:
            assert exc.errno == 28, exc
        for target in ("/etc/visalign-w", "/usr/visalign-w", "/run/lock/visalign-w"):
            try:
                open(target, "w")
                raise SystemExit(f"wrote {{target}}")
            except OSError:
                pass
        import ctypes
        assert ctypes.CDLL(None, use_errno=True).umount2(root.encode(), 2) != 0  # no capability left
        print("ok")
    """, uid=JOB_UID)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stdout + out.stderr
    assert sorted(os.listdir(worker_root)) == ["left-by-an-earlier-job"]  # nothing written through
    with open(os.path.join(worker_root, "left-by-an-earlier-job")) as f:
        assert f.read() == "secret"


@pytest.mark.parametrize("raw", [
    b"", b"no newline", b"[1]\n", b'{"blobs": 3}\n', b'{"blobs": [["png", 10]]}\nshort',
    b'{"blobs": [["png", -1]]}\n', b'{"blobs": [[1, 1]]}\nx', b"[" * 200_000 + b"]" * 200_000 + b"\n",
    b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}\n", b"\xff\xfe\n",
])
def test_malformed_results_parse_to_none(raw):
    assert parse_result(raw) is None


def test_result_blobs_are_split_by_the_header():
    header, blobs = parse_result(b'{"error_kind": null, "blobs": [["png", 2], ["trace", 3]]}\nab{}x')
    assert header["error_kind"] is None and blobs == {"png": b"ab", "trace": b"{}x"}


@pytest.mark.slow
@pytest.mark.parametrize("level", ["bubblewrap", "rlimits"])
def test_shared_isolation_wipes_between_jobs(level):
    """Where user namespaces are unavailable, what a job wrote is gone before the next job starts."""
    if level == "bubblewrap" and not shutil.which("bwrap"):
        pytest.skip("bwrap missing")
    code = textwrap.dedent("""
        import os
        from visalign.renderers import get_renderer
        plant = '''
        import os
        for d in (".", "..", "/tmp", "/var/tmp", "/dev/shm"):
            try:
                with open(os.path.join(d, "left-behind"), "w") as f:
                    f.write("SECRET-shared-mode")
            except OSError:
                pass
        import matplotlib.pyplot as plt; plt.plot([1, 2])
        '''
        look = '''
        import os
        found = []
        for d in (".", "..", "/tmp", "/var/tmp", "/dev/shm"):
            for root, dirs, files in os.walk(d):
                found += [os.path.join(root, f) for f in files if f == "left-behind"]
                if root.count("/") > 4:
                    dirs[:] = []
        raise ValueError("found: " + repr(found))
        '''
        with get_renderer("matplotlib", timeout=5, workers=1) as r:
            res = r.render_batch([plant, look])
            print(r.pool.isolation, res[0].ok, res[1].error)
    """)
    env = {**os.environ, "VISALIGN_JOB_ISOLATION": "shared",
           "VISALIGN_SANDBOX": "bubblewrap" if level == "bubblewrap" else "rlimits"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.stdout.startswith("shared True"), out.stdout + out.stderr
    assert "found: []" in out.stdout, out.stdout


@pytest.mark.slow
@pytest.mark.parametrize("level", ["bubblewrap", "namespaces", "rlimits"])
def test_read_only_paths_under_tmp_stay_visible_to_jobs(level, tmp_path):
    """An install under /tmp (a checkout made with ``mktemp -d``, 0700) must not vanish under the job's
    private /tmp: jobs read fonts and modules from it lazily. Once broke every render of a fresh clone."""
    if level == "bubblewrap" and not shutil.which("bwrap"):
        pytest.skip("bwrap missing")
    data = tmp_path / "install" / "data.txt"
    data.parent.mkdir()
    data.write_text("visible-from-the-job")
    os.chmod(tmp_path, 0o700)
    code = textwrap.dedent(f"""
        from visalign.renderers.pool import ZygotePool
        pool = ZygotePool("mpl_handler", workers=1, timeout=10, extra_ro_paths=[{str(data.parent)!r}])
        try:
            res = pool.run_batch(["raise ValueError(open({str(data)!r}).read())"], {{}})
            print(pool.isolation, res[0].error)
        finally:
            pool.close()
    """)
    env = {**os.environ, "VISALIGN_SANDBOX": level}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert "ValueError: visible-from-the-job" in out.stdout, out.stdout + out.stderr
