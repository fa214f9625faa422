"""The search: the config's space as Tune's, how configurations are drawn (random or TPE),
fixed draws for comparisons, and the scheduler (ASHA, PBT or FIFO) sized to the longest trial
the space allows."""

from __future__ import annotations

import math

import numpy as np

from lmplatform.config import ConfigError
from lmplatform.tune.config import FinetuneJobConfig, SearchDim
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


def in_space(space: dict[str, SearchDim], config: dict) -> bool:
    """Whether `space` can draw `config`'s value of each of its dimensions."""
    return all(k in config and d.contains(config[k]) for k, d in space.items())


def search_algorithm(
    job: FinetuneJobConfig, points: list[dict], told: list[tuple[dict, float]]
) -> tuple[object, dict]:
    """Tune's searcher for the job and the param_space to pass beside it. `points`: tried
    first; `told`: (configuration, metric) of trials already run, which TPE learns from."""
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    s = job.search
    space = search_space(s.space)
    if s.algorithm == "random":
        # the generator enforces max_concurrent itself: Tune ignores max_concurrent_trials
        # when a SearchGenerator is passed (it said so, and ran every trial at once)
        alg = BasicVariantGenerator(
            points_to_evaluate=points or None,
            random_state=s.seed,
            max_concurrent=s.max_concurrent or 0,
        )
        return alg, space
    alg = _tpe(job, space, points, told)
    # the space lives in the searcher: Tune refuses domains in both places
    return (ConcurrencyLimiter(alg, s.max_concurrent) if s.max_concurrent else alg), {}


def _tpe(job: FinetuneJobConfig, space: dict, points: list[dict], told):
    try:
        import optuna
        from optuna.samplers import TPESampler
    except ImportError:
        raise ConfigError(
            "search.algorithm=tpe needs optuna: pip install 'lmplatform[search]'"
        ) from None
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per study and trial else
    s = job.search
    alg = OptunaSearch(
        OptunaSearch.convert_search_space(space),
        metric=job.task.metric,
        mode="max",
        points_to_evaluate=points or None,
        # the constant liar keeps concurrent trials from being proposed the same point
        sampler=TPESampler(seed=s.seed, n_startup_trials=s.startup_trials, constant_liar=True),
    )
    for config, value in told:
        alg.add_evaluated_point(config, value)
    return alg


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


def longest_trial(job: FinetuneJobConfig, n_train: int) -> tuple[int, str]:
    """Optimizer steps of the longest trial the space allows (the most epochs at the smallest
    batch size; a searched `null` epochs runs train.max_steps), and how they come about."""
    space = job.search.space

    def ends(key, default) -> list:
        d = space.get(key)
        if d is None:
            return [default]
        if d.kind in ("choice", "grid"):
            return list(d.values)
        return [d.low, d.high - (1 if d.kind == "randint" else 0)]

    bs = int(min(ends("batch_size", job.train.batch_size)))
    world = job.scaling.num_workers
    per_epoch = steps_per_epoch(n_train, bs, world)
    steps, epochs = max(
        ((total_steps(job, e, per_epoch), e) for e in ends("epochs", job.train.epochs)),
        key=lambda t: t[0],  # a searched null (max_steps) does not compare with numbers
    )
    if not epochs:
        return steps, f"train.max_steps={job.train.max_steps}"
    where = "search.space.epochs" if "epochs" in space else "train.epochs"
    return steps, f"{where}={epochs:g} of {n_train} rows at batch_size {bs} x {world} worker(s)"


def max_evaluations(job: FinetuneJobConfig, n_train: int) -> int:
    """The most evaluations any trial of the space can make (ASHA's max_t)."""
    total, _ = longest_trial(job, n_train)
    return max(1, math.ceil(total / min(job.train.eval_every, total)))


def check_scheduler(job: FinetuneJobConfig, n_train: int) -> None:
    """Refuse an ASHA grace period longer than the longest trial (a short `train.epochs`, a
    large `train.eval_every`): Ray's constructor asserts on it. The budget depends on the
    training rows, so this runs once they are counted, before Tune starts."""
    s = job.search
    evals = max_evaluations(job, n_train)
    if s.scheduler != "asha" or s.grace_period <= evals:
        return
    total, how = longest_trial(job, n_train)
    fix = f"set search.grace_period={evals}"
    if total >= s.grace_period:  # more frequent evaluations can reach the grace period
        fix += f", or train.eval_every={total // s.grace_period}"
    raise ConfigError(
        f"search.grace_period={s.grace_period} exceeds the {evals} evaluation(s) of the longest "
        f"trial ({how}: {total} step(s), evaluated every train.eval_every="
        f"{job.train.eval_every}): {fix}, or search.scheduler=fifo"
    )


def make_scheduler(job: FinetuneJobConfig, n_train: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    check_scheduler(job, n_train)
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
