"""Fixtures shared by the test modules, and where ../shared (the read-only data beside the repo) is."""

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def shared_data(name: str) -> Path:
    """../shared/data/<name>, or skip the test: CI clones may not sit beside shared/."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"../shared/data/{name} is absent (it sits beside the repository on the dev machine)")
    return path


@pytest.fixture
def coco_mini() -> Path:
    """../shared/data/coco-mini: 80 train + 79 val real COCO 2017 images with their instances JSON."""
    return shared_data("coco-mini")


@pytest.fixture
def one_thread():
    """In-process training runs use one thread, as the subprocesses do (OMP_NUM_THREADS=1): on a busy
    2-core machine two threads waiting on each other run several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def live_server():
    """Start an ASGI app under a real uvicorn on 127.0.0.1 (port 0, the bound port read back) in a thread:
    `url = live_server(app)`; every server started is shut down (through its lifespan) after the test.
    `live_server(app, ready=False)` returns as soon as it listens, without waiting for /readyz."""
    from bench.loopback import LoopbackServer, wait_ready

    servers = []

    def start(app, *, ready: bool = True) -> str:
        server = LoopbackServer(app)
        servers.append(server)
        url = server.start()
        if ready:
            wait_ready(url)
        return url

    yield start
    for server in reversed(servers):
        server.stop()
