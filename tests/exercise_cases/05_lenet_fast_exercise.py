"""Exercise 5 (LeNet-5 made fast): what a student would try on each part.

The wrong steps of part 2 are the model answer with one realistic change each, taken from the solution
notebook (an assertion says so if the model answer no longer holds the line a case changes).
"""

from pathlib import Path

import nbformat

_NOTEBOOK = nbformat.read(Path(__file__).resolve().parents[2] / "solutions" / "05_lenet_fast_exercise.ipynb", 4)
_MODEL = next(c.source for c in _NOTEBOOK.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "fast_lenet5")


def _model_with(*changes):
    source = _MODEL
    for old, new in changes:
        assert old in source, f"the model answer no longer holds {old!r}"
        source = source.replace(old, new)
    return source


_BREAKDOWN = '''
def time_breakdown(params, x, y, repeats=5):
    w1, b1, w3, b3, w5, b5, w6, b6, w7, b7 = params
    a1 = conv2d_im2col(x, w1, b1); r1 = relu(a1); s2, i2 = max_pool2d(r1, 2, return_indices=True)
    a3 = conv2d_im2col(s2, w3, b3); r3 = relu(a3); s4, i4 = max_pool2d(r3, 2, return_indices=True)
    a5 = conv2d_im2col(s4, w5, b5); h5 = relu(a5).reshape(len(x), -1); a6 = linear(h5, w6, b6); h6 = relu(a6)
    _, dl = softmax_cross_entropy(linear(h6, w7, b7), y)
    dh6 = linear_backward(dl, h6, w7)[0]
    dh5 = linear_backward(relu_backward(dh6, a6), h5, w6)[0].reshape(a5.shape)
    ds4 = conv2d_backward_im2col(relu_backward(dh5, a5), s4, w5)[0]
    dr3 = max_pool2d_backward(ds4, r3, 2, argmax=i4)
    ds2 = conv2d_backward_im2col(relu_backward(dr3, a3), s2, w3)[0]
    dr1 = max_pool2d_backward(ds2, r1, 2, argmax=i2)
    forward = {"C1": lambda: relu(conv2d_im2col(x, w1, b1)), "S2": lambda: max_pool2d(r1, 2, return_indices=True),
               "C3": lambda: relu(conv2d_im2col(s2, w3, b3)), "S4": lambda: max_pool2d(r3, 2, return_indices=True),
               "C5": lambda: relu(conv2d_im2col(s4, w5, b5)), "F6": lambda: relu(linear(h5, w6, b6)),
               "out": lambda: softmax_cross_entropy(linear(h6, w7, b7), y)}
    backward = {"C1": lambda: conv2d_backward_im2col(relu_backward(dr1, a1), x, w1),
                "S2": lambda: max_pool2d_backward(ds2, r1, 2, argmax=i2),
                "C3": lambda: conv2d_backward_im2col(relu_backward(dr3, a3), s2, w3),
                "S4": lambda: max_pool2d_backward(ds4, r3, 2, argmax=i4),
                "C5": lambda: conv2d_backward_im2col(relu_backward(dh5, a5), s4, w5),
                "F6": lambda: linear_backward(relu_backward(dh6, a6), h5, w6),
                "out": lambda: linear_backward(dl, h6, w7)}
    seconds = {}
    for name in LAYERS:
        runs = []
        for run in range(repeats + 1):
            start = time.process_time()
            forward[name]()
            BACKWARD
            runs.append(time.process_time() - start)
        seconds[name] = UNIT * float(np.median(runs[1:]))
    return seconds
'''

PARTS = {
    "time_breakdown": {
        "tests": ["test_time_breakdown"],
        "nearest": ["course_lib.experiments.lenet_reference.reference_loss_and_grads"],
        "copy": '''
def time_breakdown(params, x, y, repeats=5):
    reference_loss_and_grads(params, x, y)
    runs = []
    for _ in range(repeats):
        start = time.process_time()
        reference_loss_and_grads(params, x, y)
        runs.append(time.process_time() - start)
    return {name: float(np.median(runs)) / len(LAYERS) for name in LAYERS}    # the whole step, shared out
''',
        "wrong": [
            (_BREAKDOWN.replace("BACKWARD", "pass").replace("UNIT", "1"), "is the backward pass timed too"),
            (_BREAKDOWN.replace("BACKWARD", "backward[name]()").replace("UNIT", "1000"),     # milliseconds
             "seconds, not milliseconds"),
            ('''
def time_breakdown(params, x, y, repeats=5):
    totals = {name: [] for name in LAYERS}
    for run in range(repeats + 1):
        start = time.process_time()                 # checkpoints through one step: a running total
        logits, cache = reference_forward(params, x)
        for name in LAYERS[:-1]:
            totals[name].append(time.process_time() - start)
        loss, dlogits = softmax_cross_entropy(logits, y)
        reference_backward(params, dlogits, cache)
        totals["out"].append(time.process_time() - start)
    return {name: float(np.median(times[1:])) for name, times in totals.items()}
''', "running total"),
        ],
    },
    "fast_lenet5": {
        "tests": ["test_fast_lenet5_equal", "test_fast_lenet5_speed"],
        "nearest": ["course_lib.lenet.LeNet5"],
        "copy": '''
class FastLeNet5:
    def __init__(self):
        from course_lib.lenet import LeNet5
        self.net = LeNet5()                        # the kit's tuned LeNet-5: machinery.fast_conv, a Workspace

    def step(self, params, x, y, lr):
        self.net.params = params
        loss, grads, _ = self.net.loss_and_grads(x, y)
        for p, g in zip(params, grads):
            p -= lr * g
        return loss
''',
        "wrong": [
            ('''
class FastLeNet5:
    """The reference, with the 2x2 pools written as 4 strided views: equal, not 1.5x faster."""

    def __init__(self):
        pass

    def step(self, params, x, y, lr):
        def pool(a):
            return np.maximum(np.maximum(a[:, :, 0::2, 0::2], a[:, :, 0::2, 1::2]),
                              np.maximum(a[:, :, 1::2, 0::2], a[:, :, 1::2, 1::2]))

        def pool_backward(ds, a, m):
            da, free = np.empty_like(a), np.ones(m.shape, dtype=bool)
            for u, v in ((0, 0), (0, 1), (1, 0), (1, 1)):
                wins = (a[:, :, u::2, v::2] == m) & free
                free &= ~wins
                da[:, :, u::2, v::2] = np.where(wins, ds, 0)
            return da

        w1, b1, w3, b3, w5, b5, w6, b6, w7, b7 = params
        a1 = conv2d_im2col(x, w1, b1)
        r1 = relu(a1)
        s2 = pool(r1)
        a3 = conv2d_im2col(s2, w3, b3)
        r3 = relu(a3)
        s4 = pool(r3)
        a5 = conv2d_im2col(s4, w5, b5)
        h5 = relu(a5).reshape(len(x), -1)
        a6 = linear(h5, w6, b6)
        h6 = relu(a6)
        loss, dlogits = softmax_cross_entropy(linear(h6, w7, b7), y)
        dh6, dw7, db7 = linear_backward(dlogits, h6, w7)
        dh5, dw6, db6 = linear_backward(relu_backward(dh6, a6), h5, w6)
        ds4, dw5, db5 = conv2d_backward_im2col(relu_backward(dh5.reshape(a5.shape), a5), s4, w5)
        ds2, dw3, db3 = conv2d_backward_im2col(relu_backward(pool_backward(ds4, r3, s4), a3), s2, w3)
        _, dw1, db1 = conv2d_backward_im2col(relu_backward(pool_backward(ds2, r1, s2), a1), x, w1)
        for p, g in zip(params, (dw1, db1, dw3, db3, dw5, db5, dw6, db6, dw7, db7)):
            p -= lr * g
        return loss
''', "must be at least 1.5x as fast"),
            (_model_with(("wins = (a[:, :, u::2, v::2] == m) & free", "wins = a[:, :, u::2, v::2] == m")),
             "the tie rule"),                       # every tied maximum gets the gradient
            (_model_with(("(C, 5, 5, N, H - 4, W - 4)", "(5, 5, C, N, H - 4, W - 4)"),
                         ("cols[:, u, v] = a[:, :,", "cols[u, v] = a[:, :,")),
             "the forward pass already differs"),   # rows (u, v, c), the filters' (c, u, v)
        ],
    },
}
