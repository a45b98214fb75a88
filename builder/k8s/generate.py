"""The Python API behind ``enclave-build k8s``: build output in, kustomize tree out."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from .inputs import read_build_output
from .layout import Manifests, generate, write


@dataclass(frozen=True)
class Overrides:
    """Command-line values that take precedence over the build's [deploy] settings."""

    image: str | None = None                # REGISTRY/NAME@sha256:... the image was copied to
    aesmd_image: str | None = None
    secret_server_image: str | None = None
    pccs_url: str | None = None


def render(build_dir: str | Path, overrides: Overrides = Overrides()) -> Manifests:
    build = read_build_output(build_dir, overrides.image)
    changes = {k: v for k, v in (("aesmd_image", overrides.aesmd_image),
                                 ("secret_server_image", overrides.secret_server_image),
                                 ("pccs_url", overrides.pccs_url)) if v}
    if changes:
        service = replace(build.service, deploy=replace(build.service.deploy, **changes))
        build = replace(build, service=service)
    return generate(build)


def generate_k8s(build_dir: str | Path, output: str | Path,
                 overrides: Overrides = Overrides()) -> tuple[Manifests, list[str]]:
    """Render and write; returns the manifests and every note for the operator."""
    manifests = render(build_dir, overrides)
    notes = write(manifests, output)
    return manifests, manifests.notes + notes
