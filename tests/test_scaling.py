"""course_lib.scaling: the lecture's tables, recomputed, and the overlap model that explains them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from course_lib import scaling
from course_lib.distributed.cost import ring_time
from course_lib.scaling import (IMAGENET_AT_SCALE, POWERAI_CAFFE, POWERAI_MODEL, POWERAI_TORCH,
                                CommModel, check_table, iteration_timeline, modelled_efficiency,
                                resnet50_layers, ring_allreduce_time, scaling_efficiency, speedup,
                                time_based_efficiency)


@pytest.mark.parametrize("table", [POWERAI_CAFFE, POWERAI_TORCH], ids=["caffe", "torch"])
def test_printed_efficiency_follows_from_printed_speedup(table):
    rows = check_table(table)
    bad = [r for r in rows if not r["consistent"]]
    assert not bad, f"{table.name}: printed efficiency disagrees with S / (P/P0): {bad}"
    assert rows[-1]["recomputed"] == pytest.approx(table.speedup[-1] / (256 / 4))


def test_check_table_catches_a_wrong_entry():
    wrong = dataclasses.replace(POWERAI_CAFFE, efficiency=POWERAI_CAFFE.efficiency[:-1] + (0.90,))
    rows = check_table(wrong)
    assert [r["consistent"] for r in rows] == [True] * 6 + [False], rows


def test_definitions_by_hand():
    assert speedup(10.0, 2.5) == 4.0
    assert scaling_efficiency(60.6, 256, 4) == pytest.approx(0.946875)
    with pytest.raises(ValueError, match="positive"):
        speedup(0.0, 1.0)
    with pytest.raises(ValueError, match="P0"):
        scaling_efficiency(1.0, 2, 4)


def test_goyal_time_matches_their_90_percent():
    goyal = IMAGENET_AT_SCALE[1]
    assert goyal.work.startswith("Goyal")
    # 29 h on 8 GPUs -> 60 min on 256: (29 / 1) / (256 / 8) = 0.906
    assert time_based_efficiency(goyal) == pytest.approx(29 / 32)
    assert abs(time_based_efficiency(goyal) - goyal.efficiency) < 0.01
    with pytest.raises(ValueError, match="processor count"):
        time_based_efficiency(IMAGENET_AT_SCALE[3])      # Smith et al.: a TPU pod


def test_resnet50_has_the_published_parameter_count():
    layers = resnet50_layers()
    assert sum(layer.params for layer in layers) == 25_557_032     # torchvision's resnet50
    assert len([layer for layer in layers if layer.name.endswith(".proj")]) == 4
    assert round(sum(layer.flops for layer in layers) / 1e9, 1) == 7.7        # 3.86 G multiply-adds (paper: 3.8)


def test_ring_time_agrees_with_cost_module():
    comm = CommModel(alpha=3e-6, bandwidth=5e9)
    for P in (2, 3, 8, 64):
        assert ring_allreduce_time(4e6, P, comm) == pytest.approx(
            ring_time(1e6, P, alpha=3e-6, beta=1 / 5e9, itemsize=4))
    assert ring_allreduce_time(4e6, 1, comm) == 0.0


def test_timeline_without_overlap_is_compute_plus_all_communication():
    layers, comm = resnet50_layers(), CommModel(alpha=0.0, bandwidth=1e10, bucket_bytes=0)
    tl = iteration_timeline(layers, 0.1, 8, comm, overlap=False)
    n_bytes = 4 * sum(layer.params for layer in layers)
    assert tl.total == pytest.approx(0.1 + 2 * n_bytes * 7 / 8 / 1e10)
    assert tl.backward[-1][2] == pytest.approx(0.1)
    assert len(tl.allreduce) == len(layers)                           # one per layer: bucket 0


def test_overlap_timeline_is_causal():
    tl = iteration_timeline(resnet50_layers(), 0.1, 16, POWERAI_MODEL["comm"], overlap=True)
    ends = {name: end for name, _, end in tl.backward}
    for (label, start, end), (_, next_start, _) in zip(tl.allreduce, tl.allreduce[1:]):
        assert end <= next_start + 1e-12, "the network carries one all-reduce at a time"
    for label, start, end in tl.allreduce:
        last_layer = label.split(" up to ")[1]
        assert start >= ends[last_layer] - 1e-12, f"{label} starts before its gradients exist"
    assert tl.total == pytest.approx(max(tl.allreduce[-1][2], tl.backward[-1][2]))


def test_model_reproduces_84_and_95_percent():
    layers = resnet50_layers()
    torch_model = modelled_efficiency(layers, nodes=POWERAI_TORCH.nodes, overlap=False, **POWERAI_MODEL)
    caffe_model = modelled_efficiency(layers, nodes=POWERAI_CAFFE.nodes, overlap=True, **POWERAI_MODEL)
    np.testing.assert_allclose(torch_model, POWERAI_TORCH.efficiency, atol=0.02)
    np.testing.assert_allclose(caffe_model, POWERAI_CAFFE.efficiency, atol=0.02)
    assert caffe_model[-1] - torch_model[-1] > 0.08, "overlap is worth about 11 points at 256 GPUs"


@settings(max_examples=30, deadline=None)
@given(alpha=st.floats(0, 1e-4), bandwidth=st.floats(1e8, 1e11), bucket=st.floats(0, 1e8),
       compute=st.floats(0.01, 1.0))
def test_overlap_never_hurts_and_efficiency_falls_with_nodes(alpha, bandwidth, bucket, compute):
    layers, comm = resnet50_layers(), CommModel(alpha, bandwidth, bucket)
    nodes = [1, 2, 4, 16, 64]
    with_overlap = modelled_efficiency(layers, compute, nodes, comm, overlap=True)
    without = modelled_efficiency(layers, compute, nodes, comm, overlap=False)
    assert np.all(with_overlap >= without - 1e-12)
    assert np.all(np.diff(without) <= 1e-12) and np.all(with_overlap <= 1 + 1e-12)
    assert with_overlap[0] == without[0] == 1.0


# --- the widget's logic and the figures -------------------------------------

def test_what_if_by_hand():
    free = scaling.what_if(0.0, 64)
    assert free["overlap"] == pytest.approx(1.0) and free["no_overlap"] == pytest.approx(1.0)
    w = scaling.what_if(0.2, 64)
    # without overlap: t = compute + the whole all-reduce, 2N(P-1)/P at a bandwidth that makes 2N take 0.2 compute
    assert w["no_overlap"] == pytest.approx(1 / (1 + 0.2 * 63 / 64))
    assert w["t_comm"] == pytest.approx(0.2 * 0.1 * 63 / 64)
    assert w["no_overlap"] < w["overlap"] < 1.0
    with pytest.raises(ValueError, match="comm_over_compute"):
        scaling.what_if(-1.0, 4)


def test_efficiency_curves_are_what_if_at_every_node_count():
    curves = scaling.efficiency_curves(nodes=(1, 4, 64), ratios=(0.2, 1.0))
    assert list(curves) == [0.2, 1.0]
    for r, E in curves.items():
        assert E["overlap"].shape == E["no_overlap"].shape == (3,)
        assert E["overlap"][0] == E["no_overlap"][0] == pytest.approx(1.0)      # one node: nothing to reduce
        assert E["no_overlap"][2] == pytest.approx(scaling.what_if(r, 64)["no_overlap"])
        assert np.all(E["overlap"] >= E["no_overlap"])


def _labelled(fig):
    """Every drawn axes has a title and an x label; every y axis that shows ticks is labelled
    (axes sharing a labelled neighbour's y axis excepted); diagrams with the axis off are exempt."""
    for ax in fig.axes:
        if not ax.axison:
            continue
        assert ax.get_title() and ax.get_xlabel(), f"axes without title or x label: {ax}"
        shares = any(other is not ax and other.get_ylabel() for other in ax.get_shared_y_axes().get_siblings(ax))
        assert ax.get_ylabel() or shares or not ax.get_yticks().size, f"axes without a y label: {ax.get_title()!r}"


def test_figures_have_titles_and_labels():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from course_lib.viz import scaling as viz
    tl = iteration_timeline(resnet50_layers(), 0.1, 8, POWERAI_MODEL["comm"], overlap=True)
    for fig in (viz.plot_powerai(), viz.plot_timeline({"overlap": tl}),
                viz.plot_efficiency_curves(nodes=(1, 4), ratios=(0.2,)), viz.plot_imagenet()):
        _labelled(fig)
        plt.close(fig)


def test_what_if_widget_follows_its_sliders(capsys):
    from course_lib.viz import scaling as viz
    box = viz.what_if_explorer(0.2, 64)
    assert "efficiency 83.6%" in capsys.readouterr().out            # printed once for the stored notebook
    box.ratio.value = 1.0
    assert viz.what_if_report(1.0, 64).splitlines()[1] in box.report.value
    box.nodes.value = 1
    assert "efficiency 100.0%" in box.report.value


# --------------------------------------------------------------------------
# ---- behaviour pinned down by mutation testing
# --------------------------------------------------------------------------

def test_definitions_at_their_boundaries():
    with pytest.raises(ValueError, match="positive"):
        speedup(1.0, 0.0)                                              # the parallel time, too
    assert scaling_efficiency(1.0, 4, 4) == 1.0                        # P = P0: the baseline itself
    with pytest.raises(ValueError, match="world_size must be >= 1"):
        ring_allreduce_time(4e6, 0, CommModel(alpha=1e-6, bandwidth=1e9))
    with pytest.raises(ValueError, match="compute_s > 0"):
        scaling.what_if(0.2, 4, compute_s=0.0)


def test_check_table_divides_by_the_tables_own_baseline():
    # a table whose baseline is 2 nodes of 4 GPUs (P0 = 8): E = S / (P / 8)
    table = dataclasses.replace(POWERAI_CAFFE, gpus=(8, 16, 32), nodes=(2, 4, 8),
                                speedup=(1.0, 1.9, 3.6), efficiency=(1.00, 0.95, 0.90))
    rows = check_table(table)
    assert [r["recomputed"] for r in rows] == pytest.approx([1.0, 0.95, 0.90])
    assert all(r["consistent"] for r in rows), rows


def test_a_bucket_of_exactly_bucket_bytes_is_closed():
    # "buckets of at least bucket_bytes": fc's gradients alone fill a bucket of fc's size
    layers = resnet50_layers()
    fc_bytes = 4 * layers[-1].params
    comm = CommModel(alpha=0.0, bandwidth=1e9, bucket_bytes=fc_bytes)
    tl = iteration_timeline(layers, 0.1, 4, comm, overlap=True)
    assert tl.allreduce[0][0].endswith("up to fc"), tl.allreduce[:2]


def test_bytes_per_param_sets_the_message_size():
    # float16 gradients (2 bytes each) take half the bandwidth time of float32
    layers = resnet50_layers()
    comm = CommModel(alpha=0.0, bandwidth=1e10, bytes_per_param=2)
    tl = iteration_timeline(layers, 0.1, 8, comm, overlap=False)
    n_bytes = 2 * sum(layer.params for layer in layers)
    assert tl.total == pytest.approx(0.1 + 2 * n_bytes * 7 / 8 / 1e10)
