"""Dynamic batching: requests wait in a bounded queue; one worker thread runs them in coalesced batches.

The event loop only enqueues and awaits futures, so it never blocks on a forward pass. A batch closes
when it holds `max_batch` items or `max_wait_s` has passed since its first item was taken; while a
batch runs, new requests queue and form the next one. A batch that raises is run again item by item,
so an error reaches only the request that caused it, never the others that shared its batch.

Given a MemoryBudget (service/memory.py, the one the decodes reserve from too), each item's bytes are reserved
when it is queued and released once it is no longer held: its batch has run (answered or failed), its client left
while it waited, or the engine stopped. An item that does not fit now is refused at once (EngineBusy), not queued.
"""

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from service.memory import MemoryBudget

Item = TypeVar("Item")
Result = TypeVar("Result")


class EngineBusy(Exception):
    """The queue is full, by count or by bytes: answer 503 with Retry-After instead of queueing without bound."""


class ItemTooLarge(Exception):
    """One item needs more bytes than the whole memory budget: it could never be queued (413)."""

    def __init__(self, nbytes: int, *, budget: MemoryBudget) -> None:
        super().__init__(
            f"an image needs {nbytes} bytes while it waits for inference, over {budget.setting}={budget.limit}"
        )
        self.nbytes = nbytes
        self.limit = budget.limit


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
    nbytes: int = 0  # reserved from the memory budget until released
    running: bool = False  # taken into a batch: its bytes are held until the batch ends, cancelled or not


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
        memory: MemoryBudget | None = None,
        item_bytes: Callable[[Item], int] | None = None,
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
        self.memory = memory
        self.item_bytes = item_bytes or (lambda item: 0)
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
            self._release(pending)
            if not pending.future.done():
                pending.future.set_exception(EngineBusy(f"{self.name} engine stopped"))
        if self._executor is not None:  # waits for a batch still running, off the event loop
            await asyncio.to_thread(self._executor.shutdown, wait=True)
        self._worker = self._executor = None

    async def submit(self, item: Item) -> tuple[Result, BatchTiming]:
        """Queue one item and wait for its result; raises EngineBusy at once when the queue is full (by count, or
        by bytes: the memory budget cannot hold it now), ItemTooLarge when it needs more than the whole budget."""
        if self._queue is None:
            raise RuntimeError(f"{self.name} engine is not started")
        if self._queue.full():
            raise EngineBusy(f"{self.name} queue is full ({self.max_queue} waiting)")
        nbytes = self.item_bytes(item) if self.memory is not None else 0
        if nbytes > 0:
            if nbytes > self.memory.limit:
                raise ItemTooLarge(nbytes, budget=self.memory)
            if not self.memory.try_reserve(nbytes):
                raise EngineBusy(
                    f"{self.name}: the images waiting and decoding hold the memory budget ({self.memory.used} of "
                    f"{self.memory.setting}={self.memory.limit} bytes; this one needs {nbytes}); retry shortly"
                )
        future = asyncio.get_running_loop().create_future()
        pending = _Pending(item=item, future=future, enqueued_at=time.perf_counter(), nbytes=nbytes)
        # A client that leaves while its item waits cancels the future: the bytes come back now, not when the
        # worker reaches it (after a long batch); the queue keeps only the empty entry.
        future.add_done_callback(lambda done: self._release_cancelled(pending))
        self._queue.put_nowait(pending)  # not full: checked above, and nothing ran since on this event loop
        self.on_queue_depth(self._queue.qsize())
        return await future

    def _release_cancelled(self, pending: _Pending) -> None:
        if pending.future.cancelled() and not pending.running:  # a running batch still reads its item
            self._release(pending)

    def _release(self, pending: _Pending) -> None:
        """Give back what `pending` reserved and drop its item (once; on the event loop)."""
        pending.item = None
        if pending.nbytes:
            self.memory.release(pending.nbytes)
            pending.nbytes = 0

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
            for pending in batch:
                pending.running = True
            started = time.perf_counter()
            try:
                outcomes = await loop.run_in_executor(self._executor, self._run_isolated, [p.item for p in batch])
            except asyncio.CancelledError:  # stopped mid-batch: its requests get a 503 instead of waiting for ever
                for pending in batch:
                    self._release(pending)  # stop() waits for the executor: the batch is over when stop returns
                    if not pending.future.done():
                        pending.future.set_exception(EngineBusy(f"{self.name} engine stopped"))
                raise
            except Exception as error:  # only a broken engine (e.g. its executor shut down) gets here
                outcomes = [_Failed(error)] * len(batch)
            finished = time.perf_counter()
            for pending in batch:
                self._release(pending)
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
