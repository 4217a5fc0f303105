"""Exercise 9 (a staleness-aware n-softsync shard and its experiment; LARS and where it moves the break)."""

SHARD_INIT = '''class SoftsyncShard(Shard):
    def __init__(self, index, lo, hi, params, optimizer="sgd", lr=0.1, staleness_lr=True, c=1):
        super().__init__(index, lo, hi, params, optimizer="sgd", lr=lr, staleness_lr=staleness_lr)
        self.c, self.kept = c, []
'''


def _shard(rate: str, apply: str, clock: str = "") -> str:
    """A SoftsyncShard whose rate, update and clock are given."""
    return SHARD_INIT + f'''
    def push(self, grad, fetched_version):
        staleness = self.version - fetched_version
        if staleness < 0:
            raise ValueError(f"fetched_version {{fetched_version}} is newer than version {{self.version}}")
        rate = {rate}
        self.kept.append(rate * grad)
        self.staleness.append(staleness)
{clock}        if len(self.kept) == self.c:
            self.params -= {apply}
            self.kept = []
{"" if clock else "            self.version += 1" + chr(10)}        return staleness
'''


RATE = "self.base_lr / max(1, staleness) if self.staleness_lr else self.base_lr"
MEAN = "sum(self.kept) / self.c"

EXPERIMENT = '''def staleness_experiment(model, x, y, shard, seeds=range(5), n_replicas=16, c=1, lr=0.3,
                         total_steps=1000):
    def run(seed, rate, staleness_lr):
        return simulate(model, x, y, n_replicas=n_replicas, n_shards=4, total_steps=total_steps, optimizer="sgd",
                        lr=rate, staleness_lr=staleness_lr, shard=functools.partial(shard, c=c),
                        eval_every=total_steps, {seed})

    out = {{"staleness-aware": [], "constant, same lr": [], "constant, same mean rate": [], "mean rate": []}}
    for seed in seeds:
        aware = run(seed, lr, True)
        mean_rate = {mean_rate}
        out["staleness-aware"].append(aware.final_loss)
        out["constant, same lr"].append(run(seed, lr, {constant}).final_loss)
        out["constant, same mean rate"].append(run(seed, mean_rate, {constant}).final_loss)
        out["mean rate"].append(mean_rate)
    return {{arm: np.array(values) for arm, values in out.items()}}
'''


def _experiment(seed="seed=seed", mean_rate="lr * np.mean(1 / np.maximum(1, aware.staleness[:, 1]))",
                constant="False") -> str:
    return EXPERIMENT.format(seed=seed, mean_rate=mean_rate, constant=constant)


def _lars(trust: str, update: str) -> str:
    """A LARS whose trust ratio and update (from d = the gradient with weight decay) are given."""
    return f'''class LARS(torch.optim.Optimizer):
    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0, eta=0.001):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, momentum, wd, eta = group["lr"], group["momentum"], group["weight_decay"], group["eta"]
            grads = [w.grad for w in group["params"] if w.grad is not None]
            all_w = torch.linalg.vector_norm(torch.cat([w.flatten() for w in group["params"]]))
            all_g = torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]))
            for w in group["params"]:
                if w.grad is None:
                    continue
                g = w.grad
                w_norm, g_norm = torch.linalg.vector_norm(w), torch.linalg.vector_norm(g)
                trust = {trust}
                d = g + wd * w
{update}
'''


TRUST = "eta * w_norm / (g_norm + wd * w_norm) if w_norm > 0 and g_norm > 0 else 1.0"
UPDATE = '''                d = trust * d
                if momentum:
                    state = self.state[w]
                    d = state["v"] = state["v"].mul_(momentum).add_(d) if "v" in state else d.clone()
                w.sub_(lr * d)'''
UPDATE_TRUST_AFTER_MOMENTUM = '''                if momentum:
                    state = self.state[w]
                    d = state["v"] = state["v"].mul_(momentum).add_(d) if "v" in state else d.clone()
                w.sub_(lr * trust * d)'''

SWEEP = '''def lars_sweep(batches, lars, seeds=range(5), base_lr=0.05, base_batch=8, epochs=20, data=None):
    data = load_digits(size=8) if data is None else data
    errors = {{"SGD": [], "LARS": []}}
    for seed in seeds:
        for arm, optimizer in (("SGD", None), ("LARS", lars)):
            errors[arm].append([train_digits(kn, {lr}, epochs, seed=seed, data=data,
                                             optimizer=optimizer).{error} for kn in batches])
    return {{arm: np.array(rows) for arm, rows in errors.items()}}


def break_batch(batches, errors, threshold=0.5):
    middle = np.{average}(np.asarray(errors, dtype=float), axis=0)
    broken = [kn for kn, m in zip(batches, middle) if m > threshold]
    return broken[0] if broken else None
'''


def _sweep(lr="linear_scaling_lr(kn, base_lr, base_batch)", error="test_error", average="median") -> str:
    return SWEEP.format(lr=lr, error=error, average=average)


PARTS = {
    "softsync_shard": {
        "tests": ["test_softsync_shard"],
        "nearest": ["course_lib.distributed.downpour.Shard", "course_lib.distributed.downpour.stale_lr"],
        # lesson 9's Shard as it is: every gradient applied on arrival, whatever c says
        "copy": SHARD_INIT,
        "wrong": [
            (_shard(RATE, MEAN, clock="        self.version += 1                      # one tick per push\n"),
             "version counts updates, one per c = 2 gradients, not pushes"),
            (_shard(RATE, "sum(self.kept)"), "one update applies the average of the c kept gradients"),
            (_shard("self.base_lr / (staleness + 1) if self.staleness_lr else self.base_lr", MEAN),
             "rate = lr / max(1, staleness): staleness 1 keeps the full lr"),
        ],
    },
    "staleness_experiment": {
        "tests": ["test_staleness_experiment"],
        "nearest": ["course_lib.experiments.downpour.runs_over_seeds", "course_lib.experiments.downpour.final_losses"],
        # lesson 9's helpers: its own Shard, and no control at the mean rate
        "copy": '''from course_lib.experiments.downpour import final_losses, runs_over_seeds


def staleness_experiment(model, x, y, shard, seeds=range(5), n_replicas=16, c=1, lr=0.3, total_steps=1000):
    kw = dict(n_replicas=n_replicas, n_shards=4, total_steps=total_steps, optimizer="sgd", eval_every=total_steps)
    aware = final_losses(runs_over_seeds(model, x, y, seeds, lr=lr, staleness_lr=True, **kw))
    constant = final_losses(runs_over_seeds(model, x, y, seeds, lr=lr, **kw))
    return {"staleness-aware": aware, "constant, same lr": constant, "constant, same mean rate": constant,
            "mean rate": np.full(len(aware), lr)}
''',
        "wrong": [
            (_experiment(seed="seed=0"), "pass seed=seed to simulate"),
            (_experiment(mean_rate="lr / np.mean(np.maximum(1, aware.staleness[:, 1]))"),
             "lr * mean(1 / max(1, staleness))"),
            (_experiment(constant="True"), "the constant arms run with staleness_lr=False"),
        ],
    },
    "lars": {
        "tests": ["test_lars"],
        "nearest": ["torch.optim.SGD", "course_lib.optim.SGD"],
        # plain SGD with weight decay: no trust ratio at all
        "copy": '''class LARS(torch.optim.SGD):
    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0, eta=0.001):
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
''',
        "wrong": [
            (_lars("eta * w_norm / g_norm if w_norm > 0 and g_norm > 0 else 1.0", UPDATE),
             "the trust ratio's denominator is ||g|| + weight_decay * ||w||"),
            (_lars("eta * all_w / (all_g + wd * all_w)", UPDATE), "not one over all the parameters"),
            (_lars(TRUST, UPDATE_TRUST_AFTER_MOMENTUM), "the trust ratio scales the gradient before the momentum"),
            (_lars("eta * w_norm / (g_norm + wd * w_norm)", UPDATE), "uses trust ratio 1"),
        ],
    },
    "lars_sweep": {
        "tests": ["test_lars_sweep"],
        "nearest": ["course_lib.experiments.large_minibatch.batch_size_sweep",
                    "course_lib.experiments.large_minibatch.seed_summary"],
        # lesson 10's sweep: its linear-scaling arm, twice, for lack of a LARS arm
        "copy": '''from course_lib.experiments.large_minibatch import batch_size_sweep


def lars_sweep(batches, lars, seeds=range(5), base_lr=0.05, base_batch=8, epochs=20, data=None):
    sweeps = [batch_size_sweep(batches, base_lr, base_batch, epochs, warmup_epochs=0, seed=s, data=data)
              for s in seeds]
    errors = np.array([[r.test_error for r in sweep["linear scaling"]] for sweep in sweeps])
    return {"SGD": errors, "LARS": errors}


def break_batch(batches, errors, threshold=0.5):
    medians = np.median(np.asarray(errors), axis=0)
    broken = [kn for kn, m in zip(batches, medians) if m > threshold]
    return broken[0] if broken else None
''',
        "wrong": [
            (_sweep(lr="base_lr"), "both arms use the linear scaling rule"),
            (_sweep(average="mean"), "the median over seeds, not the mean"),
            (_sweep(error="train_error"), "the test error, not the training error"),
        ],
    },
}
