"""``enclave-build base``: the base images enclaves are built on (list, build, stand-in)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..errors import UsageError
from .output import errors, print_json


@click.group(
    epilog="""\b
Examples:
  enclave-build base list
  enclave-build base build gramine-python      # with the Docker engine
  sudo "$(command -v enclave-build)" base gramine /srv/gramine-base   # without Docker
  enclave-build base standin /tmp/standin      # then: build ... --base dir:/tmp/standin
"""
)
def base() -> None:
    """Base images: the root filesystems enclaves are built on."""


@base.command(
    "list",
    epilog="""\b
Examples:
  enclave-build base list
  enclave-build base list --json     # [{name, tag, description}]
""",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print as JSON: a list of {name, tag, description}."
)
def base_list(as_json: bool) -> None:
    """The base images enclave-build ships Dockerfiles for."""
    from enclave_build.base_images import BASES

    if as_json:
        print_json(
            [{"name": r.name, "tag": r.tag, "description": r.description} for r in BASES.values()]
        )
        return
    name_width = max((len(r.name) for r in BASES.values()), default=0)
    tag_width = max((len(r.tag) for r in BASES.values()), default=0)
    for recipe in BASES.values():
        click.echo(f"{recipe.name:<{name_width}}  {recipe.tag:<{tag_width}}  {recipe.description}")


@base.command(
    "build",
    epilog="""\b
Examples:
  enclave-build base build gramine-python
  enclave-build base build gramine-tfserving \\
      --build-arg TFSERVING_IMAGE=tensorflow/serving:2.15.1
  enclave-build base build --dir my-base/ --tag registry.example.com/my-base:1
\b
The images a Kubernetes deployment needs besides (then docker push them):
  enclave-build base build aesmd --tag registry.example.com/enclave-build/sgx-aesmd:2.25.100.3
  pip wheel --no-deps -w dist .     # in a clone: enclave-build's wheel
  enclave-build base build secret-server --wheel dist/enclave_build-0.3.0-py3-none-any.whl \\
      --tag registry.example.com/enclave-build/secret-server:0.3.0
""",
)
@click.argument("name", required=False)
@click.option(
    "--dir",
    "directory",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Build this Dockerfile directory instead of a named base.",
)
@click.option("--tag", help="Tag for the image (default: the base's standard tag).")
@click.option(
    "--build-arg",
    "build_args",
    multiple=True,
    metavar="NAME=VALUE",
    help="Override a pinned version (repeatable).",
)
@click.option("--network", default="host", show_default=True, help="Network mode for RUN steps.")
@click.option(
    "--wheel",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The enclave-build wheel the secret-server image installs (its version "
    "tags the image unless --tag).",
)
def base_build(
    name: str | None,
    directory: Path | None,
    tag: str | None,
    build_args: tuple[str, ...],
    network: str,
    wheel: Path | None,
) -> None:
    """Build base image NAME (see `enclave-build base list`) with the Docker engine."""
    from ..image.base_build import build_base

    with errors():
        image_id, final_tag = build_base(
            name,
            directory,
            tag,
            build_args,
            network,
            log=lambda line: click.echo(line, err=True),
            wheel=wheel,
        )
    click.echo(f"{final_tag} {image_id}")


#: builder.standin.STANDIN_RUNTIMES' names (listed here to keep the CLI's start-up lazy; a test
#: checks that they agree).
STANDIN_RUNTIME_NAMES = ("onnxruntime", "secret-server")


@base.command(
    epilog="""\b
Example:
  enclave-build base standin /tmp/standin
  enclave-build build examples/tflite/spec.toml --base dir:/tmp/standin
\b
The examples whose bases add runtimes (examples/secret-server, examples/plugins/onnxruntime):
  enclave-build base standin /tmp/standin-all --runtimes secret-server --runtimes onnxruntime
  enclave-build build examples/secret-server/spec.toml --base dir:/tmp/standin-all
"""
)
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--runtimes",
    "runtimes",
    multiple=True,
    type=click.Choice(STANDIN_RUNTIME_NAMES),
    help="Also add stand-ins of these runtimes (repeatable): secret-server = what "
    "base gramine-secret-server adds (pyOpenSSL, dcap-qvl, ...), onnxruntime = "
    "what the onnxruntime example plugin's base adds.",
)
def standin(directory: Path, runtimes: tuple[str, ...]) -> None:
    """Write a STAND-IN Gramine 1.9 root filesystem to DIRECTORY (for demos and tests).

    It has Gramine's layout, a synthetic libpal.so and placeholders of the Python runtimes of
    base gramine-python (LiteRT, OpenVINO, grpcio, numpy), so builds measure and sign exactly
    as with real files, but nothing in it runs. Use it as --base dir:DIRECTORY.
    """
    from ..standin import add_standin_runtimes, make_standin_rootfs

    make_standin_rootfs(directory)
    add_standin_runtimes(directory, runtimes)
    click.echo(
        f"wrote stand-in Gramine rootfs to {directory} (use --base dir:{directory}); "
        "it is NOT a runnable Gramine",
        err=True,
    )


#: Shipped runtime lists `base gramine --runtimes` can install (base_images/NAME/requirements.txt).
RUNTIME_LISTS = ("gramine-python", "gramine-secret-server")


@base.command(
    "gramine",
    epilog="""\b
Examples:
  sudo "$(command -v enclave-build)" base gramine /srv/gramine-base
  enclave-build build spec.toml --base dir:/srv/gramine-base
\b
From a local Gramine build (a .tar.gz in Debian package layout), no Gramine repository needed:
  sudo "$(command -v enclave-build)" base gramine /srv/gramine-base \\
      --archive gramine-1.9-debian12-x86_64.tar.gz
\b
With a verified copy of Gramine's signing key, or through a mirror that re-signs:
  ... base gramine ROOTFS --keyring gramine-keyring-bookworm.gpg
  ... base gramine ROOTFS --repository https://apt.example.com/gramine/ \\
      --keyring mirror.gpg --key-fingerprint 0123...CDEF
""",
)
@click.argument("rootfs", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--archive",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Install Gramine from this local build (a .tar.gz laid out like the Debian "
    "package, extracted at /) instead of from Gramine's package repository.",
)
@click.option(
    "--keyring",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A local copy of the repository's signing keyring (binary or armored) "
    "instead of downloading Gramine's; checked against the pinned fingerprint "
    "either way.",
)
@click.option(
    "--repository",
    metavar="URL",
    help="A mirror of Gramine's Debian repository (default https://packages.gramineproject.io/).",
)
@click.option(
    "--key-fingerprint",
    "fingerprints",
    multiple=True,
    metavar="FPR",
    help="The key a --repository mirror signs with, if it re-signs (40 hex digits; "
    "repeatable). Default: Gramine's 2021 signing key.",
)
@click.option(
    "--mirror",
    metavar="URL",
    default="http://deb.debian.org/debian",
    show_default=True,
    help="The Debian mirror.",
)
@click.option(
    "--runtimes",
    "runtimes",
    multiple=True,
    type=click.Choice(RUNTIME_LISTS),
    help="Install the Python runtimes of this base (repeatable; default "
    "gramine-python: LiteRT, OpenVINO, grpcio, numpy; gramine-secret-server: "
    "what the secret server as an enclave needs).",
)
@click.option(
    "--requirements",
    "requirements",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also install this pip requirements file (pinned versions; repeatable).",
)
def gramine(
    rootfs: Path,
    archive: Path | None,
    keyring: Path | None,
    repository: str | None,
    fingerprints: tuple[str, ...],
    mirror: str,
    runtimes: tuple[str, ...],
    requirements: tuple[Path, ...],
) -> None:
    """Make a REAL Gramine 1.9 base root filesystem in ROOTFS (root needed: mmdebstrap, chroot).

    Debian 12 (minbase, by mmdebstrap from a Debian mirror), Gramine 1.9 from Gramine's
    official package repository (its signing key pinned by fingerprint) or from --archive, the
    Python runtimes the frameworks need (pip, from PyPI), every Python tree compiled to
    hash-based .pyc, and the runtime user enclave (uid 10001). Builds on it boot under the
    real Gramine LibOS (`run --simulate` uses gramine-direct). Use it as --base dir:ROOTFS.
    Made in a hidden sibling directory and renamed into place when complete.
    """
    from enclave_build.base_images import BASES

    from ..realbase import BaseRecipe, GramineArchive, GramineRepository, make_gramine_base
    from .output import progress_interval

    with errors():
        if archive is not None and (keyring or repository or fingerprints):
            raise UsageError(
                "--archive installs Gramine from that file: --keyring, "
                "--repository and --key-fingerprint are for the repository route"
            )
        if fingerprints and not keyring:
            raise UsageError("--key-fingerprint: pass that key with --keyring FILE")
        if archive is not None:
            source: GramineArchive | GramineRepository = GramineArchive(archive)
        else:
            options: dict[str, Any] = {}
            if repository:
                options["url"] = repository
            if fingerprints:
                options["fingerprints"] = tuple(f.replace(" ", "").upper() for f in fingerprints)
            source = GramineRepository(**options)
        lists = [
            BASES[name].directory / "requirements.txt"
            for name in (runtimes or (() if requirements else ("gramine-python",)))
        ]
        recipe = BaseRecipe(rootfs, source, tuple(lists) + tuple(requirements), keyring, mirror)
        make_gramine_base(
            recipe, log=lambda line: click.echo(line, err=True), heartbeat=progress_interval()
        )
