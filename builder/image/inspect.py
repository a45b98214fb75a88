"""Read an enclave image's identity back: its labels and its SIGSTRUCT, and check they agree."""

from __future__ import annotations

import posixpath
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attestation.measurements import Measurements

from ..errors import EnclaveBuildError
from ..gramine.sigstruct import ARCH_LAYOUT, Sigstruct, describe
from .assemble import LABEL_PREFIX
from .oci import BlobStore, Image, ImageError
from .reference import parse_source
from .registry import RegistryClient
from ..cache import cache_root
from .sources import read_docker_archive, read_oci_layout
from .unpack import OPAQUE, WHITEOUT, member_path, open_layer


def read_file(image: Image, path: str) -> bytes | None:
    """The file at *path*, read from the topmost layer that has it (no full unpacking)."""
    want = path.lstrip("/")
    parent = posixpath.dirname(want)
    for index, layer in enumerate(reversed(image.layers)):
        try:
            with open(image.store.path(layer.digest), "rb") as handle:
                with tarfile.open(fileobj=open_layer(handle), mode="r|") as tar:  # type: ignore[arg-type]
                    hidden = False
                    for member in tar:
                        name = member_path(member.name)
                        if name == want and member.isfile():
                            data = tar.extractfile(member)
                            return data.read() if data else None
                        if name in (posixpath.join(parent, WHITEOUT + posixpath.basename(want)),
                                    posixpath.join(parent, OPAQUE)):
                            hidden = True
                    if hidden:
                        return None
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise ImageError(f"{image.source}: layer {layer.digest}: cannot read: {exc}") \
                from None
    return None


def open_image(text: str) -> tuple[Image, Measurements | None]:
    """An image from a reference, or from a build output directory (DIR/oci + measurements)."""
    directory = Path(text)
    store = BlobStore(cache_root() / "blobs")
    if directory.is_dir():
        measurements = None
        if (directory / "measurements.json").exists():
            measurements = Measurements.load(directory / "measurements.json")
        layout = directory / "oci" if (directory / "oci").is_dir() else directory
        return read_oci_layout(layout, None, store, str(layout)), measurements
    source = parse_source(text)
    if source.transport == "docker":
        assert source.registry is not None
        return RegistryClient(source.registry.host).pull(source.registry, store), None
    if source.transport == "oci":
        return read_oci_layout(Path(source.location), source.tag, store, text), None
    if source.transport == "docker-archive":
        return read_docker_archive(Path(source.location), store, text), None
    from .sources import open_base
    return open_base(text).image, None


@dataclass
class Inspection:
    image: str
    digest: str | None
    labels: dict[str, str]
    sigstruct: dict[str, Any] | None
    problems: list[str] = field(default_factory=list)

    @property
    def agrees(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"image": self.image, "digest": self.digest, "labels": self.labels,
                "sigstruct": self.sigstruct, "agrees": self.agrees, "problems": self.problems}


def inspect_image(text: str) -> Inspection:
    image, measurements = open_image(text)
    labels = {k[len(LABEL_PREFIX):]: v for k, v in image.labels.items()
              if k.startswith(LABEL_PREFIX)}
    result = Inspection(text, image.manifest_digest, labels, None)
    service = labels.get("service")
    if not service or "mr_enclave" not in labels:
        result.problems.append("no enclave-build labels: not an image built by enclave-build")
        return result
    entrypoint = (image.config.get("config") or {}).get("Entrypoint") or []
    sig_path = f"{entrypoint[1]}.sig" if len(entrypoint) == 2 else f"/enclave/{service}.sig"
    raw = read_file(image, sig_path)
    if raw is None:
        result.problems.append(f"the image has no SIGSTRUCT at {sig_path}")
        return result
    try:
        sig = Sigstruct.from_bytes(raw, ARCH_LAYOUT, sig_path)
    except EnclaveBuildError as exc:
        result.problems.append(str(exc))
        return result
    info = describe(sig)
    problem = sig.signature_problem(ARCH_LAYOUT)   # over the file's own signed bytes
    info["signature_valid"] = problem is None
    result.sigstruct = info
    if problem is not None:
        result.problems.append(f"the SIGSTRUCT's signature does not verify: {problem}")
    expected = {"mr_enclave": info["mr_enclave"], "mr_signer": info["mr_signer"],
                "isv_prod_id": str(info["isv_prod_id"]), "isv_svn": str(info["isv_svn"]),
                "debug": "true" if info["debug"] else "false"}
    for key, value in expected.items():
        if labels.get(key) != value:
            result.problems.append(f"label {LABEL_PREFIX}{key} = {labels.get(key)!r}, but the "
                                   f"SIGSTRUCT says {value!r}")
    if measurements is not None:
        for key in ("mr_enclave", "mr_signer", "isv_prod_id", "isv_svn", "debug"):
            got = getattr(measurements, key)
            want = info[key]
            if got != want:
                result.problems.append(f"measurements.json {key} = {got!r}, but the SIGSTRUCT "
                                       f"says {want!r}")
        if measurements.image.digest and measurements.image.digest != image.manifest_digest:
            result.problems.append(f"measurements.json names image {measurements.image.digest}, "
                                   f"the layout holds {image.manifest_digest}")
    return result


__all__ = ["inspect_image", "read_file", "open_image", "Inspection"]
