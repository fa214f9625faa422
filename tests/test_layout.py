"""The layout rules a newcomer relies on (STYLE.md 11): functions in the library read top to
bottom, so none is longer than a screen."""

import ast

from conftest import ROOT

LONGEST = 60
"""Lines from `def` to the function's last line, nested functions counted in the outer one."""


def test_no_library_function_is_longer_than_60_lines():
    long = []
    for path in sorted((ROOT / "platform" / "lmplatform").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > LONGEST:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines})")
    assert not long, "split into named pieces:\n" + "\n".join(long)


# the floors of docs/architecture.md, lowest first: a module imports its own floor and below
FLOORS = [
    {"__init__", "config", "storage", "runtime", "console", "metrics", "plots", "tracking"}
    | {"tokenization", "jobconfig", "registry", "data"},
    {"models"},
    # hub turns a transformers checkpoint into our models, adapters a registry version into one
    {"tasks", "train", "registry/hub", "registry/adapters"},
    {"pretraining", "tune", "serving"},
    {"pipeline"},
    {"cli"},
]


def _floor(name: str) -> int:
    return next(i for i, names in enumerate(FLOORS) if name in names)


def _imported_packages(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, lmplatform sub-package or module) of every import, inside functions too."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lmplatform"):
            parts = node.module.split(".")[1:]
            found += [(node.lineno, p) for p in parts[:1] or [a.name for a in node.names]]
            if parts[:2] in (["registry", "hub"], ["registry", "adapters"]):
                found[-1] = (node.lineno, "/".join(parts[:2]))
        elif isinstance(node, ast.Import):
            found += [
                (node.lineno, a.name.split(".")[1])
                for a in node.names
                if a.name.startswith("lmplatform.")
            ]
    return found


def test_no_module_imports_a_floor_above_its_own():
    """Stages build on models, models on the ground floor, never the other way round: a module
    that needs something from above means that something lives on the wrong floor."""
    package = ROOT / "platform" / "lmplatform"
    upward = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).with_suffix("").as_posix()
        mine = _floor(rel if rel in ("registry/hub", "registry/adapters") else rel.split("/")[0])
        for line, name in _imported_packages(ast.parse(path.read_text())):
            if name in {n for f in FLOORS for n in f} and _floor(name) > mine:
                upward.append(f"{rel}.py:{line} imports lmplatform.{name}")
    assert not upward, "imports from a floor above:\n" + "\n".join(upward)
