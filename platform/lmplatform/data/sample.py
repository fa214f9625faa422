"""The embedded sample: a small corpus and three labelled sets that the project writes itself.

Everything is generated from templates and invented names with a fixed seed, so the files are
identical on every machine (a cluster node that needs them regenerates them locally) and no
third-party text is copied. The sample is sized so that a demo model visibly learns in minutes
on a laptop: the corpus shares its vocabulary and facts with the labelled sets, so pretraining
helps the downstream tasks.

Paths written as `sample://<relative path>` in configs resolve to this sample.
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

from lmplatform.config import atomic_write_text

VERSION = "v1"

_SYL = [
    "ka",
    "lo",
    "ri",
    "ven",
    "tor",
    "mi",
    "sa",
    "dun",
    "bel",
    "or",
    "te",
    "nas",
    "fi",
    "gar",
    "ul",
    "ze",
    "pra",
    "mon",
    "ly",
    "esh",
]
_TOWN_END = ["ford", "holm", "wick", "stead", "mere", "burg", "vale", "port"]
_ORG_END = ["Works", "Group", "Labs", "Union", "Bank", "Motors", "Press", "Systems"]
_MISC = [
    "Tovarian",
    "Melish",
    "Orkadi",
    "Sunwake Festival",
    "Brightwater Cup",
    "Kelvish",
    "Amberline Prize",
    "Doran",
]

_TOPICS = {
    "World": [
        "minister",
        "border",
        "treaty",
        "election",
        "parliament",
        "embassy",
        "protest",
        "refugees",
        "summit",
        "ceasefire",
    ],
    "Sports": [
        "match",
        "goal",
        "coach",
        "season",
        "striker",
        "league",
        "tournament",
        "champion",
        "stadium",
        "referee",
    ],
    "Business": [
        "shares",
        "profit",
        "market",
        "merger",
        "investors",
        "revenue",
        "bank",
        "prices",
        "quarter",
        "exports",
    ],
    "Sci/Tech": [
        "software",
        "satellite",
        "researchers",
        "chip",
        "network",
        "laboratory",
        "telescope",
        "battery",
        "robot",
        "algorithm",
    ],
}
_TOPIC_VERBS = [
    "announced",
    "reported",
    "discussed",
    "criticised",
    "welcomed",
    "questioned",
    "expected",
    "reviewed",
]
_TOPIC_FRAMES = [
    "{org} {verb} new {w1} figures on {day} , and the {w2} drew wide attention .",
    "in {town} , the {w1} was {verb} after the {w2} ended late on {day} .",
    "{per} said the {w1} would shape the {w2} for months to come .",
    "officials {verb} the {w1} while the {w2} continued in {town} .",
    "the {w1} and the {w2} dominated talk in {town} this week .",
]
_POS = [
    "wonderful",
    "delightful",
    "moving",
    "brilliant",
    "charming",
    "gripping",
    "warm",
    "clever",
    "beautiful",
    "joyful",
]
_NEG = [
    "dull",
    "tedious",
    "clumsy",
    "awful",
    "lifeless",
    "boring",
    "messy",
    "bland",
    "painful",
    "forgettable",
]
_THINGS = [
    "film",
    "story",
    "acting",
    "script",
    "ending",
    "soundtrack",
    "cast",
    "direction",
    "dialogue",
    "pacing",
]
_DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]


def _name(rng: random.Random, parts: int) -> str:
    return "".join(rng.choice(_SYL) for _ in range(parts)).capitalize()


class _World:
    """A fixed cast of invented people, towns and organisations shared by every file."""

    def __init__(self, rng: random.Random):
        self.people = [f"{_name(rng, 2)} {_name(rng, 3)}" for _ in range(120)]
        self.towns = [_name(rng, 2) + rng.choice(_TOWN_END) for _ in range(60)]
        self.orgs = [f"{_name(rng, 2)} {rng.choice(_ORG_END)}" for _ in range(50)]
        self.rng = rng

    def pick(self, kind: str) -> str:
        return self.rng.choice(getattr(self, kind))


def _topic_sentence(w: _World, topic: str) -> str:
    r = w.rng
    w1, w2 = r.sample(_TOPICS[topic], 2)
    frame = r.choice(_TOPIC_FRAMES)
    return frame.format(
        org=w.pick("orgs"),
        verb=r.choice(_TOPIC_VERBS),
        w1=w1,
        w2=w2,
        day=r.choice(_DAYS),
        town=w.pick("towns"),
        per=w.pick("people"),
    )


def _review(w: _World) -> tuple[str, int]:
    r = w.rng
    label = r.randint(0, 1)
    main, other = (_POS, _NEG) if label else (_NEG, _POS)
    thing, thing2 = r.sample(_THINGS, 2)
    forms = [
        f"the {thing} is {r.choice(main)} and {r.choice(main)} .",
        f"a {r.choice(main)} {thing} , even if the {thing2} is {r.choice(other)} .",
        f"although the {thing2} feels {r.choice(other)} , the {thing} is {r.choice(main)} overall .",
        f"{r.choice(main)} from start to finish , with a {r.choice(main)} {thing} .",
        f"i found the {thing} {r.choice(main)} , and the {thing2} was {r.choice(main)} too .",
        f"the {thing} by {w.pick('people')} is simply {r.choice(main)} .",
    ]
    return r.choice(forms), label


def _ner_sentence(w: _World) -> list[tuple[str, str]]:
    r = w.rng

    def ent(text: str, kind: str) -> list[tuple[str, str]]:
        words = text.split()
        return [(words[0], f"B-{kind}")] + [(x, f"I-{kind}") for x in words[1:]]

    def plain(text: str) -> list[tuple[str, str]]:
        return [(x, "O") for x in text.split()]

    frames = [
        lambda: (
            ent(w.pick("people"), "PER")
            + plain("joined")
            + ent(w.pick("orgs"), "ORG")
            + plain("in")
            + ent(w.pick("towns"), "LOC")
            + plain(".")
        ),
        lambda: (
            ent(w.pick("orgs"), "ORG")
            + plain("opened an office in")
            + ent(w.pick("towns"), "LOC")
            + plain("on " + r.choice(_DAYS) + " .")
        ),
        lambda: (
            plain("the")
            + ent(r.choice(_MISC), "MISC")
            + plain("was won by")
            + ent(w.pick("people"), "PER")
            + plain(".")
        ),
        lambda: (
            ent(w.pick("people"), "PER")
            + plain("travelled from")
            + ent(w.pick("towns"), "LOC")
            + plain("to")
            + ent(w.pick("towns"), "LOC")
            + plain(".")
        ),
        lambda: (
            plain("according to")
            + ent(w.pick("people"), "PER")
            + plain(", the")
            + ent(r.choice(_MISC), "MISC")
            + plain("team met")
            + ent(w.pick("orgs"), "ORG")
            + plain(".")
        ),
        lambda: (
            plain("shares in")
            + ent(w.pick("orgs"), "ORG")
            + plain("rose after")
            + ent(w.pick("people"), "PER")
            + plain("spoke .")
        ),
    ]
    return r.choice(frames)()


def _document(w: _World) -> str:
    r = w.rng
    town, person, org = w.pick("towns"), w.pick("people"), w.pick("orgs")
    topic = r.choice(list(_TOPICS))
    sents = [
        f"{town} is a town near the river {_name(r, 2)} , known for its {r.choice(['markets', 'bridges', 'orchards', 'harbour', 'mills'])} .",
        f"{person} was born in {town} and later worked for {org} .",
    ]
    for _ in range(r.randint(3, 8)):
        kind = r.random()
        if kind < 0.5:
            sents.append(_topic_sentence(w, topic))
        elif kind < 0.7:
            sents.append(_review(w)[0])
        else:
            sents.append(" ".join(word for word, _ in _ner_sentence(w)))
    sents.append(f"today {town} has about {r.randint(2, 90)} thousand people .")
    # two paragraphs per document, so document-level structure exists for NSP
    cut = len(sents) // 2
    return " ".join(sents[:cut]) + "\n" + " ".join(sents[cut:])


def _files(seed: int = 0) -> dict[str, str]:
    rng = random.Random(seed)
    w = _World(rng)
    out: dict[str, str] = {}
    out["corpus/train.txt"] = "\n\n".join(_document(w) for _ in range(1500)) + "\n"
    for split, n in (("train", 2000), ("dev", 400)):
        rows = [_review(w) for _ in range(n)]
        out[f"sentiment/{split}.tsv"] = "sentence\tlabel\n" + "".join(
            f"{t}\t{y}\n" for t, y in rows
        )
        trows = []
        for _ in range(n):
            topic = rng.choice(list(_TOPICS))
            trows.append((" ".join(_topic_sentence(w, topic) for _ in range(2)), topic))
        out[f"topics/{split}.tsv"] = "".join(f"{t}\t{y}\n" for t, y in trows)
    for split, n in (("train", 1500), ("dev", 300)):
        sents = [_ner_sentence(w) for _ in range(n)]
        out[f"ner/{split}.txt"] = "".join(
            "".join(f"{wd} {tag}\n" for wd, tag in s) + "\n" for s in sents
        )
    return out


def sample_root() -> Path:
    base = os.environ.get("LMPLATFORM_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "lmplatform"
    )
    return Path(base) / f"sample-{VERSION}"


def ensure_sample(root: str | os.PathLike | None = None) -> Path:
    """Write the sample under `root` (default: the cache) unless an identical copy is there."""
    root = Path(root) if root is not None else sample_root()
    files = _files()
    digest = hashlib.sha256("".join(k + v for k, v in sorted(files.items())).encode()).hexdigest()
    stamp = root / ".complete"
    if stamp.is_file() and stamp.read_text() == digest:
        return root
    for rel, text in files.items():
        atomic_write_text(root / rel, text)
    atomic_write_text(stamp, digest)
    return root


def resolve_sample_uri(path: str | None) -> str | None:
    """Map `sample://x/y` to the local sample file, writing the sample first if needed."""
    if path is None or not path.startswith("sample://"):
        return path
    return str(ensure_sample() / path[len("sample://") :])
