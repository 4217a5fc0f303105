"""course_lib: the lecture's building blocks, from scratch, beside PyTorch.

Lecture 5 of "Practical Deep Learning Systems Performance" (COMS E6998,
10/03/19) in two halves: the CNN building blocks (convolution, im2col,
max pooling, LeNet-5) and distributed training (parameter server, ring
all-reduce, Downpour SGD, large-minibatch SGD, scaling, compression).

What to read, and what not to
-----------------------------
The lecture lives in the modules below, in this order; each is one concept,
short enough to read in one go (``tools/code_size.py`` keeps them so: at most
300 lines each, a function at most 40 lines). Four folders are NOT the
lecture and the reading order never enters them:

* ``machinery/``   how the kit is made fast and run on real processes: the
                   tuned ``conv2d``, thread pools, the process supervisor,
                   pipes and shared memory;
* ``experiments/`` what the lessons do with the ideas: training runs over
                   seeds, sweeps and timings;
* ``viz/``         the lessons' figures and widgets (the only place that
                   imports matplotlib or ipywidgets).

Grading is not part of this package: ``grader/``, beside it, builds exercises/
from solutions/ and grades notebooks.

Reading order
-------------
1. ``checks``      the input checks every module shares (errors that teach).
2. ``gradcheck``   numerical gradients and relative error, used by every test
                   of a backward pass.
3. ``conv``        output size, padding, im2col/col2im, ``conv2d_naive`` and
                   ``conv2d_im2col``, their backward passes (lessons 1, 2).
4. ``pooling`` (lesson 3), ``optim`` (SGD, Adagrad; lesson 4), ``layers``,
   ``data`` and ``lenet`` (LeNet-5 in numpy and in PyTorch; lesson 5).
5. ``distributed`` the second half of the lecture (its own reading order):
   the ring schedule, its simulation, the cost formulas, the collectives
   (lessons 6, 7), Downpour SGD (lesson 9), gradient compression (lesson 12),
   model parallelism by layers, GPipe's pipeline (lesson 13);
   ``models`` holds the small network they train.
6. ``ddp``: LeNet-5 under DistributedDataParallel and its single-process twin
   (lesson 8); ``lr_schedules`` (linear scaling rule, warm-up; lesson 10);
   ``scaling`` (speed-up, efficiency, the lecture's tables, the overlap
   timeline; lesson 11).

Lower layers never import higher ones: the reading order imports nothing from
``machinery``, ``experiments`` or ``viz`` except where a module says why
(LeNet-5 convolves with the tuned ``machinery.fast_conv`` and ``fast_pool``;
``ddp`` starts its ranks with ``machinery.torch_launch``, logs a backward pass
with ``machinery.backward_log`` and leaves its command line to ``machinery.ddp_cli``).

The symbol table (one vocabulary for the whole kit)
---------------------------------------------------
=============  ====================================================================
N              batch size (number of images)
C              input channels; the lecture's depth D1
H, W           input height and width; the lecture's H1, W1
K              number of filters = output channels; the lecture's K = D2
KH, KW         kernel (filter) height and width; the lecture's F when square
S              stride (SH, SW when they differ)
P              zero padding added on *each* side (PH, PW); as in PyTorch
H_out, W_out   output height and width; the lecture's H2, W2
L              number of window positions, H_out * W_out (F.unfold's L)
rank           index of a process in a collective, 0 .. world_size - 1
world_size     number of processes; the lecture's P in the cost formulas
               2N(P-1) and 2N(P-1)/P (there, N is the number of parameters)
n_shards       parameter-server shards (Downpour SGD); never S, which is stride
n_replicas, R  Downpour SGD's model replicas, the asynchronous learners (lesson 9)
k, n, kn       lesson 10: k workers (GPUs) of n images each; kn, the global batch,
               is the kit's N (``lr_schedules``' ``batch``)
S, E, P0       lesson 11: S the speed-up (there never a stride), E = S / (P / P0)
               the scaling efficiency, P the GPUs used, P0 the baseline's GPUs
k, tau         elements top-k sends; Strom's threshold (compression, lesson 12)
S, M           lesson 13: S pipeline stages (there never a stride), M micro-batches
=============  ====================================================================

A row naming a lesson gives that lesson's own meaning of a letter, as the
symbols box at the top of its notebook says; everywhere else the kit's holds.

Arrays are NCHW (PyTorch's layout) and weights (K, C, KH, KW), so every
function can be checked against its ``torch.nn.functional`` twin.
"""

__version__ = "0.1.0"
