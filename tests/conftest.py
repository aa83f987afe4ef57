"""Shared fixtures: real servers on 127.0.0.1 and process accounting for the sandbox tests."""

from __future__ import annotations

import http.server
import importlib.util
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import psutil
import pytest

from visalign.renderers.sandbox import detect_sandbox

#: doctests over ~3 s on 2 cores (each starts a renderer pool, a browser or a model of its own): marked
#: slow like the tests, so `make test-fast` skips them and `make test` still runs them
SLOW_DOCTESTS = frozenset({
    "visalign.metrics.chart_code.chart_code_metrics", "visalign.metrics.chart_code.chart_code_metrics_batch",
    "visalign.rewards.chart_code.ChartCodeReward", "visalign.renderers.pool.ZygotePool",
    "visalign.renderers.html.HtmlRenderer", "visalign.renderers.matplotlib.MatplotlibRenderer",
    "visalign.data.charts.chart_dataset", "visalign.rewards.ocr.OcrReward", "visalign.rewards.identity.IdentityReward",
})



SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` imported as a module (the scripts are not a package), its main not run."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if type(item).__name__ == "DoctestItem" and item.name in SLOW_DOCTESTS:
            item.add_marker(pytest.mark.slow)


GOOD_CHART = "import matplotlib.pyplot as plt\nplt.bar(['a', 'b', 'c'], [3, 1, 2], color='#1f77b4')\nplt.title('ok')\n"


class CountingServer:
    """A real HTTP server on 127.0.0.1 (port chosen by the OS) that counts every connection and
    request; it serves a green stylesheet for ``*.css`` and a small page otherwise."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.connections = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.paths.append(self.path)
                body = b"body{background:#00ff00}" if self.path.endswith(".css") else b"<p>from the server</p>"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET

            def log_message(self, *args: object) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            def get_request(self) -> tuple[socket.socket, object]:
                outer.connections += 1
                return super().get_request()

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server_address = self.server.server_address
        self.port = self.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def http_server() -> Iterator[CountingServer]:
    server = CountingServer()
    yield server
    server.close()


def processes_of_uid(uid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes running as ``uid``."""
    out = []
    for p in psutil.process_iter(["uids", "status"]):
        try:
            if p.info["uids"] and p.info["uids"].real == uid and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


@pytest.fixture(scope="session")
def sandbox_info():
    return detect_sandbox()


requires_bwrap = pytest.mark.skipif(detect_sandbox().level != "bubblewrap",
                                    reason="needs the bubblewrap sandbox level (make setup installs bwrap)")
requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="uid separation is used only when running as root")


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and a shared 2-core machine stalls two spinning threads;
    a module opts in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_class_unet(num_classes: int, seed: int = 0):
    """A random class-conditional ``UNet2DModel`` on 8x8 RGB (two levels of 8 / 16 channels): the tiny
    denoiser the flow tests train and sample."""
    import torch
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4, num_class_embeds=num_classes)
