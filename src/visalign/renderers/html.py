"""The ``html`` renderer: an HTML document in, a screenshot of the page out.

One persistent headless Chromium (Debian's, driven by Playwright; Playwright's own browser download
is never used) serves every sample. Each sample gets a fresh browser context, so no cookies,
storage, cache or service worker survives from one sample to the next, and the network is off: the
document is handed to the page by request interception, and every other request is refused.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import os
import shutil
import tempfile
import threading
import time
import weakref
from importlib import metadata
from typing import Any

from .base import DEFAULT_MAX_PIXELS, Renderer, RenderResult, finish_image, load_png
from .chromium import (  # noqa: F401 (Chromium management; names re-exported for old imports)
    BROWSER_BASE_MB,
    CHROMIUM_ARGS,
    CHROMIUM_ENV,
    DEFAULT_CHROMIUM,
    INSTALL_HINT,
    _browser_launcher,
    _browser_pgids,
    _kill_chromium_group,
    _kill_pid,
    _LaunchError,
    _ResourceGuard,
    browser_launcher,
    chromium_path,
    fallback_launcher,
    sandboxed_launcher,
)
from .sandbox import allocate_uid, detect_sandbox, kill_uid, release_uid

# The URL the document is served at. It never reaches the network: the route handler fulfils the
# first top-level navigation to it with the document and refuses everything else. `.invalid` can
# never resolve (RFC 2606), so even a request that escaped interception would go nowhere.
DOC_URL = "http://visalign.invalid/"

# The document.readyState values that satisfy each `wait_until`. The state is polled through the
# DevTools protocol in an isolated world, where the page's scripts cannot redefine what we read
# (a page that deletes `Promise` or lies about `document.readyState` still renders). Playwright's
# own lifecycle tracking is not used: a page that starts a (refused) navigation before its load
# event leaves Playwright waiting until the timeout for a load event it already missed.
WAIT_STATES: dict[str, tuple[str, ...]] = {
    "load": ("complete",),
    "domcontentloaded": ("interactive", "complete"),
    "commit": (),
}
POLL_INTERVAL = 0.02

LAUNCH_TIMEOUT = 60.0      # starting the Playwright driver or Chromium
SETUP_TIMEOUT = 30.0       # a new context and page (our overhead, not the sample's)
CLOSE_TIMEOUT = 5.0        # closing a context; beyond this the browser is killed and relaunched
GRACE = 2.0                # the hard per-sample guard on top of the Playwright call timeouts
LAUNCH_RETRY_AFTER = 10.0  # a failed launch is reported without retrying for this long
MAX_LISTED_BLOCKED = 20    # blocked URLs kept in the trace (all are counted)
MAX_URL_CHARS = 200


def _short(text: str, limit: int = MAX_URL_CHARS) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return _short(f"{type(exc).__name__}: {lines[0] if lines else ''}", 300)


class _Sample:
    """Per-sample state: serves the document once, refuses and records every other request."""

    def __init__(self, html: str) -> None:
        self.body = html.encode("utf-8", "surrogatepass")
        self.served = False
        self.blocked: list[str] = []
        self.blocked_count = 0
        self.crashed = False
        self.crash_event = asyncio.Event()  # made on the loop thread
        self.page_size: tuple[int, int] | None = None

    def block(self, url: str) -> None:
        self.blocked_count += 1
        if len(self.blocked) < MAX_LISTED_BLOCKED:
            self.blocked.append(_short(url))

    async def on_route(self, route: Any) -> None:
        request = route.request
        try:
            navigation = request.is_navigation_request()
            if (navigation and not self.served and request.url == DOC_URL
                    and request.frame.parent_frame is None):
                self.served = True
                await route.fulfill(status=200, content_type="text/html; charset=utf-8", body=self.body)
                return
            self.block(request.url)
            if navigation:
                # 204 No Content cancels a navigation and keeps the current document (an abort
                # would commit an error page in its place).
                await route.fulfill(status=204, body=b"")
            else:
                await route.abort("blockedbyclient")
        except Exception:  # the context closed under the request, or an odd request: refuse it
            with contextlib.suppress(Exception):
                await route.abort("blockedbyclient")

    async def on_websocket(self, ws: Any) -> None:
        # Never connected to a server; the page sees the socket close.
        self.block(ws.url)
        with contextlib.suppress(Exception):
            await ws.close(code=1008, reason="network disabled")

    def on_crash(self, _page: Any) -> None:
        self.crashed = True
        self.crash_event.set()


async def _cdp(cdp: Any, method: str, params: dict[str, Any], deadline: float) -> dict[str, Any]:
    """One DevTools call, bounded by the sample's deadline (raises ``TimeoutError`` past it)."""
    left = deadline - time.perf_counter()
    if left <= 0:
        raise TimeoutError(f"{method}: deadline passed")
    return await asyncio.wait_for(cdp.send(method, params), left)


async def _close_quietly(page: Any) -> None:
    with contextlib.suppress(Exception):
        await page.close()


class _Engine:
    """The Playwright driver and Chromium, living in one event loop on one dedicated thread.

    Samples are coroutines submitted from any thread; at most ``workers`` run at once.
    """

    def __init__(self, opts: dict[str, Any]) -> None:
        self.opts = opts
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run_loop, name="visalign-html", daemon=True)
        self.sem = asyncio.Semaphore(opts["workers"])
        self.launch_lock = asyncio.Lock()
        self.pw_cm: Any = None
        self.pw: Any = None
        self.browser: Any = None
        self.generation = 0
        self.driver_pid: int | None = None
        self.pgids: set[int] = set()
        self.version: str | None = None
        self.sandbox: str | None = None  # what isolates the browser (info()["sandbox"])
        self.launch_error: tuple[float, str] | None = None
        self.restarts = 0
        self.closed = False
        self.launcher_dir = tempfile.mkdtemp(prefix="visalign-chromium-")
        weakref.finalize(self, shutil.rmtree, self.launcher_dir, True)
        self.progress = time.monotonic()  # last time a sample started or ended (for the watchdog)
        self.guard = _ResourceGuard(self)
        self.thread.start()

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Any) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    # --- browser lifecycle (loop thread) ----------------------------------------------------------

    async def get_browser(self) -> tuple[Any, int]:
        async with self.launch_lock:
            if self.browser is not None and self.browser.is_connected():
                return self.browser, self.generation
            if self.browser is not None:
                await self._drop_browser()
            if self.launch_error and time.monotonic() - self.launch_error[0] < LAUNCH_RETRY_AFTER:
                raise _LaunchError(self.launch_error[1])
            try:
                self.browser = await self._launch()
            except _LaunchError as exc:
                self.launch_error = (time.monotonic(), str(exc))
                raise
            self.launch_error = None
            self.version = self.browser.version
            return self.browser, self.generation

    async def _launch(self) -> Any:
        exe = chromium_path()
        if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
            raise _LaunchError(f"Chromium not found at {exe}: {INSTALL_HINT}")
        if self.pw is None:
            try:
                from playwright.async_api import async_playwright
            except ImportError as exc:
                raise _LaunchError(f"the html renderer needs playwright (pip install playwright): {exc}") from exc
            cm = async_playwright()
            try:
                self.pw = await asyncio.wait_for(cm.start(), LAUNCH_TIMEOUT)
            except Exception as exc:
                raise _LaunchError(f"could not start the Playwright driver: {_first_line(exc)}") from exc
            self.pw_cm = cm
            with contextlib.suppress(Exception):
                self.driver_pid = cm._client._transport._proc.pid  # private: used only to kill
        args = [*CHROMIUM_ARGS, f"--js-flags=--max-old-space-size={int(self.opts['js_heap_mb'])}"]
        launcher, chromium_sandbox, self.sandbox = await asyncio.get_running_loop().run_in_executor(
            None, _browser_launcher, exe, self.launcher_dir, self.opts["uid"], self.opts["disk_mb"])
        if not chromium_sandbox:
            args.append("--no-sandbox")  # Chromium refuses to run its sandbox as root, or cannot here
        before = _browser_pgids(self.driver_pid) if self.driver_pid else set()
        try:
            browser = await asyncio.wait_for(self.pw.chromium.launch(
                executable_path=launcher, args=args, chromium_sandbox=chromium_sandbox, headless=True,
                handle_sigint=False, handle_sigterm=False, handle_sighup=False,
                timeout=LAUNCH_TIMEOUT * 1000), LAUNCH_TIMEOUT + 5)
        except Exception as exc:
            raise _LaunchError(f"could not start Chromium at {exe}: {_first_line(exc)}; {INSTALL_HINT}") from exc
        if self.driver_pid:
            self.pgids |= _browser_pgids(self.driver_pid) - before
        return browser

    async def _drop_browser(self) -> None:
        """Close the current browser, killing it when it does not close in time."""
        browser, self.browser = self.browser, None
        self.generation += 1
        if browser is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(browser.close(), CLOSE_TIMEOUT)
        for pgid in list(self.pgids):
            _kill_chromium_group(pgid)
            self.pgids.discard(pgid)
        # whatever a browser of this renderer's own uid left (nothing else runs as it)
        await asyncio.get_running_loop().run_in_executor(None, kill_uid, self.opts["uid"])

    async def restart(self, generation: int) -> None:
        """Kill and forget the browser of ``generation`` (the next sample relaunches one)."""
        async with self.launch_lock:
            if generation == self.generation and self.browser is not None:
                self.restarts += 1
                await self._drop_browser()

    async def shutdown(self) -> None:
        async with self.launch_lock:
            self.closed = True
            await self._drop_browser()
            if self.pw_cm is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.pw_cm.__aexit__(), CLOSE_TIMEOUT)
            self.pw = self.pw_cm = None

    def kill(self) -> None:
        """Hard stop from any thread: kill Chromium and the driver, stop the loop."""
        self.closed = True
        self.guard.stop.set()
        for pgid in list(self.pgids):
            _kill_chromium_group(pgid)
        if self.driver_pid:
            for pgid in _browser_pgids(self.driver_pid):
                _kill_chromium_group(pgid)
            _kill_pid(self.driver_pid)
        kill_uid(self.opts["uid"])
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.loop.stop)

    def close(self) -> None:
        """Close the browser and the driver and stop the loop thread; kills whatever lingers."""
        if self.pid != os.getpid():  # a forked child: the processes belong to the parent
            return
        if self.thread.is_alive() and self.loop.is_running():
            try:
                self.submit(self.shutdown()).result(timeout=CLOSE_TIMEOUT * 2 + 2)
            except Exception:
                pass
        self.kill()
        self.thread.join(timeout=5)
        if not self.thread.is_alive():
            with contextlib.suppress(Exception):
                self.loop.close()

    # --- one sample (loop thread) -----------------------------------------------------------------

    async def render(self, html: str) -> RenderResult:
        async with self.sem:
            result = RenderResult.failure("internal", "not rendered")
            self.guard.active += 1
            try:
                for _attempt in range(2):
                    self.progress = time.monotonic()
                    if self.closed:
                        return RenderResult.failure("internal", "the html renderer is closed")
                    try:
                        browser, generation = await self.get_browser()
                    except _LaunchError as exc:
                        return RenderResult.failure("internal", str(exc))
                    result, browser_lost = await self._attempt(browser, generation, html)
                    if not browser_lost:
                        return result
                return result
            finally:
                self.guard.active -= 1
                self.progress = time.monotonic()

    async def _attempt(self, browser: Any, generation: int, html: str) -> tuple[RenderResult, bool]:
        """Render in a fresh context; returns ``(result, the browser died under this sample)``."""
        from playwright.async_api import Error as PlaywrightError
        from playwright.async_api import TimeoutError as PlaywrightTimeout

        opts = self.opts
        t0 = time.perf_counter()
        started = time.monotonic()
        sample = _Sample(html)
        context = None
        try:
            try:
                context = await asyncio.wait_for(browser.new_context(**opts["context"]), SETUP_TIMEOUT)
                await context.route("**/*", sample.on_route)
                await context.route_web_socket("**/*", sample.on_websocket)
                page = await asyncio.wait_for(context.new_page(), SETUP_TIMEOUT)
                page.on("crash", sample.on_crash)
                page.on("popup", lambda popup: asyncio.ensure_future(_close_quietly(popup)))
                page.set_default_timeout(opts["timeout"] * 1000)
                cdp = await asyncio.wait_for(context.new_cdp_session(page), SETUP_TIMEOUT)
            except Exception as exc:
                if not browser.is_connected() or generation != self.generation:
                    return self._browser_lost(started, time.perf_counter() - t0), True
                # a browser that cannot open a page is unwell: replace it and try once more
                await self.restart(generation)
                return RenderResult.failure("internal", f"could not open a page: {_first_line(exc)}",
                                            time.perf_counter() - t0), True
            deadline = time.perf_counter() + opts["timeout"]
            try:
                png = await self._run_sample(page, cdp, sample, deadline)
            except _TooLarge as exc:
                res = RenderResult.failure("memory", str(exc), time.perf_counter() - t0)
            except (PlaywrightTimeout, asyncio.TimeoutError, TimeoutError):
                res = RenderResult.failure("timeout", f"the page did not load and render within "
                                           f"{opts['timeout']:g} s (wait_until={opts['wait_until']!r})",
                                           time.perf_counter() - t0)
            except _Crashed:
                res = self._crashed(started, time.perf_counter() - t0)
            except PlaywrightError as exc:
                if not sample.crashed and "closed" in str(exc).lower():
                    await asyncio.sleep(0.2)  # let the disconnect of a dead browser arrive
                seconds = time.perf_counter() - t0
                if sample.crashed:
                    res = self._crashed(started, seconds)
                elif not browser.is_connected() or generation != self.generation:
                    return self._browser_lost(started, seconds), True
                else:
                    res = RenderResult.failure("internal", f"playwright: {_first_line(exc)}", seconds)
            else:
                # decoding takes tens of ms: off the loop, so the other pages go on meanwhile
                res = await asyncio.get_running_loop().run_in_executor(
                    None, self._finish, png, sample, t0)
            if res.trace is None:
                res.trace = self._trace(sample)
            return res, False
        finally:
            if context is not None:
                try:
                    await asyncio.wait_for(context.close(), CLOSE_TIMEOUT)
                except Exception:
                    if browser.is_connected():  # a context that will not close: replace the browser
                        await self.restart(generation)

    def _crashed(self, started: float, seconds: float) -> RenderResult:
        """The result of a page whose renderer died: killed by the resource guard, or crashed."""
        killed = self.guard.since(started)
        if killed and killed[0] == "memory":
            return RenderResult.failure("memory", f"the page went past memory_mb={self.opts['memory_mb']} "
                                        f"({killed[1]}) and was stopped", seconds)
        if killed and killed[0] == "cpu":
            return RenderResult.failure("timeout", f"the page went past cpu_seconds={self.opts['cpu_seconds']:g} "
                                        f"of CPU ({killed[1]}) and was stopped", seconds)
        return RenderResult.failure("runtime", "the page crashed (its renderer process died, e.g. out of "
                                    "memory)", seconds)

    def _browser_lost(self, started: float, seconds: float) -> RenderResult:
        killed = self.guard.since(started)
        if killed and killed[0] == "memory":
            return RenderResult.failure("memory", f"the browser was stopped: {killed[1]}, over "
                                        f"memory_mb + {BROWSER_BASE_MB} MiB", seconds)
        return RenderResult.failure("runtime", "the browser crashed", seconds)

    async def _run_sample(self, page: Any, cdp: Any, sample: _Sample, deadline: float) -> bytes:
        """Load and capture, but give up as soon as the page crashes, or at the hard deadline."""
        work = asyncio.ensure_future(self._load_and_capture(page, cdp, sample, deadline))
        crash = asyncio.ensure_future(sample.crash_event.wait())
        try:
            await asyncio.wait({work, crash}, timeout=deadline - time.perf_counter() + GRACE,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            crash.cancel()
            if not work.done():
                work.cancel()
                with contextlib.suppress(BaseException):
                    await work
        if work.done() and not work.cancelled() and (work.exception() is None or not sample.crashed):
            return work.result()
        if sample.crashed:
            raise _Crashed
        raise TimeoutError("hard deadline passed")

    async def _load_and_capture(self, page: Any, cdp: Any, sample: _Sample, deadline: float) -> bytes:
        from playwright.async_api import Error as PlaywrightError
        from playwright.async_api import TimeoutError as PlaywrightTimeout

        opts = self.opts

        def left_ms() -> float:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise PlaywrightTimeout("deadline passed")
            return max(1.0, left * 1000)  # Playwright reads 0 as "no timeout"

        await page.goto(DOC_URL, wait_until="commit", timeout=left_ms())
        states = WAIT_STATES[opts["wait_until"]]
        world: int | None = None
        failures = 0
        while states:
            try:
                if world is None:
                    tree = await _cdp(cdp, "Page.getFrameTree", {}, deadline)
                    world = (await _cdp(cdp, "Page.createIsolatedWorld", {
                        "frameId": tree["frameTree"]["frame"]["id"], "worldName": "visalign"},
                        deadline))["executionContextId"]
                reply = await _cdp(cdp, "Runtime.evaluate", {
                    "expression": "document.readyState", "contextId": world, "returnByValue": True}, deadline)
                if reply.get("result", {}).get("value") in states:
                    break
            except PlaywrightError as exc:
                # The document replaced itself (about:blank, javascript: URL): look at the new one,
                # unless the page or the browser is gone.
                failures += 1
                message = str(exc).lower()
                if sample.crashed or failures > 20 or "crash" in message or "closed" in message:
                    raise
                world = None
            await asyncio.sleep(POLL_INTERVAL)
        if opts["settle"] > 0:
            await asyncio.sleep(min(opts["settle"], left_ms() / 1000))
        vw, vh = opts["viewport"]
        scale = opts["device_scale_factor"]
        clip = None
        if opts["full_page"]:
            metrics = await _cdp(cdp, "Page.getLayoutMetrics", {}, deadline)
            size = metrics.get("cssContentSize") or metrics.get("contentSize") or {}
            cw = max(vw, math.ceil(float(size.get("width", vw))))
            ch = max(vh, math.ceil(float(size.get("height", vh))))
            width, height = min(cw, opts["max_width"]), min(ch, opts["max_height"])
            sample.page_size = (cw, ch)
            clip = {"x": 0, "y": 0, "width": width, "height": height}
        else:
            width, height = vw, vh
            sample.page_size = (vw, vh)
        pixels = round(width * scale) * round(height * scale)
        if pixels > opts["max_pixels"]:
            raise _TooLarge(f"a {width}x{height} px screenshot at scale {scale:g} exceeds "
                            f"max_pixels={opts['max_pixels']}")
        return await page.screenshot(type="png", full_page=opts["full_page"], clip=clip,
                                     animations="disabled", caret="hide",
                                     omit_background=opts["omit_background"], timeout=left_ms())

    def _trace(self, sample: _Sample) -> dict[str, Any]:
        trace: dict[str, Any] = {"blocked_requests": list(sample.blocked),
                                 "blocked_count": sample.blocked_count}
        size = sample.page_size
        if size is not None:
            trace["page_size"] = list(size)
            trace["clipped"] = bool(self.opts["full_page"] and (size[0] > self.opts["max_width"]
                                                                or size[1] > self.opts["max_height"]))
        return trace

    def _finish(self, png: bytes, sample: _Sample, t0: float) -> RenderResult:
        trace = self._trace(sample)
        try:
            image = load_png(png, self.opts["max_pixels"], self.opts["background"])
        except ValueError as exc:
            res = RenderResult.failure("memory" if "exceeds" in str(exc) else "internal", str(exc),
                                       time.perf_counter() - t0)
            res.trace = trace
            return res
        seconds = time.perf_counter() - t0
        res = finish_image(image, seconds, trace)
        if res.error_kind == "blank" and sample.blocked_count:
            listed = ", ".join(sample.blocked[:3])
            res = RenderResult.failure("sandbox", f"nothing visible rendered, and {sample.blocked_count} "
                                       f"request(s) were refused (the network is off): {listed}", seconds)
            res.trace = trace
        return res


class _TooLarge(Exception):
    """The screenshot would exceed max_pixels."""


class _Crashed(Exception):
    """The page's renderer process died."""


class _Holder:
    """Owns the current engine; the finalizer closes whichever engine is current."""

    def __init__(self) -> None:
        self.engine: _Engine | None = None
        self.lock = threading.Lock()

    def close(self) -> None:
        with self.lock:
            engine, self.engine = self.engine, None
        if engine is not None:
            engine.close()


class HtmlRenderer(Renderer):
    """Render HTML documents into screenshots with headless Chromium.

    A single Chromium (Debian's ``/usr/bin/chromium``, or ``$VISALIGN_CHROMIUM``) is started on first
    use and kept; Playwright drives it from one dedicated thread, so ``render_batch`` may be called
    from any thread. Each sample gets a fresh browser context (no cookies or storage shared between
    samples) with a ``viewport`` window, and is loaded until ``wait_until``; the screenshot covers the
    full page (clipped to ``max_height`` x ``max_width``) when ``full_page``, else the viewport.
    The defaults match Design2Code: 1280x720 viewport, full page, white background.

    Network policy: the document is served by request interception and every other request is
    refused before it leaves the browser (except ``data:``, ``blob:`` and ``about:`` URLs, which are
    not network); websockets and service workers are blocked; navigations away from the document
    are cancelled, so the document stays. A refused request does not fail the sample: a page with
    a missing external stylesheet or image still renders, ``ok=True``, and the refused URLs are in
    ``trace["blocked_requests"]`` (the first 20; ``trace["blocked_count"]`` counts all). Only when
    nothing visible rendered *and* requests were refused is the result a ``sandbox`` failure
    (rather than ``blank``): the page needed the network to draw anything.

    Failures: load, scripts and screenshot beyond ``timeout`` -> ``timeout`` (a page that never
    yields is closed and the browser stays usable; a context that will not close gets the browser
    killed and relaunched); one flat colour -> ``blank``; an empty document -> ``no_output``; a
    page past ``memory_mb`` -> ``memory``; a page past ``cpu_seconds`` -> ``timeout``; a
    crashed page (its renderer process died, e.g. past ``js_heap_mb``) or browser -> ``runtime``
    (a crashed browser is relaunched and the samples it took down are retried once); a screenshot
    over ``max_pixels`` -> ``memory``; Chromium or Playwright missing -> ``internal``.

    ``trace`` also holds ``page_size`` (the full page in CSS px) and ``clipped``. Clipping bounds the
    image, not the work: for a full-page capture Chromium still lays out and paints the whole page,
    so a monstrous page (a 50,000-row table) may end as ``timeout`` rather than clipped.

    A fresh context per sample costs about twice a reused one (a new renderer process each time),
    but clearing a reused context does not isolate samples (``window.name`` survives), so every
    sample gets its own. With the ``bubblewrap`` sandbox level (see ``visalign doctor``) Chromium runs
    inside bubblewrap: no network namespace, a read-only system, no home directories, and as an
    unprivileged uid when we are root, so Chromium's own sandbox runs inside ours. At the fallback
    levels as root, a launcher drops Chromium to an unprivileged uid of this renderer's own (at
    ``namespaces+rlimits`` inside its own network, PID and mount namespaces), so Chromium's own
    sandbox runs there too; the file system is the host's (read as that uid). Not as root, Chromium
    uses its own sandbox. ``info()["sandbox"]`` says which holds.

    Args:
        timeout: seconds per sample for loading, scripts and the screenshot.
        workers: samples rendered at once (pages open at once, each in its own context).
        viewport: ``(width, height)`` of the window in CSS px.
        full_page: capture the whole scrollable page rather than the viewport.
        device_scale_factor: device pixels per CSS px.
        max_height: full-page screenshots are clipped to this many CSS px from the top.
        max_width: full-page screenshots are clipped to this many CSS px from the left.
        background: colour under a page that paints no background of its own.
        wait_until: ``"load"``, ``"domcontentloaded"`` or ``"commit"``.
        settle: extra seconds to wait after ``wait_until`` (within ``timeout``), for script animations.
        js_heap_mb: V8 heap limit per page; a page past it crashes (``runtime``).
        max_pixels: a screenshot larger than this fails with ``memory``.
        memory_mb: resident memory a page's renderer process may hold (V8 heap, ArrayBuffers, canvases,
            images); past it the process is killed and the sample fails with ``memory``. The browser's
            other processes together may hold ``memory_mb`` + 1 GiB (blobs live there); past that the
            browser is killed and relaunched, and the samples it ran fail with ``memory`` (each is
            retried once). Watched every 50 ms through ``/proc``: RLIMIT_AS cannot be used, as
            Chromium reserves terabytes of address space, and ArrayBuffers are outside ``js_heap_mb``.
        cpu_seconds: CPU time a page's renderer process may use (all its threads, Web Workers
            included); past it the sample fails with ``timeout``. Default ``1.5 * timeout + 1``.
        disk_mb: size of each writable file system Chromium sees (its profile, ``/tmp``,
            ``/dev/shm``, and ``/var/tmp`` at the fallback levels: private tmpfs mounts with the
            bubblewrap level, and as root at the fallback levels where a mount namespace can be made;
            not as root without bubblewrap, no quota).

    Example:
        >>> with HtmlRenderer(timeout=10, workers=1) as r:
        ...     res = r.render('<div style="background:#c00;height:50px">hi</div>')
        >>> res.ok, res.image.size
        (True, (1280, 720))
        >>> r2 = HtmlRenderer(timeout=10, workers=1)
        >>> res = r2.render('<img src="https://example.com/logo.png"><p>caption</p>')
        >>> res.ok, res.trace["blocked_requests"]
        (True, ['https://example.com/logo.png'])
        >>> r2.close()
    """

    name = "html"

    def __init__(self, timeout: float = 10.0, workers: int = 2, viewport: tuple[int, int] = (1280, 720),
                 full_page: bool = True, device_scale_factor: float = 1.0, max_height: int = 8000,
                 max_width: int = 8000, background: str = "white", wait_until: str = "load",
                 settle: float = 0.0, js_heap_mb: int = 1024, max_pixels: int = DEFAULT_MAX_PIXELS,
                 memory_mb: int = 2048, cpu_seconds: float | None = None, disk_mb: int = 256) -> None:
        super().__init__(timeout)
        if int(workers) < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        vw, vh = (int(v) for v in viewport)
        if vw < 1 or vh < 1:
            raise ValueError(f"viewport must be positive, got {viewport}")
        if device_scale_factor <= 0:
            raise ValueError(f"device_scale_factor must be positive, got {device_scale_factor}")
        if wait_until not in WAIT_STATES:
            raise ValueError(f"wait_until must be one of {sorted(WAIT_STATES)}, got {wait_until!r}")
        if max_height < 1 or max_width < 1:
            raise ValueError("max_height and max_width must be positive")
        if settle < 0:
            raise ValueError(f"settle must be >= 0, got {settle}")
        if js_heap_mb < 16:
            raise ValueError(f"js_heap_mb must be at least 16, got {js_heap_mb}")
        if memory_mb < 128:
            raise ValueError(f"memory_mb must be at least 128, got {memory_mb}")
        cpu_seconds = self.timeout * 1.5 + 1.0 if cpu_seconds is None else float(cpu_seconds)
        if cpu_seconds <= 0:
            raise ValueError(f"cpu_seconds must be positive, got {cpu_seconds}")
        if disk_mb < 16:
            raise ValueError(f"disk_mb must be at least 16, got {disk_mb}")
        from PIL import ImageColor
        try:
            rgb = ImageColor.getrgb(background)
        except ValueError:
            raise ValueError(f"unknown background colour {background!r}") from None
        self.options: dict[str, Any] = {
            "viewport": (vw, vh), "full_page": bool(full_page), "device_scale_factor": float(device_scale_factor),
            "max_height": int(max_height), "max_width": int(max_width), "background": background,
            "wait_until": wait_until, "settle": float(settle), "workers": int(workers),
            "js_heap_mb": int(js_heap_mb), "max_pixels": int(max_pixels), "memory_mb": int(memory_mb),
            "cpu_seconds": cpu_seconds, "disk_mb": int(disk_mb)}
        # A uid of this renderer's own for its Chromium (as root, at every level): its RLIMIT_NPROC
        # and its processes are apart from every other renderer's and worker's.
        self.uid = allocate_uid() if detect_sandbox().uid is not None else None
        self._opts = {
            **self.options, "timeout": self.timeout, "uid": self.uid,
            # Chromium paints white under a page without a background; any other colour is
            # composited under a transparent capture.
            "omit_background": rgb[:3] != (255, 255, 255),
            "context": {"viewport": {"width": vw, "height": vh}, "device_scale_factor": float(device_scale_factor),
                        "service_workers": "block", "accept_downloads": False, "java_script_enabled": True,
                        "locale": "en-US", "timezone_id": "UTC", "color_scheme": "light"}}
        self._holder = _Holder()
        self._finalizer = weakref.finalize(self, self._holder.close)  # also runs at interpreter exit

    def _engine(self) -> _Engine:
        holder = self._holder
        with holder.lock:
            engine = holder.engine
            if engine is not None and engine.pid != os.getpid():
                engine = None  # forked: the parent's thread and browser are not ours
            if engine is None or engine.closed or not engine.thread.is_alive():
                engine = holder.engine = _Engine(self._opts)
            return engine

    def _render_batch(self, sources: list[str]) -> list[RenderResult]:
        results: list[RenderResult | None] = [None] * len(sources)
        todo = []
        for i, src in enumerate(sources):
            if not src.strip():
                results[i] = RenderResult.failure("no_output", "the document is empty")
            else:
                todo.append(i)
        if todo:
            engine = self._engine()
            futures = {i: engine.submit(engine.render(sources[i])) for i in todo}
            # Every wait inside the engine is bounded, so a long stretch without any sample
            # finishing means the engine's thread itself is stuck: kill everything, start over.
            stall = 2 * (LAUNCH_TIMEOUT + 3 * SETUP_TIMEOUT + self.timeout + GRACE + 3 * CLOSE_TIMEOUT)
            pending = set(futures.values())
            while pending:
                _, pending = concurrent.futures.wait(pending, timeout=min(stall, 1.0),
                                                     return_when=concurrent.futures.FIRST_COMPLETED)
                if pending and time.monotonic() - engine.progress > stall:
                    with self._holder.lock:
                        if self._holder.engine is engine:
                            self._holder.engine = None
                    engine.kill()
                    break
            for i, fut in futures.items():
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    results[i] = fut.result()
                elif fut.done() and not fut.cancelled():
                    results[i] = RenderResult.failure("internal", f"html renderer: {_first_line(fut.exception())}")
                else:
                    fut.cancel()
                    results[i] = RenderResult.failure("internal", "the browser stopped responding; it was "
                                                      "killed and will be restarted")
        return [r for r in results if r is not None]

    def info(self) -> dict[str, Any]:
        """Backend, versions (starting Chromium if needed) and options."""
        engine = self._engine()
        error = None
        try:
            engine.submit(engine.get_browser()).result(timeout=LAUNCH_TIMEOUT * 2 + 10)
        except Exception as exc:
            error = str(exc) if isinstance(exc, _LaunchError) else _first_line(exc)
        try:
            pw_version = metadata.version("playwright")
        except metadata.PackageNotFoundError:
            pw_version = None
        sandbox = engine.sandbox or _browser_launcher(chromium_path(), engine.launcher_dir, self.uid,
                                                      self.options["disk_mb"])[2]
        out = {**super().info(), "backend": "playwright + chromium",
               "versions": {"playwright": pw_version, "chromium": engine.version},
               "executable": chromium_path(), "sandbox": sandbox,
               **{k: list(v) if isinstance(v, tuple) else v for k, v in self.options.items()},
               "restarts": engine.restarts}
        if error:
            out["error"] = error
        return out

    def close(self) -> None:
        """Close the browser; no Chromium process is left behind. Safe to call twice."""
        self._holder.close()
        release_uid(self.uid)
        self.uid = None
