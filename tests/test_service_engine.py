"""The batching engine: coalescing, the wait bound, backpressure, and a failing batch that fails only itself."""

import asyncio
import threading
import time

import pytest

from service.engine import BatchingEngine, EngineBusy


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


def test_a_lone_request_waits_at_most_max_wait():
    async def scenario():
        engine = make_engine(lambda items: list(items), max_batch=8, max_wait_s=0.1)
        await engine.start()
        try:
            started = time.perf_counter()
            result, timing = await engine.submit("x")
            return result, timing, time.perf_counter() - started
        finally:
            await engine.stop()

    result, timing, elapsed = run(scenario())
    assert result == "x" and timing.batch_size == 1
    assert 0.09 <= elapsed < 1.0 and timing.queue_ms >= 90


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
    release = threading.Event()

    def slow(items):
        release.wait(5)
        return list(items)

    async def scenario():
        engine = make_engine(slow, max_batch=1, max_wait_s=0, max_queue=2)
        await engine.start()
        try:
            running = asyncio.create_task(engine.submit("running"))
            while engine.queue_depth:  # the worker has taken it and is blocked in `slow`
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            queued = [asyncio.create_task(engine.submit(f"queued{i}")) for i in range(2)]
            await asyncio.sleep(0.05)
            assert engine.queue_depth == 2
            started = time.perf_counter()
            with pytest.raises(EngineBusy, match="queue is full"):
                await engine.submit("one too many")
            refused_in = time.perf_counter() - started
            release.set()
            done = [result for result, _ in await asyncio.gather(running, *queued)]
            after, _ = await engine.submit("after")
            return done, after, refused_in
        finally:
            release.set()
            await engine.stop()

    done, after, refused_in = run(scenario())
    assert done == ["running", "queued0", "queued1"] and after == "after"
    assert refused_in < 0.05


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
