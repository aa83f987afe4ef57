"""Attack corpus for the matplotlib and SVG fork servers (issue 9, classes 1-6 and 9, and variations of
the attacks already contained). The attacks are data in ``attacks_zygote_corpus.py``; the oracles are
black-box (see its docstring). Each test checks one attack; the renders are batched per group.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import json
import os
import re
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import attacks_zygote_corpus as C
from conftest import CountingServer
from visalign.renderers import get_renderer

HERE = os.path.dirname(os.path.abspath(__file__))
SLOW_TIMEOUT = 2.0

# The whole corpus is slow (~3.5 minutes on 2 cores): its module fixtures start renderer pools at three
# sandbox levels and run every attack up front; `make test` runs it, `make test-fast` does not.
pytestmark = pytest.mark.slow


# ---- fixtures ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def background(tmp_path_factory):
    """The subprocess checks (fallback levels, never-ending paths) start first and run alongside."""
    procs = {}
    level_server = CountingServer()   # "rlimits only" has no network isolation: keep its traffic apart
    for level in ("namespaces", "rlimits"):
        d = str(tmp_path_factory.mktemp(f"level-{level}"))
        env = {**os.environ, "VISALIGN_SANDBOX": level}
        procs[level] = subprocess.Popen([sys.executable, os.path.join(HERE, "attacks_zygote_corpus.py"), d,
                                         str(level_server.port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, env=env)
    d = str(tmp_path_factory.mktemp("stall-canary"))
    procs["stall"] = subprocess.Popen([sys.executable, "-c", STALL_SCRIPT.format(here=HERE, dir=d)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield procs
    for p in procs.values():
        if p.poll() is None:
            p.kill()
            p.communicate()
    level_server.close()


def _report_of(p: subprocess.Popen, limit: float):
    try:
        so, se = p.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        p.kill()
        so, se = p.communicate()
    m = re.search(r"^REPORT (.*)$", so, re.M)
    return json.loads(m.group(1)) if m else {"error": so[-2000:] + se[-3000:]}


@pytest.fixture(scope="module")
def host(tmp_path_factory, background):
    """Host canaries; the test process works in their directory (what /proc/self/cwd names on the host)."""
    h = C.plant_host(str(tmp_path_factory.mktemp("host-canary")))
    old = os.getcwd()
    os.chdir(h.dir)
    yield h
    os.chdir(old)
    C.unplant_host(h)


@pytest.fixture(scope="module")
def server():
    s = CountingServer()
    yield s
    s.close()


class Kit:
    def __init__(self, renderer, ref):
        self.r, self.ref = renderer, ref
        self.uids = list(getattr(renderer.pool, "uids", []))


@pytest.fixture(scope="module")
def mpl(host):
    r = get_renderer("matplotlib", workers=1, timeout=C.TIMEOUT, instrument=("chart",))
    ref = r.render_batch([C.BENIGN])[0]
    assert ref.ok, ref
    yield Kit(r, ref)
    r.close()


@pytest.fixture(scope="module")
def mpl_slow(host):
    r = get_renderer("matplotlib", workers=2, timeout=SLOW_TIMEOUT, instrument=("chart",))
    ref = r.render_batch([C.BENIGN])[0]
    assert ref.ok, ref
    yield Kit(r, ref)
    r.close()


@pytest.fixture(scope="module")
def svg(host):
    r = get_renderer("svg", workers=1, timeout=C.TIMEOUT)
    ref = r.render_batch([C.BENIGN_SVG])[0]
    assert ref.ok, ref
    yield Kit(r, ref)
    r.close()


def _interleaved(kit: Kit, attacks: dict[str, str]) -> dict[str, tuple]:
    """One batch: attack, benign, attack, benign, ...; name -> (attack result, following benign result)."""
    names = list(attacks)
    srcs = []
    for n in names:
        srcs += [attacks[n], C.BENIGN if kit.r.name == "matplotlib" else C.BENIGN_SVG]
    res = kit.r.render_batch(srcs)
    return {n: (res[2 * i], res[2 * i + 1]) for i, n in enumerate(names)}


def _check(name, pair, kit, host, timeout=C.TIMEOUT):
    res, after = pair
    probs = C.contained(name, res, host, timeout=timeout) + C.same_render(name, after, kit.ref)
    assert not probs, "\n".join(probs)


# ---- class 1: paths the job controls ----------------------------------------------------------------

@pytest.fixture(scope="module")
def class1(mpl, host):
    return _interleaved(mpl, {n: C.fill(s, host) for n, s in C.CLASS1.items()})


@pytest.mark.parametrize("name", list(C.CLASS1))
def test_class1_no_host_file_as_result(name, class1, mpl, host):
    _check(name, class1[name], mpl, host)


def test_class1_host_file_existence_does_not_show(mpl, host):
    a, b = mpl.r.render_batch([C.fill(C.EXISTS_PAIR[0], host), C.fill(C.EXISTS_PAIR[1], host)])

    def norm(res):
        text = (res.error or "").replace(host.dir, "H")
        return res.ok, res.error_kind, re.sub(r"[0-9]+|'[^']*'|\"[^\"]*\"", "_", text)

    assert not C.contained("exists", a, host) + C.contained("missing", b, host)
    assert norm(a) == norm(b), f"an existing host file looks different from a missing one: {norm(a)} vs {norm(b)}"


STALL_SCRIPT = textwrap.dedent("""
    import json, os, resource, sys, threading
    sys.path.insert(0, {here!r})
    import attacks_zygote_corpus as C
    from visalign.renderers import get_renderer
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))   # bound the damage to this machine
    host = C.plant_host({dir!r})
    os.chdir(host.dir)
    out = {{}}
    for name, src in C.CLASS1_STALL.items():
        r = get_renderer("matplotlib", workers=1, timeout=C.TIMEOUT, instrument=("chart",))
        ref = r.render_batch([C.BENIGN])[0]
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        box = []
        t = threading.Thread(target=lambda: box.append(r.render_batch([C.fill(src, host), C.BENIGN])), daemon=True)
        t.start()
        t.join(C.TIMEOUT + 15)
        grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) >> 10
        if not box:
            out[name] = [f"{{name}}: render_batch still blocked {{C.TIMEOUT + 15:g}} s later"]
            continue
        p = C.contained(name, box[0][0], host) + C.same_render(name, box[0][1], ref)
        if grew > 512:
            p.append(f"{{name}}: the parent grew by {{grew}} MiB")
        out[name] = p
        r.close()
    C.unplant_host(host)
    print("REPORT " + json.dumps(out), flush=True)
    os._exit(0)
""")


@pytest.fixture(scope="module")
def class1_stall(background):
    return _report_of(background["stall"], 150)


@pytest.mark.parametrize("name", list(C.CLASS1_STALL))
def test_class1_never_ending_paths_neither_stall_nor_bloat_the_parent(name, class1_stall):
    assert "error" not in class1_stall, class1_stall.get("error")
    assert not class1_stall[name], "\n".join(class1_stall[name])


# ---- class 2: malformed, huge or deep results --------------------------------------------------------

@pytest.fixture(scope="module")
def class2(mpl, host):
    # one small batch each: a result that kills a batch must not hide the attacks after it
    return {n: tuple(mpl.r.render_batch([C.fill(s, host), C.BENIGN])) for n, s in C.CLASS2.items()}


@pytest.mark.parametrize("name", list(C.CLASS2))
def test_class2_malformed_result_fails_only_that_sample(name, class2, mpl, host):
    _check(name, class2[name], mpl, host)
    res = class2[name][0]
    if res.trace is not None:
        size = len(json.dumps(res.trace, default=str))
        assert size < 16 << 20, f"{name}: a trace of {size >> 20} MiB came back unbounded"


# ---- class 3: the shared root, quotas -----------------------------------------------------------------

@pytest.fixture(scope="module")
def class3(mpl, host):
    """A renderer of its own per attack (these poison a worker for good when they work); three benign
    samples after each: the next job ids are the ones an attack pre-empted."""
    attacks = {**C.CLASS3, "quota": C.QUOTA}

    def one(src):
        with get_renderer("matplotlib", workers=1, timeout=C.TIMEOUT, instrument=("chart",)) as r:
            return r.render_batch([C.fill(src, host), C.BENIGN, C.BENIGN, C.BENIGN])

    with concurrent.futures.ThreadPoolExecutor(3) as ex:
        futs = {n: ex.submit(one, src) for n, src in attacks.items()}
    return {n: f.result() for n, f in futs.items()}


@pytest.mark.parametrize("name", list(C.CLASS3))
def test_class3_job_cannot_break_or_reach_later_jobs(name, class3, mpl, host):
    res = class3[name]
    probs = C.contained(name, res[0], host)
    for i, after in enumerate(res[1:]):
        probs += C.same_render(f"{name} (+{i + 1})", after, mpl.ref)
    assert not probs, "\n".join(probs)


def test_class3_total_disk_quota_per_job(class3, mpl, host):
    res = class3["quota"]
    _check("quota", res[:2], mpl, host)
    if res[0].ok:
        m = re.search(r"wrote=(\d+)", json.dumps(res[0].trace))
        assert m and int(m.group(1)) < 40 * (64 << 20), "a job wrote 2.5 GiB: no total disk quota"


# ---- classes 3-6: another sample's data (memory, files, caches, env, IPC, keyring) ---------------------

@pytest.fixture(scope="module")
def cross_same_batch(mpl, host):
    names = list(C.CROSS_SAMPLE)
    secrets = {n: C.new_secret() for n in names}
    srcs = []
    for n in names:
        store, scan = C.CROSS_SAMPLE[n]
        srcs += [C.fill(store, host, secrets[n]), C.fill(scan, host)]
    res = mpl.r.render_batch(srcs)
    return {n: (res[2 * i], res[2 * i + 1], secrets) for i, n in enumerate(names)}


@pytest.mark.parametrize("name", list(C.CROSS_SAMPLE))
def test_other_sample_data_same_batch(name, cross_same_batch, host):
    store_res, scan_res, secrets = cross_same_batch[name]
    probs = C.contained(f"{name} store", store_res, host)
    probs += C.contained(f"{name} scan", scan_res, host, tuple(secrets.values()))
    probs += C.scanner_ok(name, scan_res)
    assert not probs, "\n".join(probs)


@pytest.mark.parametrize("name", ["c4-memory-long-program-proc-self-mem", "c3c5-files-sandbox-tmp-shm-mplcache",
                                  "c6-keyring", "c6-sysv-shm"])
def test_other_sample_data_later_call(name, mpl, host):
    secret = C.new_secret()
    store, scan = C.CROSS_SAMPLE[name]
    a = mpl.r.render_batch([C.fill(store, host, secret)])[0]
    b = mpl.r.render_batch([C.fill(scan, host)])[0]
    probs = C.contained("store", a, host) + C.contained("scan", b, host, (secret,)) + C.scanner_ok(name, b)
    assert not probs, "\n".join(probs)


def test_other_sample_secret_is_found_by_scanner_in_its_own_program(mpl, host):
    """Positive control of the memory scanner: a secret in the scanning program itself is reported."""
    secret = C.new_secret()
    src = f"own_secret = {secret!r}\n" + C.fill(C.SCAN_MEM, host)
    res = mpl.r.render_batch([src])[0]
    assert secret in (res.error or ""), (res.error_kind, (res.error or "")[:300])


# ---- variations of the attacks already contained -------------------------------------------------------

FAST_CONTAINED = [n for n in C.CONTAINED if n not in C.SLOW]


@pytest.fixture(scope="module")
def contained_fast(mpl, host, server):
    srcs = {n: C.fill(C.CONTAINED[n], host).replace("@PORT@", str(server.port)) for n in FAST_CONTAINED}
    return _interleaved(mpl, srcs)


@pytest.fixture(scope="module")
def contained_slow(mpl_slow, host):
    # each slow attack followed by a benign one, spread over two workers
    return _interleaved(mpl_slow, {n: C.fill(C.CONTAINED[n], host) for n in C.SLOW})


@pytest.mark.parametrize("name", FAST_CONTAINED)
def test_contained_variations(name, contained_fast, mpl, host, server):
    _check(name, contained_fast[name], mpl, host)
    res = contained_fast[name][0]
    text = json.dumps(res.trace or {}) + (res.error or "")
    if name == "network-connect":
        assert server.connections == 0 and "open" not in text, "a job reached the network"
    if name == "write-outside-jobdir":
        assert not os.path.exists(os.path.join(host.dir, "pwned")) and "wrote /" not in text
    if name == "setuid-escape":
        assert "uid=0" not in text
    if name == "unshare-userns":
        assert host.secret not in text


@pytest.mark.parametrize("name", list(C.SLOW))
def test_contained_slow_variations(name, contained_slow, mpl_slow, host):
    _check(name, contained_slow[name], mpl_slow, host, timeout=SLOW_TIMEOUT)


# ---- SVG --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def svg_results(svg, host, server):
    srcs = {n: C.fill(s, host).replace("@PORT@", str(server.port)) for n, s in C.SVG_ATTACKS.items()}
    srcs["control-data-uri"] = C.svg_data_uri_png(host)
    return _interleaved(svg, srcs)


def test_svg_detector_positive_control(svg_results, host):
    """The attacker's own copy of the canary, as a data URI, is recognised: the image oracle works."""
    assert C.is_canary_image(svg_results["control-data-uri"][0], host)


@pytest.mark.parametrize("name", list(C.SVG_ATTACKS))
def test_svg_attacks(name, svg_results, svg, host, server):
    _check(name, svg_results[name], svg, host)
    assert server.connections == 0, "an SVG reached the network"


# ---- class 9: renderers and workers do not share a uid -----------------------------------------------------

def test_class9_kill_all_in_one_renderer_spares_the_other(mpl, svg, host):
    if mpl.uids and svg.uids:
        assert not set(mpl.uids) & set(svg.uids)
    stopper = ("import os, signal\nfor s in (signal.SIGSTOP, signal.SIGKILL):\n    try:\n        os.kill(-1, s)\n"
               "    except OSError:\n        pass\n")
    hold = ("import os, time\nfor _ in range(40):\n    try:\n        if os.fork() == 0:\n            time.sleep(60)\n"
            "    except OSError:\n        break\nimport matplotlib.pyplot as plt\nplt.plot([1, 2])\n")
    for attack in (stopper, hold):
        done = []
        t = threading.Thread(target=lambda a=attack, d=done: d.append(mpl.r.render_batch([a])))
        t.start()
        s = svg.r.render_batch([C.BENIGN_SVG])[0]
        t.join()
        assert s.ok and np.array_equal(np.asarray(s.image), np.asarray(svg.ref.image)), s.error
        assert C.contained("c9", done[0][0], host) == []


# ---- fallback sandbox levels: one attack per class ---------------------------------------------------------

@pytest.fixture(scope="module")
def level_reports(background):
    return {level: _report_of(background[level], 170) for level in ("namespaces", "rlimits")}


LEVEL_ATTACKS = ["c1-symlink-proc-self-cwd", "c1-symlink-proc-self-cwd-handler-writes", "c1-direct-read-host-files",
                 "c2-trace-deep-list", "c3-precreate-next-job-dirs", "files-read-secrets", "write-outside-jobdir",
                 "shell-subprocess", "kill-everything", "fork-bomb", "c9-kill-all-spares-other-renderer",
                 "c4-memory-proc-self-mem", "c3c5-files-sandbox-tmp-shm-mplcache", "c6-sysv-shm", "c6-keyring",
                 "no-stray-process", "host-tmp-clean"]
# "rlimits only" promises no network isolation (sandbox.py), so the network attack runs at "namespaces" only
LEVEL_CASES = [(lv, n) for n in LEVEL_ATTACKS for lv in ("namespaces", "rlimits")] + [("namespaces", "network-connect")]


@pytest.mark.parametrize(("level", "name"), LEVEL_CASES)
def test_fallback_levels(level, name, level_reports):
    rep = level_reports[level]
    assert "error" not in rep, rep.get("error")
    assert rep["info"]["level"].startswith(level)
    assert not rep["problems"][name], "\n".join(rep["problems"][name])


# ---- after close: no process, no key left -------------------------------------------------------------------

def _uid_has_key(uid: int, desc: bytes) -> bool:
    """Search ``uid``'s user keyrings for ``desc`` from a forked child running as that uid."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        found = b"0"
        try:
            os.setgid(uid)
            os.setuid(uid)
            libc = ctypes.CDLL(None)
            libc.syscall.restype = ctypes.c_long
            for ring in (-4, -5):
                rid = libc.syscall(250, ctypes.c_long(0), ctypes.c_long(ring), ctypes.c_long(0))
                if rid > 0 and libc.syscall(250, ctypes.c_long(10), ctypes.c_long(rid), b"user", desc,
                                            ctypes.c_long(0)) > 0:
                    found = b"1"
        finally:
            os.write(w, found)
            os._exit(0)
    os.close(w)
    got = os.read(r, 1)
    os.close(r)
    os.waitpid(pid, 0)
    return got == b"1"


def test_zz_close_leaves_no_process_and_no_key(mpl, mpl_slow, svg):
    uids = mpl.uids + mpl_slow.uids + svg.uids
    for kit in (mpl, mpl_slow, svg):
        kit.r.close()
    probs = [f"stray process {p}" for p in C.processes_of(uids)]
    probs += [f"attack left {p} on the host" for p in C.host_leftovers()]
    if os.geteuid() == 0:
        probs += [f"a key stored by a job outlived the renderer (uid {u})" for u in uids
                  if _uid_has_key(u, b"visalign-attack-key")]
    C.clean_host(uids)
    assert not probs, "\n".join(probs)
