"""Attacks on the LaTeX and HTML renderers (issue 9): each test is an attack that got through once.

A sandboxed job is modelled as fully compromised where the renderer cannot be made to misbehave
from TeX alone: the sandboxed shell script is swapped for one that does what an exploited
``pdftoppm``/``pdflatex`` could do (plant links and FIFOs, leave daemons behind). The parent must
stay correct whatever the job's directory holds.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid

import psutil
import pytest
from PIL import Image

from visalign.renderers import latex as latex_module
from visalign.renderers.html import HtmlRenderer, chromium_path
from visalign.renderers.latex import LatexRenderer
from visalign.renderers.sandbox import detect_sandbox

HAS_TEX = shutil.which("pdflatex") is not None and shutil.which("pdftoppm") is not None
HAS_CHROMIUM = os.access(chromium_path(), os.X_OK)
needs_tex = pytest.mark.skipif(not HAS_TEX, reason="pdflatex/pdftoppm missing")
needs_chromium = pytest.mark.skipif(not HAS_CHROMIUM, reason="no Chromium")
ROOT = os.geteuid() == 0
HANG_GUARD = 90.0  # far above every timeout below: only a hung parent gets near it

TABLE = r"\begin{tabular}{c}\toprule x\\\bottomrule\end{tabular}"


def guarded(fn, *args):
    """``fn(*args)`` on another thread; fails the test instead of hanging it."""
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        return ex.submit(fn, *args).result(timeout=HANG_GUARD)


def processes_with(marker: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        if p.pid != os.getpid() and any(marker in a for a in p.info["cmdline"] or ()):
            out.append(p)
    return out


def run_level(level: str, code: str) -> str:
    """Run ``code`` in a fresh interpreter at sandbox level ``level``; its stdout."""
    env = {**os.environ, "VISALIGN_SANDBOX": level}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         timeout=HANG_GUARD, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


# --- LaTeX ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tex():
    if not HAS_TEX:
        pytest.skip("pdflatex/pdftoppm missing")
    with LatexRenderer(timeout=5.0, workers=1) as r:
        r.ensure_format()
        yield r


@pytest.fixture()
def hostile(tex, monkeypatch):
    """Swap the sandboxed script for a compromised job's: ``hostile(script)`` renders with it."""

    def render(script: str):
        monkeypatch.setattr(latex_module, "_SCRIPT", script)
        try:
            return guarded(tex.render, TABLE)
        finally:
            monkeypatch.undo()

    return render


@pytest.fixture()
def host_canary(tmp_path):
    """A host directory the sandbox uid cannot read, holding a red ``page.png`` and a ``doc.log``."""
    d = tmp_path / "canary"
    d.mkdir()
    img = Image.new("RGB", (64, 48), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 32, 48))  # two colours: not "blank"
    img.save(d / "page.png")
    (d / "doc.log").write_text("HOST-SECRET-5f2a the host's own file\n")
    d.chmod(0o700)
    return d


# Class 1: the parent follows paths the job controls.

@needs_tex
def test_latex_output_dir_link_does_not_return_a_host_png(hostile, host_canary):
    res = hostile(f"cd tex; echo x > doc.pdf; echo 0 > ../latex.rc; echo 0 > ../ppm.rc; "
                  f"ln -s {host_canary} ../out")
    assert not res.ok and res.image is None, "the parent returned a host PNG as the rendering"
    assert res.error_kind == "sandbox", res.error


@needs_tex
def test_latex_page_link_does_not_return_a_host_png(hostile, host_canary):
    res = hostile(f"cd tex; echo x > doc.pdf; echo 0 > ../latex.rc; echo 0 > ../ppm.rc; mkdir ../out; "
                  f"ln -s {host_canary}/page.png ../out/page.png")
    assert not res.ok and res.image is None
    assert res.error_kind == "sandbox", res.error


@needs_tex
def test_latex_tex_dir_link_does_not_leak_a_host_log(hostile, host_canary):
    res = hostile(f"mv tex tex0; ln -s {host_canary} tex; echo 1 > latex.rc")
    assert "HOST-SECRET" not in (res.error or "")
    assert res.error_kind == "sandbox", res.error


@needs_tex
def test_latex_pdf_link_is_no_oracle_of_host_files(hostile):
    kinds = set()
    for target in ("/etc/passwd", f"/nonexistent-{uuid.uuid4().hex}"):
        res = hostile(f"cd tex; ln -s {target} doc.pdf; echo 0 > ../latex.rc")
        kinds.add((res.error_kind, res.error))
    assert len(kinds) == 1, kinds  # the same answer whether the host file exists or not


@needs_tex
@pytest.mark.parametrize("plant", [
    "mkfifo latex.out; mkfifo tex/doc.log; echo 1 > latex.rc",
    "ln -s /dev/zero latex.out; ln -s /dev/zero tex/doc.log; echo 1 > latex.rc",
    "mkfifo latex.rc",
    "echo 0 > latex.rc; echo x > tex/doc.pdf; echo 0 > ppm.rc; mkdir out; mkfifo out/page.png",
    "echo 0 > latex.rc; echo x > tex/doc.pdf; mkfifo ppm.rc; mkfifo toobig",
    "echo 0 > latex.rc; echo x > tex/doc.pdf; echo 0 > ppm.rc; mkdir out; ln -s /dev/zero out/page.png",
])
def test_latex_special_files_neither_block_nor_flood_the_parent(hostile, plant):
    res = hostile(plant)
    assert not res.ok and res.error_kind in ("sandbox", "internal", "runtime", "no_output"), res.error


# Class 1 at the fallback levels: nothing the job started outlives the run and keeps writing.

@needs_tex
@pytest.mark.skipif(not ROOT, reason="the fallback levels drop to a sandbox uid only as root")
@pytest.mark.parametrize("level", ["namespaces", "rlimits"])
def test_latex_job_daemon_does_not_outlive_the_run(level):
    marker = f"visalign-daemon-{uuid.uuid4().hex}"
    script = (f"setsid sh -c 'sleep 300; : {marker}' </dev/null >/dev/null 2>&1 & "
              "echo 1 > latex.rc")
    try:
        out = run_level(level, f"""
            from visalign.renderers import latex
            latex._SCRIPT = {script!r}
            with latex.LatexRenderer(timeout=5, workers=1, precompile=False) as r:
                res = r.render({TABLE!r})
                print(r.sandbox_info.level, res.error_kind, flush=True)
                import os, psutil
                alive = [p.pid for p in psutil.process_iter(["cmdline"]) if p.pid != os.getpid()
                         and any({marker!r} in a for a in p.info["cmdline"] or ())]
                print("alive", alive, flush=True)
        """)
        assert "alive []" in out, out
    finally:
        for p in processes_with(marker):
            for child in p.children(recursive=True):
                child.kill()
            p.kill()


# Class 7: the parent's log scan is bounded, linear, and counted in the sample's seconds.

HOSTILE_LOGS = {
    # each opening needs a closing the scan looks for far away (or never): quadratic backtracking
    "capacity": r"\message{TeX capacity exceeded, sorry [}",
    "runsystem": r"\message{runsystem(}",
    "refused": r"\message{Not reading from }",
}


@needs_tex
@pytest.mark.timeout(HANG_GUARD * 2)
@pytest.mark.parametrize("kind", sorted(HOSTILE_LOGS))
def test_latex_hostile_log_is_scanned_in_linear_time(tex, kind):
    # ~0.9 MB of openings (under LOG_CAP, so read whole), then an error so that every scan runs
    src = (r"\newcount\n \loop" + HOSTILE_LOGS[kind] + r"\advance\n 1 \ifnum\n<30000 \repeat"
           + r"\undefinedcontrolsequence")
    res = guarded(tex.render, src)
    assert res.error_kind in ("syntax", "memory", "sandbox"), res.error


@needs_tex
def test_latex_log_scan_counts_in_seconds(tex, monkeypatch):
    slow = 0.5
    real = latex_module._scan_log

    def slow_scan(*args, **kwargs):
        import time
        t = time.perf_counter() + slow
        while time.perf_counter() < t:
            pass
        return real(*args, **kwargs)

    monkeypatch.setattr(latex_module, "_scan_log", slow_scan)
    res = tex.render(r"\undefinedcontrolsequence")
    assert res.error_kind == "syntax"
    assert res.seconds >= slow


@needs_tex
def test_latex_scan_of_a_huge_hostile_text_is_linear():
    # straight at the scanner: 4 MiB of openings without closings (the renderer reads at most LOG_CAP)
    for opening in ("TeX capacity exceeded, sorry [", "runsystem(", "Not reading from ", "! "):
        text = opening * ((4 << 20) // len(opening))
        found = guarded(latex_module._scan_log, text, text, text, 0, 1)
        assert not found.refused and not found.shell and found.capacity is None


# --- HTML -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def html():
    if not HAS_CHROMIUM:
        pytest.skip("no Chromium")
    # pages here must render: the plain per-page budget of test_html_renderer (3 s timed out plain pages on a
    # 2-core machine at load 15)
    r = HtmlRenderer(timeout=10.0, workers=2)
    yield r
    r.close()


@pytest.fixture(scope="module")
def html_small():
    """A renderer with tight limits: 400 MiB per page, 1.5 s of CPU in a 60 s wall-clock timeout (long, so
    that a page spinning for ever meets the CPU bound first even on a starved machine; under HANG_GUARD)."""
    if not HAS_CHROMIUM:
        pytest.skip("no Chromium")
    r = HtmlRenderer(timeout=60.0, workers=2, memory_mb=400, cpu_seconds=1.5, disk_mb=64)
    yield r
    r.close()


@pytest.fixture(scope="module")
def html_low_memory():
    """400 MiB per page and the default CPU bound (91 s here): a page that allocates past the memory bound
    meets it first on any machine. (With html_small's 1.5 s of CPU, allocating 448 MiB could use more than
    1.5 s of CPU on a busy machine, and the page was stopped for CPU: 'timeout', not 'memory'.)"""
    if not HAS_CHROMIUM:
        pytest.skip("no Chromium")
    r = HtmlRenderer(timeout=60.0, workers=1, memory_mb=400, disk_mb=64)
    yield r
    r.close()


def _children() -> list[psutil.Process]:
    """This process's descendants; a listing raced by an exiting process is retried."""
    for _ in range(20):
        try:
            return psutil.Process().children(recursive=True)
        except (psutil.Error, OSError):
            continue
    return []


def chromium_processes() -> list[psutil.Process]:
    out = []
    for p in _children():
        try:
            if "chrom" in p.name().lower() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (psutil.Error, OSError):
            continue
    return out


# Class 1 for HTML: results come back as bytes over the DevTools pipe; the parent opens no file a page
# can influence. A page that downloads, or points at host files, gets nothing from the host.

@pytest.mark.slow
@needs_chromium
def test_html_page_cannot_read_or_plant_host_files(html, tmp_path):
    secret = tmp_path / "secret.html"
    secret.write_text("<h1 style='font-size:80px'>HOST-SECRET-77c1</h1>")
    page = ('<p>page</p><iframe src="file://{}" width=600 height=200></iframe><img src="file://{}">'
            '<a id=a download="x.png" href="data:,x">x</a><script>document.getElementById("a").click()</script>')
    real, missing = html.render_batch([page.format(secret, secret), page.format(tmp_path / "nope", tmp_path / "nope")])
    assert real.ok and missing.ok, (real.error, missing.error)
    assert real.image.tobytes() == missing.image.tobytes()  # the host file changed nothing
    assert sorted(os.listdir(tmp_path)) == ["secret.html"]  # and nothing was written next to it


# Class 8: Chromium gets a memory limit, a CPU bound and a disk quota.

ALLOCATE = """<p>holding memory</p><script>
const held = [];
for (let i = 0; i < {chunks}; i++) {{ const a = new Uint8Array(64 << 20); a.fill(i + 1); held.push(a); }}
document.body.append(String(held.length));
</script>"""


@pytest.mark.slow
@needs_chromium
def test_html_page_over_the_memory_limit_is_memory(html_low_memory):
    res = guarded(html_low_memory.render, ALLOCATE.format(chunks=16))  # 1 GiB of ArrayBuffers, outside V8's heap
    assert res.error_kind == "memory", (res.error_kind, res.error)
    assert html_low_memory.render("<p>after</p>").ok  # the renderer goes on


@pytest.mark.slow
@needs_chromium
def test_html_page_burning_cpu_past_the_bound_is_stopped(html_small):
    # spins for ever (the page's script and a Web Worker), so only the CPU bound or the timeout can end it (a
    # wall-clock loop ends by itself on a starved machine before the page has used 1.5 s of CPU, and renders)
    spin = ("<p>spinning</p><script>const w = new Worker(URL.createObjectURL(new Blob(['for(;;){}'])));"
            "for (;;) {}</script>")
    res = guarded(html_small.render, spin)  # CPU for ever inside a 60 s timeout unless it is bounded
    assert res.error_kind == "timeout", (res.error_kind, res.error)
    assert "CPU" in res.error
    assert html_small.render("<p>after</p>").ok


@pytest.mark.slow
@needs_chromium
@pytest.mark.skipif(detect_sandbox().level != "bubblewrap", reason="the disk quota needs bubblewrap")
def test_html_writable_mounts_have_a_quota(html_small):
    assert html_small.render("<p>x</p>").ok
    procs = [c for g in html_small._holder.engine.pgids for c in psutil.Process(g).children(recursive=True)]
    assert procs
    seen = 0
    for p in procs:
        try:
            with open(f"/proc/{p.pid}/mountinfo") as f:
                mounts = [line.split() for line in f]
        except OSError:
            continue
        for m in mounts:
            point, opts = m[4], m[5]
            fstype, super_opts = m[m.index("-") + 1], m[-1]
            # "/" and "/dev" are root's (0755), the device nodes are binds: the uid can write elsewhere only
            if "rw" not in opts.split(",") or point in ("/", "/proc", "/dev") or \
                    (point.startswith("/dev/") and point != "/dev/shm") or fstype in ("proc", "mqueue"):
                continue
            seen += 1
            sizes = [o for o in super_opts.split(",") if o.startswith("size=")]
            assert fstype == "tmpfs" and sizes, f"writable {point} ({fstype}) has no quota: {super_opts}"
            assert int(sizes[0][5:].rstrip("k")) <= 64 * 1024, (point, sizes)
    assert seen


@pytest.mark.slow
@needs_chromium
@pytest.mark.skipif(not ROOT or detect_sandbox().level != "bubblewrap",
                    reason="Chromium drops to a sandbox uid only as root with bubblewrap")
def test_html_each_chromium_has_its_own_uid(html, html_small):
    seen = []
    for r in (html, html_small):
        assert r.render("<p>x</p>").ok
        uids = set()
        for g in r._holder.engine.pgids:  # processes come and go while we look: skip the ones gone
            try:
                procs = psutil.Process(g).children(recursive=True)
            except (psutil.Error, OSError):
                continue
            for p in procs:
                try:
                    if "chrom" in p.name().lower():
                        uids.add(p.uids().real)
                except (psutil.Error, OSError):
                    continue
        seen.append(uids)
    assert seen[0] and seen[1] and not seen[0] & seen[1], seen
    assert 0 not in seen[0] | seen[1]


# Class 9: every renderer instance and worker runs as a uid of its own.

UID_PROBE_SCRIPT = "id -u > latex.out; echo 1 > latex.rc"


def chromium_uids() -> set[int]:
    uids = set()
    for p in _children():
        try:
            if "chrom" in p.name().lower():
                uids.add(p.uids().real)
        except (psutil.Error, OSError):
            continue
    return uids


@pytest.mark.slow
@needs_tex
@needs_chromium
@pytest.mark.skipif(not ROOT, reason="sandbox uids are used only as root")
def test_renderers_and_workers_run_as_distinct_uids(html, monkeypatch):
    from visalign.renderers.matplotlib import MatplotlibRenderer

    assert html.render("<p>chromium is up</p>").ok
    browser = chromium_uids()
    assert browser and 0 not in browser, browser
    # a process-hungry Chromium (dozens of threads) must not eat LaTeX's RLIMIT_NPROC
    with LatexRenderer(timeout=10.0, workers=2) as tex2:
        assert all(r.ok for r in tex2.render_batch([TABLE] * 4)), "LaTeX starved by Chromium's processes"
        monkeypatch.setattr(latex_module, "_SCRIPT", UID_PROBE_SCRIPT)
        barrier = __import__("threading").Barrier(2)

        def probe(src):
            barrier.wait(timeout=HANG_GUARD)  # both workers busy at once: each reports its own uid
            return tex2._safe_one(src, None)

        tex_uids = set()
        for res in guarded(lambda: list(tex2._pool.map(probe, [TABLE, TABLE]))):
            tex_uids.add(int(res.error.rsplit(":", 1)[1].split()[0]))
        monkeypatch.undo()
        # while LaTeX is still open (a closed renderer's uids are free to be handed out again)
        with MatplotlibRenderer(timeout=10.0, workers=1) as mpl:
            res = mpl.render("import os\nraise RuntimeError(f'UID={os.getuid()}=')")
            mpl_uid = int(res.error.split("UID=")[1].split("=")[0])
    assert len(tex_uids) == 2, tex_uids
    assert not browser & tex_uids and mpl_uid not in browser | tex_uids, (browser, tex_uids, mpl_uid)


# What a fallback-level subprocess reports about a renderer's Chromium, read from /proc: the uid and
# seccomp mode of each page renderer process below its browser (polled while pages run), and the file
# systems its browser process sees at /tmp, /dev/shm and its profile.
CHROMIUM_PROBE = """
import json, os, threading, time

def tree(roots):
    kids = {}
    for n in os.listdir("/proc"):
        if n.isdigit():
            try:
                with open(f"/proc/{n}/stat", "rb") as f:
                    kids.setdefault(int(f.read().rsplit(b")", 1)[1].split()[1]), []).append(int(n))
            except (OSError, IndexError, ValueError):
                continue
    out, todo = [], list(roots)
    while todo:
        out.append(todo.pop())
        todo += kids.get(out[-1], [])
    return out

def cmdline(pid):
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().split(b"\\0")

def alive_as(uids):  # live processes of uids (not zombies: an orphan may wait for a slow init)
    out = []
    for pid in [n for n in os.listdir("/proc") if n.isdigit()]:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
            if os.stat(f"/proc/{pid}").st_uid in uids and state not in (b"Z", b"X"):
                out.append(pid)
        except (OSError, IndexError):
            continue
    return out

class Watch(threading.Thread):
    def __init__(self, renderer):
        super().__init__(daemon=True)
        self.renderer, self.pages, self.mounts, self.done = renderer, set(), {}, threading.Event()
        self.start()

    def run(self):
        while not self.done.wait(0.05):
            engine = self.renderer._holder.engine
            for pid in tree(engine.pgids if engine else ()):
                try:
                    argv = cmdline(pid)
                    if b"--type=renderer" in b" ".join(argv):  # a renderer may rewrite its title
                        with open(f"/proc/{pid}/status") as f:
                            st = dict(line.split(":", 1) for line in f if ":" in line)
                        self.pages.add((int(st["Uid"].split()[0]), int(st["Seccomp"])))
                    elif b"--type=" not in b" ".join(argv) and not self.mounts:
                        prof = [a.split(b"=", 1)[1].decode() for a in argv if a.startswith(b"--user-data-dir=")]
                        if not prof or not os.path.basename(argv[0]).startswith(b"chrom"):
                            continue
                        with open(f"/proc/{pid}/mountinfo") as f:
                            mounts = {m[4]: (m[m.index("-") + 1], m[-1]) for m in map(str.split, f)}
                        for name, point in (("tmp", "/tmp"), ("shm", "/dev/shm"), ("profile", prof[0])):
                            self.mounts[name] = mounts.get(point, ("host", ""))
                except (OSError, KeyError, ValueError):
                    continue

    def report(self):
        self.done.set()
        self.join()
        return {"pages": sorted(self.pages), "mounts": self.mounts,
                "uid": self.renderer.uid, "sandbox": self.renderer.info()["sandbox"]}
"""


def _size_kib(super_opts: str) -> int | None:
    sizes = [o for o in super_opts.split(",") if o.startswith("size=")]
    return int(sizes[0][5:].rstrip("k")) if sizes else None


@pytest.mark.slow
@needs_chromium
@pytest.mark.parametrize("level", ["namespaces", "rlimits"])
def test_html_memory_and_cpu_limits_hold_at_the_fallback_levels(level):
    # One subprocess per level (the level is chosen once per process): the memory and CPU watchdog
    # stops its pages, and (class 9) each renderer's pages run as a uid of its own, not root and not
    # the other renderer's, inside Chromium's own sandbox, with a size-limited /tmp, /dev/shm and profile.
    # spins forever: stopped by the CPU watchdog (1.5 s of CPU) or, on a starved machine, by the 30 s page
    # timeout; both are 'timeout'. (A 20 s wall-clock loop got under 1.5 s of CPU at load 17 and finished.)
    # The page over the memory bound runs in the renderer without the tight CPU bound: allocating 448 MiB can
    # take more than 1.5 s of CPU on a busy machine, and the CPU bound would stop it first.
    spin = "<p>spin</p><script>for (;;) {}</script>"
    busy = "<p>second</p><script>const t = Date.now(); while (Date.now() - t < 1000) {}</script>"
    out = run_level(level, CHROMIUM_PROBE + textwrap.dedent(f"""
        from visalign.renderers.html import HtmlRenderer
        from visalign.renderers.sandbox import detect_sandbox
        with HtmlRenderer(timeout=30, workers=2, memory_mb=400, cpu_seconds=1.5, disk_mb=64) as r, \\
                HtmlRenderer(timeout=30, workers=1, memory_mb=400) as r2:
            w, w2 = Watch(r), Watch(r2)
            other = threading.Thread(target=lambda: print("second", r2.render({busy!r}).error_kind,
                                                          r2.render({ALLOCATE.format(chunks=16)!r}).error_kind,
                                                          flush=True))
            other.start()
            res = r.render_batch([{spin!r}, "<p>fine</p>"])
            other.join()
            print(detect_sandbox().level, [x.error_kind for x in res], flush=True)
            reports = [w.report(), w2.report()]
            print("REPORT", json.dumps(reports), flush=True)
        print("LEFT", alive_as({{rep["uid"] for rep in reports}} - {{None}}), flush=True)
    """))
    assert "LEFT []" in out, f"processes of the renderers' uids outlived close: {out}"
    assert "['timeout', None]" in out and "second None memory" in out, out
    first, second = json.loads(out.split("REPORT", 1)[1].split("\n", 1)[0])
    if not ROOT:
        return
    uids = [{uid for uid, _ in rep["pages"]} for rep in (first, second)]
    assert uids[0] and uids[1], out  # pages were seen running
    assert 0 not in uids[0] | uids[1], f"a page's renderer runs as root: {out}"
    assert not uids[0] & uids[1], f"two renderers' pages share a uid: {out}"
    assert uids == [{first["uid"]}, {second["uid"]}], out
    for rep in (first, second):
        # Chromium's own sandbox is on where the dropped uid may make user namespaces: its pages get
        # its seccomp filter (a page just forked may not have it yet: at least one was seen with it)
        userns = subprocess.run(["setpriv", f"--reuid={rep['uid']}", f"--regid={rep['uid']}", "--clear-groups",
                                 "--", "unshare", "--user", "true"], capture_output=True).returncode == 0
        if userns:
            assert rep["sandbox"].endswith("+ chromium"), out
            assert 2 in {mode for _, mode in rep["pages"]}, out
    for name in ("tmp", "shm", "profile"):
        fstype, opts = first["mounts"][name]
        assert fstype == "tmpfs" and 0 < (_size_kib(opts) or 0) <= 64 * 1024, (name, out)
