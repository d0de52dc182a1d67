"""The batching engine: coalescing, the wait bound, backpressure, and a failing batch that fails only itself."""

import asyncio
import threading

import pytest

from service.batching import BatchingEngine, EngineBusy, ItemTooLarge
from service.memory import MemoryBudget

GUARD_S = 60  # a deadlock guard for waits that end on an event, never a speed goal


def run(coroutine):
    return asyncio.run(coroutine)


def make_engine(run_batch, **options) -> BatchingEngine:
    settings = {"name": "test", "max_batch": 4, "max_wait_s": 0.05, "max_queue": 16} | options
    return BatchingEngine(run_batch=run_batch, **settings)


def test_concurrent_requests_are_coalesced_up_to_max_batch_in_order():
    batches = []

    def double(items):
        batches.append(list(items))
        return [2 * item for item in items]

    async def scenario():
        engine = make_engine(double, max_batch=4, max_wait_s=0.2)
        await engine.start()
        try:
            return await asyncio.gather(*(engine.submit(i) for i in range(10)))
        finally:
            await engine.stop()

    outcomes = run(scenario())
    assert [result for result, _ in outcomes] == [2 * i for i in range(10)]
    assert [len(batch) for batch in batches] == [4, 4, 2]
    assert sorted(item for batch in batches for item in batch) == list(range(10))
    assert [timing.batch_size for _, timing in outcomes] == [4] * 8 + [2] * 2


def test_a_lone_request_waits_for_company_until_max_wait_then_runs_alone():
    async def scenario():
        engine = make_engine(lambda items: list(items), max_batch=8, max_wait_s=0.1)
        await engine.start()
        try:
            # Nothing else is ever submitted: only the max_wait deadline can close this batch.
            return await asyncio.wait_for(engine.submit("x"), timeout=GUARD_S)
        finally:
            await engine.stop()

    result, timing = run(scenario())
    assert result == "x" and timing.batch_size == 1
    assert timing.queue_ms >= 90  # it did wait for company (the clock cannot run short)


def test_batching_off_runs_one_at_a_time():
    sizes = []

    async def scenario():
        engine = make_engine(lambda items: sizes.append(len(items)) or list(items), max_batch=1)
        await engine.start()
        try:
            await asyncio.gather(*(engine.submit(i) for i in range(5)))
        finally:
            await engine.stop()

    run(scenario())
    assert sizes == [1] * 5


def test_inference_runs_off_the_event_loop_thread():
    threads = []

    async def scenario():
        engine = make_engine(lambda items: threads.append(threading.current_thread().name) or list(items))
        await engine.start()
        try:
            await engine.submit(1)
        finally:
            await engine.stop()
        return threading.current_thread().name

    loop_thread = run(scenario())
    assert threads and threads[0] != loop_thread and threads[0].startswith("infer-test")


def test_full_queue_raises_engine_busy_at_once_and_the_engine_recovers():
    entered, release = threading.Event(), threading.Event()

    def slow(items):
        entered.set()
        release.wait(GUARD_S)
        return list(items)

    async def scenario():
        engine = make_engine(slow, max_batch=1, max_wait_s=0, max_queue=2)
        await engine.start()
        try:
            running = asyncio.create_task(engine.submit("running"))
            assert await asyncio.to_thread(entered.wait, GUARD_S)  # the worker holds "running" inside `slow`
            queued = [asyncio.create_task(engine.submit(f"queued{i}")) for i in range(2)]
            await asyncio.sleep(0)  # one loop turn: both tasks run up to their first await, queued
            assert engine.queue_depth == 2
            # "At once": submit raises on its first step, before it ever suspends (awaits) on the event loop.
            refused = engine.submit("one too many")
            with pytest.raises(EngineBusy, match="queue is full"):
                refused.send(None)
            release.set()
            done = [result for result, _ in await asyncio.gather(running, *queued)]
            after, _ = await engine.submit("after")
            return done, after
        finally:
            release.set()
            await engine.stop()

    done, after = run(scenario())
    assert done == ["running", "queued0", "queued1"] and after == "after"


def test_a_failing_batch_fails_its_requests_and_the_worker_keeps_serving():
    def fragile(items):
        if "bad" in items:
            raise ValueError("model exploded")
        return list(items)

    async def scenario():
        engine = make_engine(fragile, max_batch=1, max_wait_s=0)
        await engine.start()
        try:
            with pytest.raises(ValueError, match="model exploded"):
                await engine.submit("bad")
            return await engine.submit("good")
        finally:
            await engine.stop()

    assert run(scenario())[0] == "good"


def test_callbacks_report_batch_sizes_and_queue_depth():
    batches, depths = [], []

    async def scenario():
        engine = make_engine(
            lambda items: list(items), max_batch=3, max_wait_s=0.1,
            on_batch=lambda size, seconds: batches.append((size, seconds)), on_queue_depth=depths.append,
        )  # fmt: skip
        await engine.start()
        try:
            await asyncio.gather(*(engine.submit(i) for i in range(3)))
        finally:
            await engine.stop()

    run(scenario())
    assert [size for size, _ in batches] == [3] and all(seconds >= 0 for _, seconds in batches)
    assert max(depths) >= 1 and depths[-1] == 0


def test_worker_init_runs_in_the_inference_thread():
    initialised, ran = [], []

    async def scenario():
        engine = make_engine(
            lambda items: ran.append(threading.current_thread().name) or list(items),
            worker_init=lambda: initialised.append(threading.current_thread().name),
        )
        await engine.start()
        try:
            await engine.submit(1)
        finally:
            await engine.stop()

    run(scenario())
    assert initialised and initialised == ran


# ------------------------------------------------------------------------- the memory budget (issue 23)


def budgeted_engine(run_batch, budget: MemoryBudget, **options) -> BatchingEngine:
    """Items are strings charged one byte a character."""
    return make_engine(run_batch, memory=budget, item_bytes=len, **options)


def held_batches():
    """(run_batch, entered, release): run_batch holds each batch until `release` is set."""
    entered, release = threading.Event(), threading.Event()

    def held(items):
        entered.set()
        assert release.wait(GUARD_S), "never released"
        return list(items)

    return held, entered, release


def test_queued_items_hold_their_bytes_until_their_batch_has_run():
    budget = MemoryBudget(100)
    held, entered, release = held_batches()
    seen = []

    async def scenario():
        engine = budgeted_engine(held, budget, max_batch=1, max_wait_s=0)
        await engine.start()
        try:
            running = asyncio.create_task(engine.submit("r" * 10))
            assert await asyncio.to_thread(entered.wait, GUARD_S)
            queued = [asyncio.create_task(engine.submit("q" * 20)) for _ in range(2)]
            await asyncio.sleep(0)
            seen.append(budget.used)  # the running item and both queued ones
            release.set()
            await asyncio.gather(running, *queued)
            seen.append(budget.used)
        finally:
            release.set()
            await engine.stop()

    run(scenario())
    assert seen == [50, 0]


def test_a_flood_is_refused_by_bytes_before_the_count_limit_and_one_too_large_for_the_whole_budget_is_too_large():
    budget = MemoryBudget(100)
    held, entered, release = held_batches()

    async def scenario():
        engine = budgeted_engine(held, budget, max_batch=1, max_wait_s=0, max_queue=16)
        await engine.start()
        try:
            running = asyncio.create_task(engine.submit("r" * 40))
            assert await asyncio.to_thread(entered.wait, GUARD_S)
            queued = asyncio.create_task(engine.submit("q" * 40))
            await asyncio.sleep(0)
            refused = engine.submit("x" * 40)  # 120 bytes with the two above: over 100, 2 of 16 places taken
            busy = r"memory budget \(80 of IMAGE_MEMORY_BYTES=100 bytes; this one needs 40\)"
            with pytest.raises(EngineBusy, match=busy):
                refused.send(None)  # at once, before it waits
            with pytest.raises(ItemTooLarge) as too_large:
                await engine.submit("y" * 101)
            assert engine.queue_depth == 1 and budget.used == 80  # neither refused one holds anything
            release.set()
            await asyncio.gather(running, queued)
            return too_large.value
        finally:
            release.set()
            await engine.stop()

    too_large = run(scenario())
    assert (too_large.nbytes, too_large.limit) == (101, 100) and budget.used == 0


def test_a_failing_batch_gives_its_bytes_back():
    budget = MemoryBudget(100)

    def broken(items):
        raise RuntimeError("kernel failed")

    async def scenario():
        engine = budgeted_engine(broken, budget, max_batch=4, max_wait_s=0.01)
        await engine.start()
        try:
            return await asyncio.gather(*(engine.submit("e" * 30) for _ in range(3)), return_exceptions=True)
        finally:
            await engine.stop()

    outcomes = run(scenario())
    assert all(isinstance(outcome, RuntimeError) for outcome in outcomes) and budget.used == 0


def test_an_item_whose_client_left_gives_its_bytes_back_at_once_while_the_worker_is_busy():
    budget = MemoryBudget(100)
    held, entered, release = held_batches()
    computed = []
    seen = {}

    async def scenario():
        engine = budgeted_engine(lambda items: computed.extend(items) or held(items), budget, max_batch=1, max_wait_s=0)
        await engine.start()
        try:
            running = asyncio.create_task(engine.submit("r" * 10))
            assert await asyncio.to_thread(entered.wait, GUARD_S)
            leaving = asyncio.create_task(engine.submit("l" * 60))
            await asyncio.sleep(0)
            seen["queued"] = budget.used
            leaving.cancel()  # what request_path does when its client disconnects
            with pytest.raises(asyncio.CancelledError):
                await leaving
            seen["left"] = budget.used  # the worker still holds the running batch: released by the cancellation
            release.set()
            await running
            await engine.submit("a" * 5)  # the queue is run in order: the cancelled entry has been skipped
        finally:
            release.set()
            await engine.stop()

    run(scenario())
    assert seen == {"queued": 70, "left": 10} and budget.used == 0
    assert computed == ["r" * 10, "a" * 5]


def test_stopping_the_engine_gives_back_the_bytes_of_the_running_batch_and_the_queue():
    budget = MemoryBudget(100)
    held, entered, release = held_batches()

    async def scenario():
        engine = budgeted_engine(held, budget, max_batch=1, max_wait_s=0)
        await engine.start()
        running = asyncio.create_task(engine.submit("r" * 10))
        assert await asyncio.to_thread(entered.wait, GUARD_S)
        queued = [asyncio.create_task(engine.submit("q" * 20)) for _ in range(2)]
        await asyncio.sleep(0)
        assert budget.used == 50
        stopping = asyncio.create_task(engine.stop())
        await asyncio.sleep(0.01)
        release.set()  # stop() waits for the batch the model is running
        await stopping
        return await asyncio.gather(running, *queued, return_exceptions=True)

    outcomes = run(scenario())
    assert all(isinstance(outcome, EngineBusy) for outcome in outcomes) and budget.used == 0
