"""measurements.json: what a build produced, and what a secret server trusts.

The builder writes it (:meth:`Measurements.to_json`); the secret server, `enclave-build k8s`,
`secrets config` and a model spec's ``server_measurements`` read it
(:meth:`Measurements.load`)::

    {"service": "...", "framework": "...", "libos": "gramine",
     "mr_enclave": "<64 hex>", "mr_signer": "<64 hex>", "isv_prod_id": 0, "isv_svn": 0,
     "debug": false, "image": {"ref": "name:tag" | null, "digest": "sha256:..." | null}}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ContractError
from .files import Locator, NoLocator, parse_json, raise_problems, read_text
from .identity import HEX64, HEX64_DOC, U16_MAX, EnclaveIdentity
from .names import MEASUREMENTS_FILE
from .schema import Field, Problem, Section, validate_table

DIGEST = r"sha256:[0-9a-f]{64}"


class MeasurementsError(ContractError):
    """A measurements.json file is missing or malformed."""


IMAGE = Section(
    "image",
    "the built image",
    (
        Field(
            "ref",
            "str",
            "the image reference the build used (NAME:TAG or NAME@DIGEST)",
            nullable=True,
        ),
        Field(
            "digest",
            "str",
            "the image's manifest digest",
            nullable=True,
            pattern=DIGEST,
            pattern_doc="'sha256:<64 hex>'",
        ),
    ),
)

SCHEMA = Section(
    "",
    "measurements.json: the enclave identity a build produced, and its image",
    (
        Field("service", "str", "the service's name", required=True),
        Field("framework", "str", "the framework plugin that planned it", required=True),
        Field("libos", "str", "the library OS that runs it", required=True),
        Field(
            "mr_enclave", "str", "MRENCLAVE", required=True, pattern=HEX64, pattern_doc=HEX64_DOC
        ),
        Field("mr_signer", "str", "MRSIGNER", required=True, pattern=HEX64, pattern_doc=HEX64_DOC),
        Field("isv_prod_id", "int", "ISV_PROD_ID", required=True, minimum=0, maximum=U16_MAX),
        Field("isv_svn", "int", "ISV_SVN", required=True, minimum=0, maximum=U16_MAX),
        Field("debug", "bool", "a DEBUG enclave", required=True),
        Field("image", "table", "the built image", section=IMAGE, nullable=True),
    ),
)


@dataclass(frozen=True)
class ImageRef:
    ref: str | None
    digest: str | None


@dataclass(frozen=True)
class Measurements:
    service: str
    framework: str
    libos: str
    identity: EnclaveIdentity
    image: ImageRef

    @property
    def mr_enclave(self) -> str:
        assert self.identity.mr_enclave is not None
        return self.identity.mr_enclave

    @property
    def mr_signer(self) -> str:
        return self.identity.mr_signer

    @property
    def isv_prod_id(self) -> int:
        return self.identity.isv_prod_id

    @property
    def isv_svn(self) -> int:
        return self.identity.isv_svn

    @property
    def debug(self) -> bool:
        return self.identity.debug

    def to_dict(self) -> dict[str, Any]:
        i = self.identity
        return {
            "service": self.service,
            "framework": self.framework,
            "libos": self.libos,
            "mr_enclave": i.mr_enclave,
            "mr_signer": i.mr_signer,
            "isv_prod_id": i.isv_prod_id,
            "isv_svn": i.isv_svn,
            "debug": i.debug,
            "image": {"ref": self.image.ref, "digest": self.image.digest},
        }

    def to_json(self) -> str:
        """The file's text (the one writer)."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(
        cls, data: Any, source: str = MEASUREMENTS_FILE, locator: Locator = NoLocator()
    ) -> Measurements:
        """Every problem of *data*, located, in one MeasurementsError."""
        problems: list[Problem] = []
        values = validate_table(SCHEMA, data, (), Path("."), problems, json=True)
        raise_problems(problems, source, locator, MeasurementsError)
        image = values["image"] or {"ref": None, "digest": None}
        return cls(
            values["service"],
            values["framework"],
            values["libos"],
            EnclaveIdentity(
                values["mr_enclave"],
                values["mr_signer"],
                values["isv_prod_id"],
                values["isv_svn"],
                values["debug"],
            ),
            ImageRef(image["ref"], image["digest"]),
        )

    @classmethod
    def parse(cls, text: str, source: str = MEASUREMENTS_FILE) -> Measurements:
        data, locator = parse_json(text, source, MeasurementsError)
        return cls.from_dict(data, source, locator)

    @classmethod
    def load(cls, path: str | Path) -> Measurements:
        """The one reader: *path* read and checked (MeasurementsError naming FILE:LINE:KEY)."""
        return cls.parse(read_text(path, MeasurementsError, "measurements"), str(path))


__all__ = ["Measurements", "MeasurementsError", "ImageRef", "SCHEMA", "IMAGE"]
