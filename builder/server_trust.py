"""``[secrets] server_measurements``: the model enclave trusts an *attested* secret server.

By default (``[secrets] ca``) enclave-build's model server checks the secret server's TLS
certificate against a CA, as Gramine's provisioning clients do. A secret server that runs in an
enclave of its own (``framework = "secret-server"``) presents a fresh self-signed RA-TLS
certificate instead; a model spec trusts it by naming that server's build::

    [secrets]
    server = "keys.example.com:4433"
    server_measurements = ["../secret-server/out/measurements.json"]   # instead of ca
    server_pin = "mr_signer"          # or "mr_enclave" (default): see below
    server_root_ca = "intel"          # default; a PEM file only for simulation (synthetic root)
    server_pccs_url = "https://pccs.internal:8081/sgx/certification/v4/"
    # server_collateral = "collateral.json"    # or offline collateral (measured; it expires)
    server_allowed_tcb_statuses = ["UpToDate"]

Rules (each violation is a spec error naming file, line and key):

* exactly one of ``ca`` and ``server_measurements`` when keys are fetched; the ``server_*``
  keys only with ``server_measurements``;
* every ``server_measurements`` file is a secret-server build's measurements.json
  (``framework = "secret-server"``), not a DEBUG enclave (dcap-qvl refuses debug quotes, so such
  a server could never be verified);
* exactly one of ``server_collateral`` and ``server_pccs_url``;
* ``server_root_ca`` is ``"intel"`` or a PEM certificate file; anything else than Intel's root
  makes the build warn (:class:`SyntheticServerRootWarning`): it is for simulation only;
* ``server_allowed_tcb_statuses`` other than ``"UpToDate"`` make the build warn
  (:class:`RelaxedServerTcbWarning`), and the model server at every start;
* only enclave-build's model server (tflite, openvino ``mode = "python"``, third-party Python
  backends) on Gramine can verify such a server: Gramine's provisioning constructor (tfserving,
  ovms) checks a CA only, and Occlum's init has its own ``[occlum] server_measurements``.

**Pinning and the order of builds.** The secret server's policy is measured into *its*
MRENCLAVE and names the model builds' measurements; the model's trust in the server is measured
into the *model's* MRENCLAVE. With ``server_pin = "mr_enclave"`` each would have to name the
other's final measurement, which cannot be. ``server_pin = "mr_signer"`` breaks the cycle: the
model requires MRSIGNER and ISV_PROD_ID equal to the named build and ISV_SVN at least its value,
and its configuration carries **only those fields** (no MRENCLAVE), so the model's MRENCLAVE
does not depend on which build of the server its spec names. Users build: (1) the model, naming
the measurements.json of any existing build of the secret server (same signing key and
``[enclave] isv_prod_id``); (2) the secret server, whose ``policies`` name the model's build;
(3) owners attest that server by its exact MRENCLAVE and upload keys. Adding a model later
rebuilds only the server. Give the secret server an ``isv_prod_id`` no model enclave uses (or
its own signing key): a signer pin accepts any enclave with that signer and product id.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from enclave_build.contract.identity import EnclaveIdentity
from enclave_build.contract.schema import Field, Problem
from enclave_build.contract.server_config import ServerTrustConfig
from enclave_build.contract.tcb import TCB_STATUSES

from .plan import SERVER_PINS, ServerTrust

SECRET_SERVER_FRAMEWORK = "secret-server"

#: The ``[secrets]`` fields this module owns (appended to builder.spec.SECRETS).
FIELDS = (
    Field(
        "server_measurements",
        "list[str]",
        "instead of ca: measurements.json files of the "
        "secret-server enclave build(s) the model enclave attests (one must match)",
    ),
    Field(
        "server_pin",
        "str",
        "what the model enclave requires of the secret server's enclave",
        default="mr_enclave",
        choices=SERVER_PINS,
    ),
    Field(
        "server_root_ca",
        "str",
        '"intel", or a PEM root CA file (a synthetic test root, for simulation only)',
        default="intel",
    ),
    Field(
        "server_collateral",
        "path",
        "offline collateral to verify the server's quote with "
        "(measured; it expires, then rebuild) ...",
    ),
    Field(
        "server_pccs_url",
        "str",
        "... or the PCCS the enclave fetches collateral from",
        pattern=r"https?://\S+",
        pattern_doc='an http(s) URL, e.g. "https://pccs.internal:8081/sgx/certification/v4/"',
    ),
    Field(
        "server_allowed_tcb_statuses",
        "list[str]",
        "TCB statuses of the secret server's platform to accept",
        default=["UpToDate"],
    ),
)
NAMES = tuple(f.name for f in FIELDS)


class SyntheticServerRootWarning(UserWarning):
    """The model enclave will trust a root CA other than Intel's for its secret server."""


class RelaxedServerTcbWarning(UserWarning):
    """The model enclave will accept a secret server whose platform's TCB is not UpToDate."""


def _located(problems: list[Problem], key: tuple, message: str) -> None:
    if key not in {p.path for p in problems}:
        problems.append(Problem(key, message))


def _identity(
    name: str, base_dir: Path, key: tuple, problems: list[Problem]
) -> EnclaveIdentity | None:
    from enclave_build.attestation.measurements import Measurements, MeasurementsError

    path = Path(name) if Path(name).is_absolute() else (base_dir / name).resolve()
    try:
        m = Measurements.load(path)
    except MeasurementsError as exc:
        problems.append(Problem(key, f"{path}: not a usable measurements.json ({exc})"))
        return None
    if m.framework != SECRET_SERVER_FRAMEWORK:
        problems.append(
            Problem(
                key,
                f"{path}: the build of service {m.service!r} (framework "
                f"{m.framework!r}) is not a secret server; name the "
                'measurements.json of a framework = "secret-server" '
                "build",
            )
        )
        return None
    if m.debug:
        problems.append(
            Problem(
                key,
                f"{path}: the secret server there is a DEBUG enclave (its "
                "memory is readable by its host, and the quote verifier "
                "refuses debug quotes); rebuild it without debug",
            )
        )
        return None
    return m.identity


def check(
    values: dict[str, Any],
    written: Any,
    libos: Any,
    base_dir: Path,
    problems: list[Problem],
    *,
    libos_section: str | None = None,
) -> ServerTrust | None:
    """Convert the ``server_*`` keys of the validated ``[secrets]`` table *values* (None when
    ``server_measurements`` is not given); *written* is the table as the file has it (which
    keys were given). Appends located problems; ``ca`` versus ``server_measurements`` is
    checked here too. *libos_section*: the section of a libOS backend that fetches the keys
    and verifies the server itself (Occlum's init), where such a server is named instead."""
    written = written if isinstance(written, dict) else {}
    given = values.get("server_measurements")
    if ("secrets", "server_measurements") in {p.path for p in problems}:
        return None  # e.g. not an array: reported already
    if given is None:
        for name in NAMES[1:]:
            if name in written:
                _located(
                    problems,
                    ("secrets", name),
                    "only with secrets.server_measurements (an attested secret server)",
                )
        return None
    if not values.get("server"):
        _located(
            problems,
            ("secrets", "server"),
            "required with secrets.server_measurements: the HOST:PORT of that secret server",
        )
    if values.get("ca") is not None:
        _located(
            problems,
            ("secrets", "server_measurements"),
            "give either ca (the secret server has a CA-signed certificate) or "
            "server_measurements (it is an attested enclave with an RA-TLS "
            "certificate), not both",
        )
    if libos_section is not None:
        _located(
            problems,
            ("secrets", "server_measurements"),
            f"on {str(libos).capitalize()} the libOS's init fetches the keys and verifies "
            f"the server itself: use [{libos_section}] server_measurements",
        )
    if not given:
        _located(
            problems,
            ("secrets", "server_measurements"),
            "name at least one measurements.json of the secret-server build",
        )
    identities = []
    for index, name in enumerate(given):
        identity = _identity(name, base_dir, ("secrets", "server_measurements", index), problems)
        if identity is not None:
            identities.append(identity)
    root = values.get("server_root_ca", "intel")
    root_path = None
    if root != "intel":
        root_path = Path(root) if Path(root).is_absolute() else (base_dir / root).resolve()
        try:
            data = root_path.read_bytes()
        except OSError as exc:
            problems.append(
                Problem(
                    ("secrets", "server_root_ca"),
                    f"{root_path}: cannot read ({exc.strerror}); allowed: "
                    '"intel" or a PEM root CA certificate file',
                )
            )
            root_path = None
        else:
            from cryptography import x509

            try:
                x509.load_pem_x509_certificate(data)
            except ValueError:
                problems.append(
                    Problem(
                        ("secrets", "server_root_ca"),
                        f"{root_path}: not a PEM certificate; allowed: "
                        '"intel" or a PEM root CA certificate file',
                    )
                )
                root_path = None
    collateral, pccs = values.get("server_collateral"), values.get("server_pccs_url")
    bad = {p.path for p in problems} & {
        ("secrets", "server_collateral"),
        ("secrets", "server_pccs_url"),
    }
    if (collateral is None) == (pccs is None) and not bad:
        _located(
            problems,
            ("secrets", "server_collateral"),
            "give exactly one of server_collateral (a file, measured) and server_pccs_url "
            "(fetched by the enclave) to verify the secret server's quote with",
        )
    if collateral is not None:
        from enclave_build.attestation.verify import VerifierConfigError, load_collateral

        try:
            load_collateral(collateral)
        except VerifierConfigError as exc:
            problems.append(Problem(("secrets", "server_collateral"), str(exc)))
    statuses = values.get("server_allowed_tcb_statuses")
    if statuses is None:
        statuses = ["UpToDate"]
    for index, status in enumerate(statuses):
        if status not in TCB_STATUSES:
            problems.append(
                Problem(
                    ("secrets", "server_allowed_tcb_statuses", index),
                    f"{status!r}; allowed: {', '.join(TCB_STATUSES)}",
                )
            )
    if not statuses:
        _located(problems, ("secrets", "server_allowed_tcb_statuses"), "name at least one")
    return ServerTrust(
        tuple(identities),
        values.get("server_pin") or "mr_enclave",
        root_path,
        collateral,
        pccs,
        tuple(dict.fromkeys(statuses)),
    )


def warn_if_synthetic(trust: ServerTrust | None) -> None:
    """Warn (at build time) that a root other than Intel's will be trusted for the server."""
    if trust is not None and trust.root_ca is not None:
        warnings.warn(
            f"[secrets] server_root_ca = {str(trust.root_ca)!r}: the enclave will "
            "accept a secret server whose quote chains to this root instead of "
            "Intel's SGX root CA. That is for simulation with a synthetic test PKI "
            'only; production builds use server_root_ca = "intel"',
            SyntheticServerRootWarning,
            stacklevel=2,
        )


def warn_if_relaxed(trust: ServerTrust | None) -> None:
    """Warn (at build time) that TCB statuses other than UpToDate will be accepted for the
    server (the model server says so again at every start)."""
    relaxed = sorted(set(trust.allowed_tcb_statuses) - {"UpToDate"}) if trust else []
    if relaxed:
        warnings.warn(
            f"[secrets] server_allowed_tcb_statuses accepts {', '.join(relaxed)}: the "
            "enclave will take keys from a secret server on a platform with known, "
            "unpatched vulnerabilities",
            RelaxedServerTcbWarning,
            stacklevel=2,
        )


# --------------------------------------------------------------------------- into the plan

#: Where the verification inputs are in the image (trusted files: measured).
TRUST_DIR = "/enclave/secret-server-trust"
TRUST_ROOT = f"{TRUST_DIR}/root.pem"
TRUST_COLLATERAL = f"{TRUST_DIR}/collateral.json"
#: What the model server needs besides its usual runtimes to verify the server's quote.
TRUST_DISTRIBUTIONS = ("dcap-qvl",)


def identity_config(trust: ServerTrust) -> ServerTrustConfig:
    """``keys.server_identity`` of the model server's configuration (model-server.json).

    With ``pin = "mr_signer"`` the builds carry no mr_enclave and equal entries are merged, so
    this part of the (measured) configuration is the same for every build of the server that
    has the same signer, product id and SVN: the model's MRENCLAVE does not depend on it."""
    builds: list[EnclaveIdentity] = []
    for identity in trust.identities:
        entry = identity if trust.pin == "mr_enclave" else identity.signer_pin()
        if entry not in builds:
            builds.append(entry)
    builds.sort(key=lambda e: (e.mr_enclave or "", e.mr_signer, e.isv_prod_id, e.isv_svn))
    return ServerTrustConfig(
        trust.pin,
        tuple(builds),
        TRUST_ROOT if trust.root_ca is not None else None,
        TRUST_COLLATERAL if trust.collateral is not None else None,
        trust.pccs_url,
        tuple(trust.allowed_tcb_statuses),
    )


__all__ = [
    "FIELDS",
    "NAMES",
    "RelaxedServerTcbWarning",
    "SyntheticServerRootWarning",
    "TRUST_COLLATERAL",
    "TRUST_DIR",
    "TRUST_DISTRIBUTIONS",
    "TRUST_ROOT",
    "check",
    "identity_config",
    "warn_if_relaxed",
    "warn_if_synthetic",
]
