"""The configs of whole jobs: pretraining and fine-tuning search.

Each job config is assembled from the stage configs that live next to their code (data sources,
tokenizer, model families, pretraining examples, the training loop and its scaling, task types,
serving) and validated as one object, including the checks that span stages: tokenizer kind vs
model family, sequence length vs model positions. The configs of the other stages are
re-exported here for the job commands.
"""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from lmplatform.config import Name, StrictModel
from lmplatform.data.pretraining import ExamplesConfig, Objective
from lmplatform.data.sources import CorpusConfig
from lmplatform.models.families import ModelConfig, family
from lmplatform.models.transformer import TransformerConfig
from lmplatform.serving.config import AutoscalingConfig, ServeConfig
from lmplatform.tasks import task_type
from lmplatform.tasks.config import TaskConfig
from lmplatform.tokenization import TokenizerConfig
from lmplatform.tracking import TrackingConfig, mlflow_uri
from lmplatform.train.config import ScalingConfig, TrainConfig, check_train_on
from lmplatform.tune.config import SEARCHABLE, LayerDecay, SearchConfig, SearchDim, Transfer


class JobConfig(StrictModel):
    """What every job config shares (pretraining, fine-tuning search, the pipeline): where it
    writes, the registry it reads and writes, where it is tracked."""

    output_dir: str = "runs"
    """Local or shared folder (s3://…) for the job's outputs: run folders, checkpoints, plots,
    reports; absolute under `ray job submit`."""
    registry: str = "registry"
    """Model registry root (local path or s3:// / gs:// URI)."""
    tracking: TrackingConfig | None = None
    """Log runs to MLflow or W&B (none: metrics.jsonl, TensorBoard and the registry only); a
    search tags its promoted run with the registry version."""

    @model_validator(mode="after")
    def _check_tracking(self) -> JobConfig:
        if self.tracking is not None and self.tracking.backend == "mlflow":
            mlflow_uri(self.tracking, self.output_dir)  # a remote output_dir needs tracking.uri
        return self


def _check_model_ref(ref: str, what: str) -> None:
    """A registry ref ('name[@version]') or a Hugging Face checkpoint ('hf:<folder or id>')."""
    from lmplatform.hfimport import check_hf_ref, is_hf
    from lmplatform.registry import check_ref

    if is_hf(ref):
        check_hf_ref(ref, what)
    else:
        check_ref(ref, what)


class PretrainJobConfig(JobConfig):
    name: str = Name
    """Run name: checkpoints, resumption and the registry entry are keyed by it."""
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

    @model_validator(mode="after")
    def _cross_checks(self) -> PretrainJobConfig:
        if self.init_from is not None:
            _check_model_ref(self.init_from, "init_from")
        check_train_on(self.train, self.scaling)
        if family(self.model).objective is None:
            why = family(self.model).why_not["objective"]
            raise ValueError(f"model.family={self.model.family!r} {why}")
        want = family(self.model).tokenizer
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
    def objective(self) -> Objective:
        """How the family pretrains: example builder, collator, the run's summary metrics."""
        return family(self.model).objective


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
            _check_model_ref(self.parent.removeprefix("random:"), "parent")
        return self._check_common()

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
        _check_model_ref(self.parent, "parent")

    def _check_common(self) -> FinetuneJobConfig:
        check_train_on(self.train, self.scaling)
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


__all__ = [
    "SEARCHABLE",
    "AutoscalingConfig",
    "FinetuneJobConfig",
    "PretrainJobConfig",
    "ScalingConfig",
    "SearchConfig",
    "SearchDim",
    "ServeConfig",
    "TaskConfig",
    "TrainConfig",
]
