"""Fixtures shared by the test modules, and where ../shared (the read-only data beside the repo) is."""

import threading
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


@pytest.fixture(autouse=True)
def default_subnormals():
    """A trainer run in-process flushes subnormal floats (training.precision.flush_denormals), a setting of
    the whole process: put the default back so later tests (hypothesis' float strategies refuse to run
    under flush-to-zero) see what a fresh process sees."""
    yield
    torch.set_flush_denormal(False)


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


class BatchGate:
    """Holds a BatchingEngine's next batch until released, and tells when N requests queue behind it.

    Batch-forming tests use it instead of a long MAX_BATCH_WAIT_MS window: while the gate holds the
    running batch, requests pile up in the queue; released, they leave together as the next batch.
    """

    def __init__(self, engine) -> None:
        self.engine = engine
        self.entered = threading.Event()  # a batch is inside run_batch, held
        self._release = threading.Event()
        self._depth_changed = threading.Condition()
        self._run_batch, self._on_queue_depth = engine.run_batch, engine.on_queue_depth

        def held_run_batch(items):
            self.entered.set()
            assert self._release.wait(GUARD_S), "gate never released"
            return self._run_batch(items)

        def reported_depth(depth: int) -> None:
            self._on_queue_depth(depth)
            with self._depth_changed:
                self._depth_changed.notify_all()

        engine.run_batch, engine.on_queue_depth = held_run_batch, reported_depth

    def wait_entered(self) -> None:
        assert self.entered.wait(GUARD_S), "no batch reached the model"

    def wait_queued(self, count: int) -> None:
        """Block until `count` requests wait in the engine's queue (the engine reports every change)."""
        with self._depth_changed:
            assert self._depth_changed.wait_for(lambda: self.engine.queue_depth >= count, GUARD_S), (
                f"queue depth {self.engine.queue_depth}, waited for {count}"
            )

    def release(self) -> None:
        self._release.set()

    def restore(self) -> None:
        self._release.set()
        self.engine.run_batch, self.engine.on_queue_depth = self._run_batch, self._on_queue_depth


GUARD_S = 60  # a deadlock guard for event waits, never a speed goal


@pytest.fixture
def batch_gate():
    """`gate = batch_gate(engine)`: hold that engine's batches (BatchGate); restored after the test."""
    gates = []

    def hold(engine) -> BatchGate:
        gate = BatchGate(engine)
        gates.append(gate)
        return gate

    yield hold
    for gate in gates:
        gate.restore()
