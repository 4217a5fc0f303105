"""What a student would try on exercise 7 (recursive halving-doubling all-reduce): see this package's docstring."""

SCHEDULE_COPY = '''
from course_lib.distributed.schedule import scatter_reduce_step


def halving_doubling_schedule(rank, P):
    """The ring's scatter-reduce steps, written as (partner, send, keep)."""
    steps = []
    for k in range(P - 1):
        send, recv = scatter_reduce_step(rank, k, P)
        steps.append(((rank + 1) % P, (send, send + 1), (recv, recv + 1)))
    return steps
'''

# the halving loop with one line changed per mistake
SCHEDULE_LOOP = '''
def halving_doubling_schedule(rank, P):
    if P < 1 or P & (P - 1):
        raise ValueError(f"P = {{P}} is not a power of two")
    if not 0 <= rank < P:
        raise ValueError(f"rank {{rank}} is not in 0 .. {{P - 1}}")
    steps, lo, hi = [], 0, P
{distances}
        mid = (lo + hi) // 2
        keep, send = {halves}
        steps.append(({partner}, send, keep))
        lo, hi = keep
{next_distance}
    return steps
'''
HALVING = dict(distances="    d = P // 2\n    while d >= 1:", next_distance="        d //= 2",
               halves="((lo, mid), (mid, hi)) if rank & d == 0 else ((mid, hi), (lo, mid))", partner="rank ^ d")

SCHEDULE_NO_CHECK = '''
def halving_doubling_schedule(rank, P):
    steps, lo, hi, d = [], 0, P, P // 2
    while d >= 1:
        mid = (lo + hi) // 2
        keep, send = ((lo, mid), (mid, hi)) if rank & d == 0 else ((mid, hi), (lo, mid))
        steps.append((rank ^ d, send, keep))
        lo, hi = keep
        d //= 2
    return steps
'''

RING_COPY = '''
from course_lib.distributed.collectives import ring_allreduce_


def {name}(endpoint, count):
    ring_allreduce_(endpoint, count)          # the ring: right sums, on every rank
'''

RS_WHOLE_BLOCK = '''
def reduce_scatter_halving_(endpoint, count):
    x = endpoint.buffer[:count]
    bounds = chunk_bounds(count, endpoint.world_size)
    for partner, send, keep in halving_doubling_schedule(endpoint.rank, endpoint.world_size):
        a, b = chunk_elements(bounds, (min(send[0], keep[0]), max(send[1], keep[1])))   # the whole block
        (theirs,) = endpoint.step(sends=[(partner, a, b)], recvs=[(partner, b - a)])
        c, e = chunk_elements(bounds, keep)
        x[c:e] += theirs[c - a:e - a]
'''

RS_COPIES = '''
def reduce_scatter_halving_(endpoint, count):
    x = endpoint.buffer[:count]
    bounds = chunk_bounds(count, endpoint.world_size)
    for partner, send, keep in halving_doubling_schedule(endpoint.rank, endpoint.world_size):
        a, b = chunk_elements(bounds, send)
        c, e = chunk_elements(bounds, keep)
        (partial,) = endpoint.step(sends=[(partner, a, b)], recvs=[(partner, e - c)])
        x[c:e] = partial                       # copied, not added
'''

RS_PLUS_D = '''
def reduce_scatter_halving_(endpoint, count):
    P, r = endpoint.world_size, endpoint.rank
    x = endpoint.buffer[:count]
    bounds = chunk_bounds(count, P)
    lo, hi, d = 0, P, P // 2
    while d >= 1:
        mid = (lo + hi) // 2
        keep, send = ((lo, mid), (mid, hi)) if r & d == 0 else ((mid, hi), (lo, mid))
        a, b = chunk_elements(bounds, send)
        c, e = chunk_elements(bounds, keep)
        partner = (r + d) % P                  # the neighbour d to the right
        (partial,) = endpoint.step(sends=[(partner, a, b)], recvs=[(partner, e - c)])
        x[c:e] += partial
        lo, hi = keep
        d //= 2
'''

ALLGATHER = '''
def allreduce_halving_doubling_(endpoint, count):
    reduce_scatter_halving_(endpoint, count)
    x = endpoint.buffer[:count]
    bounds = chunk_bounds(count, endpoint.world_size)
    for partner, send, keep in {steps}:
        a, b = chunk_elements(bounds, keep)
        c, e = chunk_elements(bounds, send)
        (block,) = endpoint.step(sends=[(partner, a, b)], recvs=[(partner, e - c)])
        x[c:e] {update} block
    endpoint.fence()
'''
SCHEDULE = "halving_doubling_schedule(endpoint.rank, endpoint.world_size)"

GATHER_BROADCAST = '''
def allreduce_halving_doubling_(endpoint, count):
    P, r = endpoint.world_size, endpoint.rank
    x = endpoint.buffer[:count]
    if P == 1:
        return
    if r == 0:                                 # rank 0 sums everything, then sends the sum to all
        for part in endpoint.step(recvs=[(q, count) for q in range(1, P)]):
            x += part
        endpoint.step(sends=[(q, 0, count) for q in range(1, P)])
    else:
        endpoint.step(sends=[(0, 0, count)])
        (total,) = endpoint.step(recvs=[(0, count)])
        x[:] = total
    endpoint.fence()
'''

COSTS_COPY = '''
from course_lib.distributed.cost import ring_bytes_per_rank, ring_time


def hd_bytes_per_rank(N, P, itemsize=1):
    return ring_bytes_per_rank(N, P, itemsize)


def hd_time(N, P, alpha, beta, itemsize=4):
    return ring_time(N, P, alpha, beta, itemsize)
'''

COSTS = '''
def hd_bytes_per_rank(N, P, itemsize=1):
{bytes_body}


def hd_time(N, P, alpha, beta, itemsize=4):
    return {latencies} * alpha + 2 * (P - 1) / P * N * itemsize * beta
'''
EXACT_BYTES = '''    bounds = chunk_bounds(N, P)
    sent = np.zeros(P, dtype=np.int64)
    for r in range(P):
        for _, send, keep in halving_doubling_schedule(r, P):
            for chunks in {phases}:
                a, b = chunk_elements(bounds, chunks)
                sent[r] += b - a
    return sent * itemsize'''
MEAN_BYTES = "    return np.full(P, 2 * N * (P - 1) // P * itemsize)"
EXACTLY = "count exactly, per rank, both phases (chunks differ in size when P does not divide N: lesson 6 section 2)"
LATENCIES = ("2 log2 P latencies (log2 P steps in each phase) plus the ring's bytes, 2N(P-1)/P elements "
             "(lesson 6 section 3)")

PARTS = {
    "halving_doubling_schedule": {
        "tests": ["test_halving_doubling_schedule"],
        "nearest": ["course_lib.distributed.schedule.scatter_reduce_step",
                    "course_lib.distributed.schedule.ring_schedule"],
        "copy": SCHEDULE_COPY,
        "wrong": [
            (SCHEDULE_LOOP.format(**dict(HALVING, partner="(rank + d) % P")),
             "pairs must be mutual (part 1, lesson 7 section 1)"),
            (SCHEDULE_LOOP.format(**dict(HALVING, halves="((mid, hi), (lo, mid)) if rank & d == 0 else "
                                                         "((lo, mid), (mid, hi))")),
             "the lower rank of each pair (bit d is 0) keeps the lower half (part 1, lesson 7 section 1)"),
            (SCHEDULE_LOOP.format(**dict(HALVING, distances="    d = 1\n    while d < P:",
                                         next_distance="        d *= 2")),
             "the distances go P/2, P/4, ..., 1 (halving; part 1, lesson 7 section 1)"),
            (SCHEDULE_NO_CHECK, "should raise a ValueError (P must be a power of two; part 1 and the introduction)"),
        ],
    },
    "reduce_scatter_halving_": {
        "tests": ["test_reduce_scatter_halving"],
        "nearest": ["course_lib.distributed.collectives.ring_allreduce_"],
        "copy": RING_COPY.format(name="reduce_scatter_halving_"),
        "wrong": [
            (RS_WHOLE_BLOCK, "it sends only the half it does not keep: N/2, then N/4, ... (lesson 6 section 2)"),
            (RS_COPIES, "reduce-scatter adds the received half into the half it keeps; lesson 7 section 1"),
            (RS_PLUS_D, "a pair exchanges both ways: at distance d rank r sends to and receives from r XOR d; "
                        "lesson 7 section 3"),
        ],
    },
    "allreduce_halving_doubling_": {
        "tests": ["test_allreduce_halving_doubling"],
        "nearest": ["course_lib.distributed.collectives.ring_allreduce_",
                    "course_lib.distributed.collectives.ps_allreduce_"],
        "copy": RING_COPY.format(name="allreduce_halving_doubling_"),
        "wrong": [
            (ALLGATHER.format(steps=f"reversed({SCHEDULE})", update="+="),
             "the allgather only copies complete blocks: lesson 7 section 1"),
            (ALLGATHER.format(steps=SCHEDULE, update="="), "part 1's steps backwards; lesson 7 section 1"),
            (GATHER_BROADCAST,
             "calls of endpoint.step on every rank (log2 P per phase; a ring takes P - 1: lesson 7 section 1)"),
        ],
    },
    "hd_costs": {
        "tests": ["test_hd_costs"],
        "nearest": ["course_lib.distributed.cost.ring_bytes_per_rank", "course_lib.distributed.cost.ring_time"],
        "copy": COSTS_COPY,
        "wrong": [
            (COSTS.format(bytes_body=MEAN_BYTES, latencies="2 * (P.bit_length() - 1)"),
             EXACTLY),
            (COSTS.format(bytes_body=EXACT_BYTES.format(phases="(send, keep)"), latencies="(P.bit_length() - 1)"),
             LATENCIES),
            (COSTS.format(bytes_body=EXACT_BYTES.format(phases="(send,)"), latencies="2 * (P.bit_length() - 1)"),
             EXACTLY),
        ],
    },
}
