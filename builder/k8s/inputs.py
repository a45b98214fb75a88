"""What ``enclave-build k8s`` reads from a build output directory, checked and typed.

* ``measurements.json``: the enclave identity and the image (``ref`` and manifest ``digest``);
* ``service.json``: how the service runs (:mod:`builder.deploy.service_info`);
* ``secrets-policy.toml``: which key goes to which enclave (when the service fetches keys).

Kubernetes must run exactly the image that was measured, so the Deployment names it by digest
in a registry: a build that was not pushed is refused with what to do instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from enclave_build.contract.measurements import Measurements, MeasurementsError
from enclave_build.contract.names import MEASUREMENTS_FILE, POLICY_FILE, SERVICE_FILE

from ..deploy.service_info import ServiceInfo
from ..errors import EnclaveBuildError, UsageError
from ..image.reference import DOCKER_HUB, parse_registry_ref


class K8sError(EnclaveBuildError):
    """The build output cannot be deployed as it is (exit code 2: fix the input)."""

    exit_code = 2


@dataclass(frozen=True)
class BuildOutput:
    directory: Path
    measurements: Measurements
    measurements_text: str  # the file as written (shipped to the secret server as is)
    service: ServiceInfo
    policy: Path | None  # secrets-policy.toml, when the service fetches keys
    image: str  # REGISTRY/NAME@sha256:...


def pinned_image(
    measurements: Measurements, override: str | None = None, source: str = MEASUREMENTS_FILE
) -> str:
    """``REGISTRY/NAME@sha256:DIGEST`` of the built image, or a K8sError saying how to get one.

    *override* is a reference the operator copied the image to (e.g. with ``skopeo copy
    oci:BUILD/oci docker://REG/NAME:TAG``, which keeps the manifest digest); it must carry the
    build's digest."""
    digest = measurements.image.digest
    if digest is None:
        raise K8sError(
            f"{source}: the build recorded no image digest; rebuild with this enclave-build"
        )
    text = override or measurements.image.ref
    how = (
        f"push it first: `enclave-build build SPEC --push` records REGISTRY/NAME@{digest} "
        f"(or copy BUILD_DIR/oci to a registry, keeping the digest, e.g. `skopeo copy "
        f"oci:BUILD_DIR/oci docker://REGISTRY/NAME:TAG`, and pass --image "
        f"REGISTRY/NAME@{digest})"
    )
    if not text or "@" not in text:
        raise K8sError(
            f"{source}: image {text or '(none)'!r} is not a registry reference "
            f"pinned by digest, so the cluster could run another image than the "
            f"one measured; {how}"
        )
    try:
        ref = parse_registry_ref(text)
    except UsageError as exc:
        raise K8sError(f"{'--image' if override else source}: {exc}") from None
    if ref.digest != digest:
        raise K8sError(
            f"{'--image' if override else source}: {text!r} names digest "
            f"{ref.digest}, but the build produced {digest}: that is another image "
            "than the one measured"
        )
    name = text.split("@", 1)[0]
    head, _, last = name.rpartition("/")
    if ":" in last:
        name = (head + "/" if head else "") + last.split(":", 1)[0]
    if (
        ref.host == DOCKER_HUB
        and not re.match(r"^(docker\.io|index\.docker\.io)/", name)
        and "/" not in name
    ):
        raise K8sError(f"{'--image' if override else source}: {text!r} names no registry; {how}")
    return f"{name}@{digest}"


def read_build_output(
    directory: str | Path, image: str | None = None, *, allow_debug: bool = False
) -> BuildOutput:
    directory = Path(directory)
    if not directory.is_dir():
        raise UsageError(f"{directory}: not a build output directory")
    path = directory / MEASUREMENTS_FILE
    try:
        text = path.read_text(encoding="utf-8")
        measurements = Measurements.load(path)
    except FileNotFoundError:
        raise K8sError(
            f"{path}: not found: {directory} is not an enclave-build output "
            "(`enclave-build build SPEC --output DIR` writes one)"
        ) from None
    except MeasurementsError as exc:
        raise K8sError(str(exc)) from None
    if measurements.debug and not allow_debug:
        raise K8sError(
            f"{path}: debug: the build is a DEBUG enclave (the host can read its "
            "memory, and the secret server never releases keys to it); rebuild "
            "without [enclave] debug, or pass --allow-debug for a test cluster"
        )
    service = ServiceInfo.load(directory / SERVICE_FILE)
    if service.service != measurements.service:
        raise K8sError(
            f"{directory}: service.json describes {service.service!r} but "
            f"measurements.json {measurements.service!r}: files of two builds"
        )
    policy = directory / POLICY_FILE
    if service.keys and not policy.is_file():
        raise K8sError(
            f"{policy}: not found, but the service fetches keys "
            f"({', '.join(service.keys)}): the secret server needs its policy"
        )
    return BuildOutput(
        directory,
        measurements,
        text,
        service,
        policy if service.keys else None,
        pinned_image(measurements, image, str(path)),
    )
