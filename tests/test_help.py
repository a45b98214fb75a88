"""Man-page-grade help: every command and subcommand of `enclave-build` (including ones added
later: the test walks click's command tree) has a description and an `Example:` block whose
lines invoke enclave-build; the README's Markdown tables are well formed."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from builder.cli import main

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
