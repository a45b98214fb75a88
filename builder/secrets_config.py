"""Write a secret server's secrets.toml from the policy fragments of one or more builds.

Each build writes ``secrets-policy.toml`` next to its ``measurements.json``: the measurements it
refers to and one ``[[secrets]]`` rule per key. A secret server serving several services needs
all of them, plus its own ``[server]`` and ``[attestation]`` settings.
:func:`compose_config` merges the fragments (read by their contract type,
:class:`enclave_build.contract.policy_fragment.PolicyFragment`: paths made absolute against each
fragment's directory), adds those settings, and :func:`write_config` writes the result (the
contract type :class:`enclave_build.contract.secrets_config.SecretsConfig`) atomically after the
secret server's own loader and policy (as the server builds them) accepted it. ``enclave-build
secrets config`` is the CLI for it.

A fragment is not trusted: its keys must have the right types (every wrong key is reported,
with its line), its measurements files must parse, every key file must be a private (mode 0600) regular file of 16 bytes used by one secret
name only (per ``encoding``), and every allow entry must be a 64-hex MRENCLAVE or the service of
a merged build. Key files are confined to the fragment's own keys directory: the ``keys_dir``
its build recorded (``[secrets] keys_dir``, relative to the fragment), or the fragment's own
directory for a fragment without one; a key file outside it (``../`` or an absolute path, also
through a symbolic link) or owned by another user than the fragment is refused, unless
``allow_keys_outside`` (``--allow-keys-outside``) says otherwise, which warns for each.

An Occlum build's fragment also has ``encoding`` per rule and a ``KEY@image_key`` rule with
``requested_as = "image_key"`` (the name Occlum's init asks for, answered with the key's
``hex-dashes`` text); those are served by the GrSecret listener, which ``--grsecret-listen``
(:attr:`ServerSide.grsecret_listen`) adds as ``[grsecret] listen``.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import stat
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enclave_build.contract.measurements import Measurements, MeasurementsError
from enclave_build.contract.names import ISSUER_CA_CERT, ISSUER_CA_KEY, POLICY_FILE, SECRETS_FILE
from enclave_build.contract.policy_fragment import PolicyFragment, PolicyFragmentError
from enclave_build.contract.secrets_config import (
    KEY_SIZE,
    AttestationSettings,
    GrSecretSettings,
    IssuerSettings,
    SecretRule,
    SecretsConfig,
    ServerSettings,
    split_listen,
)

from .errors import EnclaveBuildError, UsageError


class SecretsConfigError(EnclaveBuildError):
    pass


@dataclass(frozen=True)
class ServerSide:
    """The secret server's own settings (what no build knows)."""

    cert: Path
    key: Path
    listen: str = "0.0.0.0:4433"
    root_ca: str = "intel"  # or a PEM/DER file (a synthetic test root: warned)
    collateral: Path | None = None  # offline collateral file, or
    pccs_url: str | None = None  # a PCCS to fetch it from
    audit_log: str | None = "audit.jsonl"
    #: other [server] settings (ServerSettings fields), e.g. {"max_tls": "1.2"}
    extra_server: dict[str, Any] = field(default_factory=dict)
    #: HOST:PORT of Occlum's GrSecret service ([grsecret] listen); None: not served
    grsecret_listen: str | None = None
    #: directory of issuer-ca.pem / issuer-ca.key (`secrets tls` writes them): the [issuer] that
    #: certifies attested enclaves' serving keys; None: no certificates issued
    issuer_ca: Path | None = None
    #: seconds an issued serving certificate is valid ([issuer] lifetime)
    issuer_lifetime: int = 86400


class FragmentError(SecretsConfigError):
    """A policy fragment with a wrongly typed key (``FILE:LINE: KEY: expected ...``): exit 2."""

    exit_code = 2


class KeyOutsideError(SecretsConfigError):
    """A fragment names a key file outside its own keys directory, or another user's: exit 2."""

    exit_code = 2


class CollateralRootError(SecretsConfigError):
    """The offline collateral does not chain to the root the server would trust: every quote
    would be refused (exit 2, naming --root-ca and --collateral)."""

    exit_code = 2


class KeyOutsideWarning(UserWarning):
    """A key file outside its fragment's keys directory is used (``--allow-keys-outside``)."""


@dataclass(frozen=True)
class KeySource:
    """Which fragment contributes which key file (printed when the configuration is written)."""

    fragment: Path
    secret: str
    file: str


@dataclass(frozen=True)
class ComposedConfig:
    """The secrets.toml composed from fragments, and where its key files came from."""

    config: SecretsConfig
    sources: tuple[KeySource, ...] = ()


#: Gramine's wrap keys (the secret server releases each key file's bytes as is).
WRAP_KEY_SIZE = KEY_SIZE
_HEX64 = re.compile(r"^[0-9a-f]{64}\Z")


def read_fragment(path: Path) -> PolicyFragment:
    """The policy fragment at *path* (or in the build directory *path*): every wrongly typed
    key at once (FragmentError, exit 2)."""
    try:
        return PolicyFragment.load(path)
    except PolicyFragmentError as exc:
        if exc.problems and exc.problems[0].path == () and "not found" in exc.problems[0].message:
            raise UsageError(
                f"{exc.source}: no such policy fragment (a build with encrypted "
                f"content writes {POLICY_FILE} into its output directory)"
            ) from None
        raise FragmentError(str(exc)) from None


def _load_measurements(fragment: Path | None, pattern: str) -> list[Measurements]:
    paths = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    if not paths:
        raise SecretsConfigError(f"{fragment}: measurements: {pattern!r} matches no file")
    loaded = []
    for path in paths:
        try:
            loaded.append(Measurements.load(path))
        except MeasurementsError as exc:
            raise SecretsConfigError(
                f"{fragment}: measurements: not a measurements.json: {exc}"
            ) from None
    return loaded


def check_allow(
    fragment: Path, name: str, allow: tuple[str, ...] | list[str], services: set[str]
) -> None:
    """Every allow entry of secret *name* is a 64-hex MRENCLAVE or one of *services* (and
    there is one at least): SecretsConfigError naming *fragment* otherwise."""
    if not allow:
        raise SecretsConfigError(
            f"{fragment}: secret {name!r}: allow = []: the secret would be released to no "
            "enclave; name the services (or 64-hex MRENCLAVE values) that may receive it"
        )
    for entry in allow:
        if _HEX64.match(entry) or entry in services:
            continue
        hint = ""
        if entry in ("*", "any", "all") or glob.has_magic(entry):
            hint = "; there are no wildcards: name each service"
        elif re.fullmatch(r"[0-9a-fA-F]{64}", entry):
            hint = "; MRENCLAVE values are lower-case hex"
        elif re.fullmatch(r"[0-9a-fA-F]+", entry):
            hint = f"; an MRENCLAVE has 64 hex digits, this has {len(entry)}"
        raise SecretsConfigError(
            f"{fragment}: secret {name!r}: allow entry {entry!r} is neither a 64-hex MRENCLAVE "
            f"nor the service of one of the merged measurements (services: "
            f"{', '.join(sorted(services)) or 'none'}){hint}"
        )


def _check_key_file(fragment: Path, name: str, file: str, allow_readable: bool) -> os.stat_result:
    what = f"{fragment}: secret {name!r}: key file {file}"
    try:
        info = os.stat(file)
    except FileNotFoundError:
        raise SecretsConfigError(f"{what}: not found") from None
    except OSError as exc:
        raise SecretsConfigError(f"{what}: cannot stat: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise SecretsConfigError(f"{what}: not a regular file")
    if info.st_size != WRAP_KEY_SIZE:
        raise SecretsConfigError(
            f"{what}: {info.st_size} bytes; a Gramine wrap key is exactly {WRAP_KEY_SIZE} bytes"
        )
    if info.st_mode & 0o077:
        message = (
            f"{what}: group/others may access it (mode {stat.S_IMODE(info.st_mode):04o}); "
            f"make it private to the secret server's user: chmod 600 {file}"
        )
        if not allow_readable:
            raise SecretsConfigError(message)
        warnings.warn(message, UserWarning, stacklevel=3)
    return info


def own_keys_dir(fragment: PolicyFragment) -> Path:
    """The fragment's own keys directory (resolved): its ``keys_dir``, or, for a fragment
    without one, its directory."""
    return Path(os.path.realpath(fragment.keys_dir or fragment.directory))


def _check_key_place(
    fragment: Path, name: str, file: str, keys_dir: Path, allow_outside: bool
) -> None:
    """Refuse (or, with *allow_outside*, warn about) a key file outside *keys_dir* or owned by
    another user than the fragment."""
    what = f"{fragment}: secret {name!r}: key file {file}"
    real = Path(os.path.realpath(file))
    problem = None
    fragment_mode = stat.S_IMODE(os.stat(fragment).st_mode)
    if fragment_mode & 0o022:
        # the keys directory comes from the fragment: whoever may edit it chooses the keys
        problem = (
            f"{what}: the fragment is writable by group/others (mode "
            f"{fragment_mode:04o}), who could point it at any key; chmod go-w {fragment}"
        )
    elif real != keys_dir and keys_dir not in real.parents:
        problem = (
            f"{what}: outside the fragment's keys directory {keys_dir} (its build's "
            "[secrets] keys_dir); a fragment may only name its own keys"
        )
    else:
        owner, mine = os.stat(real).st_uid, os.stat(fragment).st_uid
        if owner != mine:
            problem = (
                f"{what}: belongs to another user (uid {owner}) than the fragment (uid {mine})"
            )
    if problem is None:
        return
    if not allow_outside:
        raise KeyOutsideError(f"{problem}; pass --allow-keys-outside to use it anyway")
    warnings.warn(
        f"{problem}; used because of --allow-keys-outside", KeyOutsideWarning, stacklevel=4
    )


def _merge(
    paths: list[Path], allow_readable_keys: bool = False, allow_keys_outside: bool = False
) -> tuple[list[str], list[SecretRule], list[KeySource]]:
    fragments = [read_fragment(Path(given)) for given in paths]
    measurements: list[str] = []
    services: set[str] = set()
    for fragment in fragments:
        for item in fragment.measurements:
            if item not in measurements:
                measurements.append(item)
                services.update(m.service for m in _load_measurements(fragment.path, item))
    secrets: dict[str, SecretRule] = {}
    sources: list[KeySource] = []
    # (dev, ino, encoding) -> name, file, fragment: one key file per secret name and encoding
    # (an Occlum build releases its image key raw under its name and as KEY@image_key text)
    key_names: dict[tuple[int, int, str], tuple[str, str, Path]] = {}
    for fragment in fragments:
        path = fragment.path
        assert path is not None
        keys_dir = own_keys_dir(fragment)
        for rule in fragment.secrets:
            name, file = rule.name, str(rule.file)
            check_allow(path, name, rule.allow, services)
            info = _check_key_file(path, name, file, allow_readable_keys)
            _check_key_place(path, name, file, keys_dir, allow_keys_outside)
            other = key_names.setdefault(
                (info.st_dev, info.st_ino, rule.encoding), (name, file, path)
            )
            if other[0] != name:
                raise SecretsConfigError(
                    f"{path}: secret {name!r}: key file {file} is also the key file of "
                    f"secret {other[0]!r} (in {other[2]}); one key file per secret name and "
                    "encoding (name the same secret in both builds, e.g. [[models]] key, to "
                    "share a key)"
                )
            sources.append(KeySource(path, name, file))
            merged = secrets.get(name)
            if merged is None:
                secrets[name] = rule
            elif merged != rule:
                if dataclasses.replace(merged, allow=()) != dataclasses.replace(rule, allow=()):
                    raise SecretsConfigError(
                        f"{path}: secret {name!r} differs from the rule of the same name in "
                        "an earlier fragment (another key file, match mode, encoding or "
                        "requested_as)"
                    )
                # The same key shared by several services: admit all of them.
                secrets[name] = dataclasses.replace(
                    merged, allow=tuple(dict.fromkeys(merged.allow + rule.allow))
                )
    return measurements, list(secrets.values()), sources


def compose_config(
    policies: list[Path],
    server: ServerSide,
    *,
    allow_readable_keys: bool = False,
    allow_keys_outside: bool = False,
) -> ComposedConfig:
    """The secrets.toml of a secret server serving the builds of *policies* (absolute paths;
    its ``path`` is set where :func:`write_config` writes it)."""
    measurements, secrets, sources = _merge(policies, allow_readable_keys, allow_keys_outside)
    if not secrets and server.issuer_ca is None:
        raise UsageError("the policy fragments release no secret: nothing to serve")
    issuer = None
    if server.issuer_ca is not None:
        directory = server.issuer_ca.resolve()
        issuer = IssuerSettings(
            directory / ISSUER_CA_CERT, directory / ISSUER_CA_KEY, server.issuer_lifetime
        )
        for path in (issuer.cert, issuer.key):
            if not path.is_file():
                raise UsageError(
                    f"--issuer-ca {server.issuer_ca}: {path.name} not found (`enclave-build "
                    "secrets tls DIR` writes issuer-ca.pem and issuer-ca.key)"
                )
    try:
        host, port = split_listen(server.listen)
        grsecret = None
        if server.grsecret_listen is not None:
            grsecret = GrSecretSettings(*split_listen(server.grsecret_listen))
    except ValueError as exc:
        raise UsageError(f"--listen: {exc}") from None
    settings = ServerSettings(
        host, port, server.cert.resolve(), server.key.resolve(), audit_log=server.audit_log
    )
    try:
        settings = dataclasses.replace(settings, **server.extra_server)
    except TypeError as exc:
        raise UsageError(f"[server]: {exc}") from None
    if (server.collateral is None) == (server.pccs_url is None):
        raise UsageError("give exactly one of --collateral FILE and --pccs-url URL")
    attestation = AttestationSettings(
        None if server.root_ca == "intel" else Path(server.root_ca),
        server.collateral.resolve() if server.collateral is not None else None,
        server.pccs_url,
    )
    if server.collateral is not None:
        check_collateral_root(server.collateral, server.root_ca)
    if grsecret is None and any(rule.requested_as or rule.encoding != "raw" for rule in secrets):
        warnings.warn(
            "the fragments have Occlum secrets (encoding/requested_as), which only "
            "Occlum's GrSecret service serves: pass --grsecret-listen HOST:PORT",
            UserWarning,
            stacklevel=2,
        )
    config = SecretsConfig(
        Path(SECRETS_FILE).resolve(),
        settings,
        attestation,
        tuple(measurements),
        tuple(secrets),
        grsecret=grsecret,
        issuer=issuer,
    )
    return ComposedConfig(config, tuple(sources))


def check_collateral_root(collateral: Path, root_ca: str = "intel") -> None:
    """Refuse (CollateralRootError, exit 2) an offline collateral file whose issuer chains do
    not end in *root_ca* ("intel", or a PEM/DER file), saying which flag to change: the
    secret server would refuse every quote with dcap-qvl's "Failed to parse root CA CRL"."""
    from enclave_build.attestation.collateral_root import (
        collateral_root_problem,
        synthetic_root_beside,
    )
    from enclave_build.attestation.verify import load_root_der

    try:
        root_der = None if root_ca == "intel" else load_root_der(root_ca)
        text = Path(collateral).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(
            f"--root-ca {root_ca} / --collateral {collateral}: cannot read: {exc.strerror or exc}"
        ) from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"--root-ca {root_ca}: not a PEM or DER certificate ({exc})") from None
    try:
        problem = collateral_root_problem(text, root_der)
    except ValueError as exc:
        raise UsageError(f"--root-ca {root_ca}: not a certificate ({exc})") from None
    if problem is None:
        return
    pki_root = synthetic_root_beside(collateral)
    if root_ca == "intel" and "synthetic test PKI" in problem:
        fix = (
            f"pass --root-ca {pki_root or 'PKI_DIR/root.pem'} from `secrets simulate-pki` "
            "(the root of the PKI that made this collateral)"
        )
    elif root_ca != "intel" and "collateral is Intel's" in problem:
        fix = (
            "leave out --root-ca to trust Intel's root, or pass the --collateral of the PKI "
            "whose root --root-ca names"
        )
    else:
        fix = "pass --root-ca and --collateral of the same PKI"
    raise CollateralRootError(
        f"--collateral {collateral} does not chain to --root-ca {root_ca}: {problem}. The "
        f'secret server would refuse every quote ("Failed to parse root CA CRL"): {fix}'
    )


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


HEADER = (
    "secrets.toml for enclave-build's secret server, written by `enclave-build secrets config`."
)


def write_config(
    target: Path,
    config: ComposedConfig | SecretsConfig,
    *,
    force: bool = False,
    log: Callable[[str], None] | None = _stderr,
) -> Path:
    """Write *config* as TOML to *target* atomically, after the secret server's own loader
    accepted it and its policy was built exactly as the server builds it at start-up and on
    reload (relative paths in it resolve against *target*'s directory). *log* gets one line per
    key file of a :class:`ComposedConfig`: which fragment contributes it."""
    from enclave_build.attestation.config import ConfigError, load_config
    from enclave_build.attestation.policy import Policy, PolicyError

    composed = config if isinstance(config, ComposedConfig) else ComposedConfig(config)
    target = Path(target)
    if target.exists() and not force:
        raise UsageError(f"{target} exists (use --force to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        text = dataclasses.replace(composed.config, path=target.resolve()).to_toml(HEADER)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        try:
            loaded = load_config(tmp)
            # As the secret server does at start-up and every reload.
            Policy.build(list(loaded.measurements), list(loaded.secrets), loaded.path.parent)
        except (ConfigError, PolicyError) as exc:
            raise SecretsConfigError(f"the composed configuration is not valid: {exc}") from None
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if log is not None:
        for source in composed.sources:
            log(f"key file {source.file} (secret {source.secret!r}) from {source.fragment}")
    return target


def write_issuing_ca(directory: Path, *, days: int = 365) -> tuple[Path, Path]:
    """Write a new issuing CA for serving certificates to *directory*: issuer-ca.pem and
    issuer-ca.key (mode 0600), replacing what is there. Returns both paths."""
    from cryptography.hazmat.primitives import serialization

    from enclave_build.attestation.serving_cert import issuing_ca

    cert, key = issuing_ca(days=days)
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / ISSUER_CA_CERT, directory / ISSUER_CA_KEY
    if key_path.exists():
        key_path.unlink()
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path
