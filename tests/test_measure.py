"""The timed loop and its trackers (bench/measure.py): latency statistics, warm-up outside the timing,
per-row memory."""

from __future__ import annotations


import numpy as np
import pytest

from bench.measure import Energy, Latency, Memory, latency_stats, time_steps


def test_latency_stats():
    stats = latency_stats([float(v) for v in range(1, 101)])
    assert stats["mean"] == pytest.approx(50.5)
    assert stats["p50"] == pytest.approx(50.5)
    assert stats["p90"] == pytest.approx(90.1)
    assert stats["p99"] == pytest.approx(99.01)
    assert stats["std"] == pytest.approx(np.std(np.arange(1, 101)))
    assert stats["min"] == 1.0


def test_time_steps_runs_warmup_untimed_and_trackers_around_the_timed_steps():
    calls = []

    class Counting(Energy.__mro__[1]):  # a Tracker that notes when it starts and stops
        def start(self):
            calls.append("start")

        def stop(self):
            calls.append("stop")

        def fields(self, loop):
            return {"steps": len(loop.times_ms)}

    tracker = Counting("cpu")
    loop = time_steps(lambda: calls.append(1), warmup=3, iters=7, device="cpu", trackers=[tracker], batch_size=4)
    assert calls == [1, 1, 1, "start", *[1] * 7, "stop"] and len(loop.times_ms) == 7
    assert all(t >= 0 for t in loop.times_ms) and loop.wall_s * 1e3 >= sum(loop.times_ms)
    latency = Latency("cpu").fields(loop)
    assert latency["throughput_ips"] == pytest.approx(4 * 7 / loop.wall_s) and latency["times_ms"] == loop.times_ms


def test_cpu_peak_memory_is_per_row():
    memory = Memory("cpu")
    memory.start()
    block = np.ones(300 * 2**20, dtype=np.uint8)  # touched, so resident
    first = memory.fields()["peak_mem_mb"]
    del block
    memory.start()
    second = memory.fields()
    assert first >= 300 and second["peak_mem_mb"] < first - 200
    assert second["peak_mem_kind"] == "RSS peak (row)"


def test_time_steps_tells_a_watcher_each_step():
    told = []
    loop = time_steps(lambda: None, 2, 3, "cpu", on_step=lambda *step: told.append(step))
    assert len(loop.times_ms) == 3
    assert told == [("warm-up", 1, 2), ("warm-up", 2, 2), ("timed", 1, 3), ("timed", 2, 3), ("timed", 3, 3)]
