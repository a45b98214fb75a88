"""Man-page-grade help: every command and subcommand of `enclave-build` (including ones added
later: the test walks click's command tree) has a description and an `Example:` block whose
lines invoke enclave-build. (What the manual says about the commands: tests/test_docs.py.)"""

from __future__ import annotations

import re

import click
import pytest

from enclave_build.builder.cli import main


def _walk(command: click.Command, path: tuple[str, ...] = ("enclave-build",)):
    yield path, command
    if isinstance(command, click.Group):
        for name in sorted(command.commands):
            yield from _walk(command.commands[name], (*path, name))


COMMANDS = {" ".join(path): command for path, command in _walk(main)}


def _help(path: str) -> str:
    words = path.split()[1:]
    with click.Context(main, info_name="enclave-build") as ctx:
        command: click.Command = main
        parent = ctx
        for word in words:
            assert isinstance(command, click.Group)
            command = command.commands[word]
            parent = click.Context(command, info_name=word, parent=parent)
        return command.get_help(parent)


def test_the_tree_is_walked():
    assert {
        "enclave-build build",
        "enclave-build gramine sigstruct",
        "enclave-build secrets serve",
        "enclave-build pf encrypt",
    } <= set(COMMANDS)


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_every_command_has_a_description_and_an_example(path):
    command = COMMANDS[path]
    text = _help(path)
    description = (command.help or "").strip()
    assert len(description) >= 20, f"{path}: no description (a docstring) in --help"
    match = re.search(r"^\s*Examples?(?: \([^)]*\))?:\s*$", text, re.M)
    assert match, f'{path}: --help has no \'Example:\' block (use epilog="""\\b\\nExample: ...)'
    example = [line.strip() for line in text[match.end() :].splitlines() if line.strip()]
    assert example, f"{path}: empty Example: block"
    runs = [line for line in example if re.match(r"(sudo )?(enclave-build|python|bash) ", line)]
    assert runs, f"{path}: the Example: block shows no command line: {example[:3]}"
    if path != "enclave-build":  # the group's quick start runs many commands
        name = path.split(" ", 1)[1]
        assert any(
            f"enclave-build {name}" in line
            or f'enclave-build)" {name}' in line  # sudo "$(command -v enclave-build)"
            or (path.startswith("enclave-build build") and "enclave-build " in line)
            for line in example
        ), f"{path}: the example does not run `{path}`"
    long = [line for line in text.splitlines() if len(line) > 120]
    assert not long, f"{path}: help lines longer than 120 columns: {long}"


#: Files only a clone of the repository has: an installed enclave-build's help never sends a
#: user to them (the commands and the manual say the same).
CHECKOUT_ONLY = ("scripts/", "demo.sh", ".venv", "constraints.txt")


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_no_help_names_a_file_only_a_clone_has(path):
    text = _help(path)
    assert [name for name in CHECKOUT_ONLY if name in text] == [], path


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_every_option_is_explained(path):
    command = COMMANDS[path]
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden and param.name != "help":
            assert (param.help or "").strip() or (param.is_flag and param.name == "version"), (
                f"{path} {param.opts[0]}: option without help text"
            )


def test_a_mistyped_command_is_named_not_taken_for_a_spec(tmp_path):
    """`enclave-build buidl x` must not print build's usage ("unexpected extra argument")."""
    from .conftest import run_cli

    for argv, wanted in (
        (["buidl", "x"], "Did you mean 'build'?"),
        (["inspct", "out"], "'inspect'"),
        (["doctr"], "Did you mean 'doctor'?"),
        (["zzz"], "Nor is it a spec file: to build one, give its path"),
    ):
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

    assert len(lines) == len(BASES), lines
    starts = {line.index(recipe.tag) for line, recipe in zip(lines, BASES.values(), strict=True)}
    assert len(starts) == 1, lines


def test_standin_runtime_names_match_the_library():
    from enclave_build.builder.cli.base import STANDIN_RUNTIME_NAMES
    from enclave_build.builder.standin import STANDIN_RUNTIMES

    assert tuple(sorted(STANDIN_RUNTIMES)) == STANDIN_RUNTIME_NAMES
