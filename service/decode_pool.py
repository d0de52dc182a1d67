"""A pool of reusable decoding processes: every decode runs outside the server process, under a CPU-time budget.

A worker arms a CPU-time timer (ITIMER_PROF) before each job. Over budget, the kernel ends it with SIGPROF's
default action, even deep inside a C decoder that never returns to Python; its CPU and memory come back at
once, and the pool starts a replacement (a fork of the fork server, which holds the imports). A request
whose client left cancels its job: a queued one never reaches a worker, a running one is killed the same
way. Workers are reused, so a normal upload pays one pickle each way, not a process start.
"""

import asyncio
import logging
import multiprocessing
import os
import signal
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

from service.memory import MemoryBudget, release_free_memory

log = logging.getLogger("service")

# The fork server imports these once; each worker is a fork of it and starts in milliseconds. "__main__" too:
# else every worker would import the main module again (multiprocessing's spawn rule).
PRELOADED = ["__main__", "service.images", "service.decode_pool"]


class DecodeBudgetExceeded(Exception):
    """A decode used more CPU time than its budget; its worker was killed."""


class DecodePoolStopped(Exception):
    """The pool is not running (not started yet, or the server is shutting down)."""


class DecodePoolBusy(Exception):
    """`run(..., wait=False)` found no idle worker."""


class DecoderCrashed(Exception):
    """The worker died on the job by itself (a decoder's segfault, the kernel's OOM killer): the file's fault."""


class MemoryRefused(Exception):
    """A job asked for more memory than the pool's budget has free (`too_large`: more than all of it)."""

    def __init__(self, nbytes: int, *, limit: int, too_large: bool) -> None:
        super().__init__(nbytes, limit, too_large)
        self.nbytes = nbytes
        self.limit = limit
        self.too_large = too_large

    def __reduce__(self):  # pickled with its keywords: it crosses from a worker to the server
        return _memory_refused, (self.nbytes, self.limit, self.too_large)


def _memory_refused(nbytes: int, limit: int, too_large: bool) -> MemoryRefused:
    return MemoryRefused(nbytes, limit=limit, too_large=too_large)


_pipe: Connection | None = None  # a worker's pipe to the pool, for reserve_memory


def reserve_memory(nbytes: int) -> None:
    """Called by a job before it allocates: the pool's MemoryBudget must admit `nbytes` (held until the job ends,
    or its worker is killed), else MemoryRefused. Outside a worker (a test calling the job), a no-op."""
    if _pipe is None:
        return
    _pipe.send(("reserve", nbytes))
    granted, limit = _pipe.recv()
    if not granted:
        raise MemoryRefused(nbytes, limit=limit, too_large=nbytes > limit)


def _worker_main(connection: Connection, nice: int) -> None:
    """Run jobs until the pool closes the pipe; each under the CPU-time budget it comes with."""
    global _pipe
    _pipe = connection
    if nice:
        os.nice(nice)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle: it stops the pool
    signal.signal(signal.SIGPROF, signal.SIG_DFL)  # over budget: the kernel ends this process, wherever it is
    warnings.simplefilter("ignore")  # Pillow's DecompressionBombWarning: the pixel limit is checked in the job
    while True:
        try:
            function, args, budget_s = connection.recv()
        except (EOFError, OSError):
            return
        signal.setitimer(signal.ITIMER_PROF, budget_s)
        try:
            outcome: tuple[bool, Any] = (True, function(*args))
        except Exception as error:
            outcome = (False, error)
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
        try:
            connection.send(outcome)
        except Exception as error:  # an unpicklable result or exception: still an answer, never a hang
            connection.send((False, RuntimeError(f"{type(error).__name__}: {error}")))
        del outcome
        release_free_memory()  # a large image's heap goes back now, not when the next job happens to reuse it


class _Worker:
    def __init__(self, context: multiprocessing.context.BaseContext, *, nice: int) -> None:
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child, nice), daemon=True, name="resdet-decode")
        self.process.start()
        child.close()  # so that a dead worker reads as EOF here

    def kill(self) -> None:
        if self.process.is_alive():
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.join()
        self.connection.close()


class DecodePool:
    """`await pool.run(function, *args)` runs `function(*args)` (module-level, picklable) in a worker process.

    `on_event(kind)` is told "cancelled_queued", "cancelled_running", "over_budget", "crashed" and "replaced".
    `nice` lowers the workers' CPU priority (19: they take only what the rest of the machine leaves).
    """

    def __init__(
        self,
        *,
        workers: int,
        cpu_budget_s: float,
        memory: MemoryBudget | None = None,
        nice: int = 0,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.workers = workers
        self.memory = memory
        self.nice = nice
        self.cpu_budget_s = cpu_budget_s
        self.on_event = on_event or (lambda kind: None)
        self._context = multiprocessing.get_context("forkserver")
        self._idle: asyncio.Queue[_Worker] | None = None
        self._all: set[_Worker] = set()
        self._lock = threading.Lock()
        self._threads: ThreadPoolExecutor | None = None
        self._stopped = False

    async def start(self) -> None:
        """Start the fork server and the workers (seconds, once: the fork server imports the decoder)."""
        self._context.set_forkserver_preload(PRELOADED)
        self._idle = asyncio.Queue()
        # One thread per worker waits on its pipe, so the event loop never blocks on a 20 MB send.
        self._threads = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="decode-pipe")
        started = await asyncio.gather(*(asyncio.to_thread(self._new_worker) for _ in range(self.workers)))
        for worker in started:
            self._idle.put_nowait(worker)

    async def stop(self) -> None:
        self._stopped = True
        with self._lock:
            workers, self._all = list(self._all), set()
        for worker in workers:
            await asyncio.to_thread(worker.kill)
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)

    def _new_worker(self) -> _Worker:
        worker = _Worker(self._context, nice=self.nice)
        with self._lock:
            self._all.add(worker)
        return worker

    async def run(self, function: Callable[..., Any], *args: Any, wait: bool = True) -> Any:
        """`function(*args)` in a worker; its exception is raised here. DecodeBudgetExceeded when it ran over
        the CPU-time budget. Cancelled while queued: leaves the queue; while running: the worker is killed.
        `wait=False`: DecodePoolBusy at once when no worker is idle."""
        if self._idle is None or self._stopped:
            raise DecodePoolStopped("the decode pool is not running")
        if not wait and self._idle.empty():
            raise DecodePoolBusy("every decoding worker is busy")
        try:
            worker = await self._idle.get()
        except asyncio.CancelledError:
            self.on_event("cancelled_queued")
            raise
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(self._threads, self._round_trip, worker, (function, args, self.cpu_budget_s))
        try:
            ok, value = await asyncio.shield(job)
        except asyncio.CancelledError:
            self.on_event("cancelled_running")
            job.add_done_callback(lambda done: done.exception())  # its EOFError is expected: nobody reads it
            await asyncio.to_thread(worker.kill)  # ends the round trip too (EOF)
            self._replace(worker)
            raise
        except (EOFError, OSError):  # the worker died: over its CPU budget, or killed from outside
            exitcode = await asyncio.to_thread(_reaped, worker)
            self._replace(worker)
            if exitcode == -signal.SIGPROF:
                self.on_event("over_budget")
                raise DecodeBudgetExceeded(f"over the decode CPU-time budget of {self.cpu_budget_s:g} s") from None
            self.on_event("crashed")
            raise DecoderCrashed(f"the decoder died on it (exit code {exitcode})") from None
        self._idle.put_nowait(worker)
        if not ok:
            raise value
        return value

    def _round_trip(self, worker: _Worker, job: tuple) -> tuple[bool, Any]:
        """Send the job, answer its memory reservations, return its outcome; whatever it reserved is released when
        it ends, answered or killed (EOFError)."""
        worker.connection.send(job)
        reserved = 0
        try:
            while True:
                message = worker.connection.recv()
                if not (isinstance(message, tuple) and message[0] == "reserve"):
                    return message
                granted = self.memory is None or self.memory.try_reserve(message[1])
                reserved += message[1] if granted and self.memory is not None else 0
                worker.connection.send((granted, self.memory.limit if self.memory is not None else 0))
        finally:
            if reserved:
                self.memory.release(reserved)

    def _replace(self, dead: _Worker) -> None:
        with self._lock:
            self._all.discard(dead)
        if self._stopped:
            return
        self.on_event("replaced")
        task = asyncio.get_running_loop().run_in_executor(None, self._new_worker)
        task.add_done_callback(self._replaced)

    def _replaced(self, done: asyncio.Future) -> None:
        if done.exception() is not None:  # the pool runs one worker short; the others go on serving
            log.error("could not start a decoding worker: %r", done.exception())
        elif self._stopped:
            done.result().kill()
        else:
            self._idle.put_nowait(done.result())


def _reaped(worker: _Worker) -> int | None:
    worker.process.join()
    worker.connection.close()
    return worker.process.exitcode
