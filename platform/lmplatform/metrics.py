"""Evaluation metrics: accuracy, per-class and macro precision/recall/F1, entity-level F1,
labelled semantic-role F1.

`entity_f1` reproduces `seqeval`'s default scoring (conlleval chunking: an entity is a typed
span; it counts only if type, start and end all match), so numbers are comparable with papers
and with Hugging Face's examples, without depending on seqeval at run time.

Every report is computed from `Counts`: per class (entity type, role) the true positives,
predictions and gold items. Counts of disjoint row sets add up to the counts of their union,
so a sharded evaluation sums each rank's counts (`add_counts`) and scores exactly as one rank
scoring every row would.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

Counts = dict[str, list[float]]
"""Summable statistics of one scorer: name -> numbers, added element by element across shards
(per class: [true positives, predicted, gold])."""


def add_counts(parts: Iterable[Counts]) -> Counts:
    """The counts of the union of disjoint row sets: each key's numbers summed element-wise."""
    total: Counts = {}
    for part in parts:
        for key, values in part.items():
            have = total.setdefault(key, [0] * len(values))
            if len(have) != len(values):
                raise ValueError(f"counts {key!r} differ in length: {len(have)} and {len(values)}")
            total[key] = [a + b for a, b in zip(have, values)]
    return total


def prf(tp: int, n_pred: int, n_gold: int) -> tuple[float, float, float]:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def classification_counts(
    pred: Sequence[int], gold: Sequence[int], labels: Sequence[str]
) -> Counts:
    """Per class (labels indexed by id): [true positives, predicted, gold]."""
    if len(pred) != len(gold):
        raise ValueError(f"{len(pred)} predictions for {len(gold)} labels")
    counts: Counts = {name: [0, 0, 0] for name in labels}
    for p, g in zip(pred, gold):
        counts[labels[p]][1] += 1
        counts[labels[g]][2] += 1
        counts[labels[g]][0] += p == g
    return counts


def classification_report(pred: Sequence[int], gold: Sequence[int], labels: Sequence[str]) -> dict:
    """Accuracy, macro P/R/F1 and per-class P/R/F1/support (labels indexed by id)."""
    return classification_report_of(classification_counts(pred, gold, labels), labels)


def classification_report_of(counts: Counts, labels: Sequence[str]) -> dict:
    """`classification_report` from (summed) `classification_counts`."""
    per = _per_key({name: counts.get(name, [0, 0, 0]) for name in labels})
    n = len(labels) or 1
    total = sum(counts.get(name, [0, 0, 0])[2] for name in labels)
    correct = sum(counts.get(name, [0, 0, 0])[0] for name in labels)
    return {
        "accuracy": correct / total if total else 0.0,
        "macro_precision": sum(v["precision"] for v in per.values()) / n,
        "macro_recall": sum(v["recall"] for v in per.values()) / n,
        "macro_f1": sum(v["f1"] for v in per.values()) / n,
        "per_class": per,
    }


def _per_key(counts: Counts) -> dict[str, dict]:
    out = {}
    for key in counts:
        tp, n_pred, n_gold = counts[key]
        p, r, f = prf(tp, n_pred, n_gold)
        out[key] = {"precision": p, "recall": r, "f1": f, "support": n_gold}
    return out


def micro_report(counts: Counts) -> tuple[float, float, float, dict[str, dict]]:
    """Micro P/R/F1 over every key of `counts`, and P/R/F1/support per key (sorted)."""
    tp, n_pred, n_gold = (sum(c[i] for c in counts.values()) for i in range(3))
    p, r, f = prf(tp, n_pred, n_gold)
    return p, r, f, _per_key({k: counts[k] for k in sorted(counts)})


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


def entity_counts(pred: Sequence[Sequence[str]], gold: Sequence[Sequence[str]]) -> Counts:
    """Per entity type: [entities found exactly, predicted, gold]."""
    if len(pred) != len(gold) or any(len(p) != len(g) for p, g in zip(pred, gold)):
        raise ValueError("predicted and gold tag sequences differ in shape")
    return _set_counts(set(get_entities(gold)), set(get_entities(pred)), lambda e: e[0])


def entity_report(pred: Sequence[Sequence[str]], gold: Sequence[Sequence[str]]) -> dict:
    """Micro entity P/R/F1 (the `entity_f1` metric) and the same per entity type."""
    return entity_report_of(entity_counts(pred, gold))


def entity_report_of(counts: Counts) -> dict:
    """`entity_report` from (summed) `entity_counts`."""
    p, r, f, per = micro_report(counts)
    return {"entity_precision": p, "entity_recall": r, "entity_f1": f, "per_type": per}


def _set_counts(gold: set, pred: set, key) -> Counts:
    """[matched, predicted, gold] items per `key(item)`."""
    counts: Counts = {}
    for x in gold | pred:
        c = counts.setdefault(key(x), [0, 0, 0])
        c[0] += x in gold and x in pred
        c[1] += x in pred
        c[2] += x in gold
    return counts


# --------------------------------------------------------------------------- semantic roles


def srl_counts(
    pred: Sequence[Sequence[str]],
    gold: Sequence[Sequence[str]],
    none: str = "O",
    predicate: str = "V",
) -> Counts:
    """Per role: [(predicate, head word, role) triples found, predicted, gold]. Each row of
    `pred` / `gold` is one predicate's role per word; `none` words and the predicate's own
    `predicate` label are not arguments."""
    if len(pred) != len(gold) or any(len(p) != len(g) for p, g in zip(pred, gold)):
        raise ValueError("predicted and gold role sequences differ in shape")

    def triples(rows):
        return {
            (k, i, lab)
            for k, row in enumerate(rows)
            for i, lab in enumerate(row)
            if lab not in (none, predicate)
        }

    return _set_counts(triples(gold), triples(pred), lambda t: t[2])


def srl_report(
    pred: Sequence[Sequence[str]],
    gold: Sequence[Sequence[str]],
    none: str = "O",
    predicate: str = "V",
) -> dict:
    """Labelled argument precision/recall/F1, micro over all predicates, and the same per
    role (`srl_counts` says what is counted)."""
    return srl_report_of(srl_counts(pred, gold, none, predicate))


def srl_report_of(counts: Counts) -> dict:
    """`srl_report` from (summed) `srl_counts`."""
    p, r, f, per = micro_report(counts)
    return {"argument_precision": p, "argument_recall": r, "argument_f1": f, "per_label": per}
