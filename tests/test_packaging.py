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


def test_the_node_image_builds_what_the_tests_run_for_the_clusters_gpus():
    """docker/Dockerfile pins the torch and DeepSpeed the suite runs, checks the CUDA wheel at
    build time, and compiles DeepSpeed's ops for every GPU architecture cluster.yaml launches
    (so no fresh node JIT-compiles CPU Adam)."""
    import re
    from importlib.metadata import version

    import yaml

    docker = (ROOT / "docker" / "Dockerfile").read_text()
    makefile = (ROOT / "Makefile").read_text()
    torch_pin = re.search(r'"torch==([\d.]+)"', makefile).group(1)
    assert f'"torch=={torch_pin}" --index-url https://download.pytorch.org/whl/cu' in docker
    assert "torch.version.cuda" in docker  # the build fails when the index has no CUDA wheel
    assert f"ARG DEEPSPEED_VERSION={version('deepspeed')}" in docker
    assert "DS_BUILD_CPU_ADAM=1" in docker and "DS_BUILD_FUSED_ADAM=1" in docker
    archs = set(re.search(r'TORCH_CUDA_ARCH_LIST="([^"]+)"', docker).group(1).split(";"))
    arch_of = {"p4d": "8.0", "p5": "9.0", "g5": "8.6", "g6": "8.9"}  # A100, H100, A10G, L4
    cluster = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    for name, node in cluster["available_node_types"].items():
        family = node["node_config"]["InstanceType"].split(".")[0]
        if node["resources"].get("GPU"):
            assert arch_of[family] in archs, (name, family, archs)
    assert cluster["docker"]["image"].split("/")[0] in " ".join(cluster["initialization_commands"])


def test_every_file_of_the_package_is_in_git_and_shipped_with_a_job():
    """`registry/` in .gitignore or the runtime_env excludes matched the package's own
    `lmplatform/registry/` too: git left its __init__.py out, `ray job submit` dropped the
    whole folder, and so would the cluster launcher's rsync. The patterns are anchored at the root; this keeps them so."""
    from lmplatform.pipeline.preflight import _excluded, runtime_env_excludes

    package = sorted(
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "platform" / "lmplatform").rglob("*.py")
        if "__pycache__" not in p.parts
    )
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", *package], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    assert not ignored, f"git ignores package files: {ignored}"
    excludes = runtime_env_excludes(ROOT / "jobs" / "runtime_env.yaml")
    dropped = [f for f in package if _excluded(f, excludes)]
    assert not dropped, f"jobs/runtime_env.yaml excludes package files: {dropped}"
    assert _excluded("registry/pretrained/x/v0001/model.safetensors", excludes)
    # the cluster launcher's rsync to the nodes (rsync's patterns anchor with '/' the same way)
    import yaml

    rsync = yaml.safe_load((ROOT / "cluster.yaml").read_text())["rsync_exclude"]
    dropped = [f for f in package if _excluded(f, rsync)]
    assert not dropped, f"cluster.yaml rsync_exclude drops package files: {dropped}"
    assert _excluded("registry/pretrained/x", rsync) and _excluded(".venv/bin/python", rsync)
