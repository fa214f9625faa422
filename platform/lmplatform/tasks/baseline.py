"""The classic model a user would fit instead, beside every search.

A pretrained model is only worth its minutes if it beats what one second of scikit-learn gives on
the same rows: TF-IDF (word 1-2-grams, sublinear) + a linear SVM for sentence and pair
classification, and a linear SVM over hand-made word features (the word, its affixes and shape,
its neighbours; for SRL, where it stands from the predicate) for NER and SRL. The task type says
which (`TaskType.baseline`), fits it on the search's own training rows and predicts the dev rows;
the type's own scorer scores them, so the figure is the search's metric, computed the same way.

scikit-learn is an optional extra (`pip install 'lmplatform[baseline]'`): without it the search
runs and says that it has no baseline.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass

from lmplatform.tasks.base import class_f1

INSTALL = "pip install 'lmplatform[baseline]'"


@dataclass(frozen=True)
class Baseline:
    """A fitted baseline's whole-dev scores."""

    model: str
    """What was fitted, in words ("TF-IDF 1-2-grams + linear SVM")."""
    metrics: dict[str, float]
    """The task's metrics on the whole dev set, as its scorer computes them for a model, and
    `f1/<class>` for each class."""
    per_class: dict[str, dict]
    seconds: float
    """Fit and predict."""
    train_rows: int

    def to_json(self) -> dict:
        return asdict(self)


def fit_baseline(task_type, train_rows, dev_rows, outputs, classes) -> Baseline | None:
    """The type's baseline fitted on `train_rows` and scored on `dev_rows` (None: the type has
    none, or scikit-learn is not installed; a line says which)."""
    model = task_type.baseline
    if model is None:
        return None
    try:
        import sklearn  # noqa: F401
    except ImportError:
        print(f"[baseline] skipped: scikit-learn is not installed ({INSTALL})", flush=True)
        return None
    t0 = time.time()
    try:
        predicted = task_type.baseline_predictions(train_rows, dev_rows, outputs)
    except (ValueError, MemoryError) as e:
        # an advisory figure: data it cannot fit (no word of two letters, too large for the
        # driver's memory) must not cost the search itself
        print(f"[baseline] skipped: {model} could not be fitted ({e})", flush=True)
        return None
    scorer = task_type.scorer(outputs, classes)
    scorer.add_labels(predicted, dev_rows)
    metrics, per_class = scorer.result()
    metrics.update(class_f1(per_class))  # `f1/spam` may be the task's metric, as in a search
    return Baseline(model, metrics, per_class, time.time() - t0, len(train_rows))


# ---------------------------------------------------------------------- sentences


def text_classifier(train: list[dict], labels: list[int], dev: list[dict]) -> list[int]:
    """TF-IDF of word 1-2-grams (sublinear term frequency) + a linear SVM (C=0.5): the usual
    strong linear baseline for sentence classification. A pair's second text gets its own
    vectorizer, so a word's side stays a feature."""
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.svm import LinearSVC

    if len(set(labels)) < 2:  # nothing to separate: the one class seen
        return [labels[0] if labels else 0] * len(dev)
    sides = ["text", "text_pair"] if any(r.get("text_pair") for r in train) else ["text"]
    vecs = {k: TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True) for k in sides}
    x = hstack([vecs[k].fit_transform([r.get(k) or "" for r in train]) for k in sides]).tocsr()
    clf = LinearSVC(C=0.5, dual="auto", random_state=0).fit(x, labels)
    x_dev = hstack([vecs[k].transform([r.get(k) or "" for r in dev]) for k in sides]).tocsr()
    return clf.predict(x_dev).tolist()


# ---------------------------------------------------------------------- words


def word_shape(w: str) -> str:
    """'Moscow' -> 'Xx', 'G7' -> 'Xd', '1996-08-22' -> 'd-d-d'."""
    s = re.sub(r"[A-Z]+", "X", w)
    s = re.sub(r"[a-z]+", "x", s)
    return re.sub(r"[0-9]+", "d", s)


def word_features(words: list[str], i: int) -> list[str]:
    """Features of word i: itself (as written and lower-cased), affixes, shape, capitalisation,
    position, and its neighbours two either side."""
    w = words[i]
    f = [
        f"w={w}",
        f"lw={w.lower()}",
        f"p3={w[:3].lower()}",
        f"s2={w[-2:].lower()}",
        f"s3={w[-3:].lower()}",
        f"sh={word_shape(w)}",
        f"title={w.istitle()}",
        f"first={i == 0}",
    ]
    for d in (-2, -1, 1, 2):
        j = i + d
        v = words[j] if 0 <= j < len(words) else "<s>"
        f.append(f"w{d:+d}={v.lower()}")
        if abs(d) == 1:
            f.append(f"sh{d:+d}={word_shape(v)}")
            f.append(f"w0w{d:+d}={w.lower()}|{v.lower()}")
    return f


def predicate_features(words: list[str], predicate: int) -> list[list[str]]:
    """Each word's features for one predicate: its own (`word_features`), the predicate's word,
    which side of it the word stands and how far (bucketed), and those crossed with the word."""
    pred = words[predicate].lower()
    out = []
    for i in range(len(words)):
        d = i - predicate
        side = "before" if d < 0 else "after" if d > 0 else "self"
        dist = str(abs(d)) if abs(d) <= 3 else "4-7" if abs(d) <= 7 else "8+"
        w = words[i].lower()
        out.append(
            word_features(words, i)
            + [
                f"pred={pred}",
                f"side={side}",
                f"dist={side}{dist}",
                f"w|side={w}|{side}",
                f"w|pred={w}|{pred}",
                f"side|pred={side}|{pred}",
            ]
        )
    return out


def _same(features: list[str]) -> list[str]:
    return features


def word_classifier(
    train: list[list[list[str]]], tags: list[list[str]], dev: list[list[list[str]]]
) -> list[list[str]]:
    """A linear SVM (C=0.1) over binary word features, one decision per word: `train` and
    `dev` hold, per sentence, each word's feature strings."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.svm import LinearSVC

    flat_tags = [t for sent in tags for t in sent]
    if len(set(flat_tags)) < 2:
        only = flat_tags[0] if flat_tags else "O"
        return [[only] * len(sent) for sent in dev]
    # feature strings in, binary columns out (DictVectorizer's int64 indices are refused by
    # liblinear with scipy >= 1.15; CountVectorizer's are 32-bit)
    vec = CountVectorizer(analyzer=_same, binary=True, lowercase=False)
    x = vec.fit_transform([f for sent in train for f in sent])
    clf = LinearSVC(C=0.1, dual="auto", random_state=0).fit(x, flat_tags)
    flat = clf.predict(vec.transform([f for sent in dev for f in sent])).tolist()
    out, k = [], 0
    for sent in dev:
        out.append(flat[k : k + len(sent)])
        k += len(sent)
    return out
