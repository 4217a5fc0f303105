"""What a student would try on exercise 12 (QSGD, its size, error feedback, training): see this package's docstring.

Two or three mistakes per part, not more: every case is a whole graded run of the notebook, and part 4
trains 36 small networks (the batch must stay well inside pytest's 300 s on a loaded two-core machine).
"""

QUANTIZE_COPY = '''
from course_lib.distributed.compression import sign_compress


def qsgd_quantize(v, s, rng):
    """Lesson 12's 1-bit quantizer: the scaled sign, written as (norm, levels)."""
    message, _ = sign_compress(np.asarray(v, dtype=np.float32))
    return message.scale * s, message.values.astype(np.int64)


def qsgd_dequantize(norm, levels, s):
    return (norm * np.asarray(levels) / s).astype(np.float32)
'''

# the quantizer with one part changed per mistake
QUANTIZE = '''
def qsgd_quantize(v, s, rng):
    if not isinstance(s, int) or s < 1:
        raise ValueError(f"s = {{s}} must be an int >= 1")
    v = np.asarray(v, dtype=np.float64)
    norm = {norm}
{zero}    r = np.abs(v) * s / norm
    low = np.floor(r)
    xi = {xi}
    return norm, {levels}


def qsgd_dequantize(norm, levels, s):
    return (norm * np.asarray(levels, dtype=np.float64) / s).astype(np.float32)
'''
RIGHT = dict(norm="float(np.linalg.norm(v))",
             zero="    if norm == 0:\n        return 0.0, np.zeros(v.size, dtype=np.int64)\n",
             xi="low + (rng.random(v.size) < r - low)", levels="(np.sign(v) * xi).astype(np.int64)")

SIZE_COPY = '''
from course_lib.distributed.compression import sign_compress


def qsgd_bits(n, s):
    return 8 * sign_compress(np.ones(n, dtype=np.float32))[0].nbytes     # lesson 12's 1-bit message


def qsgd_bytes(n, s):
    return sign_compress(np.ones(n, dtype=np.float32))[0].nbytes
'''

SIZE = '''
def qsgd_bits(n, s):
    return {bits}


def qsgd_bytes(n, s):
    return {nbytes}
'''
LEVEL_BITS = "int(s).bit_length()"
UP = "-(-qsgd_bits(n, s) // 8)"

EF_COPY = '''
from course_lib.distributed.compression import sign_compress


def qsgd_ef_compress(g, error, s, rng):
    message, new_error = sign_compress(g, error)        # lesson 12's 1-bit compressor, with its residual
    return message.scale * s, message.values.astype(np.int64), new_error
'''

EF = '''
def qsgd_ef_compress(g, error, s, rng):
    c = np.asarray(g, dtype=np.float64) + (0.0 if error is None else error)
    norm, levels = qsgd_quantize({quantized}, s, rng)
    return norm, levels, {new_error}
'''

TRAIN_COPY = '''
from course_lib.experiments.compression import train_compressed


def train_qsgd(model, data, s, error_feedback=True, seed=0, world_size=4, steps=300, lr=0.3, batch=16):
    """Lesson 12's loop, with its 1-bit compressor standing in for QSGD."""
    run = train_compressed(model, data, "dense" if s is None else "sign", world_size=world_size, steps=steps,
                           lr=lr, batch=batch, error_feedback=error_feedback, seed=seed)
    return {"final_loss": run.curve[-1, 1], "test_error": run.test_error,
            "bytes_per_worker_step": run.bytes_per_worker_step}
'''

TRAIN = '''
def train_qsgd(model, data, s, error_feedback=True, seed=0, world_size=4, steps=300, lr=0.3, batch=16):
    x, y, x_test, y_test = data
    init_seed, batch_seed, quant_seed = np.random.SeedSequence(seed).spawn(3)
    w = model.init(np.random.default_rng(init_seed))
    batches, quant = np.random.default_rng(batch_seed), np.random.default_rng(quant_seed)
    errors = [np.zeros_like(w) for _ in range(world_size)]
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(steps):
            total = np.zeros_like(w)
            for r in range(world_size):
                idx = {idx}
                _, g = model.loss_and_grad(w, x[idx], y[idx])
                if s is None:
                    q = g.astype(np.float32)
                elif {feedback}:
                    norm, levels, errors[r] = qsgd_ef_compress(g, errors[r], s, quant)
                    q = qsgd_dequantize(norm, levels, s)
                else:
                    q = qsgd_dequantize(*qsgd_quantize(g, s, quant), s)
                total += q
            w = w - lr * total{average}
        loss, error = model.loss(w, x, y), model.error(w, x_test, y_test)
    nbytes = {nbytes}
    return {{"final_loss": float(loss), "test_error": float(error), "bytes_per_worker_step": nbytes}}
'''
GOOD = dict(idx="batches.integers(0, len(x), batch)", feedback="error_feedback",
            average=" / world_size", nbytes="4 * w.size if s is None else qsgd_bytes(w.size, s)")

PARTS = {
    "qsgd_quantize": {
        "tests": ["test_qsgd_quantize"],
        "nearest": ["course_lib.distributed.compression.sign_compress",
                    "course_lib.distributed.compression.decompress"],
        "copy": QUANTIZE_COPY,
        "wrong": [
            (QUANTIZE.format(**dict(RIGHT, xi="np.round(r)")),
             "the rounding is biased; round r_i up with probability r_i - floor(r_i) (lesson 12 section 1)"),
            (QUANTIZE.format(**dict(RIGHT, norm="float(np.max(np.abs(v)))")),
             "norm expected the L2 norm ||v||_2"),
            (QUANTIZE.format(**dict(RIGHT, xi="low + (np.random.random(v.size) < r - low)")),
             "draw the random numbers from the rng you are given, not from np.random's global state"),
        ],
    },
    "qsgd_size": {
        "tests": ["test_qsgd_size"],
        "nearest": ["course_lib.distributed.compression.sign_compress"],
        "copy": SIZE_COPY,
        "wrong": [
            (SIZE.format(bits=f"n * (1 + {LEVEL_BITS})", nbytes=UP), "the norm's 32 bits are missing"),
            (SIZE.format(bits=f"32 + n * (1 + {LEVEL_BITS})", nbytes="qsgd_bits(n, s) // 8"),
             "whole bytes, rounded up (lesson 12 section 3)"),
        ],
    },
    "qsgd_ef_compress": {
        "tests": ["test_qsgd_ef_compress"],
        "nearest": ["course_lib.distributed.compression.sign_compress",
                    "course_lib.distributed.compression.topk_compress"],
        "copy": EF_COPY,
        "wrong": [
            (EF.format(quantized="c", new_error="qsgd_dequantize(norm, levels, s) - c"),
             "the opposite sign: e' = c - Q(c), what was not sent"),
            (EF.format(quantized="g", new_error="c - qsgd_dequantize(norm, levels, s)"),
             "the residual was not added; quantize c = g + e (lesson 12 section 2)"),
        ],
    },
    "train_qsgd": {
        "tests": ["test_train_qsgd"],
        "nearest": ["course_lib.experiments.compression.train_compressed"],
        "copy": TRAIN_COPY,
        "wrong": [
            (TRAIN.format(**dict(GOOD, average="")), "average the P messages (1/P)"),
            (TRAIN.format(**dict(GOOD, feedback="False")),
             "Is each worker's residual carried to its next step? (lesson 12 section 2)"),
        ],
    },
}
