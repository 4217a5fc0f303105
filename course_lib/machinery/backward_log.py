"""``BackwardLog``: when each gradient is ready and each DDP bucket's all-reduce runs, in one backward pass.

Not the lecture: timing hooks that ``course_lib.ddp.ddp_worker`` (``record_step=``) and
``course_lib.experiments.ddp_overlap`` attach to a ``DistributedDataParallel`` model, so that
lesson 8 can show DDP's buckets being all-reduced while backprop continues.
"""

from __future__ import annotations

import time


class BackwardLog:
    """A log of one backward pass: when each gradient is ready, when each DDP bucket's
    all-reduce starts and ends (seconds since the backward pass began).

    ``events`` holds tuples ``("grad", name, t)``, ``("allreduce", bucket, names, t)``
    and ``("done", bucket, t)``, in the order they happened. Only steps between
    ``start()`` and ``stop()`` are logged.

    The times are the host's clock when each hook runs: with gloo on the CPU (as the
    lesson records it), when the work happened; under NCCL, when GPU work was *queued*
    (launch times, not the overlap).
    """

    def __init__(self):
        self.events, self.on, self.t0 = [], False, 0.0

    def start(self) -> None:
        self.events, self.on, self.t0 = [], True, time.perf_counter()

    def stop(self) -> None:
        self.on = False

    def add(self, *event) -> None:
        if self.on:
            self.events.append((*event, time.perf_counter() - self.t0))

    def attach(self, ddp) -> None:
        """Hook every parameter of ``ddp.module`` and wrap DDP's all-reduce (the default
        ``allreduce_hook``: divide by P, then sum with all_reduce) in a hook that logs it."""
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
        names = {id(p): name for name, p in ddp.module.named_parameters()}
        for name, p in ddp.module.named_parameters():
            p.register_post_accumulate_grad_hook(lambda p, name=name: self.add("grad", name))

        def logged_allreduce(state, bucket):
            index = bucket.index()
            self.add("allreduce", index, [names[id(p)] for p in bucket.parameters()])

            def finished(fut):
                self.add("done", index)
                return fut.value()
            return allreduce_hook(state, bucket).then(finished)
        ddp.register_comm_hook(None, logged_allreduce)
