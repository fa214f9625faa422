"""The configs of whole jobs (pretraining, fine-tuning search, serving) and of the training loop.

Each job config is assembled from the stage configs that live next to their code (data sources,
tokenizer, model families, pretraining examples) and validated as one object, including the
checks that span stages: tokenizer kind vs model family, sequence length vs model positions.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lmplatform.config import StrictModel
from lmplatform.data.pretraining import ExamplesConfig
from lmplatform.data.sources import CorpusConfig, DataSource, TaskType
from lmplatform.models import ModelConfig
from lmplatform.tokenization import TokenizerConfig
from lmplatform.tracking import TrackingConfig, mlflow_uri

Name = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class TrainConfig(StrictModel):
    """The training loop: shared by pretraining workers and fine-tuning trials."""

    batch_size: int = Field(32, ge=1, le=65536)
    """Examples per step per worker (before gradient accumulation)."""
    grad_accum_steps: int = Field(1, ge=1, le=4096)
    """Micro-batches whose gradients are summed before one optimizer step."""
    max_steps: int = Field(1000, ge=1)
    """Optimizer steps to run (pretraining); fine-tuning uses `epochs` when it is set."""
    epochs: float | None = Field(None, gt=0)
    """Passes over the training data; overrides max_steps when set."""
    lr: float = Field(5e-4, gt=0, le=1.0)
    """Peak learning rate."""
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0)
    """Final learning rate as a fraction of the peak."""
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    """Decay after warmup."""
    warmup_ratio: float = Field(0.06, ge=0.0, lt=1.0)
    """Fraction of steps spent warming up linearly from 0."""
    weight_decay: float = Field(0.01, ge=0.0, le=1.0)
    """AdamW decoupled weight decay (not applied to biases and norms)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    clip_grad_norm: float | None = Field(1.0, gt=0)
    """Clip the global gradient norm to this value (null: no clipping)."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Autocast precision; bf16 on CPUs with AVX-512 BF16/AMX and on Ampere+ GPUs."""
    eval_every: int = Field(200, ge=1)
    """Steps between evaluations."""
    eval_batches: int = Field(20, ge=1)
    """Batches per evaluation."""
    log_every: int = Field(10, ge=1)
    """Steps between progress lines."""
    checkpoint_every: int = Field(500, ge=1)
    """Steps between checkpoints."""
    keep_checkpoints: int = Field(2, ge=1)
    """Newest checkpoints kept."""
    report_every_s: float = Field(5.0, ge=0.0)
    """Least seconds between metric-only reports to Ray Train (checkpoints always report).
    Ray Train V2 keeps one unread report per worker and reads them every 2 s, so reporting
    more often than that stalls the training thread (measured: 4x slower bert-debug)."""
    seed: int = 0
    """Seed for initialisation, data order and masking."""


class ScalingConfig(StrictModel):
    """Ray Train workers and DeepSpeed ZeRO settings."""

    num_workers: int = Field(1, ge=1, le=4096)
    """Data-parallel workers."""
    min_workers: int | None = Field(None, ge=1)
    """Elastic training: start with as few as this many workers and grow to `num_workers` as
    the cluster frees resources (null: fixed size). On a resize the run restarts from its newest
    checkpoint with the new world size: weights, step, schedule and data position carry over;
    the AdamW moments restart (DeepSpeed cannot re-partition ZeRO optimizer state)."""
    resize_check_s: float = Field(60.0, gt=0)
    """Elastic training: seconds between checks for room to grow."""
    use_gpu: bool = False
    """One GPU per worker (NCCL); false trains on CPU (gloo)."""
    cpus_per_worker: float = Field(1.0, gt=0)
    """CPUs reserved per worker."""
    torch_threads: int | None = Field(None, ge=1, le=1024)
    """Intra-op threads per CPU worker (null: `cpus_per_worker`). Set it above the reservation
    on purpose to leave a logical CPU for Ray Data's light streaming tasks while the training
    math uses every core (measured on 2 cores, BERT-mini: 1 thread 5.0k, 2 threads 8.6k tok/s)."""
    resources_per_worker: dict[str, float] = {}
    """Other Ray resources per worker (custom node resources, e.g. `{"nvme": 1}`)."""
    zero_stage: Literal[0, 1, 2, 3] = 0
    """DeepSpeed ZeRO stage."""
    offload_optimizer: bool = False
    """ZeRO: keep optimizer state in CPU memory."""
    offload_params: bool = False
    """ZeRO-3: keep parameters in CPU memory."""
    max_failures: int = Field(3, ge=-1)
    """Worker failures to recover from (restart from the newest checkpoint); -1: no limit."""

    @model_validator(mode="after")
    def _check(self) -> ScalingConfig:
        if self.min_workers is not None and self.min_workers > self.num_workers:
            raise ValueError(
                f"min_workers={self.min_workers} exceeds num_workers={self.num_workers}"
            )
        for key in ("CPU", "GPU", "memory"):
            if key in self.resources_per_worker:
                raise ValueError(
                    f"resources_per_worker must not set {key!r}: use cpus_per_worker / use_gpu"
                )
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("offload_params needs zero_stage=3")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage 1, 2 or 3")
        return self


_TOKENIZER_FOR = {"bert": "wordpiece", "gpt": "bpe", "lstm": "bpe"}


def _check_tracking(tracking: TrackingConfig | None, output_dir: str) -> None:
    if tracking is not None and tracking.backend == "mlflow":
        mlflow_uri(tracking, output_dir)  # a remote output_dir needs tracking.uri


def _check_model_ref(ref: str, what: str) -> None:
    """A registry ref ('name[@version]') or a Hugging Face checkpoint ('hf:<folder or id>')."""
    from lmplatform.hfimport import check_hf_ref, is_hf
    from lmplatform.registry import check_ref

    if is_hf(ref):
        check_hf_ref(ref, what)
    else:
        check_ref(ref, what)


class PretrainJobConfig(StrictModel):
    name: str = Name
    """Run name: checkpoints, resumption and the registry entry are keyed by it."""
    output_dir: str = "runs"
    """Local or shared folder for run outputs (tokenizer, shards, checkpoints, plots)."""
    registry: str = "registry"
    """Model registry root (local path or s3:// / gs:// URI)."""
    init_from: str | None = None
    """Continue pretraining a registered model, 'name[@version]', or a Hugging Face checkpoint,
    'hf:<folder or hub id>' (domain- or task-adaptive pretraining): its weights and tokenizer
    are the start, so `tokenizer` is not used and
    `model` must describe its architecture (dropouts may differ)."""
    corpus: CorpusConfig
    """The text to pretrain on."""
    tokenizer: TokenizerConfig = TokenizerConfig()
    """Tokenizer to train (or reuse) on the corpus; not used with `init_from`."""
    model: ModelConfig
    """Model family and size."""
    examples: ExamplesConfig = ExamplesConfig()
    """How documents become training examples."""
    train: TrainConfig = TrainConfig()
    """Optimisation."""
    scaling: ScalingConfig = ScalingConfig()
    """Workers and ZeRO."""
    tracking: TrackingConfig | None = None
    """Log the run to MLflow or W&B (none: metrics.jsonl, TensorBoard and the registry only)."""

    @model_validator(mode="after")
    def _cross_checks(self) -> PretrainJobConfig:
        if self.init_from is not None:
            _check_model_ref(self.init_from, "init_from")
        _check_tracking(self.tracking, self.output_dir)
        want = _TOKENIZER_FOR[self.model.family]
        if self.tokenizer.kind != want:
            raise ValueError(
                f"tokenizer.kind={self.tokenizer.kind!r} does not fit model.family={self.model.family!r} (use {want!r})"
            )
        if self.examples.max_seq_len > self.model.max_seq_len:
            raise ValueError(
                f"examples.max_seq_len={self.examples.max_seq_len} exceeds model.max_seq_len={self.model.max_seq_len}"
            )
        return self

    @property
    def objective(self) -> Literal["bert", "causal"]:
        return "bert" if self.model.family == "bert" else "causal"


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


SEARCHABLE = (
    "lr",
    "batch_size",
    "epochs",
    "warmup_ratio",
    "weight_decay",
    "dropout",
    "layer_decay",
    "transfer",
)


class TaskConfig(StrictModel):
    name: str = Name
    """Task name: the registry key and the serving route `/v1/predict/<name>`."""
    type: TaskType
    """classification, pair_classification or token_classification."""
    train: DataSource
    """Training rows."""
    dev: DataSource
    """Rows for model selection and the promoted metric."""
    labels: list[str] | None = None
    """Label names (classification) or entity types (token classification); null: from the data."""
    label_names: list[str] | None = None
    """Display names for the labels, in the order of `labels` (e.g. '0','1' -> negative, positive)."""
    metric: str = Field("accuracy", pattern=r"^(accuracy|macro_f1|entity_f1|f1/.+)$")
    """Metric to maximise: accuracy, macro_f1, entity_f1 (NER), or f1/<class>: the F1 of one
    class (e.g. f1/spam, where the class that matters is rare)."""
    max_seq_len: int = Field(128, ge=8, le=65536)
    """Inputs are truncated to this many tokens."""
    max_bad_fraction: float = Field(0.01, ge=0.0, le=1.0)
    """Fail the run if more than this fraction of rows is unusable."""
    max_train_rows: int | None = Field(None, ge=1)
    """Train on a fixed random subset of this many rows (null: all) — for budgeted CPU runs."""

    @model_validator(mode="after")
    def _check(self) -> TaskConfig:
        if self.type == "token_classification" and self.metric != "entity_f1":
            raise ValueError("token_classification tasks are scored with metric='entity_f1'")
        if self.type != "token_classification" and self.metric == "entity_f1":
            raise ValueError(f"metric='entity_f1' is for token_classification, not {self.type}")
        if self.label_names is not None:
            if self.labels is None or len(self.label_names) != len(self.labels):
                raise ValueError("label_names needs `labels`, one display name per label")
        if self.metric.startswith("f1/"):
            # F1 of one class (e.g. spam): named by its display name, or its label if none
            names = self.label_names or self.labels
            target = self.metric[3:]
            if self.type == "token_classification" or names is None or target not in names:
                raise ValueError(
                    f"metric={self.metric!r}: 'f1/<class>' needs a classification task whose "
                    f"labels (or label_names) include {target!r}"
                )
        return self


class SearchConfig(StrictModel):
    scheduler: Literal["asha", "pbt", "fifo"] = "asha"
    """Trial scheduler."""
    num_samples: int = Field(8, ge=1)
    """Trials to run."""
    max_time_s: float | None = Field(None, gt=0)
    """Stop the search after this many seconds."""
    max_concurrent: int | None = Field(None, ge=1)
    """Trials at once (null: as many as resources allow)."""
    space: dict[str, SearchDim] = Field(default_factory=dict)
    """Hyperparameter -> range; keys from: lr, batch_size, epochs, warmup_ratio, weight_decay,
    dropout, layer_decay, transfer."""
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

    @model_validator(mode="after")
    def _known(self) -> SearchConfig:
        unknown = sorted(set(self.space) - set(SEARCHABLE))
        if unknown:
            raise ValueError(
                f"space has unknown hyperparameter(s) {unknown} (allowed: {', '.join(SEARCHABLE)})"
            )
        return self


class FinetuneJobConfig(StrictModel):
    name: str = Name
    """Search name (Tune experiment)."""
    output_dir: str = "runs"
    """Where trial results and plots go."""
    registry: str = "registry"
    """Model registry root."""
    parent: str
    """Pretrained registry model 'name[@version]', or a Hugging Face BERT / GPT-2 checkpoint
    'hf:<folder or hub id>' (imported into the registry on first use); 'random:<either>' takes
    its architecture and tokenizer but random weights (the no-pretraining baseline)."""
    task: TaskConfig
    """What to fine-tune for."""
    transfer: Literal["full", "frozen"] = "full"
    """Fine-tune every weight, or train only the head on frozen features."""
    layer_decay: float = Field(1.0, gt=0.0, le=1.0)
    """Layer-wise learning-rate decay (1.0: none)."""
    train: TrainConfig = TrainConfig(lr=5e-5, epochs=3, eval_every=50, checkpoint_every=50)
    """Optimisation defaults for each trial (searched fields are overridden)."""
    search: SearchConfig = SearchConfig()
    """Hyperparameter search."""
    scaling: ScalingConfig = ScalingConfig()
    """Workers per trial."""
    tracking: TrackingConfig | None = None
    """Log every trial to MLflow or W&B; the promoted run is tagged with its registry version."""

    @model_validator(mode="after")
    def _check(self) -> FinetuneJobConfig:
        _check_model_ref(self.parent.removeprefix("random:"), "parent")
        _check_tracking(self.tracking, self.output_dir)
        if self.search.scheduler == "pbt" and self.scaling.num_workers > 1:
            raise ValueError(
                "search.scheduler=pbt needs single-worker trials (scaling.num_workers=1): "
                "Ray Train's Tune bridge cannot restore one trial from another's checkpoint"
            )
        if self.search.scheduler == "pbt" and not any(
            k in self.search.space for k in ("lr", "weight_decay")
        ):
            raise ValueError(
                "search.scheduler=pbt needs lr or weight_decay in search.space to mutate"
            )
        return self


class AutoscalingConfig(StrictModel):
    min_replicas: int = Field(1, ge=0)
    """Replicas kept when idle."""
    max_replicas: int = Field(2, ge=1)
    """Upper bound on replicas."""
    target_ongoing_requests: float = Field(4.0, gt=0)
    """Ongoing requests per replica that autoscaling aims for."""
    upscale_delay_s: float = Field(3.0, ge=0)
    """Load must stay high this long before a replica is added."""
    downscale_delay_s: float = Field(60.0, ge=0)
    """Load must stay low this long before a replica is removed."""

    @model_validator(mode="after")
    def _check(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas={self.min_replicas} exceeds max_replicas={self.max_replicas}"
            )
        return self


class ServeConfig(StrictModel):
    registry: str = "registry"
    """Model registry root the deployments load from."""
    host: str = "127.0.0.1"
    """HTTP bind address."""
    port: int = Field(8000, ge=1, le=65535)
    """HTTP port."""
    tasks: list[str] | None = None
    """Tasks to serve (null: every task with a promoted `best`)."""
    fill_mask_model: str | None = None
    """Pretrained BERT 'name[@version]' for /v1/fill-mask."""
    generate_model: str | None = None
    """Pretrained GPT 'name[@version]' for /v1/generate."""
    max_batch_size: int = Field(16, ge=1, le=4096)
    """Dynamic batching: most inputs per model call."""
    batch_wait_timeout_s: float = Field(0.01, ge=0.0, le=10.0)
    """Dynamic batching: longest wait for a batch to fill."""
    max_inputs: int = Field(64, ge=1)
    """Most inputs per request (413 above)."""
    max_body_bytes: int = Field(1_000_000, ge=1024)
    """Largest request body (413 above)."""
    autoscaling: AutoscalingConfig = AutoscalingConfig()
    """Replica autoscaling per deployment."""
    shared_encoder_groups: list[list[str]] = Field(default_factory=list)
    """Groups of frozen-feature tasks from the same pretrained model that share one encoder
    deployment (one encoder forward per batch for all of them); each task at most once."""
    replica_cpus: float = Field(1.0, ge=0)
    """CPUs per model replica."""
    replica_gpus: float = Field(0.0, ge=0)
    """GPUs per model replica (on a GPU cluster: 1, or a fraction to pack replicas)."""
    ingress_cpus: float = Field(0.0, ge=0)
    """CPUs per HTTP ingress replica (it only routes)."""
    refresh_s: float = Field(2.0, ge=0)
    """Seconds between registry checks for a new `best` (hot swap); 0: only on --refresh."""
    refresh_token: str = ""
    """Any new value makes running replicas check the registry now (jobs/deploy.py --refresh)."""
    health_check_period_s: float = Field(10.0, gt=0)
    """Seconds between Serve health checks of model replicas."""
    app_name: str = "lmplatform"
    """Serve application name."""
    route_prefix: str = "/"
    """Serve route prefix."""

    @model_validator(mode="after")
    def _groups(self) -> ServeConfig:
        from lmplatform.registry import check_name, check_ref

        # every name becomes a registry path: no traversal through a served name
        for t in [*(self.tasks or []), *(t for g in self.shared_encoder_groups for t in g)]:
            check_name(t, "task name")
        for what in ("fill_mask_model", "generate_model"):
            if getattr(self, what) is not None:
                check_ref(getattr(self, what), what)
        seen: set[str] = set()
        for g in self.shared_encoder_groups:
            if not g:
                raise ValueError("shared_encoder_groups: a group is empty")
            dup = seen.intersection(g) or {t for t in g if g.count(t) > 1}
            if dup:
                raise ValueError(f"shared_encoder_groups: {sorted(dup)} in more than one place")
            seen.update(g)
        return self
