"""bench/server_scenario.py's logic that does not depend on the clock: the Poisson schedule, the p99 and the
search for the highest rate, the last on a fake server whose p99 is a known function of the rate."""

import math
import statistics

import pytest

from bench import server_scenario
from bench.server_scenario import highest_passing, p99, poisson_schedule, search_rate
from service import Settings, create_app


def test_poisson_schedule_has_the_asked_mean_rate_and_is_fixed_by_its_seed():
    arrivals = poisson_schedule(rate=7.0, count=20_000, seed=3)
    assert len(arrivals) == 20_000 and arrivals == sorted(arrivals) and arrivals[0] > 0
    assert len(arrivals) / arrivals[-1] == pytest.approx(7.0, rel=0.03)
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    # exponential gaps: the standard deviation equals the mean (evenly spaced arrivals would give 0)
    assert statistics.stdev(gaps) == pytest.approx(statistics.mean(gaps), rel=0.05)
    assert poisson_schedule(rate=7.0, count=50, seed=3) == arrivals[:50]
    assert poisson_schedule(rate=7.0, count=50, seed=4) != arrivals[:50]


@pytest.mark.parametrize("rate, count", [(0.0, 10), (-1.0, 10), (math.nan, 10), (1.0, 0)])
def test_poisson_schedule_refuses_a_rate_or_count_it_cannot_keep(rate, count):
    with pytest.raises(ValueError, match="rate > 0 and count >= 1"):
        poisson_schedule(rate=rate, count=count, seed=0)


def test_p99_counts_a_failed_query_as_infinitely_late():
    latencies = [index / 100 for index in range(1, 101)]  # 0.01 ... 1.00 s
    assert p99(latencies) == pytest.approx(0.99)
    assert p99(latencies[:-1] + [math.inf]) == pytest.approx(0.99)  # 1 of 100 failed: within the 1%
    assert p99(latencies[:-2] + [math.inf, math.inf]) == math.inf  # 2 of 100: the p99 is a failure
    assert p99([]) == math.inf


def queueing_p99(base: float, capacity: float):
    """A fake server: p99 grows as in a single queue, base / (1 - rate / capacity), and fails at capacity."""
    calls = []

    def p99_at(rate: float) -> float:
        calls.append(rate)
        return base / (1 - rate / capacity) if rate < capacity else math.inf

    return p99_at, calls


def test_search_converges_on_the_highest_rate_under_the_bound():
    p99_at, calls = queueing_p99(base=0.1, capacity=10.0)
    # bound 2x base: met exactly up to half the capacity
    points = search_rate(p99_at, bound=0.2, ceiling=10.0, steps=12)
    assert calls[0] == 10.0 and len(calls) == 13
    rate, latency = highest_passing(points, bound=0.2)
    assert 5.0 - 10.0 / 2**12 <= rate <= 5.0 and latency <= 0.2
    assert all(p99_at(r) > 0.2 for r, p in points if r > 5.0)


def test_search_stops_at_the_ceiling_when_it_passes_and_reports_none_when_nothing_does():
    p99_at, calls = queueing_p99(base=0.1, capacity=100.0)
    assert highest_passing(search_rate(p99_at, bound=1.0, ceiling=10.0, steps=5), bound=1.0) == (10.0, p99_at(10.0))
    assert calls == [10.0, 10.0]
    points = search_rate(lambda rate: math.inf, bound=1.0, ceiling=10.0, steps=3)
    assert [rate for rate, _ in points] == [10.0, 5.0, 2.5, 1.25]
    assert highest_passing(points, bound=1.0) == (0.0, math.inf)


def test_server_scenario_runs_end_to_end_against_a_live_service(live_server, capsys):
    """A smoke run, so the tool cannot rot unnoticed: a bound so loose that the first point (the offline rate)
    passes. Nothing here is timed against a goal; the figures are docs/BENCHMARKS.md's."""
    url = live_server(create_app(Settings()))
    flags = ["--queries", "4", "--steps", "1", "--latency-queries", "1", "--offline-queries", "2",
             "--hostile-clients", "0", "--bound-ms", "600000"]  # fmt: skip
    exit_status = server_scenario.main(["--url", url, *flags])
    output = capsys.readouterr().out
    assert exit_status == 0
    assert "runtime torch" in output and "p99 bound 600000 ms" in output
    row = next(line for line in output.splitlines() if line.startswith("| good only |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert float(cells[1]) > 0 and cells[2] == cells[1] and cells[3] == "1.00x"  # the ceiling passed


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--url", "http://192.0.2.1:8000"], "loopback"),
        (["--queries", "0"], "must be >= 1"),
        (["--bound-ms", "0"], "must be > 0"),
        (["--bound-factor", "-2"], "must be > 0"),
        (["--runtime", "tensorrt"], "invalid choice"),
        (["--detector", "no_such_detector.safetensors"], "not found"),
    ],
)
def test_server_scenario_refuses_what_it_cannot_measure_before_starting_anything(flags, message, capsys):
    with pytest.raises(SystemExit):
        server_scenario.main(flags)
    assert message in capsys.readouterr().err
