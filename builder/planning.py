"""What framework plugins build a :class:`~builder.plan.ServicePlan` with: the plan every
spec fixes (:func:`base_plan`), models and confidential files (:func:`add_model`,
:func:`add_secret_file`), key names, and spec errors located at their line.

Plugins import these from :mod:`enclave_build.plugin`, the stable API.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from enclave_build.contract.identity import mr_signer_of
from enclave_build.contract.locate import KeyLocator
from enclave_build.contract.names import MODEL_ROOT, SECRET_SERVER_CA, SECRETS_DIR  # noqa: F401 - API
from enclave_build.contract.schema import Problem

from . import server_trust
from .errors import EnclaveBuildError
from .plan import (
    EnclaveResources,
    FileKind,
    KeyDelivery,
    Mount,
    MountType,
    Port,
    ProvisionedKey,
    SecretProvisioning,
    ServicePlan,
)
from .plugin_types import Framework
from .spec import ModelSpec, Spec, SpecError
from .spec_origin import spec_origin

# SECRETS_DIR, MODEL_ROOT and SECRET_SERVER_CA (image paths) are defined once, in
# enclave_build.contract.names; plugins import them from enclave_build.plugin.


def base_plan(
    spec: Spec,
    framework: Framework,
    *,
    entrypoint: str,
    argv: list[str],
    env: dict[str, str] | None = None,
    trusted: list[str] | None = None,
    ports: list[Port] | None = None,
    user: str = "root",
    working_dir: str = "/",
    default_base: str | None = None,
    key_delivery: KeyDelivery = KeyDelivery.CONSTRUCTOR,
) -> ServicePlan:
    """A plan with everything the spec fixes regardless of framework: identity, resources,
    image names and the secret-provisioning endpoint. Frameworks add their models and files.

    *default_base* replaces the framework's default base image (for frameworks whose modes
    need different bases); *key_delivery* says who fetches the keys (see :class:`KeyDelivery`).
    """
    enclave = spec.enclave
    plan = ServicePlan(
        service=spec.service.name,
        framework=framework.name,
        libos=spec.service.libos,
        base_image=spec.image.base or default_base or framework.default_base,
        image_tag=spec.image.tag or f"{spec.service.name}:latest",
        entrypoint=entrypoint,
        argv=list(argv),
        enclave=EnclaveResources(
            size=enclave.size or framework.default_enclave_size,
            max_threads=enclave.max_threads or framework.default_max_threads,
            edmm=enclave.edmm,
            debug=enclave.debug,
            isv_prod_id=enclave.isv_prod_id,
            isv_svn=enclave.isv_svn,
            trim=enclave.trim,
        ),
        env=dict(env or {}),
        user=user,
        working_dir=working_dir,
        trusted=list(trusted or []),
        ports=list(ports or []),
    )
    plan.libos_options = spec.libos_options
    plan.origin = spec_origin(spec.path)
    plan.labels["org.enclave-build.service"] = spec.service.name
    plan.labels["org.enclave-build.framework"] = framework.name
    if spec.secrets.server:
        plan.secrets = SecretProvisioning(
            spec.secrets.server,
            spec.secrets.ca,
            delivery=key_delivery,
            server_trust=spec.secrets.server_trust,
        )
        if spec.secrets.server_trust is not None:  # an attested secret server, not a CA
            add_server_trust(spec, plan, framework.name)
    return plan


def add_server_trust(spec: Spec, plan: ServicePlan, framework: str) -> None:
    """Ship what verifying the secret server needs as trusted files of *plan* (called by
    :func:`base_plan` when the spec names server_measurements). Changing which server
    is trusted therefore changes this enclave's MRENCLAVE. Refuses (located spec error) plans
    whose keys Gramine's provisioning constructor fetches: it checks a CA only."""
    # base_plan calls this for a spec whose [secrets] names the server's measurements
    assert plan.secrets is not None and plan.secrets.server_trust is not None
    trust = plan.secrets.server_trust
    if plan.secrets.delivery is not KeyDelivery.IN_ENCLAVE:
        raise spec_error(
            spec,
            ("secrets", "server_measurements"),
            f"framework {framework!r} gets its keys from Gramine's provisioning "
            "constructor, which checks the secret server against a CA only: use "
            "[secrets] ca, or a framework served by enclave-build's model server "
            '(tflite, openvino mode "python", Python backends)',
        )
    own = _own_mr_signer(spec)
    if trust.pin == "mr_signer" and own is not None:
        for index, identity in enumerate(trust.identities):
            if (identity.mr_signer, identity.isv_prod_id) == (own, plan.enclave.isv_prod_id):
                raise spec_error(
                    spec,
                    ("secrets", "server_measurements", index),
                    "that secret server has this enclave's own MRSIGNER and "
                    f"isv_prod_id ({identity.isv_prod_id}): with server_pin = "
                    '"mr_signer" any build of this service would pass as the '
                    "secret server; give the secret server another [enclave] "
                    "isv_prod_id (or its own signing key)",
                )
    if trust.root_ca is not None:
        plan.add_file(trust.root_ca, server_trust.TRUST_ROOT, FileKind.TRUSTED)
    if trust.collateral is not None:
        plan.add_file(trust.collateral, server_trust.TRUST_COLLATERAL, FileKind.TRUSTED)
    server_trust.warn_if_synthetic(trust)
    server_trust.warn_if_relaxed(trust)


def _own_mr_signer(spec: Spec) -> str | None:
    """MRSIGNER this build will have (SHA-256 of the signing key's modulus, little-endian), or
    None when the key cannot be read here (the signing step reports that)."""
    import os

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        if spec.signing.public_key is not None:
            key = serialization.load_pem_public_key(spec.signing.public_key.read_bytes())
        elif spec.signing.key is not None:
            secret = (
                os.environ.get(spec.signing.passphrase_env or "")
                if spec.signing.passphrase_env
                else None
            )
            key = serialization.load_pem_private_key(
                spec.signing.key.read_bytes(), secret.encode() if secret else None
            ).public_key()
        else:
            return None
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(key, rsa.RSAPublicKey):
        return None
    return mr_signer_of(key.public_numbers().n)


def default_key_name(spec: Spec) -> str:
    """The key used where the spec names none: ``SERVICE-key``."""
    return f"{spec.service.name}-key"


def model_key_name(spec: Spec, model: ModelSpec) -> str:
    """The wrap key of one model: ``[[models]] key``, else ``SERVICE-key``."""
    return model.key or default_key_name(spec)


def service_key_name(spec: Spec) -> str:
    """The one wrap key of a service whose keys Gramine's provisioning constructor fetches.

    That constructor installs exactly one 16-byte key per enclave start, so all encrypted
    content of such a service (models, TLS material) shares it (see :func:`require_one_key`).
    Models may name it (``[[models]] key``), e.g. to share a key between services; otherwise it
    is SERVICE-key.
    """
    named = [m.key for m in spec.models if m.encrypt and m.key]
    return named[0] if named else default_key_name(spec)


def warn_tls_file(spec: Spec) -> None:
    """The warning of ``[tls] issuer = "file"``: the serving key was made outside the enclave."""
    if spec.tls is None or spec.tls.issuer != "file":
        return
    warnings.warn(
        f'{spec.path}: [tls] issuer = "file": the serving certificate\'s private key '
        f"({spec.tls.key}) existed outside the enclave, so a client cannot tell this enclave "
        'from whoever else holds that key; prefer issuer = "secret-server" (a key made in '
        'the enclave, certified by the secret server after attestation) or "self"',
        UserWarning,
        stacklevel=2,
    )


def require_tls_file(spec: Spec, framework: str) -> None:
    """For servers that read their certificate and key from files (TF Serving): ``[tls]`` must
    be issuer "file" (the build warns about it); a located spec error otherwise."""
    if spec.tls is None:
        return
    if spec.tls.issuer != "file":
        raise spec_error(
            spec,
            ("tls", "issuer"),
            f'issuer = "{spec.tls.issuer}" needs enclave-build\'s own model server, which makes '
            f"its key inside the enclave; {framework} reads its certificate and key from files: "
            'give cert and key with issuer = "file", or serve with a Python-server framework',
        )


def spec_error(spec: Spec, key: tuple, message: str) -> SpecError:
    """A :class:`SpecError` for *key* (e.g. ``("models", 1, "key")``), located at its line in
    the spec file, formatted like every other spec error (``FILE:LINE: KEY: message``)."""
    return spec_errors(spec, [Problem(key, message)])


def spec_errors(spec: Spec, problems: list[Problem]) -> SpecError:
    """One :class:`SpecError` for several *problems*, each located at the line of its key (or
    of its nearest located parent) in the spec file."""
    try:
        text = spec.path.read_text(encoding="utf-8")
    except OSError:
        text = None
    source = str(spec.path)
    located = list(problems)
    if text is not None:
        locator = KeyLocator(text)

        def line(key: tuple) -> int | None:
            found = None
            while key and found is None:
                found = locator.line(key)
                key = key[:-1]
            return found

        located = [Problem(p.path, p.message, p.line or line(p.path)) for p in problems]
        try:
            source = str(spec.path.relative_to(Path.cwd()))
        except ValueError:
            pass
    return SpecError(source, located)


def require_models(spec: Spec, framework: str) -> None:
    """For model servers: at least one ``[[models]]`` table (a server with nothing to serve is
    a mistake in the spec, not an image to build)."""
    if not spec.models:
        raise spec_error(
            spec,
            ("models",),
            f"framework {framework} serves models, and the spec "
            "has no [[models]] table: add one (name, path)",
        )


def require_one_key(spec: Spec, framework: str) -> str:
    """For frameworks whose keys Gramine's constructor fetches: every encrypted model (and the
    TLS material) must use one key. Returns it; otherwise raises a located :class:`SpecError`
    at the first model whose key differs from the first encrypted model's."""
    encrypted = [(i, m) for i, m in enumerate(spec.models) if m.encrypt]
    if not encrypted:
        return service_key_name(spec)
    key = model_key_name(spec, encrypted[0][1])
    for index, model in encrypted[1:]:
        if model_key_name(spec, model) != key:
            raise spec_error(
                spec,
                ("models", index, "key") if model.key else ("models", index),
                f"all encrypted models must use the same key ({key!r}) with framework "
                f"{framework}: Gramine's provisioning constructor gives the enclave exactly one "
                "key per start; serve models with different keys from separate services, or "
                "with a framework whose server fetches its own keys (tflite, openvino mode "
                '"python")',
            )
    return key


def _provision(plan: ServicePlan, key: str) -> None:
    if plan.secrets is None:
        raise EnclaveBuildError("encrypted content needs [secrets] server and ca in the spec")
    if all(k.name != key for k in plan.secrets.keys):
        plan.secrets.keys.append(ProvisionedKey(key))


def _encrypted_mount(plan: ServicePlan, directory: str, key: str) -> None:
    directory = directory.rstrip("/")
    for mount in plan.mounts:
        if mount.path == directory:
            if mount.key_name != key:
                raise EnclaveBuildError(
                    f"{directory}: one encrypted mount cannot use two keys "
                    f"({mount.key_name} and {key})"
                )
            return
    plan.mounts.append(Mount(directory, MountType.ENCRYPTED, "file:" + directory, key))


def model_image_path(model: ModelSpec, dest_dir: str) -> str:
    """Where *model* is in the image when added under *dest_dir*: the file, or the directory."""
    source = Path(model.path)
    return dest_dir.rstrip("/") + ("" if source.is_dir() else "/" + source.name)


def add_model(
    plan: ServicePlan, spec: Spec, model: ModelSpec, dest_dir: str, key: str | None = None
) -> str:
    """Add *model* under *dest_dir* (a directory inside the image): trusted when clear-text,
    otherwise as protected files under an encrypted mount of *dest_dir* keyed by *key*
    (default: the model's key, :func:`model_key_name`). Returns the model's image path."""
    source = Path(model.path)
    dest = dest_dir.rstrip("/") + ("/" if source.is_dir() else "/" + source.name)
    if not model.encrypt:
        plan.add_file(source, dest, FileKind.TRUSTED)
        return model_image_path(model, dest_dir)
    key = key or model_key_name(spec, model)
    plan.add_file(source, dest, FileKind.ENCRYPTED, key_name=key)
    _encrypted_mount(plan, dest_dir, key)
    _provision(plan, key)
    return model_image_path(model, dest_dir)


def add_secret_file(
    plan: ServicePlan,
    spec: Spec,
    name: str,
    *,
    data: bytes | None = None,
    source: Path | None = None,
    key: str | None = None,
) -> str:
    """Ship a confidential file (TLS key, credentials) encrypted under SECRETS_DIR; returns the
    path the server inside the enclave opens. *key* defaults to the service's one key for
    constructor-provisioned plans and to SERVICE-key when the server fetches its own keys."""
    if key is None:
        in_enclave = plan.secrets is not None and plan.secrets.delivery is KeyDelivery.IN_ENCLAVE
        key = default_key_name(spec) if in_enclave else service_key_name(spec)
    dest = f"{SECRETS_DIR}/{name}"
    plan.add_file(source, dest, FileKind.ENCRYPTED, mode=0o600, key_name=key, data=data)
    _encrypted_mount(plan, SECRETS_DIR, key)
    _provision(plan, key)
    return dest


def require_enforced(spec: Spec, plan: ServicePlan, framework: str) -> None:
    """A located spec error when *plan* (the framework's, plugins' hooks applied) does not
    hand the spec's client lists and client CA to enclave-build's model server: a list nobody
    enforces must not build."""
    config = plan.server_config
    served = {m.name: m.clients for m in config.models} if config is not None else {}
    for index, model in enumerate(spec.models):
        if model.clients is not None and served.get(model.name) != model.clients:
            raise spec_error(
                spec,
                ("models", index, "clients"),
                f"framework {framework} does not hand this list to enclave-build's model "
                "server, so nothing would enforce it: remove it, or use a framework that "
                'runs enclave-build\'s model server (tflite, openvino mode "python")',
            )
    wants_ca = spec.tls is not None and spec.tls.client_ca is not None
    if wants_ca and (config is None or config.tls is None or not config.tls.client_ca):
        raise spec_error(
            spec,
            ("tls", "client_ca"),
            f"framework {framework} does not configure mutual TLS with it: remove it, or "
            "use a framework that runs enclave-build's model server (tflite, openvino mode "
            '"python")',
        )


def refuse_model_server_keys(spec: Spec, framework: str) -> None:
    """For frameworks that run their own server binary: a located spec error for the keys only
    enclave-build's model server reads (``[[models]] max_queue`` and ``clients``, ``[limits]``,
    ``[tls] client_ca``)."""
    if spec.limits is not None:
        raise spec_error(
            spec,
            ("limits",),
            f"[limits] sets enclave-build's model server (tflite, openvino mode "
            f'"python"); framework {framework} runs its own server, which has '
            "limits of its own: remove the section",
        )
    for index, model in enumerate(spec.models):
        if model.max_queue is not None:
            raise spec_error(
                spec,
                ("models", index, "max_queue"),
                f"max_queue applies to enclave-build's model server (tflite, "
                f'openvino mode "python"); framework {framework} runs its own '
                "server, which queues by its own settings: remove it",
            )
        if model.clients is not None:
            raise spec_error(
                spec,
                ("models", index, "clients"),
                f"clients applies to enclave-build's model server (tflite, openvino mode "
                f'"python"), which checks them per request; framework {framework} runs its '
                "own server, which cannot: remove it (or use a framework that runs "
                "enclave-build's model server)",
            )
    if spec.tls is not None and spec.tls.client_ca is not None:
        raise spec_error(
            spec,
            ("tls", "client_ca"),
            f"client_ca (mutual TLS) applies to enclave-build's model server (tflite, "
            f'openvino mode "python"); framework {framework} runs its own server: remove it',
        )
