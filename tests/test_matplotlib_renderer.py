"""The matplotlib renderer against real programs, broken programs and hostile programs.

Every hostile case checks four things: a failed result of the right kind, cut off (well before the
hostile program would end by itself), nothing left running, and the next good program still renders.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from conftest import GOOD_CHART, processes_of_uid, requires_bwrap, requires_root
from visalign.renderers import get_renderer

TIMEOUT = 3.0
# Wall-clock bounds catch a timeout that is not enforced (the hostile programs sleep 60 s or loop for
# ever), not a slow kill: a loaded 2-core machine can take several seconds to kill a sandbox and start
# the next zygote, so the bound is generous and every wait below polls a condition up to a deadline
# that only a failure reaches.
CUT_OFF = TIMEOUT + 25.0
SETTLE = 60.0


@pytest.fixture(scope="module")
def renderer():
    with get_renderer("matplotlib", timeout=TIMEOUT, workers=2) as r:
        yield r


def _sandbox_processes(renderer) -> int:
    return sum(len(processes_of_uid(uid)) for uid in renderer.pool.uids)


def _nothing_outlived(renderer, before: int) -> bool:
    """True when the sandbox uid runs no more processes than before the job (its zygotes and their
    waiting children; a killed zygote is replaced on the next job)."""
    deadline = time.monotonic() + SETTLE
    while time.monotonic() < deadline:
        if _sandbox_processes(renderer) <= before:
            return True
        time.sleep(0.1)
    return False


def _assert_fails(renderer, code: str, kinds: set[str]):
    # at rest each worker is a zygote plus the process(es) it pre-forked for the next job; counted from
    # the pool's structure, not sampled (sampled right after a reply, a worker may still be forking)
    before = max(_sandbox_processes(renderer), renderer.pool.resting_processes())
    t0 = time.perf_counter()
    res = renderer.render(code)
    wall = time.perf_counter() - t0
    assert not res.ok and res.image is None
    assert res.error_kind in kinds, (res.error_kind, res.error)
    assert wall < CUT_OFF, wall
    assert _nothing_outlived(renderer, before), "a process of the sandboxed program outlived it"
    assert renderer.render(GOOD_CHART).ok, "the next good program did not render"
    return res


# ---- good programs ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_bar_chart_renders_at_default_size(renderer):
    res = renderer.render(GOOD_CHART)
    assert res.ok and res.error_kind is None
    assert res.image.size == (640, 480) and res.image.mode == "RGB"
    arr = np.asarray(res.image)
    # the default colour cycle's blue is in the bars
    assert (np.abs(arr.astype(int) - [31, 119, 180]).sum(-1) < 10).mean() > 0.02


def test_savefig_then_close_is_still_captured(renderer):
    code = GOOD_CHART + "plt.savefig('chart.png', dpi=30)\nplt.close('all')\n"
    res = renderer.render(code)
    assert res.ok and res.image.size == (640, 480)  # our dpi, not the program's


def test_show_does_not_block_and_captures(renderer):
    res = renderer.render(GOOD_CHART + "plt.show()\n")
    assert res.ok, res.error  # a blocking show() would have run into the timeout: a failed "timeout" result


def test_backend_switch_is_ignored(renderer):
    res = renderer.render("import matplotlib\nmatplotlib.use('TkAgg')\n" + GOOD_CHART)
    assert res.ok, res.error


@pytest.mark.slow
def test_dpi_figsize_and_policy_options():
    code = ("import matplotlib.pyplot as plt\nplt.figure(figsize=(4, 2))\nplt.plot([1, 2])\n"
            "plt.figure(figsize=(2, 2))\nplt.plot([2, 1])\n")
    with get_renderer("matplotlib", timeout=TIMEOUT, workers=1, dpi=50) as r:
        assert r.render(code).image.size == (100, 100)  # last figure
    with get_renderer("matplotlib", timeout=TIMEOUT, workers=1, dpi=50, figures="first") as r:
        assert r.render(code).image.size == (200, 100)
    with get_renderer("matplotlib", timeout=TIMEOUT, workers=1, dpi=50, figures="all") as r:
        assert r.render(code).image.size == (200, 200)  # stacked
    with get_renderer("matplotlib", timeout=TIMEOUT, workers=1, dpi=50, figsize=(3, 3)) as r:
        assert r.render(code).image.size == (150, 150)


def test_no_state_leaks_between_samples(renderer):
    first = renderer.render("import matplotlib.pyplot as plt\nplt.rcParams['axes.facecolor'] = 'red'\n"
                            "plt.plot([1, 2])\nimport builtins\nbuiltins.LEAK = 1")
    assert first.ok
    second = renderer.render("import matplotlib.pyplot as plt\nassert plt.rcParams['axes.facecolor'] == 'white'\n"
                             "import builtins\nassert not hasattr(builtins, 'LEAK')\nplt.plot([1, 2])")
    assert second.ok, second.error


def test_batch_keeps_order_and_survives_bad_inputs(renderer):
    sources = [GOOD_CHART, "plt.plot(", GOOD_CHART.replace("'ok'", "'two'"), "raise ValueError('boom')",
               "import os; os._exit(0)", GOOD_CHART]
    results = renderer.render_batch(sources)
    assert [r.ok for r in results] == [True, False, True, False, False, True]
    assert results[1].error_kind == "syntax" and "SyntaxError" in results[1].error
    assert results[3].error_kind == "runtime" and "boom" in results[3].error
    assert results[4].error_kind == "runtime"


def test_non_string_input_is_a_failed_result(renderer):
    results = renderer.render_batch([None, GOOD_CHART])  # type: ignore[list-item]
    assert results[0].error_kind == "syntax" and results[1].ok


# ---- outcomes of the error kinds --------------------------------------------------------------------

def test_nothing_drawn_is_no_output(renderer):
    assert renderer.render("x = 1 + 1").error_kind == "no_output"


def test_empty_figure_is_blank(renderer):
    assert renderer.render("import matplotlib.pyplot as plt\nplt.figure()").error_kind == "blank"


@pytest.mark.slow
def test_infinite_loop_times_out(renderer):
    _assert_fails(renderer, "while True:\n    pass", {"timeout"})


def test_sleep_times_out(renderer):
    _assert_fails(renderer, "import time\ntime.sleep(60)", {"timeout"})


def test_memory_bomb(renderer):
    res = _assert_fails(renderer, "x = bytearray(8 * 1024**3)\nimport matplotlib.pyplot as plt\nplt.plot([1])",
                        {"memory"})
    assert "MemoryError" in res.error


@pytest.mark.slow
def test_growing_memory_bomb():
    # a smaller address space so that faulting in the pages fits the timeout on a slow, busy machine
    with get_renderer("matplotlib", timeout=TIMEOUT, workers=1, memory_mb=768) as small:
        _assert_fails(small, "a = []\nwhile True:\n    a.append(bytearray(10**8))", {"memory"})
        assert small.pool.restarts == 0


def test_absurd_figure_size(renderer):
    res = _assert_fails(renderer, "import matplotlib.pyplot as plt\nplt.figure(figsize=(2000, 2000), dpi=400)\n"
                                  "plt.plot([1, 2])\nplt.savefig('x.png')", {"memory"})
    assert "max_pixels" in res.error


@pytest.mark.slow
@requires_root
def test_fork_bomb_is_contained(renderer):
    _assert_fails(renderer, "import os\nwhile True:\n    os.fork()", {"sandbox", "timeout"})


def test_subprocess_fork_bomb(renderer):
    _assert_fails(renderer, "import subprocess\nps = [subprocess.Popen(['sleep', '30']) for _ in range(500)]",
                  {"sandbox", "runtime"})


def test_detached_sleepers_are_killed(renderer):
    # setsid() escapes the process group; the sandbox must still kill it.
    _assert_fails(renderer, "import subprocess\nsubprocess.Popen(['setsid', 'sleep', '60'])\nraise SystemExit(3)",
                  {"runtime"})


def test_sys_exit_nonzero(renderer):
    _assert_fails(renderer, "import sys\nsys.exit(2)", {"runtime"})


def test_os_exit(renderer):
    res = _assert_fails(renderer, "import os\nos._exit(7)", {"runtime"})
    assert "7" in res.error


def test_segfault(renderer):
    res = _assert_fails(renderer, "import ctypes\nctypes.string_at(0)", {"runtime"})
    assert "SIGSEGV" in res.error


def test_killing_the_host_process(renderer):
    # where the zygote is the PID namespace's init, the kill is ignored and nothing was drawn
    _assert_fails(renderer, "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
                  {"runtime", "timeout", "no_output"})


# ---- the sandbox ------------------------------------------------------------------------------------

@pytest.mark.slow
@requires_bwrap
def test_cannot_write_outside_the_work_dir(renderer, tmp_path):
    target = tmp_path / "planted.txt"
    target.write_text("original")
    os.chmod(tmp_path, 0o777)
    before = target.stat().st_mtime_ns
    for code in (f"open({str(target)!r}, 'w').write('pwned')",
                 f"import os\nos.system('echo pwned > {target}')",
                 f"import subprocess\nsubprocess.run(['sh', '-c', 'echo pwned > {target}'], check=True)",
                 "open('/etc/visalign_pwned', 'w')",
                 f"open({str(tmp_path / 'new.txt')!r}, 'w').write('x')"):
        _assert_fails(renderer, code, {"sandbox"})
    assert target.read_text() == "original" and target.stat().st_mtime_ns == before
    assert not (tmp_path / "new.txt").exists() and not os.path.exists("/etc/visalign_pwned")


@requires_bwrap
def test_cannot_read_planted_secrets(renderer, tmp_path, monkeypatch):
    home = tmp_path / "home" / "alice"
    home.mkdir(parents=True)
    secret = home / ".netrc"
    secret.write_text("TOPSECRET-FILE-4242")
    os.chmod(secret, 0o644)
    for p in (tmp_path, tmp_path / "home", home):
        os.chmod(p, 0o755)
    res = _assert_fails(renderer, f"raise RuntimeError(open({str(secret)!r}).read())", {"sandbox"})
    assert "TOPSECRET" not in res.error
    res = _assert_fails(renderer, "import os\nprint(os.listdir('/root'), os.listdir('/home'))", {"sandbox"})
    assert "alice" not in res.error


@pytest.mark.slow
def test_environment_is_clean(tmp_path, monkeypatch):
    monkeypatch.setenv("VISALIGN_TEST_TOKEN", "TOPSECRET-ENV-1234")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:8080")
    with get_renderer("matplotlib", timeout=TIMEOUT, workers=1) as r:  # created after the env change
        res = r.render("import os\nraise RuntimeError(repr(dict(os.environ)))")
    assert res.error_kind == "runtime"
    assert "TOPSECRET" not in res.error and "proxy.invalid" not in res.error
    assert "OPENBLAS_NUM_THREADS" in res.error  # the message really is the environment


@requires_bwrap
def test_no_network(renderer, http_server):
    for code in (f"import socket\nsocket.create_connection(('127.0.0.1', {http_server.port}), timeout=2)",
                 f"import urllib.request\nurllib.request.urlopen({http_server.url!r}, timeout=2).read()",
                 "import socket\nsocket.getaddrinfo('example.com', 80)"):
        _assert_fails(renderer, code, {"sandbox"})
    assert http_server.connections == 0 and http_server.paths == []


# ---- processes --------------------------------------------------------------------------------------

def _script(body: str) -> str:
    return textwrap.dedent("""
        import os, sys, time
        from visalign.renderers import get_renderer
        r = get_renderer("matplotlib", timeout=5, workers=2)
        assert r.render({chart!r}).ok
        print(r.pool.info.uid, flush=True)
        children = [p.pid for p in __import__("psutil").Process().children(recursive=True)]
        print(" ".join(map(str, children)), flush=True)
    """).format(chart=GOOD_CHART) + textwrap.dedent(body)


@pytest.mark.parametrize("ending", ["r.close()", "pass", "os.kill(os.getpid(), 9)"],
                         ids=["close", "interpreter-exit", "sigkill"])
@pytest.mark.slow
def test_nothing_left_running(ending):
    out = subprocess.run([sys.executable, "-c", _script(ending)], capture_output=True, text=True, timeout=120)
    lines = out.stdout.split("\n")
    assert len(lines) >= 2, out.stderr
    children = [int(p) for p in lines[1].split()]
    assert children, "the renderer started no process?"
    deadline = time.monotonic() + SETTLE
    import psutil

    def alive() -> list[int]:
        left = []
        for pid in children:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    left.append(pid)
            except psutil.NoSuchProcess:
                pass
        return left

    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert alive() == []


@pytest.fixture(scope="module")
def private_install(tmp_path_factory):
    """A copy of the package under a 0700 directory, like a checkout in a home directory (issue 9,
    class 10: the fallback levels once needed the unprivileged uid to read the install)."""
    import shutil

    import visalign

    home = tmp_path_factory.mktemp("home")
    os.chmod(home, 0o700)
    shutil.copytree(os.path.dirname(visalign.__file__), home / "site" / "visalign")
    return str(home / "site")


@pytest.mark.slow
@pytest.mark.parametrize("level", ["namespaces", "rlimits"])
def test_weaker_sandbox_levels_still_render_and_time_out(level, private_install):
    code = textwrap.dedent(f"""
        import visalign
        assert visalign.__file__.startswith({private_install!r}), visalign.__file__
        from visalign.renderers import get_renderer
        with get_renderer("matplotlib", timeout=2, workers=1) as r:
            res = r.render_batch([{GOOD_CHART!r}, "while True: pass", "x = bytearray(8 * 1024**3)", {GOOD_CHART!r}])
            print(r.pool.info.level, [x.ok for x in res], [x.error_kind for x in res], r.pool.info.uid)
    """)
    env = {**os.environ, "VISALIGN_SANDBOX": level, "PYTHONPATH": private_install}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert "[True, False, False, True] [None, 'timeout', 'memory', None]" in out.stdout, out.stdout + out.stderr
    assert out.stdout.startswith({"namespaces": "namespaces+rlimits", "rlimits": "rlimits only"}[level])
    if os.geteuid() == 0:  # and the jobs ran as an unprivileged uid, not as root
        assert not out.stdout.strip().endswith("None"), out.stdout


@pytest.mark.slow
def test_runtime_error_names_the_program_line(renderer):
    """Issue 13.9: a runtime error says where in the program it arose (the deepest frame of the program,
    not of matplotlib), so a user or a log reader can find the model's mistake."""
    program = ("import matplotlib.pyplot as plt\n"
               "x = [1, 2, 3]\n"
               "def draw(ax):\n"
               "    ax.plot(x, targets)\n"
               "fig, ax = plt.subplots()\n"
               "draw(ax)\n")
    res = renderer.render(program)
    assert res.error_kind == "runtime"
    assert res.error == "NameError: name 'targets' is not defined (line 4: ax.plot(x, targets))"
    res = renderer.render("import matplotlib.pyplot as plt\nplt.plot([1, 2], [1, 2, 3])\n")
    assert res.error_kind == "runtime" and res.error.endswith("(line 2: plt.plot([1, 2], [1, 2, 3]))")


BAR3D = """
import numpy as np
import matplotlib.pyplot as plt
np.random.seed(0)
fig = plt.figure(figsize=(3, 3))
ax = fig.add_subplot(111, projection="3d")
x, y = np.meshgrid(np.arange(3), np.arange(3))
ax.bar3d(x.ravel(), y.ravel(), 0, 0.5, 0.5, np.random.rand(9) * 3, zsort="average", color="red")
ax.set_box_aspect(None, zoom=0.8)
plt.tight_layout()
plt.savefig("out.png")
"""


@pytest.mark.slow
def test_chart_instrument_does_not_change_a_3d_drawing():
    """Found on ChartMimic's ori_500/3d_10 (benchmarks/chartmimic_programs.py): reading a 3D collection's
    colours right after ``bar3d`` projected it with the view of that moment, and the instrumented render
    differed from the plain one in 42,928 pixels."""
    with get_renderer("matplotlib", timeout=30, dpi=50, instrument=("chart",)) as on, \
            get_renderer("matplotlib", timeout=30, dpi=50, instrument=()) as off:
        a, b = on.render(BAR3D), off.render(BAR3D)
    assert a.ok and b.ok, (a.error, b.error)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert a.trace["chart"]["color"]["3d.bar3d"]  # the colours are still read, when the figure is drawn
