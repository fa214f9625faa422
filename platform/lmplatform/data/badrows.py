"""Bad-row accounting: unusable rows counted by reason, with the first few locations, and the
run refused above `max_bad_fraction`."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import datasets

from lmplatform.data.sources import DataError


@dataclass
class BadRows:
    """Counts of unusable rows by reason, with the first few locations for the user to look at."""

    source: str
    total: int = 0
    bad: int = 0
    reasons: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    @property
    def fraction(self) -> float:
        return self.bad / self.total if self.total else 0.0

    def summary(self) -> str:
        if not self.bad:
            return f"{self.source}: {self.total} rows, none bad"
        by = ", ".join(f"{r}: {c}" for r, c in self.reasons.most_common())
        first = "; ".join(self.examples[:5])
        return f"{self.source}: {self.bad} of {self.total} rows bad ({self.fraction:.2%}) [{by}]; first: {first}"

    def check(self, max_fraction: float) -> None:
        if self.total == 0:
            raise DataError(f"{self.source}: no rows found")
        if self.fraction > max_fraction:
            raise DataError(
                f"too many bad rows (limit {max_fraction:.2%}, set max_bad_fraction to allow more): "
                + self.summary()
            )


_REASONS = (
    ("not UTF-8", "not UTF-8"),
    ("line ", "malformed line"),
    ("a quoted field", "quoted field over several lines"),
    ("swallowed by", "quoted field over several lines"),
    ("tokens and tags differ", "tokens and tags differ in length"),
    ("tokens and tags must", "tokens or tags not word lists"),
    ("expected ", "wrong number of columns"),
    ("invalid JSON", "invalid JSON"),
    ("not a JSON", "invalid JSON"),
    ("missing column", "missing column"),
    ("missing label", "missing label"),
    ("bad label", "bad label"),
    ("text is not", "text not a string"),
    ("text pair is not", "text not a string"),
    ("unknown label", "unknown label"),
    ("empty source", "empty source side"),
    ("empty target", "empty target side"),
    ("empty", "empty text"),
    ("length ratio outlier", "length ratio outlier"),
    ("argument column", "malformed predicate"),
)


def _reason(err: str) -> str:
    if "not UTF-8" in err:  # also inside a sentence ("line 12: not UTF-8 …")
        return "not UTF-8"
    return next((name for prefix, name in _REASONS if err.startswith(prefix)), "bad row")


def report_bad_rows(ds: datasets.Dataset, source: str, total: int | None = None) -> BadRows:
    """Bad-row report of a dataset with `_where` and `_error` columns (`total`: rows read,
    when a dataset row can stand for several)."""
    rep = BadRows(source=source, total=len(ds) if total is None else total)
    bad = ds.filter(lambda e: e is not None, input_columns="_error")
    for where, err in zip(bad["_where"], bad["_error"]):
        rep.bad += 1
        rep.reasons[_reason(err)] += 1
        # the lines a runaway quote swallowed are counted; the row that opened it is shown
        if len(rep.examples) < 20 and not err.startswith("swallowed by"):
            rep.examples.append(f"{where}: {err}")
    return rep
