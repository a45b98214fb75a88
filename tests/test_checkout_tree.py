"""Running another checkout's code (the benchmarks' ``--baseline-root``): scripts/package_tree.py
tells the namespaced layout (pyproject maps ``enclave_build.PACKAGE``) from the older one whose
packages were top-level directories, and the path and module name it gives import *that*
checkout's code, not the installed package's. Tiny fake checkouts here; the integration tests
run both benchmarks against this checkout and, where git has it, the commit before the move
under ``enclave_build``."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
#: The last commit whose packages were top-level directories (model_server, attestation, ...).
TOP_LEVEL_COMMIT = "35263d6"


def _package_tree():
    spec = importlib.util.spec_from_file_location(
        "package_tree", REPO / "scripts" / "package_tree.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["package_tree"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


MAIN = "import pathlib, sys; print(pathlib.Path(__file__).resolve())\n"


def namespaced(root: Path) -> Path:
    (root / "enclave_build").mkdir(parents=True)
    (root / "enclave_build" / "__init__.py").write_text("")
    (root / "model_server").mkdir()
    (root / "model_server" / "__init__.py").write_text("")
    (root / "model_server" / "__main__.py").write_text(MAIN)
    (root / "pyproject.toml").write_text(
        "[tool.setuptools.package-dir]\n"
        'enclave_build = "enclave_build"\n'
        '"enclave_build.model_server" = "model_server"\n'
    )
    return root


def top_level(root: Path) -> Path:
    (root / "model_server").mkdir(parents=True)
    (root / "model_server" / "__init__.py").write_text("")
    (root / "model_server" / "__main__.py").write_text(MAIN)
    (root / "pyproject.toml").write_text(
        '[tool.setuptools.packages.find]\ninclude = ["builder*", "model_server*"]\n'
    )
    return root


def run_module(tree, package: str) -> Path:
    """The file ``python -m`` runs for *package* of *tree*, as a benchmark starts it."""
    out = subprocess.run(
        [sys.executable, "-m", tree.module(package)],
        capture_output=True,
        text=True,
        cwd=tree.path,
        env={**os.environ, "PYTHONPATH": str(tree.path)},
        check=True,
    )
    return Path(out.stdout.strip())


def test_namespaced_checkout_runs_its_own_enclave_build_package(tmp_path):
    package_tree = _package_tree()
    checkout = namespaced(tmp_path / "new")
    tree = package_tree.checkout_tree(checkout, tmp_path / "tree", "model_server")
    assert (tree.layout, tree.module("model_server")) == (
        "namespaced",
        "enclave_build.model_server",
    )
    assert tree.path == tmp_path / "tree"
    # the fake checkout's module, not the installed enclave_build.model_server
    assert run_module(tree, "model_server") == (checkout / "model_server" / "__main__.py")


def test_top_level_checkout_runs_from_the_checkout_itself(tmp_path):
    package_tree = _package_tree()
    checkout = top_level(tmp_path / "old")
    tree = package_tree.checkout_tree(checkout, tmp_path / "tree", "model_server")
    assert (tree.layout, tree.module("model_server"), tree.path) == (
        "top-level",
        "model_server",
        checkout,
    )
    assert not (tmp_path / "tree").exists()  # nothing laid: the checkout is importable as it is
    assert run_module(tree, "model_server") == checkout / "model_server" / "__main__.py"


def test_this_checkout_is_namespaced():
    assert _package_tree().checkout_prefix(REPO, "attestation") == "enclave_build."


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ("empty", "no pyproject.toml"),
        ("unmapped", "package-dir] maps no enclave_build.attestation"),
        ("no package", "no attestation/__init__.py"),
        ("not toml", "not TOML"),
    ],
)
def test_neither_layout_is_refused_naming_the_checkout(tmp_path, shape, message):
    package_tree = _package_tree()
    checkout = tmp_path / "c"
    checkout.mkdir()
    if shape == "unmapped":
        namespaced(checkout / "x")
        checkout = checkout / "x"
    elif shape == "no package":
        top_level(checkout / "x")
        checkout = checkout / "x"
    elif shape == "not toml":
        (checkout / "pyproject.toml").write_text("[tool\n")
    with pytest.raises(ValueError, match=message) as raised:
        package_tree.checkout_prefix(checkout, "attestation")
    assert str(checkout) in str(raised.value)


def _top_level_checkout(tmp_path: Path) -> Path:
    """The packages of the last top-level commit, from git's objects (no worktree added)."""
    dest = tmp_path / "base"
    dest.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", TOP_LEVEL_COMMIT, "pyproject.toml"]
        + ["attestation", "model_server"],
        capture_output=True,
    )
    if archive.returncode:
        pytest.skip(f"commit {TOP_LEVEL_COMMIT} not in this clone: {archive.stderr.decode()}")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=REPO, timeout=600
    )


@pytest.mark.integration
@pytest.mark.parametrize("baseline", ["top-level", "namespaced"])
def test_secrets_benchmark_compares_with_a_baseline_checkout(tmp_path, baseline):
    root = _top_level_checkout(tmp_path) if baseline == "top-level" else REPO
    out = _bench(
        "benchmarks/secrets.py",
        *("--baseline-root", str(root), "--levels", "1,4", "--requests", "8"),
        "--client-processes",
        "1",
    )
    # the verdict depends on the machine's load; exit 1 is a regression, anything else a fault
    assert out.returncode in (0, 1), out.stderr[-3000:]
    assert f"before: {root} ({baseline} layout), server from {root}/attestation/" in out.stdout
    assert f"after: {REPO} (namespaced layout)" in out.stdout
    assert "verdict (after server): " in out.stdout
    rows = [line for line in out.stdout.splitlines() if line.lstrip().startswith(("1 |", "4 |"))]
    assert len(rows) == 2 and all(line.count(" 0 |") == 2 for line in rows), out.stdout


@pytest.mark.integration
def test_serving_benchmark_compares_with_a_top_level_checkout(tmp_path):
    root = _top_level_checkout(tmp_path)
    out = _bench(
        "benchmarks/serving.py",
        *("--baseline-root", str(root), "--seconds", "0.3", "--warmup", "0.1"),
        *("--concurrency", "1", "--protocols", "rest"),
    )
    assert out.returncode in (0, 1), out.stderr[-3000:]
    assert f"before: {root} (top-level layout): PYTHONPATH={root} python -m model_server" in (
        out.stdout
    )
    assert "after: " in out.stdout and "python -m enclave_build.model_server" in out.stdout
    table = out.stdout.split("vs after")[1]
    assert [line.split()[0] for line in table.splitlines()[2:4]] == ["rest", "rest-lean"], table
    assert "verdict: " in table
