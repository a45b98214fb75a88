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
"""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass
from pathlib import Path

from .measurements import Measurements, MeasurementsError

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class PolicyError(ValueError):
    """The policy configuration is invalid."""


@dataclass(frozen=True)
class Identity:
    """What an attested quote says about the enclave."""

    mr_enclave: str
    mr_signer: str
    isv_prod_id: int
    isv_svn: int
    debug: bool = False


@dataclass(frozen=True)
class SecretRule:
    name: str
    file: Path | None   # None: uploaded by an owner at run time (attestation.upload)
    allow: tuple[str, ...]
    match: str = "mr_enclave"


@dataclass(frozen=True)
class Decision:
    secret: SecretRule | None
    reason: str
    service: str | None = None


@dataclass
class Policy:
    measurements: list[Measurements]
    secrets: list[SecretRule]

    @classmethod
    def build(cls, patterns: list[str], secrets: list[SecretRule], base: Path) -> "Policy":
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
                raise PolicyError(f"secret {rule.name!r}: match must be \"mr_enclave\" or "
                                  f"\"signer\", not {rule.match!r}")
            for entry in rule.allow:
                if not _HEX64.match(entry) and entry not in services:
                    raise PolicyError(f"secret {rule.name!r} allows {entry!r}, which is neither a "
                                      "64-hex MRENCLAVE nor a service in the measurements files")
        return cls(found, list(secrets))

    def _matches(self, rule: SecretRule, who: Identity) -> str | None:
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
                if (rule.match == "signer" and m.mr_signer == who.mr_signer
                        and m.isv_prod_id == who.isv_prod_id and who.isv_svn >= m.isv_svn):
                    return entry
        return None

    def decide(self, who: Identity, server_name: str | None = None) -> Decision:
        named = [rule for rule in self.secrets if rule.name == server_name]
        if named:
            via = self._matches(named[0], who)
            if via is None:
                return Decision(None, f"secret {named[0].name!r} (the TLS server name) is not "
                                      "released to this enclave identity")
            return Decision(named[0], f"allowed via {via} (named by the TLS server name)",
                            via if not _HEX64.match(via) else None)
        candidates = [(rule, via) for rule in self.secrets
                      if (via := self._matches(rule, who)) is not None]
        if not candidates:
            return Decision(None, "no secret is released to this enclave identity")
        if len(candidates) > 1:
            chosen = [c for c in candidates if c[0].name == server_name]
            if len(chosen) != 1:
                names = ", ".join(sorted(c[0].name for c in candidates))
                return Decision(None, f"several secrets ({names}) match and the TLS server name "
                                      f"{server_name!r} selects none")
            candidates = chosen
        rule, via = candidates[0]
        return Decision(rule, f"allowed via {via}", via if not _HEX64.match(via) else None)
