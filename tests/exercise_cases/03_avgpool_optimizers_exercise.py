"""Exercise 3 (average pooling with PyTorch's edge rules; RMSprop and Adam): what a student would try."""

POOL = "def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):\n"
POOL_BACKWARD = ("def avg_pool2d_backward(dout, x_shape, kernel_size, stride=None, padding=0, ceil_mode=False,\n"
                 "                        count_include_pad=True):\n")


def _forward(out_size: str, divisors: str) -> str:
    """A forward pass whose output-size and divisor rules are given (the rest is the loop over offsets)."""
    return POOL + f"""    K, P = kernel_size, padding
    S = K if stride is None else stride
    N, C, H, W = x.shape

    def out_size(L):
{out_size}
    def divisors(L, n):
        start = np.arange(n) * S - P
        end = start + K
{divisors}
    H_out, W_out = out_size(H), out_size(W)
    extra_h = max(0, (H_out - 1) * S + K - P - H)
    extra_w = max(0, (W_out - 1) * S + K - P - W)
    xp = np.pad(x, ((0, 0), (0, 0), (P, extra_h), (P, extra_w)))
    total = np.zeros((N, C, H_out, W_out), dtype=x.dtype)
    for u in range(K):
        for v in range(K):
            total += xp[:, :, u:u + S * (H_out - 1) + 1:S, v:v + S * (W_out - 1) + 1:S]
    return (total / np.outer(divisors(H, H_out), divisors(W, W_out))).astype(x.dtype)
"""


SIZE_OK = """        n = (-(-(L + 2 * P - K) // S) if ceil_mode else (L + 2 * P - K) // S) + 1
        return n - 1 if ceil_mode and (n - 1) * S >= L + P else n
"""
SIZE_NO_DROP = """        return (-(-(L + 2 * P - K) // S) if ceil_mode else (L + 2 * P - K) // S) + 1
"""
DIV_OK = """        in_padded = np.minimum(end, L + P) - start
        return in_padded if count_include_pad else np.minimum(end, L) - np.maximum(start, 0)
"""
DIV_ALWAYS_PADDED = """        return np.minimum(end, L + P) - start
"""
DIV_K_WITH_PAD = """        return np.full(n, K) if count_include_pad else np.minimum(end, L) - np.maximum(start, 0)
"""


def _backward(divisors: str, accumulate: str = "+=") -> str:
    """A backward pass with the given divisor rule; ``accumulate`` '=' forgets that windows overlap."""
    return POOL_BACKWARD + f"""    K, P = kernel_size, padding
    S = K if stride is None else stride
    N, C, H, W = x_shape
    H_out, W_out = dout.shape[2:]

    def divisors(L, n):
        start = np.arange(n) * S - P
        end = start + K
{divisors}
    share = dout / np.outer(divisors(H, H_out), divisors(W, W_out))
    extra_h = max(0, (H_out - 1) * S + K - P - H)
    extra_w = max(0, (W_out - 1) * S + K - P - W)
    dxp = np.zeros((N, C, P + H + extra_h, P + W + extra_w), dtype=dout.dtype)
    for u in range(K):
        for v in range(K):
            dxp[:, :, u:u + S * (H_out - 1) + 1:S, v:v + S * (W_out - 1) + 1:S] {accumulate} share
    return dxp[:, :, P:P + H, P:P + W].astype(dout.dtype)
"""


RMSPROP = "def rmsprop_step(w, grad, square_avg, lr=0.01, alpha=0.99, eps=1e-8):\n"
ADAM = "def adam_step(w, grad, exp_avg, exp_avg_sq, step, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):\n"


def _adam(update: str) -> str:
    return ADAM + """    beta1, beta2 = betas
    exp_avg = beta1 * exp_avg + (1 - beta1) * grad
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad * grad
""" + update


PARTS = {
    "avg_pool2d": {
        "tests": ["test_avg_pool2d"],
        "nearest": ["course_lib.pooling.max_pool2d", "course_lib.conv.im2col"],
        # a convolution with a kernel of ones / K*K: right for the defaults, blind to both flags
        "copy": """from course_lib.conv import im2col


""" + POOL + """    K = kernel_size
    S = K if stride is None else stride
    N, C, H, W = x.shape
    H_out, W_out = (H + 2 * padding - K) // S + 1, (W + 2 * padding - K) // S + 1
    cols = im2col(x, K, S, padding)                                   # (N, C*K*K, L), zeros in the padding
    return cols.reshape(N, C, K * K, H_out * W_out).mean(axis=2).reshape(N, C, H_out, W_out)
""",
        "wrong": [
            (_forward(SIZE_OK, DIV_ALWAYS_PADDED),
             "count_include_pad=False: the divisor counts only the window's elements that lie in x"),
            (_forward(SIZE_NO_DROP, DIV_OK),
             "PyTorch drops a ceil_mode window that would start in the right padding"),
            (_forward(SIZE_OK, DIV_K_WITH_PAD),
             "a ceil_mode window that hangs past the right padding counts only its cells in the padded input"),
            ("import torch\n\n\n" + POOL + """\
    return torch.nn.functional.avg_pool2d(torch.from_numpy(x), kernel_size, stride, padding, ceil_mode,
                                          count_include_pad).numpy()
""", "numpy only in this exercise"),
        ],
    },
    "avg_pool2d_backward": {
        "tests": ["test_avg_pool2d_backward"],
        "nearest": ["course_lib.pooling.max_pool2d_backward", "course_lib.conv.col2im"],
        # col2im of dout / K*K spread over each window: right for the defaults only
        "copy": """from course_lib.conv import col2im


""" + POOL_BACKWARD + """    K = kernel_size
    S = K if stride is None else stride
    N, C, H, W = x_shape
    L = dout.shape[2] * dout.shape[3]
    cols = np.repeat(dout.reshape(N, C, 1, L) / (K * K), K * K, axis=2).reshape(N, C * K * K, L)
    return col2im(cols, (H, W), K, S, padding)
""",
        "wrong": [
            (_backward(DIV_OK, accumulate="="), "their shares add up (+=, lesson 3 section 6)"),
            (_backward(DIV_ALWAYS_PADDED), "count_include_pad=False: the divisor does not count the padding"),
            (_backward(DIV_K_WITH_PAD), "the same per-window divisor as part 1's forward pass"),
        ],
    },
    "rmsprop_step": {
        "tests": ["test_rmsprop_step"],
        "nearest": ["course_lib.optim.Adagrad"],
        "copy": """from course_lib.optim import Adagrad


""" + RMSPROP + """    w = w.copy()
    opt = Adagrad([w], lr=lr, eps=eps)
    opt.state_sum = [square_avg.copy()]
    opt.step([grad])
    return w, opt.state_sum[0]
""",
        "wrong": [
            (RMSPROP + """    square_avg = alpha * square_avg + (1 - alpha) * grad * grad
    return w - lr * grad / np.sqrt(square_avg + eps), square_avg
""", "eps goes outside the square root"),
            (RMSPROP + """    square_avg = (1 - alpha) * square_avg + alpha * grad * grad
    return w - lr * grad / (np.sqrt(square_avg) + eps), square_avg
""", "alpha weights the old average"),
            ("import torch\n\n\n" + RMSPROP + """\
    w, s = torch.tensor(w, requires_grad=True), torch.tensor(square_avg)
    opt = torch.optim.RMSprop([w], lr=lr, alpha=alpha, eps=eps)
    opt.state[w] = {"step": torch.tensor(0.0), "square_avg": s}
    w.grad = torch.from_numpy(grad.copy())
    opt.step()
    return w.detach().numpy(), s.numpy()
""", "numpy only in this exercise"),
        ],
    },
    "adam_step": {
        "tests": ["test_adam_step"],
        "nearest": ["course_lib.optim.SGD", "course_lib.optim.Adagrad"],
        # SGD with momentum: the moving average of the gradient, without the second moment
        "copy": """from course_lib.optim import SGD


""" + ADAM + """    w = w.copy()
    opt = SGD([w], lr=lr, momentum=betas[0])
    opt.velocity = None if step == 1 else [exp_avg.copy()]
    opt.step([grad])
    return w, opt.velocity[0], exp_avg_sq
""",
        "wrong": [
            (_adam("    return w - lr * exp_avg / (np.sqrt(exp_avg_sq) + eps), exp_avg, exp_avg_sq\n"),
             "no bias correction"),
            (_adam("""    step_size = lr * np.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)   # Kingma and Ba's form
    return w - step_size * exp_avg / (np.sqrt(exp_avg_sq) + eps), exp_avg, exp_avg_sq
"""), "eps is added after the bias correction"),
            (_adam("""    m_hat, v_hat = exp_avg / (1 - beta1 ** step), exp_avg_sq / (1 - beta2 ** step)
    return w - lr * m_hat / np.sqrt(v_hat + eps), exp_avg, exp_avg_sq
"""), "eps goes outside the square root"),
        ],
    },
}
