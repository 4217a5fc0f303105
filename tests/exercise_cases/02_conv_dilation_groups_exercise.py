"""Exercise 2 (dilated and grouped convolution): what a student would try on each part."""

# the start of every im2col_dilated below: the arguments read, the output size, the padded input
IM2COL_HEAD = '''
def im2col_dilated(x, kernel_size, stride=1, padding=0, dilation=1):
    (KH, KW), (SH, SW), (PH, PW), (DH, DW) = (pair(a, "arg", 0) for a in (kernel_size, stride, padding, dilation))
    N, C, H, W = x.shape
    H_out = dilated_output_size(H, KH, PH, SH, DH)
    W_out = dilated_output_size(W, KW, PW, SW, DW)
    xp = pad2d(x, (PH, PW))
'''

PARTS = {
    "dilated_output_size": {
        "tests": ["test_dilated_output_size"],
        "nearest": ["course_lib.conv.conv_output_size"],
        "copy": '''
def dilated_output_size(W, F, P, S, D):
    from course_lib.conv import conv_output_size
    return conv_output_size(W, F, P, S, floor=True)        # the lesson's size: no dilation
''',
        "wrong": [
            ('''
def dilated_output_size(W, F, P, S, D):
    span = F * D                                           # F taps, each D wide
    if span > W + 2 * P:
        raise ValueError(f"kernel {span} > padded input {W + 2 * P}")
    return (W + 2 * P - span) // S + 1
''', "effective kernel of F*D"),
            ('''
def dilated_output_size(W, F, P, S, D):
    span = (F - 1) * D + 1
    if span > W + 2 * P:
        raise ValueError(f"kernel {span} > padded input {W + 2 * P}")
    return (W + 2 * P - span) / S + 1                      # the slide's formula, as written
''', "// divides integers"),
            ('''
def dilated_output_size(W, F, P, S, D):
    return (W + 2 * P - (F - 1) * D - 1) // S + 1          # no check that the kernel fits
''', "expected a ValueError"),
        ],
    },
    "im2col_dilated": {
        "tests": ["test_im2col_dilated", "test_im2col_dilated_speed"],
        "nearest": ["course_lib.conv.im2col"],
        "copy": '''
def im2col_dilated(x, kernel_size, stride=1, padding=0, dilation=1):
    from course_lib.conv import im2col
    return im2col(x, kernel_size, stride, padding)          # dilation ignored
''',
        "wrong": [
            (IM2COL_HEAD + '''\
    cols = np.empty((N, C, KH, KW, H_out, W_out), dtype=x.dtype)
    for u in range(KH):
        for v in range(KW):                                 # the lesson's offsets, unchanged
            cols[:, :, u, v] = xp[:, :, u:u + SH * (H_out - 1) + 1:SH, v:v + SW * (W_out - 1) + 1:SW]
    return cols.reshape(N, C * KH * KW, H_out * W_out)
''', "taps of an undilated window"),
            (IM2COL_HEAD + '''\
    cols = np.empty((N, KH, KW, C, H_out, W_out), dtype=x.dtype)     # taps first, then channels
    for u in range(KH):
        for v in range(KW):
            cols[:, u, v] = xp[:, :, u * DH:u * DH + SH * (H_out - 1) + 1:SH, v * DW:v * DW + SW * (W_out - 1) + 1:SW]
    return cols.reshape(N, KH * KW * C, H_out * W_out)
''', "ordered (u, v, c)"),
            (IM2COL_HEAD + '''\
    cols = np.empty((N, C, KH, KW, H_out, W_out), dtype=x.dtype)
    for i in range(H_out):                                  # one window at a time: correct, and slow
        for j in range(W_out):
            top, left = i * SH, j * SW
            cols[:, :, :, :, i, j] = xp[:, :, top:top + (KH - 1) * DH + 1:DH, left:left + (KW - 1) * DW + 1:DW]
    return cols.reshape(N, C * KH * KW, H_out * W_out)
''', "not one small copy per window"),
            (IM2COL_HEAD + '''\
    rows = (np.arange(KH) * DH)[:, None, None, None] + (np.arange(H_out) * SH)[None, None, :, None]
    cols = (np.arange(KW) * DW)[None, :, None, None] + (np.arange(W_out) * SW)[None, None, None, :]
    return xp[:, :, rows, cols].reshape(N, C * KH * KW, H_out * W_out)     # a gather (CS231n's im2col_indices)
''', "nor a gather through index arrays"),
            ('''
def im2col_dilated(x, kernel_size, stride=1, padding=0, dilation=1):
    import torch
    import torch.nn.functional as F
    return F.unfold(torch.from_numpy(x), kernel_size, dilation, padding, stride).numpy()
''', "numpy only in this exercise"),
        ],
    },
    "conv2d_grouped": {
        "tests": ["test_conv2d_grouped"],
        "nearest": ["course_lib.conv.conv2d_im2col"],
        "copy": '''
def conv2d_grouped(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    from course_lib.conv import conv2d_im2col
    return conv2d_im2col(x, w, b, stride, padding)          # neither dilation nor groups
''',
        "wrong": [
            ('''
def conv2d_grouped(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    N, C, H, W = x.shape
    K, C_g, KH, KW = w.shape
    G, R = groups, C_g * KH * KW
    if C % G or K % G or C_g != C // G:
        raise ValueError(f"groups {G} must divide C {C} and K {K}; w.shape[1] {C_g} must be C/groups")
    cols = im2col_dilated(x, (KH, KW), stride, padding, dilation)
    out = np.empty((N, K, cols.shape[-1]), dtype=cols.dtype)
    for k in range(K):
        g = k % G                                           # deal the filters out to the groups, like cards
        out[:, k] = w[k].reshape(-1) @ cols[:, g * R:(g + 1) * R]
    if b is not None:
        out += b[:, None]
    (SH, SW), (PH, PW), (DH, DW) = pair(stride, "s", 1), pair(padding, "p", 0), pair(dilation, "d", 1)
    H_out = (H + 2 * PH - (KH - 1) * DH - 1) // SH + 1
    return out.reshape(N, K, H_out, -1)
''', "went to group k % G"),
            ('''
def conv2d_grouped(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    N, C, H, W = x.shape
    K, C_g, KH, KW = w.shape
    G = groups
    if C % G or K % G or C_g != C // G:
        raise ValueError(f"groups {G} must divide C {C} and K {K}; w.shape[1] {C_g} must be C/groups")
    cols = im2col_dilated(x, (KH, KW), stride, padding, dilation)
    cols = cols.reshape(N, C, KH * KW, -1)
    out = np.empty((N, K, cols.shape[-1]), dtype=cols.dtype)
    for k in range(K):
        g = k // (K // G)
        rows = cols[:, g::G].reshape(N, C_g * KH * KW, -1)  # every G-th channel, starting at g
        out[:, k] = w[k].reshape(-1) @ rows
    if b is not None:
        out += b[:, None]
    (SH, SW), (PH, PW), (DH, DW) = pair(stride, "s", 1), pair(padding, "p", 0), pair(dilation, "d", 1)
    H_out = (H + 2 * PH - (KH - 1) * DH - 1) // SH + 1
    return out.reshape(N, K, H_out, -1)
''', "read every G-th channel"),
        ],
    },
    "conv2d_grouped_backward": {
        "tests": ["test_conv2d_grouped_backward"],
        "nearest": ["course_lib.conv.conv2d_backward_im2col"],
        "copy": '''
def conv2d_grouped_backward(dout, x, w, stride=1, padding=0, dilation=1, groups=1):
    from course_lib.conv import conv2d_backward_im2col
    return conv2d_backward_im2col(dout, x, w, stride, padding)
''',
        "wrong": [
            ('''
def conv2d_grouped_backward(dout, x, w, stride=1, padding=0, dilation=1, groups=1):
    N, C, H, W = x.shape
    K, C_g, KH, KW = w.shape
    G, R = groups, C_g * KH * KW
    (SH, SW), (PH, PW), (DH, DW) = pair(stride, "s", 1), pair(padding, "p", 0), pair(dilation, "d", 1)
    H_out, W_out = dout.shape[2:]
    cols = im2col_dilated(x, (KH, KW), stride, padding, dilation).reshape(N, G, R, -1)
    dout_g = dout.reshape(N, G, K // G, H_out * W_out)
    w_g = w.reshape(G, K // G, R)
    db = dout.sum(axis=(0, 2, 3))
    dw = np.einsum("ngkl,ngrl->gkr", dout_g, cols).reshape(w.shape)
    dcols = (np.swapaxes(w_g, 1, 2) @ dout_g).reshape(N, C, KH, KW, H_out, W_out)
    dxp = np.zeros((N, C, H + 2 * PH, W + 2 * PW))
    for u in range(KH):
        for v in range(KW):                                 # put each tap back where it came from
            dxp[:, :, u * DH:u * DH + SH * (H_out - 1) + 1:SH, v * DW:v * DW + SW * (W_out - 1) + 1:SW] = \\
                dcols[:, :, u, v]
    return dxp[:, :, PH:PH + H, PW:PW + W].copy(), dw, db
''', "must add their gradients"),
            ('''
def conv2d_grouped_backward(dout, x, w, stride=1, padding=0, dilation=1, groups=1):
    N, C, H, W = x.shape
    K, C_g, KH, KW = w.shape
    G, R = groups, C_g * KH * KW
    (SH, SW), (PH, PW), (DH, DW) = pair(stride, "s", 1), pair(padding, "p", 0), pair(dilation, "d", 1)
    H_out, W_out = dout.shape[2:]
    cols = im2col_dilated(x, (KH, KW), stride, padding, dilation).reshape(N, G, R, -1)
    dout_g = dout.reshape(N, G, K // G, H_out * W_out)
    w_g = w.reshape(G, K // G, R)
    db = dout.sum(axis=(0, 2, 3))
    dw = (dout_g[0] @ np.swapaxes(cols[0], 1, 2)).reshape(w.shape)     # dout @ cols.T, as in lesson 2
    dcols = (np.swapaxes(w_g, 1, 2) @ dout_g).reshape(N, C, KH, KW, H_out, W_out)
    dxp = np.zeros((N, C, H + 2 * PH, W + 2 * PW))
    for u in range(KH):
        for v in range(KW):
            dxp[:, :, u * DH:u * DH + SH * (H_out - 1) + 1:SH, v * DW:v * DW + SW * (W_out - 1) + 1:SW] += \\
                dcols[:, :, u, v]
    return dxp[:, :, PH:PH + H, PW:PW + W].copy(), dw, db
''', "image 0's share alone"),
        ],
    },
}
