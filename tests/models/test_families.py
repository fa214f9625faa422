"""A family is its own modules plus one row of models/families.py: nothing else asks which
family it has, and every row says everything (or why not)."""

from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

import pytest

from lmplatform.models import ModelConfig
from lmplatform.models.families import FAMILIES, objectives

PACKAGE = Path(__file__).resolve().parents[2] / "platform" / "lmplatform"
# a family's own folder (models/<family>/), and the table that names them
OWN = {
    p.relative_to(PACKAGE).as_posix()
    for family in FAMILIES
    for p in (PACKAGE / "models" / family).glob("*.py")
} | {"models/families.py"}
NAMES = (
    set(FAMILIES)
    | {o.name for o in objectives().values()}
    | {"seq2seq"}
    | {f.hf.model_type for f in FAMILIES.values() if f.hf is not None}
)
CLASSES = {cls.__name__ for f in FAMILIES.values() for cls in (f.config, f.pretraining, f.encoder)}


def _strings(node: ast.AST) -> set[str]:
    """The string constants a comparison operand is or holds (a tuple, list or set of them)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return {s for e in node.elts for s in _strings(e)}
    return set()


def _named(node: ast.AST) -> set[str]:
    if isinstance(node, ast.Name):
        return {node.id}
    if isinstance(node, ast.Attribute):
        return {node.attr}
    if isinstance(node, ast.Tuple):
        return {n for e in node.elts for n in _named(e)}
    return set()


def _branches(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            hits = set().union(*(_strings(x) for x in (node.left, *node.comparators))) & NAMES
            if hits:
                found.append(f"line {node.lineno}: compares with {sorted(hits)}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("isinstance", "issubclass")
            and len(node.args) == 2
        ):
            hits = _named(node.args[1]) & CLASSES
            if hits:
                found.append(f"line {node.lineno}: {node.func.id} against {sorted(hits)}")
        elif isinstance(node, ast.Match):
            found.append(f"line {node.lineno}: a match statement (check it by hand)")
    return found


def test_nothing_outside_a_family_branches_on_which_family_it_is():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel in OWN:
            continue
        found = _branches(ast.parse(path.read_text(), filename=str(path)))
        if found:
            offenders[rel] = found
    assert not offenders, (
        "branches on a family outside its own modules: read a field of its row in "
        f"models/families.py instead: {offenders}"
    )


def test_the_scan_catches_what_it_looks_for():
    code = (
        'if cfg.family == "bert": pass\n'
        'if objective in ("causal", "x"): pass\n'
        "if isinstance(m, (BiLM, nn.Module)): pass\n"
        "if isinstance(m, families.GPT): pass\n"
        'if layout == "pooled": pass\n'
    )
    assert len(_branches(ast.parse(code))) == 4


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_row_is_complete(name):
    """Every field is given; a None carries its reason in `why_not`, and only a None does."""
    row = FAMILIES[name]
    assert row.name == name
    fields = {f.name for f in dataclasses.fields(row)}
    missing = {f for f in fields if getattr(row, f) is None}
    assert set(row.why_not) == missing, f"{name}: None fields and reasons differ"
    assert all(isinstance(r, str) and r.strip() for r in row.why_not.values())
    assert row.config.model_fields["family"].default == name
    if row.objective is not None:
        assert row.objective.metrics and row.objective.metrics[0] == "eval_loss"
    if row.hf is not None and row.hf.task_arch is not None:
        assert row.hf.task_state is not None and row.hf.encoder_config is not None
    if row.warm_start is not None:
        assert row.warm_start.parts


def test_the_table_and_the_model_config_agree():
    union = typing.get_args(typing.get_args(ModelConfig)[0])
    assert set(union) == {f.config for f in FAMILIES.values()}


def test_what_summarizes_a_pretraining_run():
    assert FAMILIES["bert"].objective.metrics == ("eval_loss", "mlm_acc", "nsp_acc")
    assert FAMILIES["gpt"].objective.metrics == ("eval_loss", "ppl")
    assert FAMILIES["gpt"].objective is FAMILIES["lstm"].objective
