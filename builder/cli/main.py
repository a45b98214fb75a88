"""The ``enclave-build`` command group: the builtin commands, and the command groups plugins
add (``enclave_build_register_commands``: the builtin ``k8s`` and ``attest`` come that way).

``enclave-build SPEC`` is short for ``enclave-build build SPEC``.
"""

from __future__ import annotations

import os

import click

from enclave_build import __version__

from ..plugins import PluginRegistry
from . import base, build, cache, pf, plugins, project, quote, secrets, signing
from .output import INTERRUPTED, exit_codes_help


class _DefaultToBuild(click.Group):
    """A group whose unknown first argument is taken as a spec for ``build`` when it looks like
    a path (it exists, or has a ``/`` or a ``.``); a bare word such as ``buidl`` is a mistyped
    command and gets click's "No such command ... Did you mean" instead of build's usage."""

    def resolve_command(self, ctx: click.Context, args: list[str]):
        if args and args[0] not in self.commands and not args[0].startswith("-") \
                and _looks_like_spec(args[0]):
            args = ["build", *args]
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as exc:
            if isinstance(exc, click.exceptions.NoSuchCommand) and not exc.possibilities:
                exc.message += (f" Nor is it a spec file: to build one, give its path "
                                f"(e.g. ./{args[0]}.toml).")
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
    Quick start: `bash examples/demo.sh` runs the whole flow once (model, keys, CA,
    base, build, secret server, run --simulate, a photo through KServe v2). Then, with
    `source .venv/bin/activate` in a new shell:
    \b
    Example:
      python examples/fetch_models.py          # every example's model (tfserving's is
                                               # made with TensorFlow: ~330 MB, once)
      bash examples/make_keys.sh               # examples/keys/ (signing key, demo CA)
      enclave-build base standin /tmp/standin  # a stand-in Gramine base (no Docker needed)
      enclave-build build examples/tfserving/spec.toml --base dir:/tmp/standin
      enclave-build inspect examples/tfserving/out   # output: out/ next to the spec
      enclave-build doctor                     # what this machine can do
      enclave-build init --model FILE my-model/  # your own model: prints the next commands
    \b
    Every command has --help with an example; shell completion: see the manual (Getting started: Install).
    """
    ctx.obj = PLUGINS   # `plugins` lists them, with the failures of registering commands
    if ctx.invoked_subcommand != "plugins":   # which lists them itself
        for failure in PLUGINS.failures:
            click.echo(f"warning: {failure.describe()} (see `enclave-build plugins`)", err=True)


main.help = f"{main.help}\n{exit_codes_help()}"

for _command in (build.build, build.inspect, build.run, plugins.plugins, signing.keygen,
                 signing.gramine, quote.quote, secrets.secrets, pf.pf, base.base,
                 project.init_command, project.doctor, cache.cache):
    main.add_command(_command)

#: The installed plugins, as the command line started: their command groups are added here; a
#: plugin that failed is warned about by every command but `plugins`, which lists it.
PLUGINS = PluginRegistry()
PLUGINS.call_each("enclave_build_register_commands", cli=main)
