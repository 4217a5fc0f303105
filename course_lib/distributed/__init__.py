"""course_lib.distributed: how P learners sum their gradients (lecture 5, second half).

Reading order (import each name from the module that defines it)
----------------------------------------------------------------
1. ``schedule``     the ring schedule as pure functions you can print: ``chunk_bounds``,
                    ``scatter_reduce_step``, ``allgather_step``, ``ring_schedule`` (lesson 07).
2. ``simulate``     ``simulate_ring_allreduce``: the ring replayed in one process, every
                    rank's buffer after every step (the step-through widget).
3. ``cost``         the lecture's formulas: ring 2N(P-1)/P bytes per rank, PS 2N(P-1) at
                    the server, alpha-beta times and their ratio (lesson 06); two levels.
4. ``collectives``  ``ring_allreduce_``, ``ps_allreduce_`` and ``two_level_allreduce_`` (rings
                    inside and between nodes) written once on a transport's ``step``;
                    ``ProcessGroup`` for worker functions.
5. ``workers``      data-parallel least squares on a ProcessGroup (a worker function).
6. ``torch_dist``   the PyTorch twin: ``torch.distributed`` and a DistributedDataParallel
                    worker (lesson 08; LeNet-5 under DDP is ``course_lib.ddp``).
7. ``downpour``     Downpour SGD: sharded parameter server with per-shard Adagrad,
                    asynchronous replicas, staleness, a seeded simulation (lesson 09).
8. ``downpour_throughput``  steps per second of R replicas and n_shards shards: replica-
                    and server-bound, the shards R replicas need, the runtime-resource
                    trade-off (lesson 09).
9. ``compression``  sign / threshold / top-k with error feedback; bytes through ring and PS
                    (lesson 12).
10. ``pipeline``    model parallelism by layers (Dean et al.'s partitions, GPipe): the schedule,
                    its bubble (S-1)/(M+S-1), an alpha-beta time and speed-up model, one stage's
                    step on send/recv (lesson 13).

Symbols: ``world_size`` is the lecture's P, ``rank`` is 0 .. P-1, N is the number
of elements (model parameters) being summed, ``n_shards`` a parameter server's shards.

Not the lecture, and not in the reading order: running all this on real
processes (``course_lib.machinery``: ``launch.allreduce(arrays)``,
``launch.launch(fn, P)``, ``torch_launch.launch_torch``,
``downpour_processes.train_on_processes``, ``pipeline_processes.run_pipeline``) and the lessons' measurements
(``course_lib.experiments.allreduce``, ``course_lib.experiments.downpour``).
"""
