"""Run mypy on enclave-build with the settings of pyproject.toml's [tool.mypy].

The sources live in directories named as the user asked (builder/, attestation/, ...), and
setuptools maps them into the one import namespace ``enclave_build`` (pyproject's
[tool.setuptools.package-dir]). mypy cannot follow that mapping (it reads files, it does not run
the editable install's import hook), so this script lays a tree of symbolic links shaped like
the installed package (.mypy_cache/src/enclave_build/builder -> builder/, ...), runs mypy
with [tool.mypy]'s settings (which check that tree as the package ``enclave_build``, plus the
tests and the benchmarks), and prints mypy's findings with the paths of the files you edit.

    python scripts/typecheck.py            # what scripts/test.sh runs
    python scripts/typecheck.py -- --strict-equality    # extra arguments go to mypy
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from package_tree import link_tree, package_dirs  # next to this script (sys.path[0])

REPO = Path(__file__).resolve().parent.parent


def real_path_prefixes(pyproject: Path, root: Path) -> list[tuple[str, str]]:
    """(path in the link tree, path in the repository) pairs, longest first, for mypy's output."""
    pairs = []
    for name, source in package_dirs(pyproject).items():
        tree = os.path.relpath(root / name.replace(".", "/"), pyproject.parent)
        pairs.append((tree + "/", os.path.relpath(source, pyproject.parent) + "/"))
    return sorted(pairs, key=lambda pair: -len(pair[0]))


def main(argv: list[str]) -> int:
    from mypy import api

    pyproject = REPO / "pyproject.toml"
    root = link_tree(pyproject, REPO / ".mypy_cache" / "src")
    prefixes = real_path_prefixes(pyproject, root)
    extra = argv[1:] if argv[:1] == ["--"] else argv
    os.chdir(REPO)
    stdout, stderr, status = api.run(extra)
    for line in stdout.splitlines():
        for tree, real in prefixes:
            if line.startswith(tree):
                line = real + line[len(tree) :]
                break
        print(line)
    if stderr:
        print(stderr, end="", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
