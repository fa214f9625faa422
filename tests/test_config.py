"""Config resolution (preset -> YAML -> overrides) and one-line errors that name the field."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from lmplatform.config import ConfigError, load_config, save_resolved
from lmplatform.pretraining.config import PretrainJobConfig
from lmplatform.serving.config import ServeConfig
from lmplatform.tune.config import FinetuneJobConfig

PRETRAIN = ROOT / "jobs" / "configs" / "pretrain" / "bert-sample.yaml"


def test_banana_hidden_size_is_one_line_naming_the_field():
    with pytest.raises(ConfigError) as e:
        load_config(PretrainJobConfig, PRETRAIN, ["model.hidden_size=banana"])
    msg = str(e.value)
    assert "\n" not in msg
    assert "model.hidden_size" in msg and "banana" in msg and "integer" in msg


@pytest.mark.parametrize(
    "override, must_contain",
    [
        ("model.hiden_size=64", ["model.hiden_size", "unknown key", "hidden_size"]),
        ("model.dropout=1.5", ["model.dropout", "1.5", "< 1.0"]),
        ("model.size=huge", ["model.size", "'debug'", "'base'"]),
        ("tokenizer.kind=bpe", ["tokenizer.kind", "wordpiece"]),
        ("train.precision=fp8", ["train.precision", "'bf16'"]),
        ("scaling.zero_stage=5", ["scaling.zero_stage", "3"]),
        ("examples.max_seq_len=1024", ["examples.max_seq_len", "model.max_seq_len"]),
        ("model.num_heads=3", ["num_heads", "divisible"]),
        ("name=has space", ["name", "has space"]),
        ("train.adapters={rank: 8}", ["train.adapters", "fine-tuning"]),
        ("train.adapters={rank: 0}", ["train.adapters.rank", "greater than or equal to 1"]),
        # DeepSpeed refuses fp16 on most CPUs, in every worker, every restart
        ("train.precision=fp16", ["train.precision=fp16", "scaling.use_gpu=true", "bf16"]),
    ],
)
def test_bad_values_name_field_value_and_allowed(override, must_contain):
    with pytest.raises(ConfigError) as e:
        load_config(PretrainJobConfig, PRETRAIN, [override])
    msg = str(e.value)
    assert "\n" not in msg
    for part in must_contain:
        assert part in msg, (part, msg)


def test_electra_reads_single_segments_and_refuses_nsp():
    """ELECTRA drops next-sentence prediction: its examples are single segments whatever the
    default says, and a config that asks for pairs is told why not."""
    electra = ROOT / "jobs" / "configs" / "pretrain" / "electra-debug.yaml"
    assert load_config(PretrainJobConfig, electra, []).examples.nsp is False
    with pytest.raises(ConfigError) as e:
        load_config(PretrainJobConfig, electra, ["examples.nsp=true"])
    assert "examples.nsp=True" in str(e.value) and "'electra'" in str(e.value)
    small = load_config(PretrainJobConfig, electra, ["model.size=small"]).model
    assert (small.embedding_width, small.hidden_size, small.num_layers) == (128, 256, 12)


def test_preset_then_yaml_then_override(tmp_path):
    f = tmp_path / "c.yaml"
    data = yaml.safe_load(PRETRAIN.read_text())
    data["model"] = {"family": "bert", "size": "mini", "num_layers": 3}
    f.write_text(yaml.safe_dump(data))
    cfg = load_config(PretrainJobConfig, f, ["model.intermediate_size=512"])
    assert cfg.model.hidden_size == 256  # from the mini preset
    assert cfg.model.num_layers == 3  # YAML beats preset
    assert cfg.model.intermediate_size == 512  # override beats both
    cfg2 = load_config(PretrainJobConfig, f, ["model.size=debug"])
    assert cfg2.model.hidden_size == 64 and cfg2.model.num_layers == 3


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(PretrainJobConfig, PRETRAIN, ["model.hidden_size"])
    with pytest.raises(ConfigError, match="not a section"):
        load_config(PretrainJobConfig, PRETRAIN, ["name.x=1"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(PretrainJobConfig, "nope.yaml")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(PretrainJobConfig, PRETRAIN, ["train.lr=0.01"])
    path = save_resolved(cfg, tmp_path)
    again = load_config(PretrainJobConfig, path)
    assert again == cfg
    assert yaml.safe_load(Path(path).read_text())["model"]["hidden_size"] == 64


def _shipped(kind: str):
    return sorted((ROOT / "jobs" / "configs" / kind).glob("*.yaml"))


@pytest.mark.parametrize("path", _shipped("pretrain"), ids=lambda p: p.name)
def test_every_shipped_pretrain_config_loads(path):
    cfg = load_config(PretrainJobConfig, path)
    assert cfg.name


@pytest.mark.parametrize("path", _shipped("tasks"), ids=lambda p: p.name)
def test_every_shipped_task_config_loads(path):
    cfg = load_config(FinetuneJobConfig, path)
    assert cfg.task.name == cfg.name == path.stem
    assert cfg.search.space  # every shipped task searches something


def test_finetune_and_serve_configs_validate():
    base = {
        "name": "t",
        "parent": "bert-sample",
        "task": {
            "name": "sst2",
            "type": "classification",
            "train": {"path": "x.tsv"},
            "dev": {"path": "y.tsv"},
        },
    }
    from lmplatform.config import validate

    cfg = validate(FinetuneJobConfig, base)
    assert cfg.task.metric == "accuracy" and cfg.search.scheduler == "asha"
    bad = {
        **base,
        "search": {"space": {"learning_rate": {"kind": "loguniform", "low": 1e-5, "high": 1e-3}}},
    }
    with pytest.raises(ConfigError, match="learning_rate"):
        validate(FinetuneJobConfig, bad)
    bad = {**base, "search": {"space": {"lr": {"kind": "loguniform", "low": 0, "high": 1e-3}}}}
    with pytest.raises(ConfigError, match="search.space"):
        validate(FinetuneJobConfig, bad)
    assert validate(ServeConfig, {}).host == "127.0.0.1"
    with pytest.raises(ConfigError, match="autoscaling"):
        validate(ServeConfig, {"autoscaling": {"min_replicas": 3, "max_replicas": 1}})
    # int8 per task, "*" for the rest; refused where it cannot apply, saying why
    q = validate(ServeConfig, {"quantize": {"*": "int8", "ner": "int8"}})
    assert q.quantize_of("sst2") == q.quantize_of("ner") == "int8"
    assert validate(ServeConfig, {"quantize": {"ner": "int8"}}).quantize_of("sst2") is None
    grouped = validate(ServeConfig, {"quantize": {"*": "int8"}, "shared_encoder_groups": [["a"]]})
    assert grouped.quantize_of("a") is None and grouped.quantize_of("b") == "int8"
    for extra, why in [
        ({"replica_gpus": 1}, "int8 runs on CPU replicas"),
        ({"compile": "inductor"}, "drop compile"),
        ({"shared_encoder_groups": [["ner", "pos"]]}, r"\['ner'\] are served in a group"),
        ({"adapter_groups": [["ner", "pos"]]}, r"\['ner'\] are served in a group"),
        ({"tasks": ["sst2"]}, r"quantize names \['ner'\], which `tasks` does not serve"),
    ]:
        with pytest.raises(ConfigError, match=why):
            validate(ServeConfig, {"quantize": {"ner": "int8"}, **extra})
    with pytest.raises(ConfigError, match="quantize"):
        validate(ServeConfig, {"quantize": {"ner": "int4"}})
    with pytest.raises(ConfigError, match=r"\['a'\] in more than one place"):
        validate(ServeConfig, {"shared_encoder_groups": [["a"]], "adapter_groups": [["a", "b"]]})


def test_job_fails_before_any_work(tmp_path):
    out = tmp_path / "runs"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "jobs" / "prepare.py"),
            "--config",
            str(PRETRAIN),
            f"output_dir={out}",
            "model.hidden_size=banana",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "model.hidden_size" in lines[0], proc.stderr
    assert not out.exists()  # nothing started: no run folder
    assert not Path(tmp_path / "ray").exists()


def test_duplicate_yaml_keys_are_an_error(tmp_path):
    f = tmp_path / "dup.yaml"
    f.write_text(PRETRAIN.read_text() + "model: {family: bert, size: mini}\n")
    with pytest.raises(ConfigError, match="'model' appears twice"):
        load_config(PretrainJobConfig, f)


@pytest.mark.parametrize(
    ("module", "baseline"),
    [
        ("lmplatform.train.loop", "import torch"),
        ("lmplatform.serving.ingress", "from ray import serve"),
        ("lmplatform.serving.config", "import pydantic"),
    ],
)
def test_the_loop_and_the_ingress_import_no_data_libraries(module, baseline):
    """Reading a config or routing a request must not pay for `datasets`, pyarrow and
    tokenizers (3 s of imports): only what the baseline (torch, Ray Serve) brings itself."""
    probe = (
        "import sys\n"
        f"{baseline}\n"
        "before = set(sys.modules)\n"
        f"import {module}\n"
        "heavy = ('datasets', 'pyarrow', 'tokenizers', 'deepspeed', 'fsspec')\n"
        "print(sorted(m for m in heavy if m in sys.modules and m not in before))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(ROOT / "platform"), "PATH": "/usr/bin:/bin"},
    )
    assert out.stdout.strip() == "[]", out.stdout


TASK = ROOT / "jobs" / "configs" / "tasks" / "sentiment-sample.yaml"


@pytest.mark.parametrize(
    "override, must_contain",
    [
        ("search.space.batch_size={kind: choice, values: [0, -3]}", ["batch_size: values[0]=0"]),
        (
            "search.space.dropout={kind: choice, values: [5]}",
            ["dropout: values[0]=5", "less than 1"],
        ),
        (
            "search.space.lr={kind: uniform, low: 5, high: 10}",
            ["lr: low=5.0", "less than or equal to 1"],
        ),
        ("search.space.epochs={kind: choice, values: [.inf]}", ["epochs: values[0]=inf", "finite"]),
        ("search.space.epochs={kind: uniform, low: 1, high: .nan}", ["search.space.epochs.high"]),
        (
            "search.space.transfer={kind: choice, values: [bogus]}",
            ["transfer: values[0]='bogus'", "'full' or 'frozen'"],
        ),
        (
            "search.space.transfer={kind: uniform, low: 0, high: 1}",
            ["transfer: kind uniform draws numbers"],
        ),
        (
            "search.space.batch_size={kind: randint, low: 8, high: 100000}",
            ["batch_size: high - 1=99999"],
        ),
        (
            "search.space.epochs={kind: randint, low: 1.5, high: 8}",
            ["epochs: randint needs whole-number low and high"],
        ),
        (
            "search.space.warmup_ratio={kind: grid, values: [0.1, -0.2]}",
            ["warmup_ratio: values[1]=-0.2"],
        ),
        (
            "search.space.layer_decay={kind: uniform, low: 0.5, high: 1.5}",
            ["layer_decay: high=1.5"],
        ),
        (
            "search.space.label_smoothing={kind: choice, values: [1.0]}",
            ["label_smoothing: values[0]=1.0"],
        ),
        ("search.points=[{lr: -1}]", ["lr: points[0]=-1"]),
        ("search.points=[{epochs: 2}]", ["points[0] sets ['epochs']"]),
        ("search.points=[{lr: 0.5}]", ["points[0]: lr=0.5 is outside its space"]),
        (
            "search={algorithm: tpe, space: {lr: {kind: uniform, low: 0.001, high: 0.01}, "
            "dropout: {kind: choice, values: [0.0, 0.1]}}, points: [{lr: 0.005}]}",
            ["points[0] leaves out ['dropout']: with algorithm=tpe a point sets all"],
        ),
        ("search.warm_start_from=earlier", ["warm_start_from needs algorithm=tpe"]),
        ("search={algorithm: tpe, scheduler: pbt}", ["algorithm=tpe works with scheduler asha"]),
        (
            "search={algorithm: tpe, space: {lr: {kind: grid, values: [0.001]}}}",
            ["make ['lr'] kind choice, not grid"],
        ),
        ("train.betas=[.nan, 2]", ["train.betas.0=nan", "finite", "train.betas.1=2"]),
        ("train.lr=.inf", ["train.lr=inf", "finite"]),
    ],
)
def test_every_invalid_search_dimension_is_one_line_naming_it(override, must_contain):
    """A search space is checked with each field's own validator when the config loads: it
    fails here, before Ray starts, not inside trials on the cluster."""
    with pytest.raises(ConfigError) as e:
        load_config(FinetuneJobConfig, TASK, [override])
    msg = str(e.value)
    assert "\n" not in msg
    for part in must_contain:
        assert part in msg, msg


def test_a_valid_space_loads_with_the_values_it_was_given():
    cfg = load_config(
        FinetuneJobConfig,
        TASK,
        [
            "search.space={lr: {kind: loguniform, low: 1e-5, high: 1e-3}, "
            "batch_size: {kind: choice, values: [16, 32]}, transfer: {kind: grid, values: [full, frozen]}, "
            "dropout: {kind: uniform, low: 0.0, high: 0.3}}"
        ],
    )
    assert cfg.search.space["batch_size"].values == [16, 32]
    assert cfg.search.space["transfer"].values == ["full", "frozen"]


def test_fp16_is_for_gpus_in_fine_tuning_too():
    with pytest.raises(ConfigError, match=r"train.precision=fp16 needs scaling.use_gpu=true"):
        load_config(FinetuneJobConfig, TASK, ["train.precision=fp16"])
    cfg = load_config(FinetuneJobConfig, TASK, ["train.precision=fp16", "scaling.use_gpu=true"])
    assert cfg.train.precision == "fp16"


@pytest.mark.parametrize(
    "overrides, budget",
    [
        # the case: 0.1 epoch of 1000 rows at batch 16 is 6 steps, one evaluation
        (["train.epochs=0.1"], "train.epochs=0.1 of 1000 rows"),
        (["train.epochs=null", "train.max_steps=7"], "train.max_steps=7"),
        (
            ["search.space.epochs={kind: choice, values: [0.1, 0.05]}"],
            "search.space.epochs=0.1 of 1000 rows",
        ),
    ],
)
def test_an_asha_grace_period_beyond_the_longest_trial_is_a_config_error(overrides, budget):
    """Ray's ASHAScheduler asserts grace_period <= max_t; the budget (and so max_t) depends on
    the training rows, so the check runs when the scheduler is built, before Tune starts, and
    names the fields and values that would work."""
    from lmplatform.tune.space import make_scheduler

    job = load_config(FinetuneJobConfig, TASK, overrides)  # grace_period: 3, eval_every: 25
    with pytest.raises(ConfigError) as e:
        make_scheduler(job, n_train=1000)
    msg = str(e.value)
    assert "\n" not in msg and "search.grace_period=3" in msg and budget in msg, msg
    assert "set search.grace_period=1" in msg and "search.scheduler=fifo" in msg, msg
    fix = msg.split("or train.eval_every=")[1].split(",")[0]
    for change in ("search.grace_period=1", f"train.eval_every={fix}"):  # each advice works
        assert make_scheduler(load_config(FinetuneJobConfig, TASK, [*overrides, change]), 1000)


def test_a_searched_null_epochs_counts_as_max_steps():
    """`epochs: null` in a choice runs train.max_steps: the longest trial is the longer of the
    two (it used to compare None with a number and fail with a TypeError)."""
    from lmplatform.tune.space import max_evaluations

    job = load_config(
        FinetuneJobConfig,
        TASK,
        ["search.space.epochs={kind: choice, values: [1, null]}", "train.max_steps=500"],
    )
    # 1 epoch of 1000 rows at batch 16 is 62 steps; max_steps 500 at eval_every 25: 20
    assert max_evaluations(job, 1000) == 20


def test_trial_parameters_are_the_searchable_fields_typed_and_filled_once():
    """`TrialParams` is the one list of searchable fields: a space may name exactly them, a
    trial gets the job's fixed values under what was drawn (other Tune keys ignored), and a
    drawn value is checked as a fixed one is; a seq2seq job's model gives dropout and label
    smoothing, a task head the field defaults."""
    from pydantic import ValidationError

    from lmplatform.tune.config import SEARCHABLE, TrialParams

    assert SEARCHABLE == tuple(TrialParams.model_fields)
    job = load_config(FinetuneJobConfig, TASK, ["train.lr=3e-5", "layer_decay=0.8"])
    hp = TrialParams.of(job, {"batch_size": 16, "dropout": 0.2, "trial_seed": 7})
    assert (hp.lr, hp.batch_size, hp.dropout, hp.layer_decay) == (3e-5, 16, 0.2, 0.8)
    assert hp.label_smoothing == TrialParams.model_fields["label_smoothing"].default
    assert TrialParams.of(job, {"batch_size": 32.0}).batch_size == 32  # a float choice
    with pytest.raises(ValidationError, match="lr"):
        TrialParams.of(job, {"lr": 2.0})
    seq2seq = load_config(
        FinetuneJobConfig, ROOT / "jobs/configs/tasks/multi30k-de-en.yaml", ["model.dropout=0.3"]
    )
    assert TrialParams.of(seq2seq).dropout == 0.3
