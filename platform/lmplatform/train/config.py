"""The training loop's config and the workers it runs on (Ray Train, DeepSpeed ZeRO)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from lmplatform.config import StrictModel

Beta = Annotated[float, Field(ge=0.0, lt=1.0)]
"""An Adam moment decay: 1 or more never forgets (or diverges)."""

CompileBackend = Literal["inductor", "aot_eager", "cudagraphs"]
"""torch.compile backends a config may name."""

Precision = Literal["fp32", "bf16", "fp16"]
"""A forward's arithmetic: fp32, or torch autocast to bf16 / fp16 over fp32 weights."""

ResumeMismatch = Literal["error", "warn"]
"""What a resumed pretraining run does when its examples are not its checkpoint's."""


class Adapters(StrictModel):
    """Fine-tune low-rank adapters instead of every weight (models/lora.py): the targeted
    Linear layers of the encoder stay frozen beside a trained update of rank `rank`, scaled by
    `alpha / rank`; with the task head they are all that trains."""

    kind: Literal["lora"] = "lora"
    rank: int = Field(8, ge=1, le=1024)
    alpha: float = Field(16.0, gt=0.0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on the adapters' input."""
    targets: list[Literal["attention", "ffn"]] = Field(
        default_factory=lambda: ["attention", "ffn"], min_length=1
    )
    """Which Linear layers of every layer get an adapter: the attention projections, the
    feed-forward layers, or both."""


class EarlyStopping(StrictModel):
    """Stop a run whose watched figure has stopped improving: a trial's task metric (higher is
    better), pretraining's eval_loss (lower is better)."""

    patience: int = Field(ge=1, le=100_000)
    """Evaluations in a row without an improvement before the run stops."""
    min_delta: float = Field(0.0, ge=0.0)
    """The least change that counts as an improvement, in the figure's own units."""


class TrainConfig(StrictModel):
    """The training loop: shared by pretraining workers and fine-tuning trials."""

    batch_size: int = Field(32, ge=1, le=65536)
    """Examples per step per worker (before gradient accumulation)."""
    group_by_length: bool = False
    """Fine-tuning: batch rows of similar length together (sorted within windows of 50
    batches, the batches then shuffled). Less padding: translation pairs train ~1.5x faster."""
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
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    """AdamW betas."""
    clip_grad_norm: float | None = Field(1.0, gt=0)
    """Clip the global gradient norm to this value (null: no clipping)."""
    precision: Precision = "fp32"
    """Forward precision: torch autocast to bf16 / fp16 over fp32 weights and gradients, with
    and without DeepSpeed, on CPU and GPU alike; bf16 is fast on CPUs with AVX-512 BF16/AMX and
    on Ampere+ GPUs, fp16 needs a GPU."""
    eval_every: int = Field(200, ge=1)
    """Steps between evaluations."""
    eval_batches: int = Field(20, ge=1)
    """Batches per evaluation."""
    early_stopping: EarlyStopping | None = None
    """Stop when the watched figure (a trial: its task metric; pretraining: eval_loss) has not
    improved by `min_delta` for `patience` evaluations; the best evaluation's checkpoint is the
    one kept (a trial's promotion reads it; pretraining registers it). Null: run to the end."""
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
    resume_mismatch: ResumeMismatch = "error"
    """Pretraining restarted on another example set than its checkpoint's (a changed corpus,
    tokenizer or `examples` section): refuse (error), or keep weights, optimizer and step and
    read the new set from its start (warn). A new batch size, accumulation or worker count is
    always carried over, with a note."""
    compile: CompileBackend | None = None
    """torch.compile the model with this backend (null: eager). `inductor` generates fused
    kernels (on CPU it needs a C++ compiler); the first steps are slower while it compiles."""
    adapters: Adapters | None = None
    """Fine-tuning: train LoRA adapters and the head, not every weight (null: every weight)."""
    activation_checkpointing: bool = False
    """Recompute each layer's activations in the backward instead of keeping them (every
    family's layer stacks: BERT / ELECTRA encoder and generator, GPT blocks, biLM layers,
    encoder-decoder): a stack then holds about one layer's activations, for about a third
    more compute. Same losses and gradients; works with compile and ZeRO."""


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


def check_train_on(train: TrainConfig, scaling: ScalingConfig) -> None:
    """The checks that span `train` and `scaling`, run by every job config that has both."""
    if train.precision == "fp16" and not scaling.use_gpu:
        # fp16 needs loss scaling, which the plain loop runs on CUDA only; bf16 has fp32's
        # range and needs none. Refused here, once, not in every worker at every restart
        raise ValueError(
            "train.precision=fp16 needs scaling.use_gpu=true (fp16 loss scaling runs on GPUs); "
            "on CPU use train.precision=bf16 or fp32"
        )
