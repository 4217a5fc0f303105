"""The lessons' experiments: training runs, sweeps and timings (not the lecture).

The lecture's ideas live in the modules of ``course_lib``'s reading order;
this package holds what the lessons *do* with them: train a small network
over several seeds, sweep a batch size or a message size, time two
implementations against each other. Figures of these results are drawn by
``course_lib.viz``.

Results that come from training depend on float rounding, which depends on
the CPU (PyTorch and OpenBLAS pick kernels by instruction set): every claim a
lesson makes about them is made over several seeds, on the median
(``seeds.summarize``: median, min and max over seeds; ``seeds.paired``: two
arms that share their seeds, compared seed by seed).
"""
