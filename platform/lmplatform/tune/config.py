"""The `search:` section of a fine-tuning config: the space, the scheduler, the budget."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, ValidationError, field_validator, model_validator

from lmplatform.config import Name, StrictModel
from lmplatform.jobconfig import JobConfig, check_model_ref
from lmplatform.models.transformer.model import TransformerConfig
from lmplatform.tasks import task_type
from lmplatform.tasks.config import TaskConfig
from lmplatform.tokenization import TokenizerConfig
from lmplatform.train.config import ScalingConfig, TrainConfig, check_train_on

Transfer = Literal["full", "frozen"]
"""Fine-tune every weight, or train only the head on frozen features."""
LayerDecay = Annotated[float, Field(gt=0.0, le=1.0)]
"""Layer-wise learning-rate decay (1.0: none)."""


class SearchDim(StrictModel):
    """One hyperparameter's search range."""

    kind: Literal["loguniform", "uniform", "randint", "choice", "grid"]
    """Distribution (choice/grid take `values`; the others `low` and `high`)."""
    low: float | None = None
    """Lower bound."""
    high: float | None = None
    """Upper bound (exclusive for randint)."""
    values: list | None = None
    """Candidates for choice / grid."""

    @model_validator(mode="after")
    def _check(self) -> SearchDim:
        if self.kind in ("choice", "grid"):
            if not self.values:
                raise ValueError(f"{self.kind} needs a non-empty `values` list")
        elif self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"{self.kind} needs low < high, got low={self.low} high={self.high}")
        elif self.kind == "loguniform" and self.low <= 0:
            raise ValueError("loguniform needs low > 0")
        return self

    def contains(self, v) -> bool:
        """Whether this dimension can draw `v`."""
        if self.kind in ("choice", "grid"):
            return v in self.values
        if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
            return False
        if self.kind == "randint":
            return float(v).is_integer() and self.low <= v < self.high
        return self.low <= v <= self.high


def _like(model: type, name: str) -> Any:
    """The type and bounds of `model.name`: a searched value passes exactly the checks a fixed
    one does."""
    f = model.model_fields[name]
    return Annotated[(f.annotation, *f.metadata)] if f.metadata else f.annotation


_TRAIN = ("lr", "batch_size", "epochs", "warmup_ratio", "weight_decay")
"""The searchable fields that `train:` fixes when the space does not search them."""
_Lr, _BatchSize, _Epochs, _Warmup, _Decay = (_like(TrainConfig, k) for k in _TRAIN)
# every model family bounds these the same way: [0, 1)
_Dropout, _Smoothing = (_like(TransformerConfig, k) for k in ("dropout", "label_smoothing"))


class TrialParams(StrictModel):
    """One trial's hyperparameters: what the search drew over the job's fixed values. Its
    fields are the searchable ones (`SEARCHABLE`); a search space names them, a trial reads them
    as attributes, results and reports list them."""

    lr: _Lr
    """Peak learning rate (`train.lr`)."""
    batch_size: _BatchSize
    """Examples per optimizer step and worker (`train.batch_size`)."""
    epochs: _Epochs
    """Passes over the training rows (`train.epochs`; null: `train.max_steps`)."""
    warmup_ratio: _Warmup
    """Share of the steps spent warming up (`train.warmup_ratio`)."""
    weight_decay: _Decay
    """AdamW weight decay (`train.weight_decay`)."""
    dropout: _Dropout = 0.1
    """Dropout of the model (seq2seq: `model.dropout`) or of the task head."""
    label_smoothing: _Smoothing = 0.1
    """Label smoothing of the loss (seq2seq: `model.label_smoothing`)."""
    layer_decay: LayerDecay = 1.0
    """Layer-wise learning-rate decay (`layer_decay`)."""
    transfer: Transfer = "full"
    """Fine-tune every weight or only the head on frozen features (`transfer`)."""
    lora_rank: Annotated[int, Field(ge=1, le=1024)] | None = None
    """LoRA adapters' rank (`train.adapters.rank`; null: no adapters, every weight trains)."""
    lora_alpha: Annotated[float, Field(gt=0.0)] | None = None
    """LoRA scale numerator: updates are scaled by alpha / rank (`train.adapters.alpha`)."""
    lora_targets: Annotated[list[Literal["attention", "ffn"]], Field(min_length=1)] | None = None
    """Which layers get adapters (`train.adapters.targets`)."""

    @classmethod
    def of(cls, job, drawn: dict | None = None) -> TrialParams:
        """`job`'s fixed values (a `FinetuneJobConfig`) under the searched ones in `drawn` (a
        Tune config, which may hold other keys); validated here, once."""
        fixed = {k: getattr(job.train, k) for k in _TRAIN}
        fixed.update(layer_decay=job.layer_decay, transfer=job.transfer)
        if (a := job.train.adapters) is not None:
            fixed.update(lora_rank=a.rank, lora_alpha=a.alpha, lora_targets=list(a.targets))
        if job.model is not None:
            fixed.update(dropout=job.model.dropout, label_smoothing=job.model.label_smoothing)
        searched = {k: v for k, v in (drawn or {}).items() if k in cls.model_fields}
        return cls.model_validate({**fixed, **searched})


SEARCHABLE = tuple(TrialParams.model_fields)
"""What a search space may name."""


class SearchConfig(StrictModel):
    scheduler: Literal["asha", "pbt", "fifo"] = "asha"
    """Trial scheduler."""
    algorithm: Literal["random", "tpe"] = "random"
    """How configurations are drawn: `random` (independent draws, grids expanded) or `tpe`
    (Optuna's Tree-structured Parzen Estimator through Ray Tune: after `startup_trials` random
    draws, each configuration is proposed from the results so far; needs `lmplatform[search]`,
    works with ASHA and FIFO, not PBT, and takes no grid dimensions)."""
    startup_trials: int = Field(3, ge=1)
    """TPE: random draws before it proposes (trials told by `warm_start_from` count)."""
    points: list[dict[str, Any]] = Field(default_factory=list)
    """Configurations to try first, as given, each value inside its dimension (random: a key
    left out is drawn; tpe: a point sets every dimension)."""
    warm_start_from: str | None = None
    """TPE: an earlier search of the same task (its name under output_dir, or its folder or
    URI): its finished trials are told to TPE before the first draw, not run again."""
    num_samples: int = Field(8, ge=1)
    """Trials to run."""
    max_time_s: float | None = Field(None, gt=0)
    """Stop the search after this many seconds."""
    max_concurrent: int | None = Field(None, ge=1)
    """Trials at once (null: as many as resources allow)."""
    space: dict[str, SearchDim] = Field(default_factory=dict)
    """Hyperparameter -> range; keys: the fields of `TrialParams` (lr, batch_size, epochs,
    warmup_ratio, weight_decay, dropout, label_smoothing, layer_decay, transfer; with
    `train.adapters`: lora_rank, lora_alpha, lora_targets)."""
    seed: int | None = 0
    """Seed of the configurations drawn from `space`: a re-run tries the same ones (null: fresh
    draws each run). Which trials ASHA stops still depends on when results arrive."""
    grace_period: int = Field(1, ge=1)
    """ASHA: evaluations before a trial can be stopped."""
    reduction_factor: float = Field(2.0, gt=1.0)
    """ASHA: keep 1/reduction_factor of trials at each rung."""
    perturbation_interval: int = Field(2, ge=1)
    """PBT: evaluations between exploit/explore steps."""
    quantile_fraction: float = Field(0.25, gt=0.0, le=0.5)
    """PBT: the bottom fraction of trials copies the top fraction."""
    eval_rows: int | None = Field(2000, ge=1)
    """Dev rows scored at each trial evaluation (null: all); the winner is scored on all."""
    baseline: bool = True
    """Before the trials, fit the task type's classic baseline (TF-IDF + linear SVM for
    classification; word features + linear SVM for NER and SRL; scikit-learn, seconds) on the
    same training rows and score it on the whole dev set: the search's report and promotion
    say whether the winner beats it."""

    @model_validator(mode="after")
    def _known(self) -> SearchConfig:
        unknown = sorted(set(self.space) - set(SEARCHABLE))
        if unknown:
            raise ValueError(
                f"space has unknown hyperparameter(s) {unknown} (allowed: {', '.join(SEARCHABLE)})"
            )
        for i, point in enumerate(self.points):
            outside = sorted(set(point) - set(self.space))
            if outside:
                raise ValueError(f"points[{i}] sets {outside}, which the space does not search")
            for name, value in point.items():
                check_value(name, f"points[{i}]", value)
                if not self.space[name].contains(value):
                    raise ValueError(f"points[{i}]: {name}={value!r} is outside its space")
        return self

    @model_validator(mode="after")
    def _algorithm(self) -> SearchConfig:
        if self.algorithm == "random":
            if self.warm_start_from:
                raise ValueError("warm_start_from needs algorithm=tpe (random draws learn nothing)")
            return self
        if self.scheduler == "pbt":
            raise ValueError("algorithm=tpe works with scheduler asha or fifo; PBT draws its own")
        grids = sorted(k for k, d in self.space.items() if d.kind == "grid")
        if grids:
            raise ValueError(f"algorithm=tpe samples: make {grids} kind choice, not grid")
        if not self.space:
            raise ValueError("algorithm=tpe needs a space to search")
        listed = sorted(
            k for k, d in self.space.items() if any(isinstance(v, list) for v in d.values or [])
        )
        if listed:  # Optuna's categorical choices are numbers, strings and booleans only
            raise ValueError(
                f"algorithm=tpe cannot draw lists: search {listed} with algorithm=random"
            )
        for i, point in enumerate(self.points):
            left = sorted(set(self.space) - set(point))
            if left:
                raise ValueError(
                    f"points[{i}] leaves out {left}: with algorithm=tpe a point sets all"
                )
        return self

    @field_validator("space")
    @classmethod
    def _dimensions(cls, space: dict[str, SearchDim]) -> dict[str, SearchDim]:
        for name, dim in space.items():
            if name in SEARCHABLE:
                check_dimension(name, dim)
        return space


def check_value(name: str, what: str, value) -> None:
    """Fail on a value the trial's field `name` refuses, saying where it came from."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name}: {what}={value} is not a finite number")
    try:
        TypeAdapter(_like(TrialParams, name)).validate_python(value)
    except ValidationError as e:
        why = "; ".join(err["msg"] for err in e.errors())
        raise ValueError(f"{name}: {what}={value!r} is not a valid {name} ({why})") from None


def check_dimension(name: str, dim: SearchDim) -> None:
    """Fail on a dimension that could draw a value its field refuses, naming it: a bad space
    fails when the config loads, not inside trials on the cluster."""

    if dim.kind in ("choice", "grid"):
        for i, v in enumerate(dim.values):
            check_value(name, f"values[{i}]", v)
        return
    if name == "transfer":
        raise ValueError(f"{name}: kind {dim.kind} draws numbers; use choice or grid")
    check_value(name, "low", dim.low)
    if dim.kind == "randint":
        if dim.low != int(dim.low) or dim.high != int(dim.high):
            raise ValueError(f"{name}: randint needs whole-number low and high")
        check_value(name, "high - 1", int(dim.high) - 1)  # randint's high is exclusive
    else:
        check_value(name, "high", dim.high)


class FinetuneJobConfig(JobConfig):
    name: str = Name
    """Search name (Tune experiment)."""
    parent: str | None = None
    """Pretrained registry model 'name[@version]', or a Hugging Face BERT / GPT-2 checkpoint
    'hf:<folder or hub id>' (imported into the registry on first use); 'random:<either>' takes
    its architecture and tokenizer but random weights (the no-pretraining baseline). Required,
    except for seq2seq tasks: without one they train the encoder-decoder in `model` from
    scratch; with a BERT or GPT parent they warm-start it from its weights (`warm_start`)."""
    warm_start: Literal["encoder", "decoder", "both"] | None = None
    """seq2seq with a parent: which side its weights fill (BERT: both (default), encoder or
    decoder; GPT: decoder). The architecture and the tokenizer (source and target) are the
    parent's; cross-attention, and a side not warm-started, start from scratch."""
    task: TaskConfig
    """What to fine-tune for."""
    model: TransformerConfig | None = None
    """seq2seq: the encoder-decoder to train (default: transformer, size mini); its vocab_size
    and special-token ids are set from the joint tokenizer."""
    tokenizer: TokenizerConfig | None = None
    """seq2seq: the joint tokenizer trained over both sides of the training pairs (default:
    joint_bpe, 8000 tokens)."""
    transfer: Transfer = "full"
    """Fine-tune every weight, or train only the head on frozen features."""
    layer_decay: LayerDecay = 1.0
    """Layer-wise learning-rate decay (1.0: none)."""
    train: TrainConfig = TrainConfig(lr=5e-5, epochs=3, eval_every=50, checkpoint_every=50)
    """Optimisation defaults for each trial (searched fields are overridden)."""
    search: SearchConfig = SearchConfig()
    """Hyperparameter search."""
    scaling: ScalingConfig = ScalingConfig()
    """Workers per trial."""

    @model_validator(mode="after")
    def _check(self) -> FinetuneJobConfig:
        if task_type(self.task.type).whole_model:
            if self.transfer == "frozen":
                raise ValueError(
                    f"transfer: frozen trains a head on frozen features; a {self.task.type} "
                    "model has no head and trains in full (transfer: full)"
                )
            if self.parent is not None:
                self._check_warm_start()
                return self._check_common()
            if self.warm_start is not None:
                raise ValueError("warm_start needs `parent` (the BERT or GPT model to start from)")
            # (assigning re-runs this validator: only when unset)
            if self.model is None:
                self.model = TransformerConfig()
            if self.tokenizer is None:
                self.tokenizer = TokenizerConfig(kind="joint_bpe")
            if self.tokenizer.kind != "joint_bpe":
                raise ValueError(
                    f"tokenizer.kind={self.tokenizer.kind!r}: a {self.task.type} model needs "
                    "'joint_bpe' (one vocabulary over source and target)"
                )
            if self.task.max_seq_len > self.model.max_seq_len:
                raise ValueError(
                    f"task.max_seq_len={self.task.max_seq_len} exceeds "
                    f"model.max_seq_len={self.model.max_seq_len}"
                )
        else:
            if self.parent is None:
                raise ValueError(f"a {self.task.type} task needs `parent` (a pretrained model)")
            if self.model is not None or self.tokenizer is not None:
                raise ValueError(
                    "`model` and `tokenizer` are for seq2seq tasks; a "
                    f"{self.task.type} task takes both from its parent"
                )
            if self.warm_start is not None:
                raise ValueError(
                    f"warm_start is for seq2seq tasks; a {self.task.type} task always starts "
                    "from its parent's encoder"
                )
            check_model_ref(self.parent.removeprefix("random:"), "parent")
        return self._check_common()

    def _check_adapters(self) -> None:
        lora = sorted(k for k in self.search.space if k.startswith("lora_"))
        if lora and self.train.adapters is None:
            raise ValueError(f"search.space names {lora}: set train.adapters to train adapters")
        if self.train.adapters is not None and (
            self.transfer == "frozen" or "transfer" in self.search.space
        ):
            raise ValueError(
                "train.adapters trains adapters and the head; transfer (frozen features) is "
                "the other way to spare the encoder: use one"
            )

    @property
    def trials_on_ray_train(self) -> bool:
        """Trials with several workers or ZeRO (which needs a process group, even for one
        worker) run a TorchTrainer each; others are plain Tune function trials."""
        return self.scaling.num_workers > 1 or self.scaling.zero_stage > 0

    def _check_warm_start(self) -> None:
        """seq2seq with a parent: everything but the weights' fit (checked against the
        registry before any trial starts, lmplatform.tune.data)."""
        if self.parent.startswith("random:"):
            raise ValueError(
                "parent: random:… gives random weights; a seq2seq model without pretrained "
                "weights trains from scratch: remove `parent` (and describe it in `model`)"
            )
        if self.model is not None or self.tokenizer is not None:
            raise ValueError(
                "a warm-started seq2seq model takes its architecture and tokenizer from "
                f"`parent` ({self.parent}): remove `model` / `tokenizer` (dropout and "
                "label_smoothing can be searched)"
            )
        check_model_ref(self.parent, "parent")

    def _check_common(self) -> FinetuneJobConfig:
        check_train_on(self.train, self.scaling)
        self._check_adapters()
        if self.search.scheduler == "pbt" and self.trials_on_ray_train:
            raise ValueError(
                "search.scheduler=pbt needs single-worker trials without DeepSpeed "
                "(scaling.num_workers=1, scaling.zero_stage=0): "
                "Ray Train's Tune bridge cannot restore one trial from another's checkpoint"
            )
        if self.search.scheduler == "pbt" and not any(
            k in self.search.space for k in ("lr", "weight_decay")
        ):
            raise ValueError(
                "search.scheduler=pbt needs lr or weight_decay in search.space to mutate"
            )
        return self
