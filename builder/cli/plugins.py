"""``enclave-build plugins``: what is installed, and what failed to load."""

from __future__ import annotations

import sys

import click

from .output import FAILURE, errors, print_json


@click.command(
    epilog="""\b
Examples:
  enclave-build plugins
  enclave-build plugins --json     # [{name, version, source, hooks, frameworks, libos, error}]
\b
A plugin that fails to load (or whose hook fails) is listed with its error and left out; the
others work, and only a build that needs what it would provide fails. Exit 1 when one failed.
"""
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print as JSON: a list of {name, "
    "version, source, hooks, frameworks, libos, error} (error: null, or what went "
    "wrong with a plugin that could not be used).",
)
@click.pass_context
def plugins(ctx: click.Context, as_json: bool) -> None:
    """List installed plugins: name, version, source, hooks and what they provide, and the
    plugins that could not be used, with their error."""
    from ..plugins import PluginRegistry

    with errors():
        # the command line's own registry (it added the plugins' commands), else a new one
        registry = ctx.obj if isinstance(ctx.obj, PluginRegistry) else PluginRegistry()
        infos = registry.describe()
    if as_json:
        print_json(
            [{**info.__dict__, "error": None} for info in infos]
            + [
                {
                    "name": f.name,
                    "version": None,
                    "source": f.source,
                    "hooks": [],
                    "frameworks": [],
                    "libos": [],
                    "error": f.error,
                }
                for f in registry.failures
            ]
        )
    else:
        for info in infos:
            provides = [f"framework {n}" for n in info.frameworks] + [
                f"libos {n}" for n in info.libos
            ]
            click.echo(f"{info.name} {info.version}  ({info.source})")
            click.echo(f"    hooks:    {', '.join(info.hooks)}")
            if provides:
                click.echo(f"    provides: {', '.join(provides)}")
        for failure in registry.failures:
            click.echo(f"{failure.name} BROKEN  ({failure.source})")
            click.echo(f"    error:    {failure.error}")
    if registry.failures:
        sys.exit(FAILURE)
