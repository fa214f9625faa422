"""The search: the config's space as Tune's, fixed draws for comparisons, and the scheduler
(ASHA, PBT or FIFO) sized to the longest trial the space allows."""

from __future__ import annotations

import math

import numpy as np

from lmplatform.jobconfig import FinetuneJobConfig, SearchDim
from lmplatform.tune.trial import steps_per_epoch, total_steps

# hyperparameters PBT may change in a running trial: they only touch the optimizer
PBT_MUTABLE = ("lr", "weight_decay")


def search_space(space: dict[str, SearchDim]) -> dict:
    from ray import tune

    out = {}
    for k, d in space.items():
        if d.kind == "loguniform":
            out[k] = tune.loguniform(d.low, d.high)
        elif d.kind == "uniform":
            out[k] = tune.uniform(d.low, d.high)
        elif d.kind == "randint":
            out[k] = tune.randint(int(d.low), int(d.high))
        elif d.kind == "choice":
            out[k] = tune.choice(d.values)
        else:
            out[k] = tune.grid_search(d.values)
    return out


def sample_points(space: dict[str, SearchDim], n: int, seed: int = 0) -> list[dict]:
    """`n` configurations drawn from `space` with a fixed seed: the same trials for searches
    that are compared (schedulers, pretrained vs random start)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        p = {}
        for k, d in space.items():
            if d.kind == "loguniform":
                p[k] = float(np.exp(rng.uniform(np.log(d.low), np.log(d.high))))
            elif d.kind == "uniform":
                p[k] = float(rng.uniform(d.low, d.high))
            elif d.kind == "randint":
                p[k] = int(rng.integers(int(d.low), int(d.high)))
            else:
                p[k] = d.values[int(rng.integers(len(d.values)))]
        out.append(p)
    return out


def max_evaluations(job: FinetuneJobConfig, n_train: int) -> int:
    """The most evaluations any trial of the space can make (ASHA's max_t)."""
    space = job.search.space

    def bound(key, default, pick):
        d = space.get(key)
        if d is None:
            return default
        if d.kind in ("choice", "grid"):
            return pick(d.values)
        return pick([d.low, d.high - (1 if d.kind == "randint" else 0)])

    epochs = bound("epochs", job.train.epochs, lambda v: max(v) if v[0] is not None else None)
    bs = int(bound("batch_size", job.train.batch_size, min))
    total = total_steps(job, epochs, steps_per_epoch(n_train, bs, job.scaling.num_workers))
    return max(1, math.ceil(total / min(job.train.eval_every, total)))


def make_scheduler(job: FinetuneJobConfig, n_train: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    s = job.search
    if s.scheduler == "asha":
        return ASHAScheduler(
            time_attr="training_iteration",
            max_t=max_evaluations(job, n_train),
            grace_period=s.grace_period,
            reduction_factor=s.reduction_factor,
        )
    if s.scheduler == "pbt":
        from ray import tune

        mutations = {}
        for k in PBT_MUTABLE:
            d = s.space.get(k)
            if d is None:
                continue
            mutations[k] = (
                d.values
                if d.kind in ("choice", "grid")
                else (tune.loguniform if d.kind == "loguniform" else tune.uniform)(d.low, d.high)
            )
        return PopulationBasedTraining(
            time_attr="training_iteration",
            perturbation_interval=s.perturbation_interval,
            hyperparam_mutations=mutations,
            quantile_fraction=s.quantile_fraction,
            resample_probability=0.25,
        )
    return FIFOScheduler()
