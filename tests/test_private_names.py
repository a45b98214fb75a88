"""Private names stay private: no module of the distribution, test or benchmark imports
another module's underscore names, and no test replaces one (tests give the code a root, a
clock or a factory through its parameters instead). Read from the source with ``ast``."""

from __future__ import annotations

import ast
from pathlib import Path

from .conftest import REPO
from .test_import_graph import PACKAGE_DIRS

TESTS = REPO / "tests"


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _python_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def private_imports(path: Path, only: str | None = None) -> list[str]:
    """``from X import _name`` statements of *path* (aliases of whole modules are fine); with
    *only*, those of modules under that package."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            if only is not None and not (node.module or "").startswith(only):
                continue
            for alias in node.names:
                if _private(alias.name):
                    found.append(f"{_shown(path)}:{node.lineno}: imports {alias.name}")
    return found


def private_patches(path: Path) -> list[str]:
    """``monkeypatch.setattr(obj, "_name", ...)`` and ``mock.patch("a.b._name")`` /
    ``patch.object(obj, "_name")`` calls of *path*."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        call = ast.unparse(node.func)
        strings: list[str] = [
            a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)
        ]
        if not call.endswith(("setattr", "delattr", "patch", "patch.object")) or not strings:
            continue
        name = strings[0].rpartition(".")[2]  # setattr(obj, "_name"), or ("pkg.mod._name")
        if _private(name):
            found.append(f"{_shown(path)}:{node.lineno}: {call}(..., {name!r})")
    return found


def test_no_module_imports_another_modules_private_names():
    problems = []
    for directory in PACKAGE_DIRS.values():
        for path in _python_files(REPO / directory):
            problems += private_imports(path)
    assert problems == []


def test_tests_and_benchmarks_import_no_private_names_of_enclave_build():
    problems = []
    for root in (TESTS, REPO / "benchmarks"):
        for path in _python_files(root):
            problems += private_imports(path, only="enclave_build")
    assert problems == []


def test_no_test_patches_a_private_name():
    problems = []
    for path in _python_files(TESTS):
        problems += private_patches(path)
    assert problems == []


def test_the_checks_see_what_they_look_for(tmp_path):
    """Both checks find the forms they refuse (else the two tests above could never fail)."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from enclave_build.builder.build import _exchange, make_plan\n"
        "from enclave_build.model_server import keys as _keys\n"
        "def test(monkeypatch):\n"
        "    monkeypatch.setattr(build, '_exchange', lambda a, b: False)\n"
        "    monkeypatch.setattr(os, 'rename', None)\n"
        "    monkeypatch.setattr('enclave_build.builder.build._exchange', None)\n"
        "    mock.patch.object(Backend, '_it')\n"
    )
    imports, patches = private_imports(sample), private_patches(sample)
    assert [line.rpartition(": ")[2] for line in imports] == ["imports _exchange"]
    assert [line.split(": ", 1)[1] for line in patches] == [
        "monkeypatch.setattr(..., '_exchange')",
        "monkeypatch.setattr(..., '_exchange')",
        "mock.patch.object(..., '_it')",
    ]
