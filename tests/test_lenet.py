"""LeNet-5: the architecture table, numpy == PyTorch (logits, gradients, training steps); lesson 5's
training and timing experiment (course_lib.experiments.lenet_training) and its figures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from course_lib.data import Digits, load_digits
from course_lib.experiments.lenet_training import (History, SeedRun, accuracy_summary, epoch_timings, minibatches,
                                                   train, train_over_seeds)
from course_lib.gradcheck import check_gradient
from course_lib.layers import softmax_cross_entropy
from course_lib.lenet import PARAM_NAMES, LeNet5, TorchLeNet5, architecture, copy_weights


@pytest.fixture(scope="module")
def digits() -> Digits:
    return load_digits()


def test_architecture_table_matches_the_lecture():
    table = {layer.name: (layer.output, layer.params) for layer in architecture()}
    assert table == {"C1": ((6, 28, 28), 156), "S2": ((6, 14, 14), 0),
                     "C3": ((16, 10, 10), 2416), "S4": ((16, 5, 5), 0),
                     "C5": ((120, 1, 1), 48120), "F6": ((84,), 10164), "out": ((10,), 850)}
    total = sum(layer.params for layer in architecture())
    assert total == 61706
    assert total == sum(p.numel() for p in TorchLeNet5().parameters())
    assert total == sum(p.size for p in LeNet5().params)


def test_torch_shapes_follow_the_table():
    net, x = TorchLeNet5(), torch.zeros(3, 1, 32, 32)
    c1 = F.relu(net.c1(x))
    assert tuple(c1.shape[1:]) == architecture()[0].output
    assert tuple(net(x).shape) == (3, 10)
    assert [name for name, _ in net.named_parameters()] == list(PARAM_NAMES)


def twins(seed=0):
    ours = LeNet5(seed=seed, dtype=np.float64)
    theirs = TorchLeNet5().double()
    copy_weights(ours, theirs)
    return ours, theirs


def test_same_weights_same_logits_and_gradients(digits):
    """float64: logits and every gradient agree to 1e-10 (relative to their size)."""
    ours, theirs = twins()
    x, y = digits.x_train[:16].astype(np.float64), digits.y_train[:16]
    loss, grads, logits = ours.loss_and_grads(x, y)
    logits_t = theirs(torch.from_numpy(x))
    loss_t = F.cross_entropy(logits_t, torch.from_numpy(y))
    loss_t.backward()
    assert loss == pytest.approx(loss_t.item(), rel=1e-12)
    np.testing.assert_allclose(logits, logits_t.detach().numpy(), rtol=0, atol=1e-10)
    for name, g, (tname, p) in zip(PARAM_NAMES, grads, theirs.named_parameters()):
        assert name == tname and g.shape == tuple(p.shape)
        scale = np.abs(p.grad.numpy()).max()
        np.testing.assert_allclose(g, p.grad.numpy(), rtol=0, atol=1e-10 * max(scale, 1),
                                   err_msg=f"gradient of {name}")


def test_float32_logits_agree_to_1e_5(digits):
    ours = LeNet5(seed=1)
    theirs = TorchLeNet5()
    copy_weights(ours, theirs)
    x = digits.x_test[:64]
    np.testing.assert_allclose(ours.forward(x), theirs(torch.from_numpy(x)).detach().numpy(),
                               rtol=0, atol=1e-5)


def test_gradient_matches_numerical_gradient(digits):
    ours = LeNet5(seed=2, dtype=np.float64)
    x, y = digits.x_train[:2].astype(np.float64), digits.y_train[:2]
    _, grads, _ = ours.loss_and_grads(x, y)
    for i in (1, 3, 9):  # c1.bias, c3.bias, out.bias: a few parameters from each end of the net
        def loss_at(value, i=i):
            saved = ours.params[i].copy()
            ours.params[i][...] = value
            loss = ours.loss_and_grads(x, y)[0]
            ours.params[i][...] = saved
            return loss
        check_gradient(loss_at, ours.params[i].copy(), grads[i], name=PARAM_NAMES[i], tol=1e-5)


def test_copy_weights_round_trip():
    a, torch_net, b = LeNet5(seed=0), TorchLeNet5(), LeNet5(seed=1)
    copy_weights(a, torch_net)
    copy_weights(torch_net, b)
    for pa, pb in zip(a.params, b.params):
        np.testing.assert_array_equal(pa, pb)
    with pytest.raises(TypeError, match="one LeNet5 and one TorchLeNet5"):
        copy_weights(a, b)


def test_predict_leaves_the_saved_activations_alone(digits):
    x, y = digits.x_train[:8], digits.y_train[:8]
    model = LeNet5(seed=0)
    _, expected, _ = model.loss_and_grads(x, y)
    logits = model.forward(x)
    model.predict(digits.x_test[:5])                        # a query between forward and backward
    got = model.backward(softmax_cross_entropy(logits, y)[1])
    for name, g, e in zip(PARAM_NAMES, got, expected):
        np.testing.assert_array_equal(g, e, err_msg=name)


def test_backward_needs_forward():
    with pytest.raises(RuntimeError, match="call forward first"):
        LeNet5().backward(np.zeros((1, 10)))


@pytest.mark.parametrize("optimizer,lr", [("sgd", 0.05), ("adagrad", 0.01)])
def test_training_numpy_equals_torch_step_by_step(digits, optimizer, lr):
    """Same weights, same batches, same optimizer: the same parameters after 3 steps."""
    small = Digits(digits.x_train[:48], digits.y_train[:48], digits.x_test[:20], digits.y_test[:20])
    ours, theirs = twins()
    h1 = train(ours, small, epochs=1, lr=lr, batch_size=16, optimizer=optimizer, progress=False)
    h2 = train(theirs, small, epochs=1, lr=lr, batch_size=16, optimizer=optimizer, progress=False)
    for name, p, (_, q) in zip(PARAM_NAMES, ours.params, theirs.named_parameters()):
        np.testing.assert_allclose(p, q.detach().numpy(), rtol=0, atol=1e-9, err_msg=name)
    assert h1.train_loss[0] == pytest.approx(h2.train_loss[0], rel=1e-9)
    assert h1.test_acc == h2.test_acc


def test_short_training_learns(digits):
    subset = Digits(digits.x_train[:600], digits.y_train[:600], digits.x_test, digits.y_test)
    hist = train(LeNet5(seed=0), subset, epochs=2, lr=0.02, optimizer="adagrad", progress=False)
    assert len(hist.train_loss) == len(hist.test_acc) == len(hist.seconds) == 2
    assert hist.train_loss[1] < hist.train_loss[0] < np.log(10) + 0.1
    assert hist.test_acc[1] > 0.6, hist.test_acc   # chance is 0.1 (the full run: notebook 05)


@pytest.fixture
def one_thread(monkeypatch):
    """numpy's BLAS, conv2d's copies and torch on one thread, as lesson 5 trains (on a busy 2-core
    machine spinning pool threads made these runs 6x slower); torch's setting is restored after."""
    from threadpoolctl import threadpool_limits
    before = torch.get_num_threads()
    monkeypatch.setenv("COURSE_LIB_THREADS", "1")
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(before)


@pytest.mark.training
def test_accuracy_over_seeds_median(digits, one_thread):
    """A training outcome is a distribution: the median over 5 seeds of a short run, with a margin.

    600 training images, 3 epochs of Adagrad (lesson 5 runs the full set for 8 epochs). Measured
    under ATEN_CPU_CAPABILITY = avx512, avx2 and default, seeds 0-4: medians 0.864 to 0.871 for
    both implementations, single seeds 0.76 to 0.91 (and 0.50 to 0.93 over seeds 0-9); the numpy
    and PyTorch medians within 0.007 of each other. Chance is 0.1.
    """
    small = Digits(digits.x_train[:600], digits.y_train[:600], digits.x_test, digits.y_test)
    runs = train_over_seeds(small, seeds=range(5), progress=False, epochs=3, lr=0.02, optimizer="adagrad")
    summary = accuracy_summary(runs)
    for name, s in summary.items():
        assert s["median"] >= 0.75, f"{name}: median {s['median']:.3f} over seeds {s['all']}"
    assert abs(summary["numpy"]["median"] - summary["PyTorch"]["median"]) < 0.03, summary


def test_train_over_seeds_pairs_the_twins(digits):
    """Each seed: both nets from LeNet5(seed)'s weights and the same batches, so after three float32
    steps their weights still agree closely; different seeds start from different weights."""
    small = Digits(digits.x_train[:48], digits.y_train[:48], digits.x_test[:20], digits.y_test[:20])
    runs = train_over_seeds(small, seeds=[3, 7], progress=False, epochs=1, lr=0.05, batch_size=16)
    assert [run.seed for run in runs] == [3, 7]
    for run in runs:
        assert set(run.histories) == set(run.models) == {"numpy", "PyTorch"}
        assert all(len(h.test_acc) == 1 for h in run.histories.values())
        for name, p, (_, q) in zip(PARAM_NAMES, run.models["numpy"].params, run.models["PyTorch"].named_parameters()):
            np.testing.assert_allclose(p, q.detach().numpy(), rtol=0, atol=1e-4, err_msg=name)
    assert not np.allclose(runs[0].models["numpy"].params[0], runs[1].models["numpy"].params[0])


def test_accuracy_summary_by_hand():
    def run(seed, numpy_acc, torch_acc):
        return SeedRun(seed, {"numpy": History(test_acc=[0.1, numpy_acc]),
                              "PyTorch": History(test_acc=[0.1, torch_acc])}, {})
    summary = accuracy_summary([run(0, 0.9, 0.7), run(1, 0.8, 0.9), run(2, 1.0, 0.8)])
    assert summary["numpy"]["median"] == 0.9 and summary["numpy"]["min"] == 0.8 and summary["numpy"]["max"] == 1.0
    assert summary["PyTorch"]["median"] == 0.8
    np.testing.assert_array_equal(summary["PyTorch"]["all"], [0.7, 0.9, 0.8])      # final epoch, seed order
    with pytest.raises(ValueError, match="at least one SeedRun"):
        accuracy_summary([])


def test_minibatches_cover_every_example_once():
    batches = minibatches(10, 4, np.random.default_rng(0))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(np.concatenate(batches)) == list(range(10))


def test_train_rejects_unknown_optimizer(digits):
    with pytest.raises(ValueError, match="'sgd' or 'adagrad'"):
        train(LeNet5(), digits, optimizer="adam", progress=False)
    with pytest.raises(TypeError, match="LeNet5 or a TorchLeNet5"):
        train(torch.nn.Linear(2, 2), digits, progress=False)


# --------------------------------------------------------------------------
# The functions behind lesson 05's figures and tables (course_lib.viz.lenet), and its timings
# --------------------------------------------------------------------------

def test_viz_table_and_misclassified():
    from course_lib.viz import lenet as viz
    table = viz.architecture_table()
    assert table.index.name == "layer" and list(table.columns) == ["operation", "output shape", "parameters"]
    assert table.loc["C1"].tolist() == ["conv 5x5, 6 filters, ReLU", "6 x 28 x 28", 156]
    assert table.index[-1] == "total" and table.loc["total", "parameters"] == 61_706
    np.testing.assert_array_equal(viz.misclassified(np.array([1, 2, 3, 4]), np.array([1, 0, 3, 0])), [1, 3])


def test_viz_figures_and_timings(digits, monkeypatch):
    import itertools
    import types
    from course_lib.experiments import lenet_training
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from course_lib.viz import lenet as viz
    h = History([2.0, 1.0], [0.5, 0.8], [0.4, 0.9], [1.0, 2.0])
    y_pred = digits.y_test.copy()
    y_pred[:3] = (y_pred[:3] + 1) % 10
    figs = [viz.plot_history({"numpy": h, "PyTorch": h}), viz.plot_digits(digits.x_train, digits.y_train),
            viz.plot_misclassified(digits.x_test, digits.y_test, y_pred)]
    assert "3 of 450" in figs[2]._suptitle.get_text()
    trained = []                                  # no real training, no real clock: one tick per timed epoch
    monkeypatch.setattr(lenet_training, "train", lambda model, data, **kw: trained.append((len(data.x_train), kw)))
    monkeypatch.setattr(lenet_training, "time", types.SimpleNamespace(perf_counter=itertools.count().__next__))
    timings = epoch_timings(digits, batch_size=32, n_batches=2, repeats=3)
    batches_per_epoch = -(-len(digits.x_train) // 32)
    assert timings == {"numpy": batches_per_epoch / 2, "PyTorch CPU": batches_per_epoch / 2}   # 1 tick / 2 batches
    assert [n for n, _ in trained] == [32, 64, 64, 64] * 2, "one warm-up batch, then 3 x 2 timed batches"
    assert [kw["device"] for _, kw in trained] == [None] * 4 + [torch.device("cpu")] * 4
    df = viz.epoch_timings_table(timings)
    assert list(df.columns) == ["time per epoch (s)", "relative to PyTorch CPU (x)"]
    assert df.loc["PyTorch CPU", "relative to PyTorch CPU (x)"] == 1.0
    fixed = viz.epoch_timings_table({"numpy": 0.3612, "PyTorch CPU": 0.24})
    assert fixed.loc["numpy"].tolist() == [0.36, 1.5]                       # seconds, ratio to 0.01
    figs.append(viz.plot_epoch_timings(timings))
    runs = [SeedRun(seed, {"numpy": h, "PyTorch": History(test_acc=[0.3, 0.8 + 0.01 * seed])}, {})
            for seed in range(3)]
    figs.append(viz.plot_seed_accuracy(runs))
    dots = [line for line in figs[4].axes[1].lines if line.get_marker() == "o"]
    assert [list(line.get_ydata()) for line in dots] == [[90.0] * 3, [80.0, 81.0, 82.0]]   # final accuracy, %
    assert "3 seeds" in figs[4]._suptitle.get_text()
    for fig in (figs[0], figs[3], figs[4]):
        for ax in fig.axes:
            assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    for fig in figs:
        plt.close(fig)


# --------------------------------------------------------------------------
# Behaviour pinned down by mutation testing
# --------------------------------------------------------------------------

def test_architecture_follows_size_and_classes_like_torch():
    net = TorchLeNet5(classes=5)
    x = torch.zeros(1, 1, 36, 36)
    with torch.no_grad():
        c1 = F.relu(net.c1(x))
        s2 = F.max_pool2d(c1, 2)
        c3 = F.relu(net.c3(s2))
        s4 = F.max_pool2d(c3, 2)
        c5 = F.relu(net.c5(s4))
    table = architecture(size=36, classes=5)
    assert [layer.output for layer in table[:5]] == [tuple(t.shape[1:]) for t in (c1, s2, c3, s4, c5)]
    assert table[4].output == (120, 2, 2)
    assert table[5].params == 120 * 2 * 2 * 84 + 84                   # F6 sees the flattened C5 volume
    assert (table[6].output, table[6].params) == ((5,), 84 * 5 + 5)
    assert table[6].params == sum(p.numel() for p in net.out.parameters())


def test_numpy_lenet_with_other_class_counts_equals_torch(digits):
    ours, theirs = LeNet5(seed=3, dtype=np.float64, classes=3), TorchLeNet5(classes=3).double()
    assert [p.shape for p in ours.params] == [tuple(p.shape) for p in theirs.parameters()]
    copy_weights(ours, theirs)
    x = digits.x_train[:4].astype(np.float64)
    np.testing.assert_allclose(ours.forward(x), theirs(torch.from_numpy(x)).detach().numpy(), rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match=r"copy_weights: unexpected parameter out.weight \(3, 84\)"):
        copy_weights(theirs, LeNet5())                                 # 3 classes into a 10-class net


def test_initial_weights_follow_pytorchs_bound_and_dtype():
    """Weights and biases uniform in +-1/sqrt(fan_in), as PyTorch's nn.Conv2d and nn.Linear."""
    ours, theirs = LeNet5(seed=0), TorchLeNet5()
    assert all(p.dtype == np.float32 for p in ours.params)
    assert all(p.dtype == np.float64 for p in LeNet5(dtype=np.float64).params)
    params_t = dict(theirs.named_parameters())
    for name, p in ours.named_params().items():
        weight = params_t[name.replace(".bias", ".weight")]
        bound = 1 / np.sqrt(np.prod(weight.shape[1:]))               # fan_in = C*KH*KW or in_features
        assert np.abs(p).max() <= bound, name
        assert np.abs(params_t[name].detach().numpy()).max() <= bound, name   # PyTorch's rule is this one
        if name.endswith("weight"):
            assert np.abs(p).max() > 0.9 * bound, name                # and the whole range is used


def test_lr_decay_scales_the_learning_rate_after_each_epoch(digits):
    """lr_decay = 0: the second epoch has learning rate 0, so it changes nothing."""
    small = Digits(digits.x_train[:16], digits.y_train[:16], digits.x_test[:8], digits.y_test[:8])
    for make in (lambda: twins()[0], lambda: twins()[1]):
        one, two = make(), make()
        train(one, small, epochs=1, lr=0.05, batch_size=8, lr_decay=0.0, progress=False)
        train(two, small, epochs=2, lr=0.05, batch_size=8, lr_decay=0.0, progress=False)
        params = (lambda m: m.params if isinstance(m, LeNet5) else [p.detach().numpy() for p in m.parameters()])
        moved = False
        for p1, p2, p0 in zip(params(one), params(two), params(make())):
            np.testing.assert_array_equal(p1, p2)
            moved |= not np.array_equal(p1, p0)
        assert moved, "the first epoch did not train"


def test_history_records_the_epochs_loss_and_accuracy(digits):
    """With a learning rate too small to move a float64 weight (SGD refuses lr = 0), every batch
    sees the initial weights: the epoch's loss is the mean over all examples (batches weighted by
    their size: 8, 8 and 4 here), its accuracy their fraction correct."""
    small = Digits(digits.x_train[:20], digits.y_train[:20], digits.x_test[:7], digits.y_test[:7])
    ours, theirs = twins()
    loss, _, logits = ours.loss_and_grads(small.x_train.astype(np.float64), small.y_train)
    acc = float((logits.argmax(1) == small.y_train).mean())
    test_acc = float((ours.predict(small.x_test.astype(np.float64)) == small.y_test).mean())
    for model in (ours, theirs):
        h = train(model, small, epochs=1, lr=1e-300, batch_size=8, progress=False)
        assert h.train_loss[0] == pytest.approx(loss, rel=1e-12)
        assert h.train_acc == [acc] and h.test_acc == [test_acc]


def test_history_seconds_are_cumulative(digits, monkeypatch):
    import itertools
    import types
    from course_lib.experiments import lenet_training
    monkeypatch.setattr(lenet_training, "time", types.SimpleNamespace(perf_counter=itertools.count().__next__))
    small = Digits(digits.x_train[:4], digits.y_train[:4], digits.x_test[:4], digits.y_test[:4])
    h = train(LeNet5(), small, epochs=3, lr=0.01, batch_size=4, progress=False)
    assert h.seconds == [1, 2, 3]                                      # a fake clock: each epoch takes 1 tick
