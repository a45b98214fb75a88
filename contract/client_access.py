"""Who may use a model: ``[[models]] clients`` in spec.toml, ``models[].clients`` in
model-server.json.

Each entry names client identities the TLS layer has already accepted (mutual TLS under the
server's client CA)::

    "sha256:HEX"   the SHA-256 (64 hex digits) of the client certificate's DER
                   SubjectPublicKeyInfo: one key pair, whatever certificate carries it
    "CN=NAME"      the common name of the client certificate's subject (exactly, case
                   sensitive); a certificate whose subject has several common names matches
                   no CN= entry

A model without a list is open to every client the TLS layer accepted. An entry is parsed by
:func:`parse_client` (the spec's and the configuration's one rule); :func:`allows` decides a
request. Standard library only: this module ships into every image that runs the model server.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from .errors import ContractError
from .schema import Problem

#: The entry kinds, as written before the value.
PIN_PREFIX = "sha256:"
NAME_PREFIX = "CN="
PREFIXES = (PIN_PREFIX, NAME_PREFIX)
ENTRY_DOC = '"sha256:HEX" (SHA-256 of the client certificate\'s SubjectPublicKeyInfo) or "CN=NAME"'
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
#: Longest common name X.509 allows (ub-common-name).
MAX_NAME = 64


@dataclass(frozen=True)
class ClientRule:
    """One entry: *kind* ``"sha256"`` (value: 64 lower-case hex digits) or ``"cn"`` (value:
    the common name)."""

    kind: str
    value: str

    def __str__(self) -> str:
        return (PIN_PREFIX if self.kind == "sha256" else NAME_PREFIX) + self.value


@dataclass(frozen=True)
class ClientIdentity:
    """What the TLS layer established about a client: the SHA-256 of its certificate's
    SubjectPublicKeyInfo (lower-case hex) and its subject's common names."""

    spki_sha256: str
    common_names: tuple[str, ...]


class ClientEntryError(ContractError):
    """An entry that is not ``sha256:HEX`` or ``CN=NAME``; the message says why."""


def parse_client(entry: str) -> ClientRule:
    """*entry* as a rule, or ClientEntryError saying what is wrong and what is allowed."""
    if entry.startswith(PIN_PREFIX):
        digest = entry[len(PIN_PREFIX) :]
        if not _HEX64.fullmatch(digest):
            got = (
                f"{len(digest)} characters"
                if re.fullmatch(r"[0-9a-fA-F]*", digest)
                else "characters that are not hex digits"
            )
            raise ClientEntryError(
                f"{entry!r}: sha256: needs 64 hex digits (the SHA-256 of the client "
                f"certificate's DER SubjectPublicKeyInfo), got {got}"
            )
        return ClientRule("sha256", digest.lower())
    if entry.startswith(NAME_PREFIX):
        name = entry[len(NAME_PREFIX) :]
        if not name or name.strip() != name or len(name) > MAX_NAME:
            raise ClientEntryError(
                f"{entry!r}: CN= needs the client certificate's common name, 1 to {MAX_NAME} "
                "characters without leading or trailing spaces"
            )
        return ClientRule("cn", name)
    cut = min((i for i in (entry.find(":"), entry.find("=")) if i >= 0), default=-1)
    if cut < 0:
        raise ClientEntryError(f"{entry!r}: no identity kind; allowed: {ENTRY_DOC}")
    prefix = entry[: cut + 1]
    hint = difflib.get_close_matches(prefix, PREFIXES, n=1, cutoff=0.5)
    if not hint:
        hint = [p for p in PREFIXES if p.lower() == prefix.lower()]
    mean = f"did you mean {hint[0]!r}? " if hint else ""
    raise ClientEntryError(
        f"{entry!r}: no such client identity kind {prefix!r}; {mean}allowed: {ENTRY_DOC}"
    )


def parse_clients(entries: list[str] | tuple[str, ...]) -> tuple[ClientRule, ...]:
    """Every entry parsed (the first bad one raises)."""
    return tuple(parse_client(e) for e in entries)


def allows(rules: tuple[ClientRule, ...], client: ClientIdentity | None) -> bool:
    """Whether a client may use a model restricted to *rules* (*client* None: no certificate,
    which no list allows)."""
    if client is None:
        return False
    names = client.common_names if len(client.common_names) == 1 else ()
    for rule in rules:
        if rule.kind == "sha256" and rule.value == client.spki_sha256:
            return True
        if rule.kind == "cn" and rule.value in names:
            return True
    return False


__all__ = [
    "ClientRule",
    "ClientIdentity",
    "ClientEntryError",
    "parse_client",
    "parse_clients",
    "allows",
    "PREFIXES",
    "PIN_PREFIX",
    "NAME_PREFIX",
    "ENTRY_DOC",
]


def client_list_problems(clients: list[str], where: tuple[str | int, ...]) -> list[Problem]:
    """What is wrong with a ``clients`` list at *where*: entries that are not well formed, and
    entries listed twice."""
    problems: list[Problem] = []
    seen: set[ClientRule] = set()
    for position, entry in enumerate(clients):
        try:
            rule = parse_client(entry)
        except ClientEntryError as exc:
            problems.append(Problem((*where, position), str(exc)))
            continue
        if rule in seen:
            problems.append(Problem((*where, position), f"{entry!r} is listed twice"))
        seen.add(rule)
    return problems
