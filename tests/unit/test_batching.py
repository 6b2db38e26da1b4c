import threading
import time

import pytest

from connector.batching import BatcherClosed, MicroBatcher, QueueFull


def test_concurrent_callers_get_their_own_results_and_calls_are_coalesced():
    sizes = []

    def fn(items):
        sizes.append(len(items))
        time.sleep(0.005)
        return [f"{x}!" for x in items]

    b = MicroBatcher(fn, max_batch_size=32, max_wait_ms=20)
    results: dict[int, list] = {}

    def call(i):
        results[i] = b([f"{i}-{j}" for j in range(i % 3 + 1)])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    b.close()
    assert all(results[i] == [f"{i}-{j}!" for j in range(i % 3 + 1)] for i in range(40))
    assert len(sizes) < 40 and max(sizes) > 1 and max(sizes) <= 32
    assert b.items_run == sum(i % 3 + 1 for i in range(40))


def test_full_queue_raises_queue_full():
    gate = threading.Event()
    b = MicroBatcher(lambda items: (gate.wait(5), items)[1], max_batch_size=1, max_wait_ms=0, max_queue=2)
    first = b.submit([1])
    time.sleep(0.05)  # the worker holds the first request; two more fill the queue
    b.submit([2])
    b.submit([3])
    with pytest.raises(QueueFull):
        b.submit([4])
    gate.set()
    assert first.result(5) == [1]
    b.close()


def test_a_failing_batch_fails_its_callers_and_the_worker_keeps_going():
    def fn(items):
        if "bad" in items:
            raise ValueError("boom")
        return items

    b = MicroBatcher(fn, max_batch_size=8, max_wait_ms=0)
    with pytest.raises(ValueError, match="boom"):
        b(["bad"], timeout=5)
    assert b(["good"], timeout=5) == ["good"]
    b.close()


def test_wrong_result_count_is_an_error_not_a_silent_misalignment():
    b = MicroBatcher(lambda items: items[:-1], max_wait_ms=0)
    with pytest.raises(RuntimeError, match="returned 1 results for 2"):
        b([1, 2], timeout=5)
    b.close()


def test_submit_after_close_raises_and_empty_submit_resolves():
    b = MicroBatcher(lambda items: items)
    assert b.submit([]).result(1) == []
    b.close()
    with pytest.raises(BatcherClosed):
        b.submit([1])


def test_on_start_runs_on_the_worker_thread():
    seen = []
    b = MicroBatcher(lambda items: items, on_start=lambda: seen.append(threading.current_thread().name), name="w1")
    b([1], timeout=5)
    b.close()
    assert seen == ["w1"]


def test_swapped_function_serves_later_batches():
    b = MicroBatcher(lambda items: ["old"] * len(items), max_wait_ms=0)
    assert b([1], timeout=5) == ["old"]
    b.set_fn(lambda items: ["new"] * len(items))
    assert b([1], timeout=5) == ["new"]
    b.close()


def test_several_workers_serve_concurrent_callers_correctly():
    names = set()

    def fn(items):
        names.add(threading.current_thread().name)
        time.sleep(0.01)
        return [x * 10 for x in items]

    b = MicroBatcher(fn, max_batch_size=4, max_wait_ms=5, workers=2, name="w")
    out: dict[int, list] = {}
    threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, b([i, i + 1]))) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    b.close()
    assert all(out[i] == [i * 10, (i + 1) * 10] for i in range(30))
    assert names == {"w-0", "w-1"}  # both workers took batches
