"""Every file format that crosses a boundary goes through its contract type.

For each format: its one writer and one reader live in ``enclave_build.contract``; no other
module spells the file's name (they import it from ``contract.names``) or runs a JSON/TOML
parser or writer next to it. The contract package imports only the standard library (and
tomli-w, lazily, for writing TOML), and the enclave runtime and the secret server never import
the builder.
"""

from __future__ import annotations

import ast
import sys

import pytest

from enclave_build.contract import names
from enclave_build.contract.measurements import Measurements
from enclave_build.contract.policy_fragment import PolicyFragment
from enclave_build.contract.secrets_config import SecretsConfig
from enclave_build.contract.server_config import ServerConfig
from enclave_build.contract.service_info import ServiceInfo

from .conftest import REPO

#: file -> (the name constant other modules use, its one writer, its one reader)
FORMATS = {
    "model-server.json": ("SERVER_CONFIG", ServerConfig.to_json, ServerConfig.load),
    "measurements.json": ("MEASUREMENTS_FILE", Measurements.to_json, Measurements.load),
    "service.json": ("SERVICE_FILE", ServiceInfo.to_json, ServiceInfo.load),
    "secrets-policy.toml": ("POLICY_FILE", PolicyFragment.to_toml, PolicyFragment.load),
    "secrets.toml": ("SECRETS_FILE", SecretsConfig.to_toml, SecretsConfig.load),
}
#: The project's source outside the contract package (tests and benchmarks may read files
#: any way they like: they check what was written).
SOURCES = ("builder", "attestation", "model_server", "plugins", "enclave_build", "examples")
CODECS = {
    ("json", "loads"),
    ("json", "load"),
    ("json", "dumps"),
    ("json", "dump"),
    ("tomllib", "loads"),
    ("tomllib", "load"),
    ("tomli_w", "dumps"),
    ("tomli_w", "dump"),
}
#: Functions that run a codec next to a contract file name for another file, and why.
ALLOWED = {
    (
        "builder/image/inspect.py",
        "extract_image",
    ): "copies measurements.json byte for byte; json writes labels.json",
}


def _modules(*roots: str):
    for root in roots:
        for path in sorted((REPO / root).rglob("*.py")):
            if "__pycache__" not in path.parts:
                yield path, ast.parse(path.read_text(encoding="utf-8"), str(path))


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        ):
            out.add(id(node.body[0].value))
    return out


def _names_a_format(value: str) -> str | None:
    """The format a string literal names as a file or path (not prose mentioning it)."""
    for name in FORMATS:
        if value == name or (value.endswith("/" + name) and " " not in value):
            return name
    return None


def test_each_format_has_one_writer_and_one_reader_in_the_contract_package():
    for name, (constant, writer, reader) in FORMATS.items():
        for function in (writer, reader):
            assert function.__module__.startswith("enclave_build.contract."), (name, function)
        value = getattr(names, constant)
        assert value == name or value.endswith("/" + name), (name, constant, value)


def test_no_module_spells_a_contract_file_name():
    """Other modules use the names of enclave_build.contract.names."""
    found = []
    for path, tree in _modules(*SOURCES):
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docs
                and _names_a_format(node.value)
            ):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}")
    assert not found, "\n".join(found)


def _codecs_next_to_formats(tree: ast.AST, where: str) -> list[str]:
    """Functions of *tree* that run a JSON/TOML parser or writer and name a contract file."""
    constants = {constant for constant, _, _ in FORMATS.values()}
    found = []
    for function in ast.walk(tree):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        codecs, formats = [], []
        for node in ast.walk(function):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and (node.func.value.id, node.func.attr) in CODECS
            ):
                codecs.append(f"{node.func.value.id}.{node.func.attr}")
            elif isinstance(node, ast.Name) and node.id in constants:
                formats.append(node.id)
            elif isinstance(node, ast.Attribute) and node.attr in constants:
                formats.append(node.attr)
            elif (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and _names_a_format(node.value)
            ):
                formats.append(node.value)
        if codecs and formats and (where, function.name) not in ALLOWED:
            found.append(
                f"{where}:{function.lineno}: {function.name}: {codecs[0]} next to {formats[0]}"
            )
    return found


def test_no_module_reads_or_writes_a_contract_format_itself():
    """A JSON/TOML parser or writer in the same function as a contract file's name is a second
    reader or writer of that format: use the contract type's instead."""
    found = []
    for path, tree in _modules(*SOURCES):
        found += _codecs_next_to_formats(tree, str(path.relative_to(REPO)))
    assert not found, "\n".join(found)


def test_the_checks_find_a_second_reader():
    """What the two checks above would report (the way service.json's reader once parsed the
    model server's configuration back out of the plan)."""
    tree = ast.parse(
        "def _server_config(plan):\n"
        "    for item in plan.files:\n"
        "        if item.dest == SERVER_CONFIG:\n"
        "            return json.loads(item.data)\n"
        "def _policy(out):\n"
        "    return tomllib.loads((out / 'secrets-policy.toml').read_text())\n"
    )
    assert _codecs_next_to_formats(tree, "x.py") == [
        "x.py:1: _server_config: json.loads next to SERVER_CONFIG",
        "x.py:5: _policy: tomllib.loads next to secrets-policy.toml",
    ]


def test_the_contract_package_imports_only_the_standard_library():
    allowed = set(sys.stdlib_module_names)
    for path, tree in _modules("contract"):
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # within the package
                    continue
                modules = [node.module or ""]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top == "tomli_w":  # writing TOML: the builder only, imported when called
                    assert node.col_offset > 0, f"{path}: tomli_w imported at the top"
                    continue
                assert top in allowed, f"{path.relative_to(REPO)}:{node.lineno}: {module}"


@pytest.mark.parametrize("package", ["attestation", "model_server", "contract"])
def test_lower_layers_never_import_the_builder(package):
    for path, tree in _modules(package):
        for node in ast.walk(tree):
            modules = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for module in modules:
                assert not module.startswith(("enclave_build.builder", "builder")), (
                    f"{path.relative_to(REPO)}:{node.lineno}: imports {module}"
                )
