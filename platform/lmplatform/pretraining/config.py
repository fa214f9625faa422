"""The pretraining job's config: corpus, tokenizer, model family, examples, training, scaling,
validated as one object with the checks that span them (tokenizer kind vs family, sequence
length vs model positions)."""

from __future__ import annotations

from pydantic import model_validator

from lmplatform.config import Name
from lmplatform.data.corpus import CorpusConfig
from lmplatform.data.sources import DataSource
from lmplatform.jobconfig import JobConfig, check_model_ref
from lmplatform.models.families import ModelConfig, family
from lmplatform.models.objective import ExamplesConfig, Objective
from lmplatform.tokenization import TokenizerConfig
from lmplatform.train.config import ScalingConfig, TrainConfig, check_train_on


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
            check_model_ref(self.init_from, "init_from")
        check_train_on(self.train, self.scaling)
        if family(self.model).objective is None:
            why = family(self.model).why_not["objective"]
            raise ValueError(f"model.family={self.model.family!r} {why}")
        want = family(self.model).tokenizer
        if self.tokenizer.kind != want:
            raise ValueError(
                f"tokenizer.kind={self.tokenizer.kind!r} does not fit model.family={self.model.family!r} (use {want!r})"
            )
        self._fix_examples()
        t = self.train
        if t.adapters is not None:
            raise ValueError("train.adapters are for fine-tuning: pretraining trains every weight")
        if t.early_stopping and t.checkpoint_every % t.eval_every:
            raise ValueError(
                f"train.early_stopping registers the best evaluation's checkpoint, so every "
                f"checkpoint must follow an evaluation: train.checkpoint_every="
                f"{t.checkpoint_every} is not a multiple of train.eval_every={t.eval_every}"
            )
        if self.examples.max_seq_len > self.model.max_seq_len:
            raise ValueError(
                f"examples.max_seq_len={self.examples.max_seq_len} exceeds model.max_seq_len={self.model.max_seq_len}"
            )
        return self

    def _fix_examples(self) -> None:
        """The objective's fixed examples settings, refused where the config asks otherwise."""
        fixed = self.objective.examples_fixed
        for key, value in fixed.items():
            if key in self.examples.model_fields_set and getattr(self.examples, key) != value:
                raise ValueError(
                    f"examples.{key}={getattr(self.examples, key)!r} does not fit "
                    f"model.family={self.model.family!r}: its objective always uses {value!r}"
                )
        if any(getattr(self.examples, k) != v for k, v in fixed.items()):
            # only when it changes: assignment validates the whole job again
            self.examples = self.examples.model_copy(update=fixed)

    @property
    def objective(self) -> Objective:
        """How the family pretrains: example builder, collator, the run's summary metrics."""
        return family(self.model).objective


def adapted_to_task(
    cfg: PretrainJobConfig, parent: str, task_name: str, train: DataSource
) -> PretrainJobConfig:
    """Task-adaptive pretraining (Gururangan et al. 2020): `cfg` continued from `parent` on one
    task's training file read as unlabelled text, one document per row, and registered as
    `<parent name>-<task>`."""
    corpus = CorpusConfig(source=train, document_split="line", min_chars=1)
    update = {"name": f"{parent.partition('@')[0]}-{task_name}", "init_from": parent}
    return PretrainJobConfig.model_validate(cfg.model_dump() | update | {"corpus": corpus})
