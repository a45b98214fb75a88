"""Man-page-grade help: every command and subcommand of `enclave-build` (including ones added
later: the test walks click's command tree) has a description and an `Example:` block whose
lines invoke enclave-build; the README's Markdown tables are well formed."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from enclave_build.builder.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"


def _walk(command: click.Command, path: tuple[str, ...] = ("enclave-build",)):
    yield path, command
    if isinstance(command, click.Group):
        for name in sorted(command.commands):
            yield from _walk(command.commands[name], (*path, name))


COMMANDS = {" ".join(path): command for path, command in _walk(main)}


def _help(path: str) -> str:
    words = path.split()[1:]
    with click.Context(main, info_name="enclave-build") as ctx:
        command, parent = main, ctx
        for word in words:
            assert isinstance(command, click.Group)
            command = command.commands[word]
            parent = click.Context(command, info_name=word, parent=parent)
        return command.get_help(parent)


def test_the_tree_is_walked():
    assert {"enclave-build build", "enclave-build gramine sigstruct",
            "enclave-build secrets serve", "enclave-build pf encrypt"} <= set(COMMANDS)


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_every_command_has_a_description_and_an_example(path):
    command = COMMANDS[path]
    text = _help(path)
    description = (command.help or "").strip()
    assert len(description) >= 20, f"{path}: no description (a docstring) in --help"
    match = re.search(r"^\s*Examples?(?: \([^)]*\))?:\s*$", text, re.M)
    assert match, f"{path}: --help has no 'Example:' block (use epilog=\"\"\"\\b\\nExample: ...)"
    example = [line.strip() for line in text[match.end():].splitlines() if line.strip()]
    assert example, f"{path}: empty Example: block"
    runs = [line for line in example if re.match(r"(sudo )?(enclave-build|python|bash) ", line)]
    assert runs, f"{path}: the Example: block shows no command line: {example[:3]}"
    if path != "enclave-build":  # the group's quick start runs many commands
        name = path.split(" ", 1)[1]
        assert any(f"enclave-build {name}" in line or
                   f'enclave-build)" {name}' in line or    # sudo "$(command -v enclave-build)"
                   (path.startswith("enclave-build build") and "enclave-build " in line)
                   for line in example), f"{path}: the example does not run `{path}`"
    long = [line for line in text.splitlines() if len(line) > 120]
    assert not long, f"{path}: help lines longer than 120 columns: {long}"


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_every_option_is_explained(path):
    command = COMMANDS[path]
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden and param.name != "help":
            assert (param.help or "").strip() or param.is_flag and param.name == "version", \
                f"{path} {param.opts[0]}: option without help text"


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
    """Cells of a GitHub-flavoured Markdown row: an unescaped '|' splits cells even inside a
    code span, so only '\\|' does not count."""
    return line.strip().replace("\\|", "").strip("|").count("|") + 1


def test_readme_tables_are_well_formed():
    text = README.read_text()
    blocks = list(_table_blocks(text))
    assert len(blocks) >= 5
    for block in blocks:
        first, header = block[0]
        assert len(block) >= 3, f"README.md:{first}: a table needs a header, a rule and a row"
        assert re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", block[1][1].strip()), \
            f"README.md:{block[1][0]}: second line of a table must be its |---| rule"
        width = _cells(header)
        for number, line in block:
            assert _cells(line) == width, f"README.md:{number}: {_cells(line)} cells, not {width}"


def test_readme_tells_how_to_get_the_command_and_completion():
    text = README.read_text()
    assert "source .venv/bin/activate" in text
    assert "pipx install" in text
    assert "_ENCLAVE_BUILD_COMPLETE=bash_source enclave-build" in text
    assert "## Concepts" in text


def _readme_command_rows() -> list[tuple[int, list[str]]]:
    """(line, [command spans]) of each row of the README's `| command | what it does |` table;
    a span that does not start with enclave-build leaves that word out
    (`enclave-build base list` / `base build NAME`)."""
    (block,) = [b for b in _table_blocks(README.read_text())
                if re.fullmatch(r"\|\s*command\s*\|\s*what it does\s*\|", b[0][1].strip())]
    rows = []
    for number, line in block[2:]:
        first_cell = re.split(r"(?<!\\)\|", line.strip().strip("|"))[0]
        spans = re.findall(r"`([^`]+)`", first_cell.replace("\\|", "|"))
        rows.append((number, [s if s.startswith("enclave-build") else f"enclave-build {s}"
                              for s in spans]))
    return rows


def _command_of(span: str) -> str:
    words = span.split()
    for n in range(len(words), 0, -1):
        if " ".join(words[:n]) in COMMANDS:
            return " ".join(words[:n])
    raise AssertionError(f"no such command: {span}")


def test_readme_command_table_lists_every_command_with_real_options():
    """Each command a user can run has a row, and every --option a row shows exists (a stale
    `--root-ca` or a missing `k8s` row is what a newcomer trips over)."""
    listed = set()
    for number, spans in _readme_command_rows():
        for span in spans:
            path = _command_of(span)
            listed.add(path)
            known = {opt for param in COMMANDS[path].params if isinstance(param, click.Option)
                     and not param.hidden for opt in param.opts}
            for option in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", span):
                assert option in known, f"README.md:{number}: `{path}` has no option {option}"
    leaves = {path for path, command in COMMANDS.items() if not isinstance(command, click.Group)}
    assert leaves <= listed, f"README.md's command table lacks: {sorted(leaves - listed)}"


def test_a_mistyped_command_is_named_not_taken_for_a_spec(tmp_path):
    """`enclave-build buidl x` must not print build's usage ("unexpected extra argument")."""
    from .conftest import run_cli

    for argv, wanted in ((["buidl", "x"], "Did you mean 'build'?"),
                         (["inspct", "out"], "'inspect'"),
                         (["doctr"], "Did you mean 'doctor'?"),
                         (["zzz"], "Nor is it a spec file: to build one, give its path")):
        proc = run_cli(*argv, cwd=tmp_path)
        err = proc.stderr.decode()
        assert proc.returncode == 2, (argv, err)
        assert f"No such command '{argv[0]}'" in err and wanted in err, (argv, err)
        assert "Usage: enclave-build build" not in err, (argv, err)
    # Paths still go to build: a mistyped spec name is answered with the spec next to it.
    (tmp_path / "spec.toml").write_text("[service]\n")
    proc = run_cli("spec.tml", cwd=tmp_path)
    assert proc.returncode == 2
    assert "spec.tml: spec file not found; did you mean spec.toml?" in proc.stderr.decode()


def test_base_list_columns_line_up():
    from .conftest import run_cli

    lines = run_cli("base", "list").stdout.decode().splitlines()
    from enclave_build.base_images import BASES

    starts = {line.index(recipe.tag) for line, recipe in zip(lines, BASES.values())}
    assert len(lines) == len(BASES) and len(starts) == 1, lines


def test_standin_runtime_names_match_the_library():
    from enclave_build.builder.cli.base import STANDIN_RUNTIME_NAMES
    from enclave_build.builder.standin import STANDIN_RUNTIMES

    assert tuple(sorted(STANDIN_RUNTIMES)) == STANDIN_RUNTIME_NAMES
