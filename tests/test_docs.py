"""The manual: the README stays a short entry point, the site builds with `mkdocs build --strict`
(broken links, anchors and pages left out of the nav fail), the generated reference pages equal
what docs/gen_reference.py makes from the code, and what the pages tell a user to type exists."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest

from .conftest import REPO

DOCS = REPO / "docs"
README = REPO / "README.md"
CHANGELOG = REPO / "CHANGELOG.md"
README_LIMIT = 6 * 1024


def _generator():
    """docs/gen_reference.py, imported from its file (docs/ is not a package)."""
    name = "gen_reference"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, DOCS / "gen_reference.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


GEN = _generator()
GENERATED = {DOCS / name for name in GEN.PAGES}
WRITTEN = sorted(p for p in DOCS.rglob("*.md") if p not in GENERATED)


def _walk(command: click.Command, path: tuple[str, ...] = ("enclave-build",)):
    yield path, command
    if isinstance(command, click.Group):
        for name in sorted(command.commands):
            yield from _walk(command.commands[name], (*path, name))


COMMANDS = {" ".join(path): command for path, command in _walk(GEN.cli_root())}
LEAVES = {path for path, command in COMMANDS.items() if not isinstance(command, click.Group)}


# --- the README ------------------------------------------------------------------------------


def test_readme_is_short_and_keeps_the_two_set_up_commands():
    text = README.read_text()
    size = len(text.encode())
    assert size <= README_LIMIT, (
        f"README.md is {size} bytes; at most {README_LIMIT}: move the rest into docs/"
    )
    blocks = re.findall(r"^```\n(.*?)\n```$", text, re.S | re.M)
    assert "bash examples/demo.sh" in blocks, blocks
    assert "bash scripts/test.sh" in blocks, blocks


def test_readme_links_point_into_the_manual():
    links = _links(README)
    targets = {link.split("#")[0] for link in links if not re.match(r"\w+://", link)}
    assert {
        "docs/getting-started/install.md",
        "docs/concepts.md",
        "docs/reference/spec.md",
    } <= targets
    for target in targets:
        assert (REPO / target).is_file(), f"README.md links to {target}, which does not exist"


# --- the site --------------------------------------------------------------------------------


@pytest.mark.integration
def test_the_site_builds_strictly_and_fetches_nothing(tmp_path):
    """`mkdocs build --strict`: any warning (a broken link or anchor, a page not in the nav, a
    missing snippet) fails. Proxies point at a closed port, so a build that tried to fetch
    anything (web fonts, social cards) would fail too."""
    closed = "http://127.0.0.1:9"
    env = {
        **os.environ,
        "NO_MKDOCS_2_WARNING": "1",
        "http_proxy": closed,
        "https_proxy": closed,
        "HTTP_PROXY": closed,
        "HTTPS_PROXY": closed,
        "no_proxy": "",
        "NO_PROXY": "",
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(REPO / "mkdocs.yml"),
            "--site-dir",
            str(tmp_path / "site"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    assert (tmp_path / "site" / "reference" / "spec" / "index.html").is_file()
    changelog = (tmp_path / "site" / "changelog" / "index.html").read_text()
    assert "0.3.0" in changelog, "CHANGELOG.md is not included in the site"


def test_mkdocs_config_fetches_nothing_and_validates_links():
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    config = yaml.load((REPO / "mkdocs.yml").read_text(), Loader=Loader)
    assert config["theme"]["font"] is False, "theme.font: false (no Google Fonts call)"
    plugins = [p if isinstance(p, str) else next(iter(p)) for p in config.get("plugins", [])]
    assert "social" not in plugins and "privacy" not in plugins, plugins
    validation = config["validation"]
    for key in ("omitted_files", "unrecognized_links", "anchors", "absolute_links"):
        assert validation[key] == "warn", f"validation.{key}: warn (an error under --strict)"


def test_generated_reference_pages_are_up_to_date():
    problems = GEN.stale()
    assert not problems, "\n".join(problems) + f"\nregenerate with: python {GEN.GENERATOR}"


def test_every_environment_variable_is_documented():
    missing = GEN.undocumented_environment_variables()
    assert not missing, f"add to environment_variables() in {GEN.GENERATOR}: {missing}"


def test_the_generator_links_json_schemas_only_when_there_are_some(tmp_path):
    schemas = tmp_path / "schemas"
    assert GEN.schema_links("spec", directory=schemas) == ""  # no directory
    schemas.mkdir()
    assert GEN.schema_links("spec", directory=schemas) == ""  # an empty one
    (schemas / "spec.schema.json").write_text("{}")
    assert "(schemas/spec.schema.json)" in GEN.schema_links("spec", directory=schemas)


# --- what the pages say ----------------------------------------------------------------------


def _pages() -> list[Path]:
    return [README, CHANGELOG, *sorted(DOCS.rglob("*.md"))]


def _table_blocks(text: str):
    """Markdown tables outside code fences: runs of consecutive lines starting with '|'."""
    block: list[tuple[int, str]] = []
    fence = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fence = not fence
        if not fence and line.startswith("|"):
            block.append((number, line))
            continue
        if block:
            yield block
        block = []
    if block:
        yield block


def _cells(line: str) -> int:
    """Cells of a Markdown row: an unescaped '|' splits cells even inside a code span, so only
    '\\|' does not count."""
    return line.strip().replace("\\|", "").strip("|").count("|") + 1


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_tables_are_well_formed(page):
    for block in _table_blocks(page.read_text()):
        where = page.relative_to(REPO)
        first, header = block[0]
        assert len(block) >= 3, f"{where}:{first}: a table needs a header, a rule and a row"
        assert re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", block[1][1].strip()), (
            f"{where}:{block[1][0]}: second line of a table must be its |---| rule"
        )
        width = _cells(header)
        for number, line in block:
            assert _cells(line) == width, f"{where}:{number}: {_cells(line)} cells, not {width}"


def test_install_page_tells_how_to_get_the_command_and_completion():
    text = (DOCS / "getting-started" / "install.md").read_text()
    assert "source .venv/bin/activate" in text
    assert "pipx install" in text
    assert "_ENCLAVE_BUILD_COMPLETE=bash_source enclave-build" in text
    assert "bash examples/demo.sh" in text and "bash scripts/test.sh" in text
    assert (DOCS / "concepts.md").read_text().startswith("# Concepts")


def test_every_command_is_in_the_command_reference():
    text = (DOCS / "reference" / "cli.md").read_text()
    headings = set(re.findall(r"^#+ (enclave-build[\w -]*?) \{#", text, re.M))
    assert LEAVES <= headings, f"docs/reference/cli.md lacks: {sorted(LEAVES - headings)}"


def _command_lines(text: str) -> list[tuple[int, str]]:
    """(line, command) of every enclave-build invocation in code blocks and inline code."""
    found: list[tuple[int, str]] = []
    fence = False
    pending = ""
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fence = not fence
            pending = ""
            continue
        if fence:
            line = pending + line.split(" # ")[0].split("   #")[0]
            if line.rstrip().endswith("\\"):
                pending = line.rstrip()[:-1] + " "
                continue
            pending = ""
            found += [(number, m) for m in _invocations(line)]
        else:
            for span in re.findall(r"`([^`]+)`", line):
                if span.startswith(("enclave-build ", 'sudo "$(command -v enclave-build)" ')):
                    found += [(number, m) for m in _invocations(span)]
    return found


def _invocations(line: str) -> list[str]:
    line = line.replace('sudo "$(command -v enclave-build)"', "enclave-build")
    return [m.strip() for m in re.findall(r"(?:^|[\s;&|(])(enclave-build(?: [^;&|)]*)?)", line)]


def _resolve(words: list[str]) -> tuple[str, list[str]]:
    path = "enclave-build"
    rest = words[1:]
    while rest and f"{path} {rest[0]}" in COMMANDS:
        path = f"{path} {rest[0]}"
        rest = rest[1:]
    if path == "enclave-build" and rest and not rest[0].startswith("-"):
        path = "enclave-build build"  # `enclave-build SPEC` is short for build
    return path, rest


@pytest.mark.parametrize("page", [README, *WRITTEN], ids=lambda p: str(p.relative_to(REPO)))
def test_command_lines_name_real_commands_and_options(page):
    """Every `enclave-build ...` a page shows runs a command that exists, with options it has
    (a stale option is what a newcomer trips over first)."""
    where = page.relative_to(REPO)
    for number, line in _command_lines(page.read_text()):
        try:
            words = shlex.split(line.replace("[", " ").replace("]", " "))
        except ValueError:
            words = line.split()
        path, rest = _resolve(words)
        command = COMMANDS[path]
        if isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
            pytest.fail(f"{where}:{number}: `{line}`: {path} has no command {rest[0]!r}")
        known = {
            opt
            for param in command.params
            if isinstance(param, click.Option)
            for opt in (*param.opts, *param.secondary_opts)
        } | {"--help", "-h"}
        for word in rest:
            option = word.split("=")[0]
            if re.fullmatch(r"--?[a-z][a-z0-9-]*", option):
                assert option in known, f"{where}:{number}: `{path}` has no option {option}"


def test_pages_carry_no_development_notes():
    pattern = re.compile(r"\b(issue \d+|FACTS|TODO|XXX|this session|helper)\b", re.I)
    for page in _pages():
        for number, line in enumerate(page.read_text().splitlines(), 1):
            assert not pattern.search(line), f"{page.relative_to(REPO)}:{number}: {line.strip()}"


def _links(page: Path) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", page.read_text())


def test_spec_reference_gives_the_tls_issuer_default():
    """[tls] issuer has no fixed default (it follows cert/key): the reference says what it is."""
    from enclave_build.builder.spec import tls_issuer

    assert tls_issuer({}) == "secret-server" and tls_issuer({"cert": "c"}) == "file"
    text = (Path(__file__).parents[1] / "docs/reference/spec.md").read_text()
    [row] = [line for line in text.splitlines() if line.startswith("| `issuer` |")]
    default = row.split(" | ")[2]
    assert default == '"secret-server" ("file" when cert or key is given)', row
