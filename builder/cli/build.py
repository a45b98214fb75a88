"""``enclave-build build``, ``inspect`` and ``run``: build an image from a spec, read its
identity back, run it as a simulation."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..errors import UsageError
from .output import RichProgress, errors, print_json, signature_text, text


@click.command(
    epilog="""\b
Examples:
  enclave-build examples/tflite/spec.toml      # short for build; writes examples/tflite/out/
  enclave-build build spec.toml --base dir:/srv/gramine-base --output out/ --json
  enclave-build build spec.toml --push --tag registry.example.com/face-detect:1.0
  enclave-build build spec.toml --signature face-detect.sigstruct.sig   # HSM, step two
\b
Occlum ([service] libos = "occlum"): Occlum's own tools build it in their container, so a
Docker engine and the toolchain image are needed (docker pull occlum/occlum:0.31.0-ubuntu22.04;
ENCLAVE_BUILD_OCCLUM_IMAGE picks another), and [image] base must be an Occlum runtime base
(the manual: How-to, Occlum).
\b
Exit codes: 0 built; 1 build error; 2 bad spec or usage (FILE:LINE: KEY: ...); 3 external
signature needed (the bytes to sign were written next to the spec).
"""
)
@click.argument("spec", type=click.Path(path_type=Path))
@click.option(
    "--output",
    "-o",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write DIR/oci (an OCI image layout), DIR/measurements.json and, with "
    "encrypted content, DIR/secrets-policy.toml. Atomic: DIR is replaced as a whole, so it "
    "must be new, empty or an earlier build output (measurements.json and oci/, besides them "
    "only secrets-policy.toml and service.json), and must not be or contain the spec's "
    "directory, a model, keys_dir or the CA, TLS and signing files; anything else is "
    "refused (exit 2), never emptied. Default: out/ next to the spec.",
)
@click.option(
    "--base",
    metavar="REF",
    help="Base image (overrides [image] base): "
    "docker://HOST/NAME:TAG or NAME:TAG (registry), docker-daemon:NAME:TAG, "
    "oci:DIR[:TAG], oci-archive:FILE, docker-archive:FILE, dir:ROOTFS.",
)
@click.option("--tag", metavar="REF", help="Name of the built image (overrides [image] tag).")
@click.option("--load", is_flag=True, help="Load the image into the Docker engine.")
@click.option(
    "--push", is_flag=True, help="Push to the registry the tag names; prints NAME@sha256:DIGEST."
)
@click.option(
    "--signature",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Detached signature over sigstruct.tbs (external signing, step two).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print measurements.json on stdout: "
    "service, framework, libos, mr_enclave, mr_signer, isv_prod_id, isv_svn, debug, "
    "image {ref, digest}.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or summary.")
def build(
    spec: Path,
    output: Path | None,
    base: str | None,
    tag: str | None,
    load: bool,
    push: bool,
    signature: Path | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Build the enclave image described by SPEC (a spec.toml, or a project directory holding
    spec.toml, as `enclave-build init` writes)."""
    from ..build import ImageOptions
    from ..build import build as run_build
    from ..spec_file import spec_file

    with errors():
        spec = spec_file(spec)
    if output is None:
        output = spec.parent / "out"  # the headline `enclave-build spec.toml` writes something
    with errors(), RichProgress(not quiet and not as_json) as progress:
        result = run_build(
            spec,
            output=output,
            base=base,
            signature=signature,
            progress=progress,
            image=ImageOptions(load=load, push=push, tag=tag),
        )
    measurements = result.measurements
    assert measurements is not None
    for path in result.generated_keys:
        click.echo(
            f"generated wrap key {path} (mode 0600): keep it, the secret server needs it "
            "and it cannot be recovered",
            err=True,
        )
    if as_json:
        click.echo(measurements.to_json(), nl=False)
    elif not quiet:
        click.echo(
            f"service      {measurements.service} ({measurements.framework}, {measurements.libos})"
        )
        click.echo(f"mr_enclave   {measurements.mr_enclave}")
        click.echo(f"mr_signer    {measurements.mr_signer}")
        click.echo(
            f"isv          prod_id {measurements.isv_prod_id}, svn {measurements.isv_svn}"
            f"{', DEBUG' if measurements.debug else ''}"
        )
        click.echo(f"image        {measurements.image.ref} ({measurements.image.digest})")
        if result.standin_base is not None:
            click.echo(
                "base         a STAND-IN (`enclave-build base standin`): measured and signed, "
                "but it does not boot; for a real base: enclave-build base gramine ROOTFS"
            )
        if result.output:
            click.echo(f"output       {result.output}")
            click.echo(
                f"\nNext: serve it here (a local secret server, `run --simulate`, a "
                f"test request):\n  {dev_command(spec, output, base)}"
            )
    if result.pushed and not as_json:
        click.echo(result.pushed)


def dev_command(spec: Path, output: Path, base: str | None = None) -> str:
    """The `enclave-build dev` command line that serves what this build wrote: the same spec,
    output directory and --base (dev rebuilds when its inputs differ from the build's, so
    every option that changes the build is repeated; paths as given, from the same
    directory)."""
    import shlex

    project = spec.parent if spec.name == "spec.toml" else spec
    words = ["enclave-build", "dev", str(project)]
    if base is not None:
        words += ["--base", base]
    if output.resolve() != (spec.parent / "out").resolve():
        words += ["--output", str(output)]
    return shlex.join(words)


@click.command(
    epilog="""\b
Examples:
  enclave-build inspect out/
  enclave-build inspect docker://registry.example.com/face-detect@sha256:... --json
  enclave-build inspect out/ --extract audit/   # manifest, SIGSTRUCT, measurements.json
"""
)
@click.argument("image")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print as JSON: image, digest, labels, "
    "sigstruct (as `gramine sigstruct --json`), rederived (app, mr_enclave, "
    "trusted_files_checked), agrees, problems (+ extracted).",
)
@click.option(
    "--extract",
    "extract_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also write SERVICE.manifest.sgx, SERVICE.sig and measurements.json (a build "
    "directory) or labels.json (an image) into DIR, for auditors; never "
    "overwrites.",
)
def inspect(image: str, as_json: bool, extract_dir: Path | None) -> None:
    """Read the enclave identity back from IMAGE (a reference, a build output directory, or a
    project directory whose build is in out/) and check that its labels, SIGSTRUCT (and measurements.json) agree, and that the image's
    own files are what the SIGSTRUCT vouches for: MRENCLAVE re-derived from its manifest and
    libpal.so, every trusted file's hash, nothing untrusted on the server's PYTHONPATH (the
    image is unpacked into the cache for this). Exit 1 if not (files asked for with --extract
    are written all the same)."""
    from ..build_dir import build_output
    from ..image.inspect import extract_image, inspect_image

    written: list[Path] = []
    with errors():
        if Path(image).is_dir() and not (Path(image) / "oci-layout").is_file():
            # a build output, or a project directory (its out/); not a bare OCI layout
            image = str(
                build_output(image, needs=("oci",), log=lambda line: click.echo(line, err=True))
            )
        if extract_dir is not None:
            extraction = extract_image(image, extract_dir)
            result, written = extraction.inspection, extraction.written
        else:
            result = inspect_image(image)
    if as_json:
        print_json(
            {
                **result.to_json(),
                **({"extracted": [str(p) for p in written]} if extract_dir is not None else {}),
            }
        )
    else:
        click.echo(f"image            {result.image}")
        click.echo(f"digest           {result.digest}")
        for key in (
            "service",
            "framework",
            "libos",
            "mr_enclave",
            "mr_signer",
            "isv_prod_id",
            "isv_svn",
            "debug",
        ):
            if key in result.labels:
                click.echo(f"{key:<16} {result.labels[key]}")
        if result.sigstruct:
            click.echo(
                f"signature        {signature_text(result.sigstruct)}"
                f", date {result.sigstruct['date']}"
            )
        rederived = result.verification.to_json() if result.verification else None
        if rederived and rederived["mr_enclave"]:
            click.echo(
                f"rederived        mr_enclave {rederived['mr_enclave']} (manifest + "
                f"libpal.so), {rederived['trusted_files_checked']} trusted files checked"
            )
        click.echo(f"agrees           {text(result.agrees)}")
        for path in written:
            click.echo(f"wrote            {path}")
    for problem in result.problems:
        click.echo(f"error: {problem}", err=True)
    if not result.agrees:
        sys.exit(1)


@click.command(
    epilog="""\b
Example:
  enclave-build build spec.toml --base dir:/srv/gramine-base --output out
  enclave-build secrets simulate-pki pki/
  sudo "$(command -v enclave-build)" run out --simulate --pki pki/ --env LOG_LEVEL=debug
"""
)
@click.argument("build_dir", metavar="BUILD_DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--simulate",
    is_flag=True,
    help="Run without SGX (required: the only mode today). NOT an enclave; nothing is attested.",
)
@click.option(
    "--pki",
    type=click.Path(file_okay=False, path_type=Path),
    help="Synthetic PKI directory for the simulated quoter (from `secrets "
    "simulate-pki`); default: one kept in the cache.",
)
@click.option(
    "--env",
    "env_items",
    multiple=True,
    metavar="NAME=VALUE",
    help="Environment for the service (repeatable). Under gramine-direct only "
    "variables the manifest passes through reach it.",
)
@click.option(
    "--mode",
    type=click.Choice(["auto", "gramine-direct", "process"]),
    default="auto",
    show_default=True,
    help="auto: gramine-direct if the image holds a real Gramine and we are root, "
    "else a plain process (Python-server frameworks only).",
)
@click.option(
    "--listen-all",
    is_flag=True,
    help="Plain process: serve on the image's addresses (usually 0.0.0.0, reachable "
    "from the network) instead of 127.0.0.1. (Under gramine-direct the measured "
    "configuration decides.)",
)
@click.option(
    "--enforce-limits",
    is_flag=True,
    help="gramine-direct: hold the service to the enclave's own limits, as SGX does "
    "(sgx.max_threads as a pids cgroup limit, sgx.enclave_size as its address-space "
    "limit); a spec too small for the load then fails here, explained.",
)
@click.option(
    "--observe",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="Write what the run used into DIR: observation.json (peak threads, peak memory) "
    "and, with strace installed, the files it opened (what `profile` reads).",
)
def run(
    build_dir: Path,
    simulate: bool,
    pki: Path | None,
    env_items: tuple[str, ...],
    mode: str,
    listen_all: bool,
    enforce_limits: bool,
    observe: Path | None,
) -> None:
    """Run the image built into BUILD_DIR here, as a SIMULATION (no SGX). BUILD_DIR is a
    build output, or a project directory whose build is in out/ (exit 2 for anything else).

    Unpacks BUILD_DIR/oci into a private root, starts a simulated quoter for the build's
    measurements.json and runs the service: under gramine-direct (the real LibOS in a chroot of
    the image, as the image's user) when the image holds a real Gramine and you are root,
    otherwise as a plain process with this Python (Python-server frameworks only; binary
    frameworks such as tfserving exit with status 2). SIGINT/SIGTERM are forwarded; the exit
    status is the service's. When the service fails, the Gramine failures its log shows
    (out of memory, no free thread, a refused file, a missing library, a stack overflow) are
    explained with the spec key to change and by how much.
    """
    from ..run import RunOptions, parse_env, run_build

    with errors():
        if not simulate:
            raise UsageError(
                "only simulation is supported: pass --simulate (real SGX "
                "runs use the image itself, e.g. `docker run` with the "
                "SGX devices)"
            )
        options = RunOptions(
            pki=pki,
            env=parse_env(env_items),
            mode=mode,
            log=lambda line: click.echo(line, err=True),
            listen_all=listen_all,
            enforce_limits=enforce_limits,
            observe=observe.resolve() if observe is not None else None,
        )
        code = run_build(build_dir, options)
    sys.exit(code)
