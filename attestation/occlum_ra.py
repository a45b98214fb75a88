"""Occlum's RA-TLS measurement policy (``ra_config``), read and applied as Occlum does.

Occlum's gRPC RA-TLS library checks a peer's quote against one JSON object, found as the whole
of a server's ``dynamic_config.json`` and as ``ra_config`` in the client's ``init_ra_conf.json``
(the file Occlum's init reads from its initfs)::

    {"verify_mr_enclave": "on", "verify_mr_signer": "on", "verify_isv_prod_id": "on",
     "verify_isv_svn": "on", "verify_config_svn": "on", "verify_enclave_debuggable": "on",
     "sgx_mrs": [{"mr_enclave": "<64 hex>", "mr_signer": "<64 hex>", "isv_prod_id": 0,
                  "isv_svn": 0, "config_svn": 0, "debuggable": false}]}

The peer passes when **one** ``sgx_mrs`` entry matches on every field whose flag is ``"on"``;
a flag that is ``"off"`` skips that field. Comparisons are equalities, ISV_SVN included (no
"at least"), and ``debuggable`` is compared with the quote's DEBUG attribute. Occlum reads at
most 16 entries.

Differences, all stricter, from Occlum's C++ reading: every flag must be the string ``"on"`` or
``"off"`` (Occlum treats anything but "on" as off) and all six are required (as init's serde
struct requires them); a field whose flag is on must be well formed (Occlum turns a bad or empty
hex string into zeros); more than 16 entries is an error instead of being ignored. And the
quote itself is verified by :mod:`attestation.verify` with its TCB policy (Occlum's library
lets every non-terminal TCB status pass with a warning).

The secret server applies a ``[grsecret] client_ra_config`` to GrSecret clients through
:func:`attestation.server.decide.decide`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import AttestationConfigError

FLAGS = (
    "verify_mr_enclave",
    "verify_mr_signer",
    "verify_isv_prod_id",
    "verify_isv_svn",
    "verify_config_svn",
    "verify_enclave_debuggable",
)
MAX_MEASUREMENTS = 16  # Occlum's SGX_MESUREMENTS_MAX_SIZE
CONFIG_SVN_OFFSET = 308  # u16 LE in a v3 quote (report body 48 + 260)
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}\Z")


class RaConfigError(AttestationConfigError, ValueError):
    """An ra_config file is invalid; the message names the file and the key."""


@dataclass(frozen=True)
class SgxMeasurement:
    """One ``sgx_mrs`` entry."""

    mr_enclave: str = ""  # lower-case hex, or "" when unset
    mr_signer: str = ""
    isv_prod_id: int = 0
    isv_svn: int = 0
    config_svn: int = 0
    debuggable: bool = False


@dataclass(frozen=True)
class PeerIdentity:
    """The fields of a verified quote an ra_config compares."""

    mr_enclave: str
    mr_signer: str
    isv_prod_id: int
    isv_svn: int
    config_svn: int
    debuggable: bool


@dataclass(frozen=True)
class RaConfig:
    verify_mr_enclave: bool
    verify_mr_signer: bool
    verify_isv_prod_id: bool
    verify_isv_svn: bool
    verify_config_svn: bool
    verify_enclave_debuggable: bool
    sgx_mrs: tuple[SgxMeasurement, ...]
    source: str = "ra_config"

    @property
    def checks_nothing(self) -> bool:
        """All flags off: any genuine enclave passes."""
        return not any(getattr(self, flag) for flag in FLAGS)

    def mismatch(self, peer: PeerIdentity) -> str | None:
        """None when an entry matches *peer*; otherwise why not (for logs and the peer)."""
        if not self.sgx_mrs:
            return f"{self.source}: sgx_mrs is empty, so no enclave is accepted"
        reasons = []
        for index, entry in enumerate(self.sgx_mrs):
            differs = [
                name
                for name, flag, want, got in (
                    ("mr_enclave", self.verify_mr_enclave, entry.mr_enclave, peer.mr_enclave),
                    ("mr_signer", self.verify_mr_signer, entry.mr_signer, peer.mr_signer),
                    ("isv_prod_id", self.verify_isv_prod_id, entry.isv_prod_id, peer.isv_prod_id),
                    ("isv_svn", self.verify_isv_svn, entry.isv_svn, peer.isv_svn),
                    ("config_svn", self.verify_config_svn, entry.config_svn, peer.config_svn),
                    (
                        "debuggable",
                        self.verify_enclave_debuggable,
                        entry.debuggable,
                        peer.debuggable,
                    ),
                )
                if flag and want != got
            ]
            if not differs:
                return None
            reasons.append(f"sgx_mrs[{index}]: {', '.join(differs)} differ")
        return (
            f"enclave {peer.mr_enclave} (mr_signer {peer.mr_signer}, isv_prod_id "
            f"{peer.isv_prod_id}, isv_svn {peer.isv_svn}, config_svn {peer.config_svn}, "
            f"debuggable {str(peer.debuggable).lower()}) matches no entry of "
            f"{self.source}: {'; '.join(reasons)}"
        )

    @classmethod
    def from_dict(cls, data: object, source: str = "ra_config") -> RaConfig:
        if not isinstance(data, dict):
            raise RaConfigError(f"{source}: expected a JSON object")
        flags = {}
        for flag in FLAGS:
            if flag not in data:
                raise RaConfigError(f'{source}: {flag}: required key is missing ("on" or "off")')
            value = data[flag]
            if value not in ("on", "off"):
                raise RaConfigError(f'{source}: {flag}: {value!r}; allowed: "on", "off"')
            flags[flag] = value == "on"
        mrs = data.get("sgx_mrs")
        if not isinstance(mrs, list):
            raise RaConfigError(f"{source}: sgx_mrs: required array of measurements is missing")
        if len(mrs) > MAX_MEASUREMENTS:
            raise RaConfigError(
                f"{source}: sgx_mrs: {len(mrs)} entries; Occlum reads at most "
                f"{MAX_MEASUREMENTS} (the rest would be ignored)"
            )
        entries = [
            _measurement(item, f"{source}: sgx_mrs[{index}]", flags)
            for index, item in enumerate(mrs)
        ]
        return cls(**flags, sgx_mrs=tuple(entries), source=source)

    @classmethod
    def load(cls, path: str | Path) -> RaConfig:
        """An Occlum ``dynamic_config.json`` (the object itself) or ``init_ra_conf.json`` (its
        ``ra_config`` member)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise RaConfigError(f"{path}: not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise RaConfigError(f"{path}: cannot read: {exc}") from None
        except json.JSONDecodeError as exc:
            raise RaConfigError(
                f"{path}: invalid JSON: line {exc.lineno} column {exc.colno}: {exc.msg}"
            ) from None
        if isinstance(data, dict) and "ra_config" in data:
            return cls.from_dict(data["ra_config"], f"{path}: ra_config")
        return cls.from_dict(data, str(path))


def _measurement(item: object, where: str, flags: dict[str, bool]) -> SgxMeasurement:
    if not isinstance(item, dict):
        raise RaConfigError(f"{where}: expected an object")
    known = {"mr_enclave", "mr_signer", "isv_prod_id", "isv_svn", "config_svn", "debuggable"}
    extra = sorted(set(item) - known)
    if extra:
        raise RaConfigError(f"{where}.{extra[0]}: unknown key; allowed: {', '.join(sorted(known))}")
    values: dict = {}
    for name, flag in (("mr_enclave", "verify_mr_enclave"), ("mr_signer", "verify_mr_signer")):
        value = item.get(name, "")
        if not isinstance(value, str):
            raise RaConfigError(f"{where}.{name}: expected a string of 64 hex digits")
        if value and not _HEX64.match(value):
            raise RaConfigError(f"{where}.{name}: {value!r} is not 64 hex digits")
        if flags[flag] and not value:
            raise RaConfigError(f'{where}.{name}: empty, but {flag} is "on"')
        values[name] = value.lower()
    for name, flag in (
        ("isv_prod_id", "verify_isv_prod_id"),
        ("isv_svn", "verify_isv_svn"),
        ("config_svn", "verify_config_svn"),
    ):
        value = item.get(name, 0)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0xFFFF:
            raise RaConfigError(f"{where}.{name}: {value!r} is not an integer 0..65535")
        if flags[flag] and name not in item:
            raise RaConfigError(f'{where}.{name}: missing, but {flag} is "on"')
        values[name] = value
    debuggable = item.get("debuggable", False)
    if not isinstance(debuggable, bool):
        raise RaConfigError(f"{where}.debuggable: expected true or false, got {debuggable!r}")
    if flags["verify_enclave_debuggable"] and "debuggable" not in item:
        raise RaConfigError(f'{where}.debuggable: missing, but verify_enclave_debuggable is "on"')
    return SgxMeasurement(**values, debuggable=debuggable)
