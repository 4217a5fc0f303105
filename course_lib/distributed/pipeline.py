"""Model parallelism by layers: a network split over S stages, M micro-batches through it (GPipe).

Lecture 5, "Scaling with Model Parallelism" (Dean et al. 2012, DistBelief): the
model is partitioned over machines and the "average training speed-up: the ratio
of the time taken using only a single machine to the time taken using N" grows,
then flattens, as machines are added. Here the partitions are groups of
consecutive layers (pipeline, or inter-layer, parallelism), run as GPipe does
(Huang et al. 2019): the batch of N rows is cut into M micro-batches; stage s
runs the forward pass of micro-batch m at tick s + m, and after all forwards the
backward passes run in reverse. Gradients are summed over micro-batches, so one
pipelined step equals one step of the whole model on the whole batch.

Reading order:

1. ``gpipe_schedule``, ``format_schedule``: which (stage, micro-batch, "F"/"B")
   runs at every tick; a pure function you can print.
2. ``bubble_fraction``: the idle share (S-1)/(M+S-1), and ``idle_fraction``,
   the same counted on the schedule.
3. ``pipeline_time``, ``speedup_curve``: the alpha-beta time of one batch and the
   Dean et al.-style speed-up against the number of partitions.
4. ``split_layers``, ``stage_forward``, ``stage_backward``, ``run_stage``: one
   stage's step written once against ``send(tensor, dst)`` / ``recv(src, shape)``;
   ``run_in_schedule_order`` carries out every stage's steps in one process.

Running the stages on S processes with ``torch.distributed`` send/recv is not
the lecture: ``course_lib.machinery.pipeline_processes``.

Symbols (lesson 13): S stages (never a stride here), ``stage`` 0 .. S-1 (a
process's ``rank``, S its ``world_size``), M micro-batches, N rows in the batch,
a tick one step of the schedule.
"""

from __future__ import annotations

from collections import defaultdict, deque

import numpy as np

from course_lib.checks import check_int

from .schedule import chunk_bounds


def gpipe_schedule(S: int, M: int) -> list[list[tuple[int, int, str]]]:
    """GPipe's schedule: for every tick, the (stage, micro_batch, phase) slots that run.

    Forward phase, ticks 0 .. M+S-2: stage s runs F of micro-batch m at tick
    ``t = s + m``. Backward phase, ticks M+S-1 .. 2(M+S-1)-1: the last stage
    starts on the last micro-batch, and stage s runs B of micro-batch m at tick
    ``(M+S-1) + (S-1-s) + (M-1-m)``: after stage s+1's B of the same m.

    Returns
    -------
    ticks : list of 2(M+S-1) lists; ticks[t] = [(stage, m, "F" or "B"), ...], by stage
    """
    S, M = check_int(S, "S (stages)", 1), check_int(M, "M (micro-batches)", 1)
    T = M + S - 1                                    # ticks per phase
    ticks = [[] for _ in range(2 * T)]
    for s in range(S):
        for m in range(M):
            ticks[s + m].append((s, m, "F"))
            ticks[T + (S - 1 - s) + (M - 1 - m)].append((s, m, "B"))
    return [sorted(tick) for tick in ticks]


def format_schedule(ticks) -> str:
    """The schedule as text: one row per stage, one column per tick, "F2" / "B2" / " ." (idle)."""
    S = 1 + max(s for tick in ticks for s, _, _ in tick)
    rows = [[" ." for _ in ticks] for _ in range(S)]
    for t, tick in enumerate(ticks):
        for s, m, phase in tick:
            rows[s][t] = f"{phase}{m}"
    header = "tick    " + " ".join(f"{t:>3d}" for t in range(len(ticks)))
    return "\n".join([header] + [f"stage {s} " + " ".join(f"{c:>3s}" for c in row) for s, row in enumerate(rows)])


def bubble_fraction(S: int, M: int) -> float:
    """GPipe's bubble: the share of stage-ticks that are idle, ``(S-1) / (M+S-1)``.

    Each phase lasts M+S-1 ticks on every stage and a stage is busy for M of
    them: S-1 ticks to fill the pipeline (forward) or to drain it (backward).
    Small when M >> S (Huang et al. suggest M >= 4S).
    """
    S, M = check_int(S, "S (stages)", 1), check_int(M, "M (micro-batches)", 1)
    return (S - 1) / (M + S - 1)


def idle_fraction(ticks) -> float:
    """The bubble counted on a schedule: idle (stage, tick) slots / all S * ticks slots."""
    S = 1 + max(s for tick in ticks for s, _, _ in tick)
    busy = sum(len(tick) for tick in ticks)
    return 1 - busy / (S * len(ticks))


def pipeline_time(S: int, M: int, t_micro: float, alpha: float, beta: float, message_bytes: float,
                  cores: int | None = None) -> float:
    """alpha-beta time of one GPipe batch: ``2 (M+S-1) * (t_micro / (2S) + [S > 1](alpha + b*beta))``.

    Parameters
    ----------
    t_micro : seconds for forward + backward of ONE micro-batch through the WHOLE
        model on one machine; a stage holds 1/S of the layers, so a forward or
        backward tick computes ``t_micro / (2S)`` (forward and backward taken as equal)
    alpha, beta : seconds per message and per byte (lesson 6's model)
    message_bytes : b, the bytes of one activation (= its gradient) sent between stages
    cores : None (a core per stage: the formula); else the S stages share ``cores``
        cores and each tick of ``gpipe_schedule`` computes ``max(1, busy / cores)``
        times longer, busy being the stages that work at that tick

    Every tick lasts as long as its slowest stage: one compute plus one message.
    S = 1 gives ``M * t_micro``, the single machine.
    """
    S, M = check_int(S, "S (stages)", 1), check_int(M, "M (micro-batches)", 1)
    compute, message = t_micro / (2 * S), (alpha + message_bytes * beta if S > 1 else 0.0)
    if cores is None:
        return 2 * (M + S - 1) * (compute + message)
    return sum(compute * max(1.0, len(tick) / cores) + message for tick in gpipe_schedule(S, M))


def speedup_curve(S_values, M: int, t_micro: float, alpha: float, beta: float, message_bytes: float,
                  cores: int | None = None) -> np.ndarray:
    """Dean et al.'s speed-up, ``pipeline_time(1) / pipeline_time(S)``, for each S in ``S_values``.

    With no communication it is ``S M / (M+S-1)``, bounded by M (the bubble);
    the messages (alpha + b*beta per tick, not shrinking with S) bound it further,
    since the compute per tick, ``t_micro / (2S)``, shrinks as S grows.
    """
    t1 = pipeline_time(1, M, t_micro, alpha, beta, message_bytes)
    return np.array([t1 / pipeline_time(S, M, t_micro, alpha, beta, message_bytes, cores) for S in S_values])


def mlp_layers(widths, seed: int = 0, dtype=None) -> list:
    """The layers to split: ``Linear(widths[i], widths[i+1])`` each followed by a ReLU, the last one bare.

    One list entry per Linear (with its ReLU, an ``nn.Sequential``), so that
    ``split_layers`` counts weight layers. The same ``seed`` gives the same weights
    in every process (``seeded_torch``). Input (n, widths[0]) -> output (n, widths[-1]).
    """
    import torch

    from .torch_dist import seeded_torch
    last, layers = len(widths) - 2, []
    with seeded_torch(seed):
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            linear = torch.nn.Linear(a, b, dtype=dtype or torch.float32)
            layers.append(linear if i == last else torch.nn.Sequential(linear, torch.nn.ReLU()))
    return layers


def whole_model_step(widths, X, y, loss_fn, seed: int = 0, dtype=None) -> tuple:
    """The one-process reference: forward and backward of the whole batch through the whole model.

    Returns (out (N, widths[-1]), [d loss/d p for every parameter p, in model order]).
    """
    import torch
    model = torch.nn.Sequential(*mlp_layers(widths, seed, dtype))
    out = model(X)
    loss_fn(out, y).backward()
    return out.detach(), [p.grad for p in model.parameters()]


def split_layers(layers, S: int) -> list[list]:
    """Consecutive layers in S groups, as even as ``chunk_bounds`` makes them (stage s gets group s)."""
    S = check_int(S, "S (stages)", 1, len(layers), why=f"each of S stages needs one of the {len(layers)} layers")
    return [list(layers[a:b]) for a, b in chunk_bounds(len(layers), S)]


def stage_forward(stage: int, S: int, block, x, recv, send, in_shape):
    """Forward of one micro-batch on ``stage``: receive from stage-1, compute, send to stage+1.

    x : the micro-batch, shape (n, features), used only by stage 0 (the others receive
        a tensor of shape ``in_shape`` from stage - 1)
    Returns (inp, out): the stage's input (requires grad, to send its gradient back)
    and output, both kept for the backward pass.
    """
    inp = x if stage == 0 else recv(stage - 1, in_shape).requires_grad_(True)
    out = block(inp)                                        # (n, features of the next boundary)
    if stage < S - 1:
        send(out.detach(), stage + 1)
    return inp, out


def stage_backward(stage: int, S: int, inp, out, loss, recv, send) -> None:
    """Backward of one micro-batch on ``stage``: receive d loss/d out from stage+1, backprop, send d loss/d inp.

    The last stage starts from its loss. ``backward`` adds (accumulates) into
    the parameters' ``.grad``, which sums the gradients over micro-batches.
    """
    if stage == S - 1:
        loss.backward()
    else:
        out.backward(recv(stage + 1, tuple(out.shape)))     # (n, features), the gradient of out
    if stage > 0:
        send(inp.grad, stage - 1)


def micro_batches(X, y, M: int) -> list[tuple]:
    """The batch cut into M consecutive micro-batches (``chunk_bounds``), each with its weight n_m / N."""
    M = check_int(M, "M (micro-batches)", 1, len(X), why=f"a micro-batch needs one of the N = {len(X)} rows")
    return [(X[a:b], y[a:b], (b - a) / len(X)) for a, b in chunk_bounds(len(X), M)]


def run_slot(s: int, S: int, m: int, phase: str, block, batch, saved: dict, loss_fn, send, recv,
             in_shape=None):
    """Stage s's step for micro-batch m: "F" keeps (inp, out, loss) in ``saved[m]``, "B" uses it up.

    batch : (x_m, y_m, weight) from ``micro_batches``; the last stage's loss is
    ``loss_fn(out, y_m) * weight``. Returns the stage's output after an "F" (detached), else None.
    """
    x_m, y_m, weight = batch
    if phase == "B":
        stage_backward(s, S, *saved.pop(m), recv, send)
        return None
    inp, out = stage_forward(s, S, block, x_m, recv, send, in_shape)
    saved[m] = (inp, out, loss_fn(out, y_m) * weight if s == S - 1 else None)
    return out.detach()


def run_stage(stage: int, S: int, block, X, y, M: int, loss_fn, send, recv, in_shapes) -> list:
    """One stage's part of a GPipe step, in schedule order, against ``send`` / ``recv``.

    X : (N, features) batch (read by stage 0), y : (N,) targets (read by stage S-1)
    loss_fn(out, y_m) : mean over the micro-batch; weighted by n_m / N so that the
        summed gradient is the gradient of the mean loss over the whole batch
    in_shapes[m] : shape of this stage's input for micro-batch m, (n_m, features)
    Returns the last stage's outputs, one (n_m, classes) tensor per micro-batch; [] elsewhere.
    """
    batches, saved, outputs = micro_batches(X, y, M), {}, []
    for tick in gpipe_schedule(S, M):
        for s, m, phase in tick:
            if s == stage:
                out = run_slot(s, S, m, phase, block, batches[m], saved, loss_fn, send, recv, in_shapes[m])
                outputs += [out] if out is not None and stage == S - 1 else []
    return outputs


def run_in_schedule_order(blocks, X, y, M: int, loss_fn) -> list:
    """Every stage's steps in one process, tick by tick; messages wait in mailboxes.

    The same ``run_slot`` as on S processes, with a transport that is a deque
    per (sender, receiver): because the schedule respects every dependency, a
    message is always there when it is received (else ``popleft`` raises IndexError).
    Returns the outputs per micro-batch; the gradients are in the blocks' ``.grad``.
    """
    S, batches, mail, outputs = len(blocks), micro_batches(X, y, M), defaultdict(deque), []
    saved = [{} for _ in range(S)]
    for tick in gpipe_schedule(S, M):
        for s, m, phase in tick:
            def send(t, dst, src=s):
                mail[src, dst].append(t.clone())         # a copy, as a real transport makes

            def recv(src, shape, dst=s):
                return mail[src, dst].popleft()
            out = run_slot(s, S, m, phase, blocks[s], batches[m], saved[s], loss_fn, send, recv)
            outputs += [out] if out is not None and s == S - 1 else []
    return outputs
