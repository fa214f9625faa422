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
