"""The html renderer against the real Chromium and a real local HTTP server (no mocks)."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import urllib.request

import numpy as np
import psutil
import pytest

from conftest import CountingServer
from visalign.renderers import ERROR_KINDS, get_renderer
from visalign.renderers.html import HtmlRenderer, chromium_path
from visalign.renderers.sandbox import detect_sandbox

pytestmark = pytest.mark.skipif(not os.access(chromium_path(), os.X_OK),
                                reason=f"no Chromium at {chromium_path()} (apt-get install chromium)")

# the per-page budget: generous, because a page that should render must do so on a loaded 2-core machine
# too (3 s timed out plain pages at a load of 15); only the looping pages spend it
TIMEOUT = 10.0
# Wall-clock bounds catch a render that is never cut off (the hostile pages loop for ever), not a slow
# one: a loaded 2-core machine can take seconds to kill a page or a browser. Every wait polls a condition
# up to a deadline that only a failure reaches.
CUT_OFF = 25.0
SETTLE = 60.0
GOOD = ('<div style="background:#ff0000;width:400px;height:200px">hello <b>world</b></div>'
        '<p style="color:#0000ff">some text</p>')


def browser_processes() -> dict[int, int]:
    """pid -> process group of every live Chromium or Playwright driver process below this one
    (with the bubblewrap level, the browser's group leader is the bwrap that holds it)."""
    out = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            name = proc.name().lower()
            if ("chrom" in name or "node" in name or name == "bwrap") and proc.status() != psutil.STATUS_ZOMBIE:
                out[proc.pid] = os.getpgid(proc.pid)
        except (psutil.NoSuchProcess, ProcessLookupError):
            pass
    return out


def colour_at(res, x: int, y: int) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.asarray(res.image)[y, x])


@pytest.fixture(scope="module")
def server():
    srv = CountingServer()
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def renderer():
    r = get_renderer("html", timeout=TIMEOUT, workers=2)
    yield r
    r.close()


@pytest.mark.slow
def test_simple_page_renders_at_viewport_width(renderer):
    t0 = time.perf_counter()
    res = renderer.render(GOOD)
    wall = time.perf_counter() - t0
    assert res.ok, res.error
    assert res.error_kind is None and res.image.mode == "RGB"
    assert res.image.size == (1280, 720)
    assert colour_at(res, 300, 150) == (255, 0, 0)       # inside the div (body margin is 8 px)
    assert colour_at(res, 1000, 500) == (255, 255, 255)  # page background
    assert 0 < res.seconds <= wall  # the sample's own time, inside the call that rendered it
    assert res.trace["blocked_requests"] == [] and res.trace["clipped"] is False


def test_full_page_is_taller_than_the_viewport(renderer):
    res = renderer.render('<div style="height:3000px;background:linear-gradient(#f00,#00f)"></div>')
    assert res.ok, res.error
    assert res.image.size[0] == 1280 and res.image.size[1] >= 3000


@pytest.mark.slow
def test_viewport_and_scale_options():
    with HtmlRenderer(timeout=TIMEOUT, workers=1, viewport=(640, 480), full_page=False, device_scale_factor=2,
                      background="black") as r:
        res = r.render('<div style="height:3000px;width:100px;background:#f00"></div>')
        info = r.info()
    assert res.ok, res.error
    assert res.image.size == (1280, 960)      # viewport only, at 2 device px per CSS px
    assert colour_at(res, 100, 100) == (255, 0, 0)
    assert colour_at(res, 1000, 100) == (0, 0, 0)  # the page paints no background: ours shows
    assert info["backend"] == "playwright + chromium"
    assert info["versions"]["chromium"] and info["versions"]["playwright"]
    assert info["viewport"] == [640, 480] and info["full_page"] is False and info["workers"] == 1


def network_pages(base: str, port: int) -> dict[str, str]:
    text = '<p style="font-size:40px">content</p>'
    return {
        "img": f'{text}<img src="{base}/x.png">',
        "stylesheet": f'<link rel="stylesheet" href="{base}/s.css">{text}',
        "fetch": f"{text}<script>fetch('{base}/fetch').catch(() => 0)</script>",
        "websocket": f"{text}<script>new WebSocket('ws://127.0.0.1:{port}/ws')</script>",
        "beacon": f"{text}<script>navigator.sendBeacon('{base}/beacon', 'data')</script>",
        "iframe": f'{text}<iframe src="{base}/frame"></iframe>',
        "meta_refresh": f'<meta http-equiv="refresh" content="0;url={base}/refresh">{text}',
        "location": f"{text}<script>location.href = '{base}/location'</script>",
        "form": f'<form id="f" method="post" action="{base}/form"></form>{text}<script>f.submit()</script>',
        # the other ways out, several to a page
        "markup": (f'<link rel="prefetch" href="{base}/pf"><link rel="preconnect" href="{base}">'
                   f'<style>@font-face{{font-family:X;src:url({base}/f.woff)}} p{{font-family:X}}</style>'
                   f'<a id="a" href="#x" ping="{base}/ping">{text}</a><script>a.click()</script>'),
        "scripts": (f"{text}<script>var x = new XMLHttpRequest(); x.open('GET', '{base}/xhr'); x.send();"
                    f"new EventSource('{base}/events'); window.open('{base}/popup');"
                    f"new Worker(URL.createObjectURL(new Blob([\"fetch('{base}/worker')\"])));"
                    "alert('hi'); confirm('sure?')</script>"),
    }


@pytest.mark.slow
def test_network_is_refused_and_the_server_sees_nothing(server):
    port = server.server_address[1]
    base = f"http://127.0.0.1:{port}"
    # positive control: the server is reachable from this process, and counts
    assert urllib.request.urlopen(base + "/control", timeout=5).read()
    assert server.connections == 1
    server.connections = 0
    server.paths.clear()

    pages = network_pages(base, port)
    # a renderer of its own, closed (its browser killed) before counting: nothing can still be in flight
    with HtmlRenderer(timeout=TIMEOUT, workers=2) as renderer:
        results = dict(zip(pages, renderer.render_batch(list(pages.values())), strict=True))
    # a barrier instead of a sleep: the server accepts connections in the order they arrived, so once it
    # has answered this marker it has counted every connection the browser opened before it died
    assert urllib.request.urlopen(base + "/marker", timeout=30).read()
    assert server.connections == 1 and server.paths == ["/marker"], server.paths
    for name, res in results.items():
        assert res.error_kind in (None, *ERROR_KINDS), name
        assert res.ok, (name, res.error_kind, res.error)
        assert res.trace["blocked_count"] >= 1, name
        assert any(f"127.0.0.1:{port}" in url for url in res.trace["blocked_requests"]), name
    assert results["websocket"].trace["blocked_requests"] == [f"ws://127.0.0.1:{port}/ws"]
    # the refused stylesheet would have turned the page green: it did not
    assert colour_at(results["stylesheet"], 1000, 600) == (255, 255, 255)


def test_page_that_only_needs_the_network_is_a_sandbox_failure(renderer, server):
    res = renderer.render(f'<body style="margin:0"><img src="http://127.0.0.1:{server.server_address[1]}/a.png" '
                          'style="display:block;width:0;height:0"></body>')
    assert res.error_kind == "sandbox", res.error
    assert res.trace["blocked_count"] == 1


@pytest.mark.slow
def test_infinite_loop_times_out_and_the_renderer_recovers(renderer):
    t0 = time.perf_counter()
    results = renderer.render_batch(["<script>while(true){}</script>",
                                     "<p>loaded</p><script>onload = () => { while(true){} }</script>"])
    elapsed = time.perf_counter() - t0
    assert [r.error_kind for r in results] == ["timeout", "timeout"], [r.error for r in results]
    assert elapsed < TIMEOUT + CUT_OFF, elapsed
    res = renderer.render(GOOD)
    assert res.ok, res.error


@pytest.mark.slow
def test_page_scripts_cannot_break_the_capture(renderer):
    text = '<p style="font-size:40px">content</p>'
    results = renderer.render_batch([
        f"{text}<script>window.Promise = null; window.setTimeout = null; JSON.stringify = null</script>",
        f"{text}<script>Object.defineProperty(document, 'readyState', {{get: () => 'loading'}})</script>",
        f"{text}<script>onload = () => {{ document.open(); document.write('{text}'); document.close() }}</script>",
        f"{text}<script>location.href = 'about:blank'</script>",  # it blanked itself
    ])
    assert [r.error_kind for r in results] == [None, None, None, "blank"], [r.error for r in results]


@pytest.mark.slow
def test_huge_table_is_clipped_or_times_out():
    rows = "".join(f"<tr><td>{i}</td><td>row {i}</td><td>{i * i}</td></tr>" for i in range(50_000))
    # the plain per-page budget: the good pages before and after the table must render on a loaded machine
    with HtmlRenderer(timeout=TIMEOUT, workers=1, max_height=4000) as r:
        assert r.render(GOOD).ok  # the browser is up: time the table alone
        t0 = time.perf_counter()
        res = r.render(f"<table border=1>{rows}</table>")
        elapsed = time.perf_counter() - t0
        assert elapsed < TIMEOUT + CUT_OFF, elapsed
        if res.ok:
            assert res.image.size == (1280, 4000) and res.trace["clipped"] is True
        else:
            assert res.error_kind in ("timeout", "memory"), res.error
        after = r.render(GOOD)
        assert after.ok, after.error


@pytest.mark.slow
def test_empty_and_blank_documents(renderer):
    results = renderer.render_batch(["", "  \n", '<body style="background:#fff"></body>',
                                     "<html><head><title>t</title></head><body></body></html>"])
    assert [r.error_kind for r in results] == ["no_output", "no_output", "blank", "blank"]
    assert not any(r.ok or r.image is not None for r in results)


@pytest.mark.slow
def test_samples_do_not_share_state(renderer):
    writer = ("<p>w</p><script>localStorage.setItem('k', '1'); sessionStorage.setItem('k', '1');"
              "document.cookie = 'k=1; max-age=3600'; window.name = 'leak';</script>")
    reader = ("<div id='d' style='width:300px;height:300px;background:#0f0'></div><script>"
              "if (localStorage.getItem('k') || sessionStorage.getItem('k') || document.cookie "
              "|| window.name || history.length > 2) d.style.background = '#f00';</script>")
    assert renderer.render(writer).ok
    res = renderer.render(reader)
    assert res.ok, res.error
    assert colour_at(res, 100, 100) == (0, 255, 0)


@pytest.mark.slow
def test_crashed_page_is_runtime_and_the_batch_goes_on():
    bomb = "<p>x</p><script>var a = []; while (true) a.push(new Array(1e6).fill(1.5));</script>"
    with HtmlRenderer(timeout=10, workers=1, js_heap_mb=128) as r:
        results = r.render_batch([bomb, GOOD])
    assert results[0].error_kind == "runtime", results[0].error
    assert "crashed" in results[0].error
    assert results[1].ok, results[1].error


@pytest.mark.slow
def test_mixed_batch_keeps_order(renderer):
    red = '<div style="width:500px;height:500px;background:#f00"></div>'
    blue = '<div style="width:500px;height:500px;background:#00f"></div>'
    batch = [red, "<script>while(true){}</script>", blue, "", 42, '<body style="background:#fff"></body>', red]
    results = renderer.render_batch(batch)
    assert [r.error_kind for r in results] == [None, "timeout", None, "no_output", "syntax", "blank", None]
    assert colour_at(results[0], 100, 100) == (255, 0, 0)
    assert colour_at(results[2], 100, 100) == (0, 0, 255)
    assert colour_at(results[6], 100, 100) == (255, 0, 0)


@pytest.mark.slow
def test_render_batch_from_several_threads(renderer):
    out: dict[int, list] = {}

    def work(k: int) -> None:
        out[k] = renderer.render_batch([f'<div style="width:300px;height:300px;background:#{c}"></div>'
                                        for c in ("f00", "00f")])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for k in range(2):
        assert [colour_at(r, 100, 100) for r in out[k]] == [(255, 0, 0), (0, 0, 255)]


def test_missing_chromium_is_an_internal_error(monkeypatch):
    monkeypatch.setenv("VISALIGN_CHROMIUM", "/nonexistent/chromium")
    with HtmlRenderer(timeout=5, workers=1) as r:
        res = r.render(GOOD)
        info = r.info()
    assert res.error_kind == "internal"
    assert "apt-get install chromium" in res.error and "VISALIGN_CHROMIUM" in res.error
    assert "apt-get install chromium" in info["error"]


@pytest.mark.slow
def test_close_leaves_no_chromium_process():
    # other renderers of this module may be alive: only look at the processes this one starts
    before = browser_processes()
    r = HtmlRenderer(timeout=TIMEOUT, workers=2)
    assert r.render_batch([GOOD, GOOD])[1].ok

    def ours() -> dict[int, int]:
        return {pid: g for pid, g in browser_processes().items()
                if pid not in before and g not in before.values()}

    started = ours()
    assert any(g == pid for pid, g in started.items()), f"expected a running browser, got {started}"
    r.close()
    r.close()  # twice is fine
    deadline = time.monotonic() + SETTLE
    while ours() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ours() == {}


@pytest.mark.slow
def test_killed_browser_is_relaunched_and_the_batch_goes_on():
    before = browser_processes()
    # 10 s: the good pages of the batch are retried in a relaunched browser, which a loaded machine can take
    # more than 3 s to start and render in (the looping page costs the full 10 s)
    with HtmlRenderer(timeout=10, workers=2) as r:
        assert r.render(GOOD).ok

        def browser_leaders() -> list[int]:
            return [pid for pid, g in browser_processes().items() if g == pid and pid not in before]

        leaders = browser_leaders()
        assert len(leaders) == 1
        out: list = []
        thread = threading.Thread(target=lambda: out.extend(
            r.render_batch(["<script>while(true){}</script>", GOOD, GOOD])))
        thread.start()
        engine = r._holder.engine
        deadline = time.monotonic() + SETTLE
        while not engine.guard.active and time.monotonic() < deadline:  # wait until the batch is in flight
            time.sleep(0.01)
        assert engine.guard.active, "the batch never started"
        os.killpg(leaders[0], 9)  # the looping first page runs until its timeout: it is still in flight
        thread.join(timeout=60)
        assert [res.error_kind for res in out] == ["timeout", None, None], [res.error for res in out]
        assert browser_leaders() and browser_leaders() != leaders
        assert r.render(GOOD).ok


@pytest.mark.slow
def test_context_that_will_not_close_gets_the_browser_replaced(monkeypatch):
    import visalign.renderers.html as html_module

    with HtmlRenderer(timeout=TIMEOUT, workers=1) as r:
        assert r.render(GOOD).ok
        assert r.info()["restarts"] == 0
        # no context can close within a microsecond: each sample ends with a kill and relaunch
        monkeypatch.setattr(html_module, "CLOSE_TIMEOUT", 1e-6)
        res = r.render(GOOD)
        monkeypatch.undo()
        assert res.ok, res.error  # the result was in before the context was closed
        assert r.info()["restarts"] == 1
        assert r.render(GOOD).ok


@pytest.mark.slow
def test_watchdog_replaces_a_stuck_engine(monkeypatch):
    import visalign.renderers.html as html_module

    # the plain per-page budget: the good pages before and after the replacement must render on a loaded machine
    with HtmlRenderer(timeout=TIMEOUT, workers=1) as r:
        assert r.render(GOOD).ok
        engine = r._holder.engine
        # shrink the bounds the watchdog derives its stall limit from (2 x (0.5 + 3 x 0.05 + 10 + 0.05 + 3 x 0.05)
        # = 21.7 s here)
        stall = 2 * (0.5 + 3 * 0.05 + TIMEOUT + 0.05 + 3 * 0.05)
        for name, value in [("LAUNCH_TIMEOUT", 0.5), ("SETUP_TIMEOUT", 0.05), ("CLOSE_TIMEOUT", 0.05),
                            ("GRACE", 0.05)]:
            monkeypatch.setattr(html_module, name, value)
        # the watchdog counts the stall from the engine's last progress (the end of the good page above),
        # which the stuck thread cannot move; a clock started later would see less than the stall limit
        progress = engine.progress
        t0 = time.monotonic()
        engine.loop.call_soon_threadsafe(time.sleep, 60)  # the engine's thread stops answering
        res = r.render(GOOD)
        done = time.monotonic()
        monkeypatch.undo()
        assert res.error_kind == "internal" and "stopped responding" in res.error
        # at least the stall limit after the last progress; before the stuck thread's 60 s sleep ends (it
        # began after t0), so the watchdog, not the thread waking up, answered; the message says so too
        assert done - progress >= stall, (done - progress, stall)
        assert done - t0 < 60, done - t0
        assert r.render(GOOD).ok  # a fresh engine and browser
        assert r._holder.engine is not engine


@pytest.mark.slow
def test_interpreter_exit_kills_the_browser():
    import subprocess
    import sys

    script = ("from visalign.renderers.html import HtmlRenderer\n"
              f"r = HtmlRenderer(timeout={TIMEOUT}, workers=1)\n"
              "assert r.render('<p>x</p>').ok\n"
              "print(*r._holder.engine.pgids, flush=True)\n")  # and exit without close()
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    groups = {int(g) for g in child.stdout.split()}
    assert len(groups) == 1  # Chromium leads a process group of its own
    deadline = time.monotonic() + SETTLE
    while time.monotonic() < deadline:
        left = [p.pid for p in psutil.process_iter() if _pgid(p.pid) in groups]
        if not left:
            break
        time.sleep(0.1)
    assert left == []


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


@pytest.mark.slow
@pytest.mark.skipif(detect_sandbox().level != "bubblewrap", reason="needs the bubblewrap sandbox level")
def test_chromium_runs_inside_bubblewrap_unprivileged():
    with HtmlRenderer(timeout=TIMEOUT, workers=1) as r:
        assert r.render(GOOD).ok
        assert r.info()["sandbox"] == "bubblewrap + chromium"
        ours = os.readlink("/proc/self/ns/net")
        seen = 0
        for p in psutil.Process().children(recursive=True):
            try:
                if "chrom" not in p.name().lower():
                    continue
                # no Chromium process keeps root, and none shares our network namespace
                assert p.uids().real != 0 or os.geteuid() != 0
                assert os.readlink(f"/proc/{p.pid}/ns/net") != ours
                seen += 1
            except (psutil.NoSuchProcess, FileNotFoundError):  # a helper process that just exited
                continue
        assert seen


@pytest.mark.slow
@pytest.mark.parametrize("level", ["bubblewrap", "namespaces"])
def test_html_renders_with_tmpdir_outside_tmp(tmp_path, level):
    """Issue 13.11: with ``TMPDIR`` outside ``/tmp`` (clusters set it) Chromium could not start: its
    profile lay under a directory the bubblewrap launcher created 0700 (``/var``)."""
    import subprocess
    import sys
    import tempfile

    if level == "bubblewrap" and detect_sandbox().level != "bubblewrap":
        pytest.skip("needs the bubblewrap sandbox level")
    page = tmp_path / "p.html"
    page.write_text("<html><body style='background:#123'><h1 style='color:white'>hello</h1></body></html>")
    tmpdir = tempfile.mkdtemp(prefix="visalign-test-", dir="/var/tmp")
    try:
        env = dict(os.environ, TMPDIR=tmpdir, VISALIGN_SANDBOX=level)
        proc = subprocess.run([sys.executable, "-m", "visalign.cli", "render", "html", str(page), "-o",
                               str(tmp_path / "out"), "--json"], capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert json.loads(proc.stdout)["ok"], proc.stdout
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
