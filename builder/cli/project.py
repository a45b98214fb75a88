"""``enclave-build init`` and ``enclave-build doctor``: start a project, check the machine."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .output import errors, print_json


def _complete_framework(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    from ..plugins import PluginRegistry

    return sorted(n for n in PluginRegistry().frameworks if n.startswith(incomplete))


@click.command("init", epilog="""\b
Example:
  enclave-build init --framework tflite --model face_detection.tflite face-detect/
  enclave-build secrets tls face-detect/tls --host localhost
  enclave-build build face-detect/spec.toml --base dir:ROOTFS --output face-detect/out
\b
Without --model, put the model into face-detect/models/ and set [[models]] path yourself.
""")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--framework", default="tflite", show_default=True, metavar="NAME",
              shell_complete=_complete_framework,
              help="An installed framework (`enclave-build plugins`): tflite, tfserving, "
                   "openvino, secret-server, ...")
@click.option("--model", type=click.Path(exists=True, path_type=Path), metavar="PATH",
              help="Copy this model file or directory into DIRECTORY/models/ and name it in "
                   "[[models]] path (an OpenVINO .xml brings its .bin).")
@click.option("--name", metavar="SERVICE",
              help="The service name (a DNS label); default: DIRECTORY's name.")
@click.option("--secret-server", default="localhost:4433", show_default=True,
              metavar="HOST:PORT", help="[secrets] server: where the enclave gets its keys.")
@click.option("--force", is_flag=True, help="Replace an existing spec.toml (the signing key "
              "is kept, never replaced).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON: directory, spec, key, "
              "key_created, framework, service, secret_server, next_steps ({what, command}).")
def init_command(directory: Path, framework: str, model: Path | None, name: str | None,
                 secret_server: str, force: bool, as_json: bool) -> None:
    """Start a project for your own model in DIRECTORY.

    Writes DIRECTORY/spec.toml (a commented spec for the framework, with its options and
    defaults), DIRECTORY/keys/ (mode 0700) with a new enclave signing key enclave-key.pem (mode
    0600) and DIRECTORY/models/ (with --model, a copy of the model, named in the spec); prints
    the next commands (three; two with --model). Never overwrites a file (exit 2 naming it;
    --force replaces spec.toml only). Framework secret-server (the secret server as an enclave)
    gets a spec without models and its own next steps.
    """
    from ..init import init_project

    with errors():
        result = init_project(directory, framework=framework, name=name, force=force,
                              secret_server=secret_server, model=model)
    if as_json:
        print_json(result.to_json())
        return
    click.echo(f"wrote {result.spec} (service {result.service}, framework {result.framework})")
    click.echo(f"{'wrote' if result.key_created else 'kept '} {result.key} (enclave signing "
               "key, mode 0600: keep it private; it is the enclave's MRSIGNER)")
    click.echo("\nNext:")
    for number, step in enumerate(result.next_steps, 1):
        click.echo(f"  {number}. {step.what}:\n       {step.command}")


@click.command(epilog="""\b
Examples:
  enclave-build doctor
  enclave-build doctor --base dir:/srv/gramine-base --json
\b
Statuses: ok, missing (with a fix), warn (works partly; with a fix). Exit 0 unless --strict
and something is missing. JSON schema (stable): {"schema": 1, "ok": BOOL, "counts": {"ok": N,
"missing": N, "warn": N}, "checks": [{"id", "title", "status", "detail", "fix"}]}.
""")
@click.option("--base", metavar="REF", help="Also open this base (any --base reference) and "
              "report the Gramine in it: version and libpal.so path, or why not.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--strict", is_flag=True, help="Exit 1 if any check is missing.")
def doctor(base: str | None, as_json: bool, strict: bool) -> None:
    """Report what this machine can do: Docker engine, registry credentials, SGX devices,
    aesmd, PCCS, Gramine in a base, what a local real base needs, and the Python runtimes of
    `run --simulate`, each with a fix for what is missing. Contacts nothing that is not
    configured."""
    from ..doctor import diagnose

    with errors():
        report = diagnose(base)
    if as_json:
        print_json(report.to_json())
    else:
        for check in report.checks:
            lines = f"{check.title}: {check.detail}".splitlines()
            click.echo(f"{check.status:<8} " + "\n         ".join(lines))
            if check.fix:
                click.echo(f"{'':<8} fix: {check.fix}")
        counts = report.counts()
        click.echo(f"\n{counts['ok']} ok, {counts['missing']} missing, {counts['warn']} warn")
    if strict and not report.ok:
        sys.exit(1)
