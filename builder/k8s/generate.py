"""The Python API behind ``enclave-build k8s``: build output in, kustomize tree out."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..deploy.settings import validate_deploy
from ..errors import UsageError
from .inputs import K8sError, read_build_output
from .layout import Manifests, generate, write


@dataclass(frozen=True)
class Overrides:
    """Command-line values that take precedence over the build's [deploy] settings."""

    image: str | None = None  # REGISTRY/NAME@sha256:... the image was copied to
    aesmd_image: str | None = None
    secret_server_image: str | None = None
    pccs_url: str | None = None
    allow_debug: bool = False  # deploy a DEBUG enclave (test clusters only)
    #: a `profile --json` report: size the EPC request from it (builder.k8s.measured)
    profile: Path | None = None


def render(build_dir: str | Path, overrides: Overrides = Overrides()) -> Manifests:
    build = read_build_output(build_dir, overrides.image, allow_debug=overrides.allow_debug)
    changes: dict[str, Any] = {
        k: v
        for k, v in (
            ("aesmd_image", overrides.aesmd_image),
            ("secret_server_image", overrides.secret_server_image),
            ("pccs_url", overrides.pccs_url),
        )
        if v is not None
    }
    if changes:
        # The same checks as the spec's [deploy] keys they replace.
        try:
            validate_deploy(changes, {}, "command line")
        except UsageError as exc:
            raise K8sError(
                re.sub(
                    r"command line: deploy\.(\w+)",
                    lambda m: "--" + m.group(1).replace("_", "-"),
                    str(exc),
                )
            ) from None
        service = replace(build.service, deploy=replace(build.service.deploy, **changes))
        build = replace(build, service=service)
    note = None
    if overrides.profile is not None:
        from .measured import MeasuredProfile, profiled_enclave

        try:
            enclave, note = profiled_enclave(
                build.service.service,
                build.service.enclave,
                MeasuredProfile.load(overrides.profile),
            )
        except UsageError as exc:
            raise K8sError(str(exc)) from None
        build = replace(build, service=replace(build.service, enclave=enclave))
    manifests = generate(build)
    if note is not None:
        manifests.notes.append(note)
    if build.measurements.debug:
        manifests.notes.insert(
            0,
            "WARNING: this is a DEBUG enclave (--allow-debug): the host "
            "can read its memory; never run it with real models or keys",
        )
    return manifests


def generate_k8s(
    build_dir: str | Path, output: str | Path, overrides: Overrides = Overrides()
) -> tuple[Manifests, list[str]]:
    """Render and write; returns the manifests and every note for the operator."""
    manifests = render(build_dir, overrides)
    notes = write(manifests, output)
    return manifests, manifests.notes + notes
