"""Scaling efficiency: the lecture's tables as data, and a model that explains them.

Reading order
-------------
1. ``speedup`` and ``scaling_efficiency``: the definitions. Speed-up is "the ratio of the time taken
   using only a single machine to the time taken using N" (Dean et al. 2012); efficiency is speed-up
   divided by the growth in hardware, ``E = S / (P / P0)`` where P0 is the baseline's GPU count.
2. ``POWERAI_CAFFE`` / ``POWERAI_TORCH``: the PowerAI DDL tables (Cho et al. 2017, lecture 5 "PowerAI DDL
   -- IBM", Figures 2 and 3) and ``IMAGENET_AT_SCALE`` ("Imagenet1K/ResNet50 Training at Scale"). ``check_table``
   recomputes each printed efficiency from the printed speed-up: do they agree up to the table's rounding?
3. ``resnet50_layers``: ResNet-50's per-layer parameters and FLOPs, from its architecture (He et al. 2016).
4. ``iteration_timeline``: one data-parallel iteration as a per-layer timeline. Backprop runs from the last
   layer to the first; a layer's gradient can be all-reduced as soon as it exists ("no data dependency
   between gradients across layers", Goyal et al. 2017); without overlap the all-reduce waits for the whole
   backward pass. A ring all-reduce of b bytes over P = ``world_size`` ranks costs ``cost.ring_time``.
5. ``modelled_efficiency``: E(P) = t_iter(1) / t_iter(P) for a fixed batch per GPU (weak scaling, as
   in all the lecture's tables). With ``POWERAI_MODEL`` at 256 GPUs it gives 0.82 without overlap and
   0.96 with it, within 2 points of the slide's 84% (Torch) and 95% (Caffe): overlap is the difference.
6. ``what_if`` / ``efficiency_curves``: the same model for any comm/compute ratio (the lesson's widget, figure).

Times are seconds, sizes bytes, bandwidths bytes per second.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from course_lib.checks import check_positive
from course_lib.distributed.cost import ring_time


# ---- 1. Definitions ----------------------------------------------------------

def speedup(t_base: float, t_parallel: float) -> float:
    """``S = t_base / t_parallel``: how many times faster the parallel run is."""
    return check_positive(t_base, "t_base") / check_positive(t_parallel, "t_parallel")


def scaling_efficiency(speedup_value, P, P0: int = 1):
    """``E = S / (P / P0)``: the fraction of ideal (linear) speed-up achieved.

    Parameters
    ----------
    speedup_value : float or ndarray, the speed-up over the P0-GPU baseline
    P : int or ndarray (same shape), GPUs used
    P0 : GPUs of the baseline (4 in the PowerAI tables: one node)
    """
    P = np.asarray(P, dtype=np.float64)
    if np.any(P < P0):
        raise ValueError(f"P must be >= the baseline's P0 = {P0}, got {P}")
    return np.asarray(speedup_value, dtype=np.float64) / (P / P0)


# ---- 2. The lecture's tables -------------------------------------------------

@dataclass(frozen=True)
class ScalingTable:
    """A printed scaling table: one entry per column of the slide."""
    name: str
    gpus: tuple[int, ...]
    nodes: tuple[int, ...]
    speedup: tuple[float, ...]
    efficiency: tuple[float, ...]
    source: str

    @property
    def P0(self) -> int:
        return self.gpus[0]


POWERAI_CAFFE = ScalingTable(
    name="PowerAI DDL, ResNet-50, IBM-Caffe (reduction overlapped with compute)",
    gpus=(4, 8, 16, 32, 64, 128, 256), nodes=(1, 2, 4, 8, 16, 32, 64),
    speedup=(1.0, 2.0, 3.9, 7.9, 15.5, 30.5, 60.6),
    efficiency=(1.00, 1.00, 0.98, 0.99, 0.97, 0.95, 0.95),
    source="Cho et al. 2017, Figure 2 (lecture 5, 'PowerAI DDL -- IBM')")

POWERAI_TORCH = ScalingTable(
    name="PowerAI DDL, ResNet-50, Torch (reduction not overlapped)",
    gpus=(4, 16, 64, 96, 128, 192, 256), nodes=(1, 4, 16, 24, 32, 48, 64),
    speedup=(1.0, 3.5, 13.7, 20.5, 27.2, 40.3, 53.7),
    efficiency=(1.00, 0.86, 0.86, 0.85, 0.85, 0.84, 0.84),
    source="Cho et al. 2017, Figure 3 (lecture 5, 'PowerAI DDL -- IBM')")


@dataclass(frozen=True)
class ImageNetRun:
    """One row of "Imagenet1K/ResNet50 Training at Scale" (None: blank on the slide)."""
    work: str
    batch: str
    processor: str
    n_processors: int | None
    library: str
    interconnect: str | None
    minutes: float
    top1: float
    efficiency: float | None


IMAGENET_AT_SCALE = (
    ImageNetRun("He et al", "256", "Tesla P100", 8, "Caffe", None, 29 * 60, 75.3, None),
    ImageNetRun("Goyal et al (Facebook)", "8K", "Tesla P100", 256, "Caffe2", "50 Gbit Ethernet", 60, 76.3, 0.90),
    ImageNetRun("Cho et al (IBM)", "8K", "Tesla P100", 256, "Caffe", "Infiniband", 50, 75.01, 0.95),
    ImageNetRun("Smith et al", "8K -> 16K", "Full TPU Pod", None, "Tensorflow", None, 30, 76.1, None),
    ImageNetRun("Akiba et al", "32K", "Tesla P100", 1024, "Chainer", "Infiniband FDR", 15, 74.9, 0.80),
    ImageNetRun("Jia et al", "64K", "Tesla P40", 2048, "Tensorflow", "100 Gbit Ethernet", 6.6, 75.8, 0.879),
    ImageNetRun("Ying et al", "32K", "TPU v3", 1024, "Tensorflow", None, 2.2, 76.3, None),
    ImageNetRun("Ying et al", "64K", "TPU v3", 1024, "Tensorflow", None, 1.8, 75.2, None),
    ImageNetRun("Mikami et al", "54K", "Tesla V100", 3456, "NNL", "Infiniband EDR x2", 2.0, 75.29, 0.8475),
)


def check_table(table: ScalingTable) -> list[dict]:
    """Recompute each efficiency from the printed speed-up, ``E = S / (P / P0)``.

    The slide rounds S to 0.1 and E to 0.01, so the two agree when some speed-up within
    0.05 of the printed one gives an efficiency within 0.005 of the printed one.
    Returns one dict per column with ``recomputed`` and ``consistent``.
    """
    rows = []
    for P, S, E in zip(table.gpus, table.speedup, table.efficiency):
        ratio = P / table.P0
        low, high = (S - 0.05) / ratio, (S + 0.05) / ratio  # E's range allowed by S's rounding
        rows.append({"gpus": P, "speedup": S, "printed": E, "recomputed": S / ratio,
                     "consistent": low <= E + 0.005 and E - 0.005 <= high})
    return rows


def time_based_efficiency(run: ImageNetRun, base: ImageNetRun = IMAGENET_AT_SCALE[0]) -> float:
    """Efficiency from wall-clock training time against He et al.'s 8-GPU run:
    ``(t_base / t_run) / (P_run / P_base)``. Only meaningful for the same
    processor and the same number of epochs (Goyal et al.: 90 epochs on P100s)."""
    if run.n_processors is None or base.n_processors is None:
        raise ValueError(f"{run.work}: the slide gives no processor count")
    return float(scaling_efficiency(speedup(base.minutes, run.minutes),
                                    run.n_processors, base.n_processors))


# ---- 3. ResNet-50's layers (what the all-reduce carries, and when) -----------

@dataclass(frozen=True)
class LayerCost:
    """One layer's cost for one 224x224 image: what its gradient all-reduce carries, and its compute."""
    name: str
    params: int        # learnable parameters (BatchNorm's scale and shift included)
    flops: float       # forward multiply-adds x 2


def _conv(name, C, K, KH, H_out):
    """A square KH x KH convolution of C to K channels, then BatchNorm, at H_out x H_out."""
    return LayerCost(name, C * K * KH * KH + 2 * K, 2.0 * C * K * KH * KH * H_out * H_out)


def resnet50_layers() -> list[LayerCost]:
    """ResNet-50 in forward order: conv1, 16 bottleneck blocks, fc (He et al. 2016).

    About 25.6 million parameters and 7.7 GFLOPs (3.9 G multiply-adds) per
    image, convolutions and fc only: the paper's "3.8 x 10^9 FLOPs", which
    counts multiply-adds. A stage's first block strides in its first 1x1
    convolution, as in the paper (torchvision's "v1.5" strides in the 3x3,
    which costs 4.1 G multiply-adds).
    """
    layers = [_conv("conv1", 3, 64, 7, 112)]
    C, H = 64, 56                                   # after the 3x3 max pool
    for stage, (width, blocks) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)], start=2):
        for b in range(blocks):
            if stage > 2 and b == 0:
                H //= 2                             # the first block of a stage strides by 2
            out = 4 * width
            layers += [_conv(f"res{stage}.{b}.a", C, width, 1, H),
                       _conv(f"res{stage}.{b}.b", width, width, 3, H),
                       _conv(f"res{stage}.{b}.c", width, out, 1, H)]
            if b == 0:
                layers.append(_conv(f"res{stage}.{b}.proj", C, out, 1, H))
            C = out
    layers.append(LayerCost("fc", 2048 * 1000 + 1000, 2.0 * 2048 * 1000))
    return layers


# ---- 4. One iteration as a timeline ------------------------------------------

@dataclass(frozen=True)
class CommModel:
    """Alpha-beta model of a ring all-reduce, and how gradients are grouped.

    alpha : seconds per message (latency); bandwidth : bytes per second per
    link; bucket_bytes : gradients are all-reduced in buckets of at least this
    many bytes (0: one all-reduce per layer); bytes_per_param : 4 for float32.
    """
    alpha: float
    bandwidth: float
    bucket_bytes: float = 0.0
    bytes_per_param: int = 4


def ring_allreduce_time(n_bytes: float, world_size: int, comm: CommModel) -> float:
    """``2(P-1) alpha + 2 n_bytes (P-1)/P / bandwidth``, P = world_size: ``cost.ring_time`` in bytes."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    return ring_time(n_bytes, world_size, comm.alpha, 1 / comm.bandwidth, itemsize=1)


def _buckets(layers: list[LayerCost], comm: CommModel) -> list[tuple[int, float]]:
    """Group layers, in backward order, into buckets of >= bucket_bytes.
    Returns (index of the bucket's last layer in backward order, bytes)."""
    buckets, size = [], 0.0
    for i, layer in enumerate(reversed(layers)):
        size += layer.params * comm.bytes_per_param
        if size >= comm.bucket_bytes or i == len(layers) - 1:
            buckets.append((i, size))
            size = 0.0
    return buckets


@dataclass
class Timeline:
    """Start/end times (s) of every backward step and every all-reduce, and the total."""
    forward: float
    backward: list[tuple[str, float, float]]     # (layer, start, end), backward order
    allreduce: list[tuple[str, float, float]]    # (bucket label, start, end)
    total: float


def iteration_timeline(layers: list[LayerCost], compute_s: float, world_size: int,
                       comm: CommModel, overlap: bool) -> Timeline:
    """Timeline of one data-parallel iteration on each of ``world_size`` GPUs.

    compute_s, the forward plus backward time of one GPU's minibatch, is split
    over the layers by FLOPs, one third forward and two thirds backward (the
    backward pass computes both dx and dw). The network carries one all-reduce
    at a time, in the order gradients become ready; without overlap the first
    one starts when backprop has finished.
    """
    flops = np.array([layer.flops for layer in layers])
    forward = compute_s / 3
    t, backward = forward, []
    for layer, f in zip(reversed(layers), flops[::-1]):
        dt = (2 * compute_s / 3) * f / flops.sum()
        backward.append((layer.name, t, t + dt))
        t += dt
    end_of_backprop, link_free, allreduce = t, 0.0, []
    for last, n_bytes in _buckets(layers, comm):
        grad_ready = backward[last][2] if overlap else end_of_backprop
        start = max(grad_ready, link_free)
        link_free = start + ring_allreduce_time(n_bytes, world_size, comm)
        allreduce.append((f"{n_bytes / 2**20:.1f} MiB up to {backward[last][0]}", start, link_free))
    return Timeline(forward, backward, allreduce, max(end_of_backprop, link_free))


def modelled_efficiency(layers: list[LayerCost], compute_s: float, nodes, comm: CommModel,
                        overlap: bool) -> np.ndarray:
    """``E = t_iter(1 node) / t_iter(nodes)`` for a fixed minibatch per GPU (weak scaling).

    The ring runs over nodes (``world_size = nodes``): inside a node the GPUs reduce over
    NVLink, an order of magnitude faster than the network and neglected here, so one
    node is the baseline, as in the PowerAI tables (4 GPUs = 1 node).
    """
    t1 = iteration_timeline(layers, compute_s, 1, comm, overlap).total
    return np.array([t1 / iteration_timeline(layers, compute_s, int(n), comm, overlap).total
                     for n in np.atleast_1d(nodes)])


# One P100 runs ResNet-50 forward + backward on 32 images in about 0.1 s (about 300 images/s); 10.5 GB/s
# is 84% of InfiniBand EDR's 12.5 GB/s; 5 us per message; 25 MiB buckets are PyTorch DDP's default.
# Chosen so that the model meets both printed tables within 0.02 (tests/test_scaling.py).
POWERAI_MODEL = dict(compute_s=0.1, comm=CommModel(alpha=5e-6, bandwidth=10.5e9,
                                                   bucket_bytes=25 * 2**20))


def what_if(comm_over_compute: float, nodes: int, compute_s: float = 0.1,
            bucket_bytes: float = 25 * 2**20) -> dict:
    """Efficiency at ``nodes`` with and without overlap, for a given communication load.

    ``comm_over_compute`` is the time to all-reduce all of ResNet-50's gradients (at the large-P
    limit, 2N bytes over the link) divided by the compute time of one iteration; the bandwidth is
    set to match it. The widget of notebooks/11_scaling_efficiency.ipynb drives this function.
    Returns {"overlap": E, "no_overlap": E, "t_compute": s, "t_comm": s at this P,
    "t_iter_overlap": s, "t_iter_no_overlap": s}.
    """
    check_positive(compute_s, "compute_s")
    if comm_over_compute < 0:
        raise ValueError(f"comm_over_compute is a ratio of times: it must be >= 0, got {comm_over_compute}")
    layers = resnet50_layers()
    n_bytes = 4 * sum(layer.params for layer in layers)
    bandwidth = 2 * n_bytes / (comm_over_compute * compute_s) if comm_over_compute else np.inf
    comm = CommModel(alpha=0.0, bandwidth=bandwidth, bucket_bytes=bucket_bytes)
    t = {ov: iteration_timeline(layers, compute_s, nodes, comm, ov).total for ov in (True, False)}
    return {"overlap": float(compute_s / t[True]), "no_overlap": float(compute_s / t[False]),
            "t_compute": compute_s, "t_comm": ring_allreduce_time(n_bytes, nodes, comm),
            "t_iter_overlap": float(t[True]), "t_iter_no_overlap": float(t[False])}


def efficiency_curves(nodes, ratios) -> dict[float, dict[str, np.ndarray]]:
    """``what_if`` at every node count, for each comm/compute ratio: ``{ratio: {"overlap": E, "no_overlap": E}}``,
    each E an ndarray (len(nodes),): the curves of lesson 11's efficiency figure."""
    runs = {r: [what_if(r, int(n)) for n in nodes] for r in ratios}
    return {r: {arm: np.array([w[arm] for w in ws]) for arm in ("overlap", "no_overlap")} for r, ws in runs.items()}
