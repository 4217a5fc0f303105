"""Lessons 06 and 07's experiments: all-reduces on real processes, counted and timed.

``course_lib.experiments.allreduce``: ``measured_bytes`` (the bytes each rank
sent, beside the lecture's formulas), and ``sweep`` / ``bus_bandwidth``
(nccl-tests' algbw and busbw). No timing is asserted: only the bookkeeping, and
that every run's sums are right.
"""

from __future__ import annotations

import numpy as np
import pytest

from course_lib.distributed.cost import ps_bytes_at_server
from course_lib.experiments import allreduce as experiment
from course_lib.experiments.allreduce import bus_bandwidth, default_repeats, sweep
from course_lib.machinery.launch import AllreduceResult
from course_lib.viz.distributed import bandwidth_table, measured_bytes_table
from procfs import leaves_nothing_behind  # noqa: F401  (autouse: no child, no shared memory left)


@pytest.mark.slow
def test_measured_bytes_equal_the_formulas_on_real_processes():
    rows = experiment.measured_bytes([(10, 3), (12, 2)])
    assert [(r["N"], r["P"], r["algorithm"]) for r in rows] == [(10, 3, "ring"), (10, 3, "ps"),
                                                                 (12, 2, "ring"), (12, 2, "ps")]
    for r in rows:
        assert r["outputs_ok"]
        np.testing.assert_array_equal(r["measured"], r["formula"])
        if r["algorithm"] == "ps":
            assert r["server"] == ps_bytes_at_server(r["N"], r["P"], 4)
    table = measured_bytes_table(rows)
    assert table["equal"].all()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_sweep_reports_bandwidths_and_checks_results():
    assert bus_bandwidth(1000, 0.5, 4) == (2000.0, 2000.0 * 2 * 3 / 4)       # busbw = algbw * 2(P-1)/P
    assert bus_bandwidth(1000, 0.5, 1)[1] == 0.0
    assert 5 <= default_repeats(64 << 20) <= default_repeats(4096) <= 200
    rows = sweep([4096, 8192], [2], methods=("ring/shm", "ps/pipe", "gloo"), repeats=3, rounds=1)
    assert [(r["method"], r["nbytes"]) for r in rows] == [(m, n) for n in (4096, 8192)
                                                         for m in ("ring/shm", "ps/pipe", "gloo")]
    for r in rows:
        assert r["identical"] and r["max_error"] < 1e-5 and r["time"] > 0
        assert r["algbw"] == pytest.approx(r["nbytes"] / r["time"]) and r["busbw"] == pytest.approx(r["algbw"])
    assert len(bandwidth_table(rows)) == len(rows)


# sweep's bookkeeping, with a stand-in for the collectives (no process is started)

def _fake_method(method, arrays, repeats, timeout=120.0):
    """rank 1 is the slow one; the first (warm-up) collective takes 100 s; "broken" returns
    a sum off by 0.5 on rank 1 only."""
    P = len(arrays)
    elapsed = np.ones((repeats, P))
    elapsed[:, 1] = 2.0 + np.arange(repeats)                       # 2, 3, 4, ...
    elapsed[0] = 100.0                                             # the warm-up
    exact = np.sum(np.stack(arrays).astype(np.float64), axis=0)
    outputs = [exact.copy() for _ in range(P)]
    if method == "broken":
        outputs[1] = outputs[1] + 0.5
    _fake_method.calls.append((method, repeats))
    return AllreduceResult(outputs, np.zeros(P, np.int64), np.zeros(P, np.int64), elapsed, "ring", "shm")


def test_sweep_excludes_the_warm_up_and_reports_errors(monkeypatch):
    _fake_method.calls = []
    monkeypatch.setattr(experiment, "run_method", _fake_method)
    rows = experiment.sweep([48], [3], methods=("good", "broken"), repeats=6, rounds=2, dtype=np.float32)
    assert _fake_method.calls == [("good", 4), ("broken", 4)] * 2        # 6 / 2 rounds + 1 warm-up
    good, broken = rows
    assert good["time"] == 4.0                                          # median of 3, 4, 5, 3, 4, 5
    assert (good["time_q25"], good["time_q75"], good["samples"]) == (3.25, 4.75, 6)   # the quartiles
    assert good["max_error"] == 0.0 and good["identical"]               # against the float64 sum
    assert broken["max_error"] == 0.5 and not broken["identical"]
    assert good["algbw"] == 48 / 4.0 and good["busbw"] == pytest.approx(12.0 * 2 * 2 / 3)
    assert bus_bandwidth(1200, 2.0, 3) == (600.0, 800.0)
    assert default_repeats(1 << 30) == 5 and default_repeats(1) == 200
    table = bandwidth_table([dict(good, time=1e-3)])
    assert table.iloc[0].tolist()[:4] == [48, 3, "good", 1000.0]        # microseconds
