"""The layout rules that keep Python's standard `platform` module importable."""

import subprocess
import sys

from conftest import ROOT


def test_no_platform_package_shadowing_stdlib():
    assert not (ROOT / "platform" / "__init__.py").exists()


def test_stdlib_platform_and_lmplatform_import_from_repo_root():
    code = "import platform, lmplatform; print(platform.system()); print(lmplatform.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    system, path = out.stdout.split()
    assert system == "Linux"
    assert path.endswith("platform/lmplatform/__init__.py")


def test_ci_runs_make_test():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    head = readme[:1500]
    assert "make demo" in head and "make test" in head
