"""The machinery of exercises 8 and 11: a notebook's DDP hook on P processes, and DDP's bucket sweep.

``course_lib.experiments.comm_hooks`` runs a communication hook given as source text; a hook that
does what DDP's own all-reduce does must train exactly as DDP does. ``course_lib.experiments.bucket_sweep``
returns a profile of plain numbers; its timings are never asserted here (a unit test does not time),
only its shape and the order backprop imposes.
"""

from __future__ import annotations

import sys
import traceback

import numpy as np
import pytest
import torch

from course_lib.experiments import bucket_sweep, comm_hooks

MEAN_HOOK = '''
def mean_hook(state, bucket):
    """What DDP's own all-reduce does: divide by P, then sum."""
    state[bucket.index()] = bucket.buffer().numel()
    grad = bucket.buffer() / dist.get_world_size()
    return dist.all_reduce(grad, async_op=True).get_future().then(lambda fut: fut.value()[0])
'''


def a_notebook_function(x):
    """Stands for a function defined in a notebook cell."""
    return helper(x)  # noqa: F821  (helper is not defined: the rank's namespace has only what the source defines)


def test_hook_source_is_the_functions_text_and_load_hook_runs_it_in_a_fresh_namespace():
    source = comm_hooks.hook_source(a_notebook_function)
    assert source.startswith("def a_notebook_function(x):") and "helper(x)" in source
    f = comm_hooks.load_hook(source, "a_notebook_function")
    with pytest.raises(NameError, match="helper"):             # nothing of this module came along
        f(1)
    g = comm_hooks.load_hook("def g():\n    return torch, dist, np, math\n", "g")
    assert g()[0] is torch and g()[3].__name__ == "math"
    with pytest.raises(NameError, match="defines no function 'missing'; it defines \\['g'\\]"):
        comm_hooks.load_hook("def g():\n    pass\n", "missing")


def test_a_traceback_from_the_hook_names_the_hook_not_a_source_line():
    f = comm_hooks.load_hook("def f():\n    raise ValueError('boom')\n", "f")
    with pytest.raises(ValueError) as err:
        f()
    assert traceback.extract_tb(err.tb)[-1].filename == comm_hooks.HOOK_FILE


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/io is Linux's")
def test_bytes_written_counts_this_process_writes(tmp_path):
    before = comm_hooks.bytes_written()
    (tmp_path / "f").write_bytes(b"x" * 10_000)
    assert comm_hooks.bytes_written() - before >= 10_000


def test_digits_mlp_is_the_same_for_a_seed_and_leaves_the_global_generator_alone():
    state = torch.random.get_rng_state()
    a, b = comm_hooks.digits_mlp(3), comm_hooks.digits_mlp(3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert sum(p.numel() for p in a.parameters()) == 85_002
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    x, y = comm_hooks.digits_data()
    assert x.shape == (1347, 64) and x.dtype == np.float32 and y.shape == (1347,)


def test_unknown_settings_are_refused_before_any_process_starts():
    with pytest.raises(TypeError, match="unknown settings \\['stepz'\\]"):
        comm_hooks.run_hook(MEAN_HOOK, "mean_hook", stepz=3)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_hook_doing_ddps_all_reduce_trains_exactly_as_ddp():
    ranks = comm_hooks.run_hook(MEAN_HOOK, "mean_hook", steps=4, record_steps=2)
    for rank in ranks:
        np.testing.assert_array_equal(rank["hook"]["params"], rank["allreduce"]["params"])
        np.testing.assert_array_equal(rank["hook"]["losses"], rank["allreduce"]["losses"])
        assert rank["hook"]["state"] == {0: ((), "int"), 1: ((), "int")}          # the state is the hook's
    records = {(step, index): [] for step, index, _, _ in ranks[0]["hook"]["records"]}
    for rank in ranks:
        for step, index, grad, value in rank["hook"]["records"]:
            records[(step, index)].append((grad, value))
    assert sorted(records) == [(0, 0), (1, 0), (1, 1)]        # one bucket at step 0, then DDP's two
    assert [len(pairs[0][0]) for key, pairs in sorted(records.items())] == [85_002, 68_362, 16_640]
    for pairs in records.values():
        mean = np.mean([g for g, _ in pairs], axis=0)
        for _, value in pairs:
            np.testing.assert_allclose(value, mean, rtol=1e-5, atol=1e-7)
    if ranks[0]["allreduce"]["sent"][-1] is not None:          # Linux: a ring sends 2n(P-1)/P floats
        for arm in ("allreduce", "hook"):
            sent = ranks[0][arm]["sent"][-1]
            assert 4 * 85_002 <= sent <= 4 * 85_002 + 2 * 1024, (arm, sent)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_failing_hook_is_reported_with_its_rank_and_error():
    raising = "def bad(state, bucket):\n    raise ValueError('no bucket for me')\n"
    with pytest.raises(comm_hooks.HookFailed, match="rank [01]: .*ValueError: no bucket for me"):
        comm_hooks.run_hook(raising, "bad", steps=1)
    not_a_future = "def bad(state, bucket):\n    return bucket.buffer()\n"
    with pytest.raises(comm_hooks.HookFailed, match="must return a torch.futures.Future, it returned Tensor"):
        comm_hooks.run_hook(not_a_future, "bad", steps=1)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_hook_travels_as_text_under_spawn():
    ranks = comm_hooks.run_hook(MEAN_HOOK, "mean_hook", steps=2, record_steps=0, start_method="spawn")
    np.testing.assert_array_equal(ranks[0]["hook"]["params"], ranks[0]["allreduce"]["params"])


def test_sweep_mlp_has_depth_layers_of_width_squared_plus_width():
    model = bucket_sweep.sweep_mlp(width=8, depth=3)
    assert [p.numel() for p in model.parameters()] == [64, 8] * 3


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_measure_sweep_returns_a_profile_of_plain_numbers_in_backprop_order():
    caps, depth, rounds = (0.0001, 25.0), 4, 3
    profile = bucket_sweep.measure_sweep(caps, width=16, depth=depth, batch_size=8, rounds=rounds, warmup=2)
    names = [name for name, _ in profile["params"]]
    assert names == [f"{2 * k}.{w}" for k in range(depth) for w in ("weight", "bias")]
    assert (profile["world_size"], profile["itemsize"], profile["caps_mb"]) == (2, 4, caps)
    assert len(profile["ready"]) == rounds and all(len(ranks) == 2 for ranks in profile["ready"])
    for ranks in profile["ready"]:
        for rank in ranks:
            assert set(rank) == set(names) and min(rank.values()) >= 0
            assert rank["0.weight"] > rank[f"{2 * (depth - 1)}.weight"]      # the first layer's gradient comes last
    assert profile["forward"].shape == (rounds, 2) and (profile["forward"] > 0).all()
    assert sorted({n for n, _ in profile["lone"]}) == [64, 1024, 4 * 16 * 17 * depth]
    assert len(profile["lone"]) == 3 * rounds and all(t > 0 for _, t in profile["lone"])
    assert set(profile["backward"]) == set(caps)
    assert all(a.shape == (rounds, 2) and (a > 0).all() for a in profile["backward"].values())
