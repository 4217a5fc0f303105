"""course_lib: the lecture's building blocks, from scratch, beside PyTorch.

Lecture 5 of "Practical Deep Learning Systems Performance" (COMS E6998,
10/03/19) in two halves: the CNN building blocks (convolution, im2col,
max pooling, LeNet-5) and distributed training (parameter server, ring
all-reduce, Downpour SGD, large-minibatch SGD, scaling, compression).

Reading order (each module is one concept, short enough to read in one go)
--------------------------------------------------------------------------
1. ``device``      where PyTorch runs: cuda, then mps, then cpu.
2. ``gradcheck``   numerical gradients and relative error, used by every test
                   of a backward pass.
3. ``conv``        output size, padding, im2col/col2im, conv2d (naive, im2col,
                   fast) and its backward pass.
4. ``pooling``, ``optim``, ``data``, ``layers``, ``lenet``  (lessons 3 to 5).
5. ``distributed`` the second half of the lecture: reduction topologies and
   the ring all-reduce (lessons 6 and 7); ``ddp``: LeNet-5 under
   DistributedDataParallel and its single-process twin (lesson 8); ``distributed.downpour``
   (lesson 9) and ``distributed.compression`` (lesson 12).
6. ``lr_schedules`` (linear scaling rule, warm-up; lesson 10) and ``scaling``
   (speed-up, efficiency, the lecture's tables, the overlap timeline; lesson 11).
``grading`` stands apart: it builds exercises/ from solutions/ and grades
students' notebooks; it knows nothing of the lessons.

Lower layers never import higher ones, and nothing outside ``viz`` imports
ipywidgets or matplotlib.

The symbol table (one vocabulary for the whole kit)
---------------------------------------------------
=============  ==============================================================
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
=============  ==============================================================

Arrays are NCHW (PyTorch's layout) and weights (K, C, KH, KW), so every
function can be checked against its ``torch.nn.functional`` twin.
"""

__version__ = "0.1.0"
