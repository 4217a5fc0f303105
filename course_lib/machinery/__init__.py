"""course_lib.machinery: not the lecture: how the kit is made fast and run on real processes; students need not read it.

The lessons call into these modules (to run a collective on P processes, to
convolve quickly), but the ideas they carry out live in the reading order
(``course_lib/__init__.py``). Nothing here is needed to follow a slide.

``device``              where PyTorch runs: cuda, then mps, then cpu (``COURSE_DEVICE`` overrides)
``fast_conv``           the tuned convolution paths (how ``conv`` is made fast)
``fast_pool``           the tuned max-pooling paths
``threads``             split a memory-bound numpy pass over the cores
``procs``               start, watch and always clean up P processes (the one process supervisor)
``transport``           pipes and shared memory that carry a collective's steps; their fault
                        injection (tests) and progress tables (who hung)
``sockets``             ``SocketEndpoint``: the same steps over TCP, each rank started by hand on its own
                        machine (``python -m course_lib.machinery.sockets``)
``links``               ``with_links``: a fast link inside a node, a slow one between nodes, emulated
``launch``              ``allreduce(arrays)`` and ``launch(fn, P)``: collectives on real processes
``recording``           ``run_recorded(fn, arrays)``: a collective on P threads of one process, and a log
                        of every transfer (step, sender, receiver, bytes): what the exercises grade
``torch_launch``        ``launch_torch`` and ``torch_allreduce``: the same through ``torch.distributed``
``downpour_processes``  Downpour SGD's shards and replicas on real processes
``pipeline_processes``  GPipe's stages on S processes: ``torch.distributed`` send/recv (lesson 13)
``calltrace``           ``first_call_into(banned, fn, *args)``: the first call an answer makes into
                        torch or the kit (the exercises' "numpy only" rule)
``backward_log``        when each layer's gradient and each DDP bucket's all-reduce happen (host times)
``ddp_cli``             ``python -m course_lib.ddp``: LeNet-5 under DDP from the command line or torchrun
"""
