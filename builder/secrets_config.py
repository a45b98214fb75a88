"""Write a secret server's secrets.toml from the policy fragments of one or more builds.

Each build writes ``secrets-policy.toml`` next to its ``measurements.json``: the measurements it
refers to and one ``[[secrets]]`` rule per key. A secret server serving several services needs
all of them, plus its own ``[server]`` and ``[attestation]`` settings.
:func:`compose_config` merges the fragments (paths made absolute against each fragment's
directory), adds those settings, checks the result with the secret server's own loader and
writes it atomically with tomli-w. ``enclave-build secrets config`` is the CLI for it.
"""

from __future__ import annotations

import os
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from .errors import EnclaveBuildError, UsageError

POLICY_FILE = "secrets-policy.toml"


class SecretsConfigError(EnclaveBuildError):
    pass


@dataclass(frozen=True)
class ServerSide:
    """The secret server's own settings (what no build knows)."""

    cert: Path
    key: Path
    listen: str = "0.0.0.0:4433"
    root_ca: str = "intel"                 # or a PEM/DER file (a synthetic test root: warned)
    collateral: Path | None = None         # offline collateral file, or
    pccs_url: str | None = None            # a PCCS to fetch it from
    audit_log: str | None = "audit.jsonl"
    extra_server: dict[str, Any] = field(default_factory=dict)


def _fragment(path: Path) -> tuple[Path, dict[str, Any]]:
    if path.is_dir():
        path = path / POLICY_FILE
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path}: no such policy fragment (a build with encrypted content "
                         f"writes {POLICY_FILE} into its output directory)") from None
    except tomllib.TOMLDecodeError as exc:
        raise SecretsConfigError(f"{path}: not TOML ({exc})") from None
    unknown = sorted(set(data) - {"measurements", "secrets"})
    if unknown:
        raise SecretsConfigError(f"{path}: {', '.join(unknown)}: not part of a policy fragment "
                                 "(only measurements and [[secrets]])")
    return path, data


def _absolute(base: Path, value: str) -> str:
    p = Path(value)
    return str(p if p.is_absolute() else (base / p).resolve())


def merge_fragments(paths: list[Path]) -> tuple[list[str], list[dict[str, Any]]]:
    """All measurements (absolute, in order, once each) and all [[secrets]] rules; the same
    secret named twice must be the same rule."""
    measurements: list[str] = []
    secrets: dict[str, dict[str, Any]] = {}
    for given in paths:
        path, data = _fragment(Path(given))
        base = path.parent
        for item in data.get("measurements", []):
            absolute = _absolute(base, item)
            if absolute not in measurements:
                measurements.append(absolute)
        for rule in data.get("secrets", []):
            rule = dict(rule)
            if "file" in rule:
                rule["file"] = _absolute(base, rule["file"])
            name = rule.get("name")
            if name in secrets:
                if secrets[name] != rule:
                    merged = secrets[name]
                    if {k: v for k, v in merged.items() if k != "allow"} != \
                            {k: v for k, v in rule.items() if k != "allow"}:
                        raise SecretsConfigError(
                            f"{path}: secret {name!r} differs from the rule of the same name in "
                            "an earlier fragment (another key file or match mode)")
                    # The same key shared by several services: admit all of them.
                    merged["allow"] = list(dict.fromkeys(merged["allow"] + rule["allow"]))
                continue
            secrets[name] = rule
    return measurements, list(secrets.values())


def compose_config(policies: list[Path], server: ServerSide) -> dict[str, Any]:
    measurements, secrets = merge_fragments(policies)
    if not secrets:
        raise UsageError("the policy fragments release no secret: nothing to serve")
    srv: dict[str, Any] = {"listen": server.listen, "cert": str(server.cert.resolve()),
                           "key": str(server.key.resolve()), **server.extra_server}
    if server.audit_log:
        srv["audit_log"] = server.audit_log
    att: dict[str, Any] = {"root_ca": server.root_ca}
    if (server.collateral is None) == (server.pccs_url is None):
        raise UsageError("give exactly one of --collateral FILE and --pccs-url URL")
    if server.collateral is not None:
        att["collateral"] = str(server.collateral.resolve())
    else:
        att["pccs_url"] = server.pccs_url
    return {"measurements": measurements, "server": srv, "attestation": att, "secrets": secrets}


def write_config(target: Path, config: dict[str, Any], *, force: bool = False) -> Path:
    """Write *config* as TOML to *target* atomically, after the secret server's own loader
    accepted it (relative paths in it resolve against *target*'s directory)."""
    from attestation.config import ConfigError, load_config

    target = Path(target)
    if target.exists() and not force:
        raise UsageError(f"{target} exists (use --force to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(b"# secrets.toml for enclave-build's secret server, written by "
                         b"`enclave-build secrets config`.\n")
            tomli_w.dump(config, handle)
        try:
            load_config(tmp)
        except ConfigError as exc:
            raise SecretsConfigError(f"the composed configuration is not valid: {exc}") from None
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target
