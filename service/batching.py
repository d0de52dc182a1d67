"""Dynamic batching: requests wait in a bounded queue; one worker thread runs them in coalesced batches.

The event loop only enqueues and awaits futures, so it never blocks on a forward pass. A batch closes
when it holds `max_batch` items or `max_wait_s` has passed since its first item was taken; while a
batch runs, new requests queue and form the next one. A batch that raises is run again item by item,
so an error reaches only the request that caused it, never the others that shared its batch.
"""

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class EngineBusy(Exception):
    """The queue is full: answer 503 with Retry-After instead of queueing without bound."""


@dataclass(frozen=True)
class BatchTiming:
    """What one request spent waiting and computing, and the batch it ran in."""

    queue_ms: float
    inference_ms: float
    batch_size: int


@dataclass(frozen=True)
class _Failed:
    """One item's exception, told apart from a result that happens to be an exception object."""

    error: Exception


@dataclass
class _Pending:
    item: Any
    future: asyncio.Future
    enqueued_at: float


class BatchingEngine(Generic[Item, Result]):
    """Bounded queue + one worker thread running `run_batch(items) -> results` (same order, same length)."""

    def __init__(
        self,
        *,
        name: str,
        run_batch: Callable[[Sequence[Item]], Sequence[Result]],
        max_batch: int,
        max_wait_s: float,
        max_queue: int,
        on_batch: Callable[[int, float], None] | None = None,
        on_queue_depth: Callable[[int], None] | None = None,
        on_cancelled: Callable[[int], None] | None = None,
        worker_init: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.on_batch = on_batch or (lambda size, seconds: None)
        self.on_queue_depth = on_queue_depth or (lambda depth: None)
        self.on_cancelled = on_cancelled or (lambda count: None)
        self.worker_init = worker_init
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task | None = None
        # One thread: batches run one after another, each using torch's intra-op threads.
        self._executor: ThreadPoolExecutor | None = None

    @property
    def running(self) -> bool:
        """Started and not yet stopped."""
        return self._worker is not None

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.max_queue)
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"infer-{self.name}", initializer=self.worker_init
        )
        self._worker = asyncio.create_task(self._work(), name=f"batching-{self.name}")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        while self._queue is not None and not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(EngineBusy(f"{self.name} engine stopped"))
        if self._executor is not None:  # waits for a batch still running, off the event loop
            await asyncio.to_thread(self._executor.shutdown, wait=True)
        self._worker = self._executor = None

    async def submit(self, item: Item) -> tuple[Result, BatchTiming]:
        """Queue one item and wait for its result; raises EngineBusy at once when the queue is full."""
        if self._queue is None:
            raise RuntimeError(f"{self.name} engine is not started")
        future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Pending(item=item, future=future, enqueued_at=time.perf_counter()))
        except asyncio.QueueFull:
            raise EngineBusy(f"{self.name} queue is full ({self.max_queue} waiting)") from None
        self.on_queue_depth(self._queue.qsize())
        return await future

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            self.on_queue_depth(self._queue.qsize())
            # A client that went away cancelled its future: do not compute for it.
            live = [pending for pending in batch if not pending.future.done()]
            if len(live) < len(batch):
                self.on_cancelled(len(batch) - len(live))
            batch = live
            if not batch:
                continue
            started = time.perf_counter()
            try:
                outcomes = await loop.run_in_executor(self._executor, self._run_isolated, [p.item for p in batch])
            except asyncio.CancelledError:  # stopped mid-batch: its requests get a 503 instead of waiting for ever
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(EngineBusy(f"{self.name} engine stopped"))
                raise
            except Exception as error:  # only a broken engine (e.g. its executor shut down) gets here
                outcomes = [_Failed(error)] * len(batch)
            finished = time.perf_counter()
            self.on_batch(len(batch), finished - started)
            for pending, outcome in zip(batch, outcomes):
                if pending.future.done():
                    continue
                if isinstance(outcome, _Failed):
                    pending.future.set_exception(outcome.error)
                    continue
                timing = BatchTiming(
                    queue_ms=(started - pending.enqueued_at) * 1e3,
                    inference_ms=(finished - started) * 1e3,
                    batch_size=len(batch),
                )
                pending.future.set_result((outcome, timing))

    def _run_isolated(self, items: list[Any]) -> list[Any]:
        """Results in order, or for each item that fails on its own, its exception (inference thread)."""
        try:
            return self._run_checked(items)
        except Exception as error:
            if len(items) == 1:
                return [_Failed(error)]
        # One item's failure must not become the others' answer: each is run alone to find whose it is.
        outcomes: list[Any] = []
        for item in items:
            try:
                outcomes.extend(self._run_checked([item]))
            except Exception as error:
                outcomes.append(_Failed(error))
        return outcomes

    def _run_checked(self, items: list[Any]) -> list[Any]:
        results = list(self.run_batch(items))
        if len(results) != len(items):
            raise RuntimeError(f"{self.name}: run_batch returned {len(results)} results for {len(items)} items")
        return results

    async def _collect(self) -> list[_Pending]:
        batch = [await self._queue.get()]
        deadline = time.perf_counter() + self.max_wait_s
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), timeout=remaining))
            except asyncio.TimeoutError:
                break
        return batch
