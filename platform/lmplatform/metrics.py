"""Evaluation metrics: accuracy, per-class and macro precision/recall/F1, entity-level F1,
labelled semantic-role F1.

`entity_f1` reproduces `seqeval`'s default scoring (conlleval chunking: an entity is a typed
span; it counts only if type, start and end all match), so numbers are comparable with papers
and with Hugging Face's examples, without depending on seqeval at run time.
"""

from __future__ import annotations

from collections.abc import Sequence


def accuracy(pred: Sequence[int], gold: Sequence[int]) -> float:
    if len(pred) != len(gold):
        raise ValueError(f"{len(pred)} predictions for {len(gold)} labels")
    return sum(p == g for p, g in zip(pred, gold)) / len(gold) if gold else 0.0


def prf(tp: int, n_pred: int, n_gold: int) -> tuple[float, float, float]:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def classification_report(pred: Sequence[int], gold: Sequence[int], labels: Sequence[str]) -> dict:
    """Accuracy, macro P/R/F1 and per-class P/R/F1/support (labels indexed by id)."""
    per: dict[str, dict] = {}
    for i, name in enumerate(labels):
        tp = sum(p == i and g == i for p, g in zip(pred, gold))
        n_pred = sum(p == i for p in pred)
        n_gold = sum(g == i for g in gold)
        p, r, f = prf(tp, n_pred, n_gold)
        per[name] = {"precision": p, "recall": r, "f1": f, "support": n_gold}
    n = len(labels) or 1
    return {
        "accuracy": accuracy(pred, gold),
        "macro_precision": sum(v["precision"] for v in per.values()) / n,
        "macro_recall": sum(v["recall"] for v in per.values()) / n,
        "macro_f1": sum(v["f1"] for v in per.values()) / n,
        "per_class": per,
    }


# --------------------------------------------------------------------------- entities


def _split(chunk: str) -> tuple[str, str]:
    tag = chunk[0]
    type_ = chunk[1:].split("-", maxsplit=1)[-1] or "_"
    return tag, type_


def _end_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev_tag not in ("O", ".") and prev_type != type_


def _start_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    if tag in ("B", "S"):
        return True
    if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag not in ("O", ".") and prev_type != type_


def get_entities(tags: Sequence[str] | Sequence[Sequence[str]]) -> list[tuple[str, int, int]]:
    """Typed spans (type, start, end inclusive) from IOB2/IOBES tags; sentences are joined by 'O'.

    An I- tag after O (or after another type) opens an entity, as conlleval and seqeval do.
    """
    if tags and not isinstance(tags[0], str):
        tags = [t for sent in tags for t in list(sent) + ["O"]]
    prev_tag, prev_type, begin = "O", "", 0
    chunks = []
    for i, chunk in enumerate(list(tags) + ["O"]):
        tag, type_ = _split(chunk)
        if _end_of_chunk(prev_tag, tag, prev_type, type_):
            chunks.append((prev_type, begin, i - 1))
        if _start_of_chunk(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return chunks


def entity_report(pred: Sequence[Sequence[str]], gold: Sequence[Sequence[str]]) -> dict:
    """Micro entity P/R/F1 (the `entity_f1` metric) and the same per entity type."""
    if len(pred) != len(gold) or any(len(p) != len(g) for p, g in zip(pred, gold)):
        raise ValueError("predicted and gold tag sequences differ in shape")
    p, r, f, per = _set_scores(set(get_entities(gold)), set(get_entities(pred)), lambda e: e[0])
    return {"entity_precision": p, "entity_recall": r, "entity_f1": f, "per_type": per}


def _set_scores(gold: set, pred: set, key) -> tuple[float, float, float, dict]:
    """Micro P/R/F1 of predicted items against gold ones, and the same per `key(item)`."""
    p, r, f = prf(len(gold & pred), len(pred), len(gold))
    per = {}
    for k in sorted({key(x) for x in gold | pred}):
        g, q = {x for x in gold if key(x) == k}, {x for x in pred if key(x) == k}
        pp, rr, ff = prf(len(g & q), len(q), len(g))
        per[k] = {"precision": pp, "recall": rr, "f1": ff, "support": len(g)}
    return p, r, f, per


def entity_f1(pred: Sequence[Sequence[str]], gold: Sequence[Sequence[str]]) -> float:
    return entity_report(pred, gold)["entity_f1"]


# --------------------------------------------------------------------------- semantic roles


def srl_report(
    pred: Sequence[Sequence[str]],
    gold: Sequence[Sequence[str]],
    none: str = "O",
    predicate: str = "V",
) -> dict:
    """Labelled argument precision/recall/F1 over (predicate, head word, role) triples, micro
    over all predicates, and the same per role. Each row of `pred` / `gold` is one predicate's
    role per word; `none` words and the predicate's own `predicate` label are not arguments."""
    if len(pred) != len(gold) or any(len(p) != len(g) for p, g in zip(pred, gold)):
        raise ValueError("predicted and gold role sequences differ in shape")

    def triples(rows):
        return {
            (k, i, lab)
            for k, row in enumerate(rows)
            for i, lab in enumerate(row)
            if lab not in (none, predicate)
        }

    p, r, f, per = _set_scores(triples(gold), triples(pred), lambda t: t[2])
    return {"argument_precision": p, "argument_recall": r, "argument_f1": f, "per_label": per}
