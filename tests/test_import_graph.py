"""The import graph of ``enclave_build``, read from the source with ``ast`` (nothing is
imported): no cycles, and no module imports a module of a higher layer.

The layers, lowest first (a module may import its own layer and the ones below it)::

    0  contract        enclave_build.contract: the files that cross a boundary (model-server.json,
                       measurements.json, service.json, secrets-policy.toml, secrets.toml),
                       the schema engine, sizes, enclave identities, names
    1  foundation      enclave_build (the version)
    2  attestation     enclave_build.attestation: RA-TLS, quotes, policy, the secret server
    3  model server    enclave_build.model_server: the KServe v2 server in the enclave (uses
                       attestation to fetch its keys); enclave_build.client: clients verifying
                       an enclave's endpoint before sending to it
    4  builder core    errors, spec and its sections (server_trust, deploy), plan,
                       plugin_types, rootfs, hashing, elf, python_closure, the Gramine
                       libraries (measure, sigstruct, sign, signer, protected files, ...),
                       image (reading, assembling, verifying images), secrets_config, caches
    5  plugin API      hookspecs, planning, python_server, the plugin registry, and the stable
                       facade enclave_build.plugin (plus the deprecated plugin_api alias)
    6  backends and    builder.gramine.backend/plugin, builder.occlum, enclave_build.plugins
       plugins         (tfserving, tflite, openvino, secret-server)
    7  build           build (spec -> plan -> artifacts -> image -> outputs), leak_guard,
                       model_check (models against their framework, through the plugins)
    8  around builds   k8s (generates deployments from build outputs), run (simulation), init,
                       doctor, standin, dev (build if stale, secret server, run, requests),
                       verify_build (rebuild what a provenance describes)
    9  cli             enclave_build.builder.cli, enclave_build.__main__

Rules besides the layers:

* imports inside ``if TYPE_CHECKING:`` are not counted (they never run);
* ``from package import name`` counts as importing ``package.name`` when that is a module;
* plugins (``enclave_build.plugins``, the libOS backends, the third-party test plugin and the
  onnxruntime example) reach the plugin API only through ``enclave_build.plugin``;
* ``enclave_build.contract`` imports nothing of the project but its own modules: it ships into
  every image that runs enclave-build's code;
* ``enclave_build.plugin`` holds re-exports only: no function or class of its own;
* the stand-in base (``builder.standin``) is a user command's writer, not part of the build:
  only the commands that write one (``base standin``, ``init --base standin``) import it, and
  nothing else reaches it through them; the rest tells a stand-in by its marker
  (``contract.standin_base``).
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

from .conftest import REPO

PACKAGE_DIRS = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
    "package-dir"
]

#: (module or package prefix, layer); the longest matching prefix wins.
LAYERS: dict[str, int] = {
    "enclave_build": 1,
    "enclave_build.contract": 0,
    "enclave_build.attestation": 2,
    "enclave_build.client": 3,
    "enclave_build.model_server": 3,
    "enclave_build.base_images": 4,
    "enclave_build.builder": 4,
    "enclave_build.builder.hookspecs": 5,
    "enclave_build.builder.planning": 5,
    "enclave_build.builder.python_server": 5,
    "enclave_build.builder.plugins": 5,
    "enclave_build.builder.plugin_api": 5,
    "enclave_build.plugin": 5,
    "enclave_build.builder.gramine.backend": 6,
    "enclave_build.builder.gramine.plugin": 6,
    "enclave_build.builder.occlum": 6,
    "enclave_build.plugins": 6,
    "enclave_build.builder.build": 7,
    "enclave_build.builder.leak_guard": 7,
    "enclave_build.builder.model_check": 7,
    "enclave_build.builder.k8s": 8,
    "enclave_build.builder.run": 8,
    "enclave_build.builder.init": 8,
    "enclave_build.builder.doctor": 8,
    "enclave_build.builder.standin": 8,
    "enclave_build.builder.dev": 8,
    "enclave_build.builder.verify_build": 8,
    "enclave_build.builder.cli": 9,
    "enclave_build.__main__": 9,
}
NAMES = (
    "contract",
    "foundation",
    "attestation",
    "model server",
    "builder core",
    "plugin API",
    "backends and plugins",
    "build",
    "around builds",
    "cli",
)

#: What the plugin API is made of: plugins import it as enclave_build.plugin only.
API_MODULES = {
    "enclave_build.builder.hookspecs",
    "enclave_build.builder.planning",
    "enclave_build.builder.python_server",
    "enclave_build.builder.plugin_types",
    "enclave_build.builder.plugins",
    "enclave_build.builder.plugin_api",
}
#: The plugins, and what else of enclave_build each may import besides enclave_build.plugin.
PLUGIN_PREFIXES = {
    "enclave_build.plugins": ("enclave_build.plugins",),
    # the secret-server plugin packages the attestation package's server into the enclave,
    # and writes that server's files (secrets.toml, from the builds' secrets-policy.toml) as
    # their contract types
    "enclave_build.plugins.secret_server": (
        "enclave_build.plugins.secret_server",
        "enclave_build.attestation",
        "enclave_build.contract",
    ),
}
BACKENDS = ("enclave_build.builder.gramine", "enclave_build.builder.occlum")
THIRD_PARTY = (
    REPO / "tests" / "thirdparty_plugin",
    REPO / "examples" / "plugins" / "onnxruntime" / "enclave_build_onnxruntime",
)


def _modules() -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, is a package), for every module of the distribution."""
    out = {}
    for package, directory in PACKAGE_DIRS.items():
        for path in (REPO / directory).rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            parts = list(path.relative_to(REPO / directory).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            out[".".join([package, *parts])] = (path, is_package)
    return out


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, in functions too, except those under ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for branch in node.orelse:
                visit(branch)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _imported(
    name: str, is_package: bool, node: ast.Import | ast.ImportFrom, modules: set[str]
) -> set[str]:
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    base = name if is_package else name.rpartition(".")[0]
    if node.level:
        for _ in range(node.level - 1):
            base = base.rpartition(".")[0]
        target = f"{base}.{node.module}" if node.module else base
    else:
        target = node.module or ""
    out = set()
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        out.add(sub if sub in modules else target)
    return out


def import_graph(
    files: dict[str, tuple[Path, bool]] | None = None, known: set[str] | None = None
) -> dict[str, set[str]]:
    """Module -> the enclave_build modules it imports (at run time)."""
    files = _modules() if files is None else files
    known = set(_modules()) if known is None else known
    graph = {}
    for name, (path, is_package) in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        targets = set()
        for node in _runtime_imports(tree):
            for target in _imported(name, is_package, node, known):
                while target and target not in known:  # `import a.b.c`: the nearest module
                    target = target.rpartition(".")[0]
                if target and target != name:
                    targets.add(target)
        graph[name] = targets
    return graph


def layer(module: str) -> int:
    prefix = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[prefix]


GRAPH = import_graph()


def test_every_module_has_a_layer():
    assert GRAPH, "no modules found"
    for module in GRAPH:
        layer(module)  # raises ValueError when no prefix matches


def test_no_import_cycles():
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(GRAPH[node]):
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(GRAPH):
        if node not in index:
            connect(node)
    assert cycles == []


def test_no_module_imports_a_higher_layer():
    upward = sorted(
        f"{module} ({NAMES[layer(module)]}) imports {target} ({NAMES[layer(target)]})"
        for module, targets in GRAPH.items()
        for target in targets
        if layer(target) > layer(module)
    )
    assert upward == []


def test_importing_a_module_runs_no_higher_package_init():
    """Importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first: a package's own
    imports must not reach above its modules' layer (e.g. the Gramine libraries stay usable
    without loading the backend)."""
    problems = []
    for module, targets in GRAPH.items():
        for target in targets:
            parent = target.rpartition(".")[0]
            while parent:
                for imported in GRAPH.get(parent, ()):
                    if layer(imported) > layer(module):
                        problems.append(
                            f"{module} imports {target}, whose package {parent} imports {imported}"
                        )
                parent = parent.rpartition(".")[0]
    assert sorted(set(problems)) == []


def _is_plugin(module: str) -> bool:
    return module.startswith(("enclave_build.plugins.",) + tuple(b + "." for b in BACKENDS))


def test_plugins_reach_the_plugin_api_only_through_enclave_build_plugin():
    problems = []
    for module, targets in GRAPH.items():
        if not _is_plugin(module):
            continue
        for target in sorted(targets & API_MODULES):
            problems.append(f"{module} imports {target}")
        if module.startswith("enclave_build.plugins."):
            owner = max(
                (p for p in PLUGIN_PREFIXES if module.startswith(p + ".") or module == p), key=len
            )
            allowed = PLUGIN_PREFIXES[owner] + (
                "enclave_build.plugin",
                "enclave_build.model_server.backends",
            )
            for target in sorted(targets):
                if not any(target == a or target.startswith(a + ".") for a in allowed):
                    problems.append(f"{module} imports {target}")
    assert problems == []


def test_the_contract_imports_nothing_of_the_project():
    imported = {
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if module.startswith("enclave_build.contract")
        for target in targets
        if not target.startswith("enclave_build.contract")
    }
    assert sorted(imported) == []


@pytest.mark.parametrize("root", THIRD_PARTY, ids=lambda p: p.name)
def test_third_party_plugins_import_only_the_stable_api(root):
    known = set(_modules())
    files = {f"{root.name}.{p.stem}": (p, False) for p in root.glob("*.py")}
    graph = import_graph(files, known)
    imported = set().union(*graph.values())
    assert imported <= {"enclave_build.plugin", "enclave_build.model_server.backends"}
    assert "enclave_build.plugin" in imported


def test_the_stable_api_module_is_re_exports_only():
    path, _ = _modules()["enclave_build.plugin"]
    tree = ast.parse(path.read_text())
    kinds = {type(node).__name__ for node in tree.body}
    assert kinds <= {"Expr", "ImportFrom", "Assign"}, kinds  # docstring, imports, __all__
    assigned = [t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets]
    assert assigned == ["__all__"]
    import enclave_build.plugin as api

    assert sorted(api.__all__) == sorted(set(api.__all__))
    for name in api.__all__:
        assert getattr(api, name) is not None, name


#: The stand-in base's writer, and the only modules that may import it: the commands that
#: write a stand-in (`enclave-build base standin DIR`, `enclave-build init --base standin`).
STANDIN = "enclave_build.builder.standin"
STANDIN_WRITERS = {"enclave_build.builder.cli.base", "enclave_build.builder.init"}


def _reaches(module: str) -> set[str]:
    seen: set[str] = set()
    todo = [module]
    while todo:
        for target in GRAPH.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_only_the_commands_that_write_a_standin_import_it():
    importers = {module for module, targets in GRAPH.items() if STANDIN in targets}
    assert importers <= STANDIN_WRITERS, sorted(importers - STANDIN_WRITERS)
    assert importers, "no module writes the stand-in any more: update STANDIN_WRITERS"


def test_the_build_path_never_reaches_the_standin():
    """Not even through another module: the build, plans, images, the libOS backends, runs,
    doctor, dev and k8s know a stand-in only by its marker."""
    above = ("enclave_build.builder.cli", "enclave_build.__main__")
    reaching = sorted(
        module
        for module in GRAPH
        if module not in STANDIN_WRITERS | {STANDIN}
        and not module.startswith(above)
        and STANDIN in _reaches(module)
    )
    assert reaching == []
