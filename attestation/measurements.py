"""measurements.json: what a build produced, and what a secret server trusts.

This module is the single definition of the format; the builder writes it and the secret
server reads it (``attestation/`` never imports ``builder/``)::

    {"service": "...", "framework": "...", "libos": "gramine",
     "mr_enclave": "<64 hex>", "mr_signer": "<64 hex>", "isv_prod_id": 0, "isv_svn": 0,
     "debug": false, "image": {"ref": "name:tag" | null, "digest": "sha256:..." | null}}
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from .errors import AttestationError

_HEX32 = re.compile(r"^[0-9a-f]{64}\Z")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}\Z")


class MeasurementsError(AttestationError, ValueError):
    """A measurements.json file is malformed."""


@dataclass(frozen=True)
class ImageRef:
    ref: str | None
    digest: str | None


@dataclass(frozen=True)
class Measurements:
    service: str
    framework: str
    libos: str
    mr_enclave: str
    mr_signer: str
    isv_prod_id: int
    isv_svn: int
    debug: bool
    image: ImageRef

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: Any, source: str = "measurements") -> "Measurements":
        if not isinstance(data, dict):
            raise MeasurementsError(f"{source}: expected a JSON object")
        fields = {"service": str, "framework": str, "libos": str, "mr_enclave": str,
                  "mr_signer": str, "isv_prod_id": int, "isv_svn": int, "debug": bool}
        for name, kind in fields.items():
            value = data.get(name)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise MeasurementsError(f"{source}: {name!r} must be a {kind.__name__}")
        for name in ("mr_enclave", "mr_signer"):
            if not _HEX32.match(data[name]):
                raise MeasurementsError(f"{source}: {name!r} must be 64 lower-case hex digits")
        for name in ("isv_prod_id", "isv_svn"):
            if not 0 <= data[name] <= 0xFFFF:
                raise MeasurementsError(f"{source}: {name!r} must be in 0..65535")
        image = data.get("image") or {}
        if not isinstance(image, dict):
            raise MeasurementsError(f"{source}: 'image' must be an object")
        digest = image.get("digest")
        if digest is not None and not (isinstance(digest, str) and _DIGEST.match(digest)):
            raise MeasurementsError(f"{source}: image.digest must be 'sha256:<64 hex>'")
        unknown = set(data) - set(fields) - {"image"}
        if unknown:
            raise MeasurementsError(f"{source}: unknown keys {', '.join(sorted(unknown))}")
        return cls(**{k: data[k] for k in fields}, image=ImageRef(image.get("ref"), digest))

    @classmethod
    def load(cls, path: str | Path) -> "Measurements":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise MeasurementsError(f"{path}: cannot read measurements: {exc}") from exc
        return cls.from_dict(data, str(path))
