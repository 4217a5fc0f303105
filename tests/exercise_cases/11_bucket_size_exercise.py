"""Exercise 11 (the bucket size that maximises scaling efficiency): what a student would try on each part.

Format: ``tests/exercise_cases/__init__.py``. Part 2 is graded with the tests' own timelines and part 3's
prediction with the grader's part 1, so each wrong answer costs its own part only.
"""

TIMELINE = '''
def bucket_timeline(sizes, ready, cap_bytes, P, alpha, bandwidth):
    """DDP's buckets for cap_bytes and their all-reduces: [(first, last, start, end)], in bucket order."""
    buckets, first, filled, link_free = [], 0, 0, 0.0
    for i, n in enumerate(sizes):
        {fill}
        if filled >= cap_bytes or i == len(sizes) - 1:
            start = {start}
            link_free = start + {duration}
            buckets.append((first, i, start, link_free))
            first, filled = i + 1, 0
    return buckets
'''
TIMELINE_RIGHT = dict(fill="filled += n", start="max(ready[i], link_free)",
                      duration="2 * (P - 1) * alpha + 2 * filled * (P - 1) / P / bandwidth")


def timeline(**change) -> str:
    return TIMELINE.format(**{**TIMELINE_RIGHT, **change})


CAP_AS_A_MAXIMUM = '''
def bucket_timeline(sizes, ready, cap_bytes, P, alpha, bandwidth):
    """Buckets that never exceed the cap: a gradient that would overflow starts the next bucket."""
    groups, current, filled = [], [], 0
    for i, n in enumerate(sizes):
        if current and filled + n > cap_bytes:
            groups.append(current)
            current, filled = [], 0
        current.append(i)
        filled += n
    groups.append(current)
    buckets, link_free = [], 0.0
    for group in groups:
        n = sum(sizes[i] for i in group)
        start = max(ready[group[-1]], link_free)
        link_free = start + 2 * (P - 1) * alpha + 2 * n * (P - 1) / P / bandwidth
        buckets.append((group[0], group[-1], start, link_free))
    return buckets
'''

BEST = '''
def best_cap(timeline, caps, backprop_s, forward_s):
    """The cap of caps with the highest predicted efficiency (the smallest among ties), and that efficiency."""
    best = None
    for cap in sorted(caps):
        buckets = timeline(cap)
        t_iter = {t_iter}
        E = {E}
        if best is None or E {better} best[1]:
            best = (cap, E)
    return best
'''
BEST_RIGHT = dict(t_iter="forward_s + max(backprop_s, buckets[-1][3])", E="(forward_s + backprop_s) / t_iter",
                  better=">")


def best(**change) -> str:
    return BEST.format(**{**BEST_RIGHT, **change})


CALIBRATE = '''
def calibrate(profile):
    """(sizes, ready, alpha, bandwidth, forward_s) for bucket_timeline, from measure_sweep's profile."""
    P, names = profile["world_size"], [name for name, _ in profile["params"]]
    elements = dict(profile["params"])
    slowest = {{name: float(np.{average}([{rank_time}(rank[name] for rank in ranks) for ranks in profile["ready"]]))
               for name in names}}
    order = sorted({names}, key=lambda name: slowest[name])
    by_size = {{}}
    for n, t in profile["lone"]:
        by_size.setdefault(n, []).append(t)
    n = np.array(sorted(by_size), dtype=np.float64)
    b, a = np.polyfit(n, [np.median(by_size[k]) for k in sorted(by_size)], 1)
    alpha, bandwidth = {alpha}, 2 * (P - 1) / (P * b)
    forward_s = float(np.median(np.max(profile["forward"], axis=1)))
    return ([elements[name] * profile["itemsize"] for name in order], [slowest[name] for name in order],
            float(alpha), float(bandwidth), forward_s)
'''
CALIBRATE_RIGHT = dict(average="median", rank_time="max", names="reversed(names)", alpha="a / (2 * (P - 1))")


def calibrate(**change) -> str:
    return CALIBRATE.format(**{**CALIBRATE_RIGHT, **change})


PARTS = {
    "bucket_timeline": {
        "tests": ["test_bucket_timeline"],
        "nearest": ["course_lib.scaling.iteration_timeline", "course_lib.scaling.ring_allreduce_time"],
        "copy": '''
from course_lib.scaling import CommModel, LayerCost, iteration_timeline


def bucket_timeline(sizes, ready, cap_bytes, P, alpha, bandwidth):
    steps = np.diff([0.0, *ready])                        # each gradient's share of backprop
    layers = [LayerCost(f"g{i}", n // 4, float(dt)) for i, (n, dt) in enumerate(zip(sizes, steps))][::-1]
    tl = iteration_timeline(layers, 1.5 * ready[-1], P, CommModel(alpha, bandwidth, cap_bytes), overlap=True)
    return [(0, 0, start, end) for _, start, end in tl.allreduce]
''',
        "wrong": [
            (timeline(start="max(ready[first], link_free)"),
             "a bucket's all-reduce can start only when all its gradients are ready (lesson 11, section 3)"),
            (timeline(duration="2 * (P - 1) * alpha + 2 * filled / bandwidth"), "without the factor (P-1)/P"),
            (timeline(start="ready[i]"), "the link carries one all-reduce at a time"),
            (CAP_AS_A_MAXIMUM, "size >= cap; the one that crosses it stays"),
        ],
    },
    "best_cap": {
        "tests": ["test_best_cap"],
        "nearest": ["course_lib.scaling.scaling_efficiency", "course_lib.scaling.modelled_efficiency"],
        "copy": '''
from course_lib.scaling import scaling_efficiency, speedup


def best_cap(timeline, caps, backprop_s, forward_s):
    def efficiency(cap):
        t_parallel = forward_s + timeline(cap)[-1][3]
        return float(scaling_efficiency(speedup(forward_s + backprop_s, t_parallel), 2, 2))
    cap = max(caps, key=efficiency)
    return cap, efficiency(cap)
''',
        "wrong": [
            (best(t_iter="forward_s + buckets[-1][3]"),
             "backward() returns when backprop and every all-reduce are done"),
            (best(E="backprop_s / max(backprop_s, buckets[-1][3])"), "the forward pass counts in both times"),
            (best(better=">="), "ties go to the smallest cap"),
        ],
    },
    "calibrate": {
        "tests": ["test_calibrate", "test_calibrate_measured"],
        "nearest": ["course_lib.experiments.ddp_overlap.fit_comm_model",
                    "course_lib.experiments.ddp_overlap.modelled_timeline"],
        "copy": '''
from course_lib.experiments.ddp_overlap import fit_comm_model


def calibrate(profile):
    names = [name for name, _ in profile["params"]][::-1]
    first = profile["ready"][0][0]                         # the first pass, rank 0
    order = sorted(names, key=lambda name: first[name])
    comm = fit_comm_model(dict(enumerate(profile["lone"])), profile["world_size"])
    sizes = [dict(profile["params"])[name] * profile["itemsize"] for name in order]
    return sizes, [first[name] for name in order], comm.alpha, comm.bandwidth, float(profile["forward"][0][0])
''',
        "wrong": [
            (calibrate(rank_time="min"), "an all-reduce waits for the slower rank, take the max over ranks"),
            (calibrate(alpha="a"), "alpha = a / (2(P-1)), lesson 6's ring formula"),
            (calibrate(average="mean"), "take the median, which one slow pass does not move"),
            (calibrate(names="names"), "on equal times the parameter listed later in params comes first"),
        ],
    },
}
