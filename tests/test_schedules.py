"""course_lib.schedules: the linear scaling rule and warm-up, against torch's LRSchedulers."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings, strategies as st

from course_lib.data import load_digits
from course_lib.schedules import (goyal_lr, linear_scaling_lr, torch_goyal_scheduler,
                                  torch_warmup_scheduler, train_digits, warmup_lr)


def test_linear_scaling_rule_by_hand():
    assert linear_scaling_lr(256) == pytest.approx(0.1)               # the baseline kn = 256
    assert linear_scaling_lr(8192) == pytest.approx(3.2)              # 256 GPUs x 32 images
    assert linear_scaling_lr(64, base_lr=0.05, base_batch=8) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="positive int"):
        linear_scaling_lr(0)


def test_warmup_by_hand():
    assert warmup_lr(0, 3.2, 5, 0.1) == pytest.approx(0.1)
    assert warmup_lr(1, 3.2, 5, 0.1) == pytest.approx(0.1 + 3.1 / 5)
    assert warmup_lr(5, 3.2, 5, 0.1) == warmup_lr(500, 3.2, 5, 0.1) == pytest.approx(3.2)
    assert warmup_lr(0, 1.0, 0, 1.0) == 1.0                           # no warm-up
    with pytest.raises(ValueError, match="start_lr <= target_lr"):
        warmup_lr(0, 0.1, 5, 1.0)
    assert goyal_lr(35, 1.0, 5, 0.1, milestones=(30, 60)) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="after the warm-up"):
        goyal_lr(0, 1.0, 10, 0.1, milestones=(5,))


def _torch_lrs(make_scheduler, target_lr, steps):
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=target_lr)
    sched = make_scheduler(opt)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])                         # the rate this step uses
        opt.step()
        sched.step()
    return lrs


@settings(max_examples=30, deadline=None)
@given(warmup=st.integers(0, 40), start=st.floats(0.001, 1.0), factor=st.floats(1.0, 64.0))
@example(warmup=0, start=0.1, factor=10.0)                            # 0 = no warm-up
def test_warmup_equals_torch_linear_lr(warmup, start, factor):
    target = start * factor
    ours = [warmup_lr(t, target, warmup, start) for t in range(warmup + 10)]
    theirs = _torch_lrs(lambda opt: torch_warmup_scheduler(opt, target, warmup, start), target, warmup + 10)
    assert ours == pytest.approx(theirs, rel=1e-9), f"warmup={warmup}"


@settings(max_examples=30, deadline=None)
@given(warmup=st.integers(0, 20), gaps=st.lists(st.integers(1, 15), min_size=0, max_size=3),
       gamma=st.sampled_from([0.1, 0.5]))
@example(warmup=0, gaps=[3], gamma=0.1)                               # no warm-up: the decay alone
@example(warmup=0, gaps=[], gamma=0.1)
def test_goyal_schedule_equals_torch_sequential_lr(warmup, gaps, gamma):
    milestones = tuple(warmup + sum(gaps[:i + 1]) for i in range(len(gaps)))
    steps = (milestones[-1] if milestones else warmup) + 5
    ours = [goyal_lr(t, 2.0, warmup, 0.2, milestones, gamma) for t in range(steps)]
    theirs = _torch_lrs(lambda opt: torch_goyal_scheduler(opt, 2.0, warmup, 0.2, milestones, gamma),
                        2.0, steps)
    assert ours == pytest.approx(theirs, rel=1e-9), f"milestones={milestones}"


def test_torch_scheduler_needs_the_target_lr():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    with pytest.raises(ValueError, match="target_lr = 1.0"):
        torch_warmup_scheduler(opt, 1.0, 5, 0.1)


@pytest.fixture(scope="module")
def digits():
    return load_digits(size=8)


def test_train_digits_is_reproducible_and_learns(digits):
    a = train_digits(256, 0.8, epochs=3, data=digits)
    b = train_digits(256, 0.8, epochs=3, data=digits)
    assert a == b
    assert a.steps == 3 * -(-len(digits.x_train) // 256)
    assert a.train_error < 0.5, f"3 epochs should beat chance (0.9), got {a.train_error}"


def test_warmup_rescues_a_large_learning_rate(digits):
    # batch 256 at lr 0.05 * 256 / 8 = 1.6 (the linear scaling rule from batch 8) diverges
    # early without warm-up and trains with 5 epochs of it (notebooks/10 shows the whole sweep)
    lr = linear_scaling_lr(256, base_lr=0.05, base_batch=8)
    cold = train_digits(256, lr, epochs=20, data=digits)
    warm = train_digits(256, lr, epochs=20, warmup_epochs=5, start_lr=0.05, data=digits)
    assert warm.warmup_steps == 5 * 6
    assert warm.test_error < 0.06 and cold.test_error > warm.test_error + 0.04, (cold, warm)


def test_sweep_runs_each_setting_once_and_figures_are_labelled(digits):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from course_lib.schedules import batch_size_sweep
    from course_lib.viz import large_minibatch as viz
    arms = batch_size_sweep([8, 32], base_lr=0.05, base_batch=8, epochs=1, warmup_epochs=0.5, data=digits)
    assert list(arms) == ["no scaling", "linear scaling", "linear scaling + warm-up"]
    none, lin, warm = (arms[a] for a in arms)
    assert none[0] is lin[0] is warm[0], "at kn = base_batch the three arms are one run"
    assert [r.lr for r in lin] == pytest.approx([0.05, 0.2]) and none[1].lr == 0.05
    assert warm[1].warmup_steps == round(0.5 * -(-len(digits.x_train) // 32)) and lin[1].warmup_steps == 0
    for fig in (viz.plot_schedules(batches=(256, 1024), iters_per_epoch_at_256=4, epochs=10,
                                   warmup_epochs=2, milestones=(5,)),
                viz.plot_error_vs_batch(arms, 8, 0.05)):
        ax = fig.axes[0]
        assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
        plt.close(fig)


def test_schedule_figure_shows_the_linear_warmup_on_linear_axes():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from course_lib.viz import large_minibatch as viz
    fig = viz.plot_schedules(batches=(256, 1024), iters_per_epoch_at_256=4, epochs=10, warmup_epochs=2,
                             milestones=(5,))
    ax = fig.axes[0]
    assert "2 epochs" in ax.get_title() and "epochs 5" in ax.get_title()
    (inset,) = ax.child_axes
    assert inset.get_yscale() == "linear" and inset.get_xlabel() and inset.get_title()
    x, y = inset.lines[1].get_data()                     # kn = 1024: 0.1 -> 0.4 over 2 epochs
    ramp = x < 2
    assert np.allclose(np.diff(y[ramp]), np.diff(y[ramp])[0]), "the warm-up is a straight line"
    plt.close(fig)
