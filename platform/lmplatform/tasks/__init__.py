"""Downstream task types: one module each, one table that finetune, serving and the API use.

A new task type is a module with a `TaskType` subclass (see base.py for what it provides) and
one entry in `TASK_TYPES`; nothing else branches on task names.
"""

from __future__ import annotations

from lmplatform.tasks.base import InputError, Item, TaskType
from lmplatform.tasks.classification import CLASSIFICATION, PAIR_CLASSIFICATION
from lmplatform.tasks.seq2seq import SEQ2SEQ
from lmplatform.tasks.srl import SRL
from lmplatform.tasks.token_classification import TOKEN_CLASSIFICATION

TASK_TYPES: dict[str, TaskType] = {
    t.name: t for t in (CLASSIFICATION, PAIR_CLASSIFICATION, TOKEN_CLASSIFICATION, SRL, SEQ2SEQ)
}


def task_type(name: str) -> TaskType:
    try:
        return TASK_TYPES[name]
    except KeyError:
        raise ValueError(f"unknown task type {name!r} (known: {', '.join(TASK_TYPES)})") from None


__all__ = ["TASK_TYPES", "InputError", "Item", "TaskType", "task_type"]
