"""Which attested enclave receives which secret.

Identities come from the measurements.json files builds write (listed by path or glob). A
secret's ``allow`` list names services (every build of that service listed in the measurements)
or MRENCLAVE values. How a service's builds are matched is the secret's ``match``:

* ``"mr_enclave"`` (default): exactly one of the measured builds;
* ``"signer"``: MRSIGNER and ISV_PROD_ID equal to a measured build and ISV_SVN at least its
  ISV_SVN — later builds signed by the same key qualify without a policy change; rollback to a
  lower SVN does not.

The TLS server name (SNI) the client sent:

* equal to the name of a configured secret (enclave-build's in-enclave client asks for each key
  this way): only that secret may be released, and it is refused if this enclave is not allowed
  it — even when other secrets would match;
* anything else (Gramine's constructor sends the server's host name): the one secret released to
  this enclave; when several would be, the request is refused as ambiguous.

Occlum's GrSecret clients name what they ask for: a secret's
name, or its ``requested_as`` (Occlum's init asks for its image key as ``image_key``; each
service's image-key rule, ``KEY@image_key``, is released only to that service, so one server
holds many). A secret's ``encoding`` says what the enclave receives: the stored bytes
(``raw``) or, for Occlum's image key, ``hex-dashes`` text. Only raw secrets asked for by their
own name take part in the secret_prov exchange.

This module holds the rules and who they admit; which secret a client receives is decided by
:func:`attestation.server.decide.decide`.
"""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass
from pathlib import Path

from enclave_build.contract.identity import EnclaveIdentity
from enclave_build.contract.secrets_config import ENCODINGS, SecretRule

from .errors import AttestationConfigError
from .measurements import Measurements, MeasurementsError

_HEX64 = re.compile(r"^[0-9a-f]{64}\Z")


class PolicyError(AttestationConfigError, ValueError):
    """The policy configuration is invalid."""


#: What an attested quote says about the enclave (the contract's one enclave identity).
Identity = EnclaveIdentity


@dataclass
class Policy:
    measurements: list[Measurements]
    secrets: list[SecretRule]

    @classmethod
    def build(cls, patterns: list[str], secrets: list[SecretRule], base: Path) -> Policy:
        found: list[Measurements] = []
        for pattern in patterns:
            full = str(base / pattern) if not Path(pattern).is_absolute() else pattern
            paths = sorted(glob.glob(full))
            if not paths:
                raise PolicyError(f"measurements {pattern!r} matches no file")
            for path in paths:
                try:
                    found.append(Measurements.load(path))
                except MeasurementsError as exc:
                    raise PolicyError(str(exc)) from None
        services = {m.service for m in found}
        names = set()
        for rule in secrets:
            if rule.name in names:
                raise PolicyError(f"secret {rule.name!r} is defined twice")
            names.add(rule.name)
            if rule.match not in ("mr_enclave", "signer"):
                raise PolicyError(
                    f'secret {rule.name!r}: match must be "mr_enclave" or '
                    f'"signer", not {rule.match!r}'
                )
            if rule.encoding not in ENCODINGS:
                raise PolicyError(
                    f"secret {rule.name!r}: encoding must be one of "
                    + ", ".join(f'"{e}"' for e in ENCODINGS)
                    + f", not {rule.encoding!r}"
                )
            for entry in rule.allow:
                if not _HEX64.match(entry) and entry not in services:
                    raise PolicyError(
                        f"secret {rule.name!r} allows {entry!r}, which is neither a "
                        "64-hex MRENCLAVE nor a service in the measurements files"
                    )
        for rule in secrets:
            if rule.requested_as is not None and (
                not rule.requested_as or rule.requested_as in names
            ):
                raise PolicyError(
                    f"secret {rule.name!r}: requested_as {rule.requested_as!r} "
                    "is "
                    + (
                        "empty"
                        if not rule.requested_as
                        else "the name of a secret: a name asked for must mean one thing"
                    )
                )
        return cls(found, list(secrets))

    def knows(self, name: str) -> bool:
        """Whether a client may ask for *name* (a secret's name or a requested_as)."""
        return any(name in (rule.name, rule.requested_as) for rule in self.secrets)

    def admits(self, rule: SecretRule, who: Identity) -> str | None:
        """The service (or MRENCLAVE) through which *rule* admits *who*, or None."""
        for entry in rule.allow:
            if _HEX64.match(entry):
                if who.mr_enclave == entry:
                    return entry
                continue
            for m in self.measurements:
                if m.service != entry or m.debug != who.debug:
                    continue
                if rule.match == "mr_enclave" and m.mr_enclave == who.mr_enclave:
                    return entry
                if (
                    rule.match == "signer"
                    and m.mr_signer == who.mr_signer
                    and m.isv_prod_id == who.isv_prod_id
                    and who.isv_svn >= m.isv_svn
                ):
                    return entry
        return None


def is_mr_enclave(entry: str) -> bool:
    """Whether an ``allow`` entry is an MRENCLAVE (64 hex digits) rather than a service."""
    return bool(_HEX64.match(entry))
