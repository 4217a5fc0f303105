"""Exercise 8 (a DDP communication hook sending int8): what a student would try on each part.

Format: ``tests/exercise_cases/__init__.py``. Parts 2 and 3 are graded with the grader's own
part-1 functions, so a wrong part 1 costs part 1's points only.
"""

CODEC = '''
def quantize(c):
    """c (n,) float -> (q (n,) int8, scale: 0-dim tensor of c's dtype), scale = max|c| / 127."""
    amax = c.abs().max()
    scale = amax / {divisor}
    if amax == 0:
        return torch.zeros(c.shape, dtype=torch.int8), scale
    q = torch.round(c / scale).clamp(-127, 127).to(torch.int8)
    return q, scale


def dequantize(q, scale):
    """q (n,) int8, scale 0-dim -> q * scale, (n,) of scale's dtype."""
    return {dequantized}


def compress_ef(grad, residual):
    """(q, scale, new_residual) for c = grad + residual, keeping c - dequantize(q, scale)."""
    {compress}
'''
RIGHT = dict(divisor="127", dequantized="q.to(scale.dtype) * scale",
             compress="c = grad + residual\n    q, scale = quantize(c)\n    return q, scale, c - dequantize(q, scale)")


def codec(**change) -> str:
    return CODEC.format(**{**RIGHT, **change})


HOOK = '''
def int8_hook(state, bucket):
    """DDP communication hook: int8 messages with error feedback, all-gathered; the mean over ranks."""
    grad = bucket.buffer()
    P, key = dist.get_world_size(), bucket.index()
    residual = state.get(key)
    {reset}
        residual = torch.zeros_like(grad)
    q, scale, new_residual = compress_ef(grad, residual)
    {store}
    qs = [torch.empty_like(q) for _ in range(P)]
    scales = [torch.empty(1, dtype=scale.dtype) for _ in range(P)]
    sent_q = dist.all_gather(qs, q, async_op=True).get_future()
    sent_scale = dist.all_gather(scales, scale.reshape(1), async_op=True).get_future()

    def mean_of_messages(_):
        total = torch.zeros_like(grad)
        for q_r, scale_r in zip(qs, scales):
            total += dequantize(q_r, scale_r[0])
        return {result}
    return torch.futures.collect_all([sent_q, sent_scale]).then(mean_of_messages)
'''
HOOK_RIGHT = dict(reset="if residual is None or residual.shape != grad.shape:",
                  store="state[key] = new_residual", result="total / P")


def hook(**change) -> str:
    return HOOK.format(**{**HOOK_RIGHT, **change})


FLOAT32_ON_THE_WIRE = '''
def int8_hook(state, bucket):
    """Compress with error feedback, then all-reduce what was kept: the same mean, in float32."""
    grad = bucket.buffer()
    P, key = dist.get_world_size(), bucket.index()
    residual = state.get(key)
    if residual is None or residual.shape != grad.shape:
        residual = torch.zeros_like(grad)
    q, scale, state[key] = compress_ef(grad, residual)
    sent = dequantize(q, scale) / P
    return dist.all_reduce(sent, async_op=True).get_future().then(lambda fut: fut.value()[0])
'''

WIRE = '''
def wire_bytes(bucket_sizes, P):
    """(dense, int8): bytes each rank sends per step, DDP's ring all-reduce vs the int8 hook's all-gather."""
    dense = sum({dense} for n in bucket_sizes)
    int8 = sum({int8} for n in bucket_sizes)
    return float(dense), int(int8)


def break_even_P(bucket_sizes):
    """The smallest P >= 2 at which the int8 hook sends at least as many bytes as DDP's all-reduce."""
    P = 2
    while wire_bytes(bucket_sizes, P)[1] < wire_bytes(bucket_sizes, P)[0]:
        P += 1
    return P
'''
WIRE_RIGHT = dict(dense="2 * 4 * n * (P - 1) / P", int8="(P - 1) * (n + 4)")


def wire(**change) -> str:
    return WIRE.format(**{**WIRE_RIGHT, **change})


PARTS = {
    "int8_codec": {
        "tests": ["test_int8_codec"],
        "nearest": ["course_lib.distributed.compression.sign_compress",
                    "course_lib.distributed.compression.decompress"],
        "copy": '''
from course_lib.distributed.compression import decompress, sign_compress


def quantize(c):
    message, _ = sign_compress(c.numpy())
    return torch.from_numpy(message.values), torch.tensor(message.scale, dtype=c.dtype)


def dequantize(q, scale):
    return q.to(scale.dtype) * scale


def compress_ef(grad, residual):
    message, new_residual = sign_compress(grad.numpy(), residual.numpy())
    return (torch.from_numpy(message.values), torch.tensor(message.scale, dtype=grad.dtype),
            torch.from_numpy(new_residual).to(grad.dtype))
''',
        "wrong": [
            (codec(divisor="128"), "which int8's -127..127 cannot hold; divide by 127"),
            (codec(compress="c = grad + residual\n    q, scale = quantize(c)\n"
                            "    return q, scale, dequantize(q, scale) - c"),
             "error feedback with the wrong sign"),
            (codec(dequantized="q.float() * scale"), "the gradient's dtype comes back after the int8 values"),
            (codec(compress="q, scale = quantize(grad)\n    return q, scale, grad + residual - dequantize(q, scale)"),
             "compress_ef quantized grad alone; error feedback quantizes c = grad + residual (lesson 12, section 1)"),
        ],
    },
    "int8_hook": {
        "tests": ["test_int8_hook_buckets", "test_int8_hook_training"],
        "nearest": ["torch.distributed.algorithms.ddp_comm_hooks.default_hooks.fp16_compress_hook",
                    "torch.distributed.algorithms.ddp_comm_hooks.default_hooks.allreduce_hook"],
        "copy": '''
def int8_hook(state, bucket):
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import fp16_compress_hook
    return fp16_compress_hook(None, bucket)
''',
        "wrong": [
            (hook(result="total"), "not the mean: divide by world_size (DDP averages gradients, lesson 8 section 1)"),
            (hook(store="pass"), "int8 compression without error feedback"),
            (hook(reset="if residual is None:"), "a stored residual of another shape than the bucket must be dropped"),
            (FLOAT32_ON_THE_WIRE, "send only the int8 values and the float32 scale (n + 4 bytes a bucket)"),
        ],
    },
    "wire_bytes": {
        "tests": ["test_wire_bytes"],
        "nearest": ["course_lib.distributed.compression.bytes_per_step",
                    "course_lib.distributed.cost.ring_bytes_per_rank"],
        "copy": '''
from course_lib.distributed.compression import bytes_per_step


def wire_bytes(bucket_sizes, P):
    n = sum(bucket_sizes)
    return bytes_per_step(n, P)["ring_per_rank"], int(bytes_per_step(n, P, message_bytes=n)["ring_per_rank"])


def break_even_P(bucket_sizes):
    n, P = sum(bucket_sizes), 2
    while bytes_per_step(n, P, message_bytes=n)["ring_per_rank"] < bytes_per_step(n, P)["ring_per_rank"]:
        P += 1
    return P
''',
        "wrong": [
            (wire(dense="2 * 4 * n"), "without the factor (P-1)/P; a ring all-reduce sends 2n(P-1)/P elements"),
            (wire(int8="(P - 1) * n"), "the float32 scale of each bucket, 4 bytes, is missing"),
            (wire(int8="2 * (n + 4) * (P - 1) / P"), "an all-gather forwards whole messages, it is not a ring"),
        ],
    },
}
