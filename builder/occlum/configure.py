"""What the Occlum backend changes in a plan before anything is rendered (its
``enclave_build_configure`` hook; nothing here reads the spec).

- **Keys arrive as files.** Occlum's init fetches every key over its own mutual RA-TLS before
  the program starts and writes each to ``KEYS_DIR/NAME`` (a ramfs); there is no quote device
  for the program itself. So a plan whose program fetches its own keys (enclave-build's model
  server, KeyDelivery.IN_ENCLAVE) is switched to KeyDelivery.LIBOS_FILES, and the model
  server's configuration says ``keys.source = "files"``, ``directory = KEYS_DIR``
  (:func:`enclave_build.plugin.deliver_keys_as_files`). Encrypted files are inside the SEFS
  image, which Occlum decrypts as a whole, so the server opens its models as they are.
- **No user site.** A Python service runs with ``PYTHONNOUSERSITE=1`` (measured in
  ``env.default``; the host may not set ``PYTHON*``): Occlum starts the measured launcher as
  ``INTERPRETER LAUNCHER`` (no interpreter options such as ``-s`` or ``-I``), and without it the
  interpreter would run ``.pth`` files from ``~/.local`` before the launcher.
  :func:`builder.occlum.render` also refuses hostfs mounts on any import-path directory.
- **The image key is provisioned.** ``[occlum] encrypt_image`` without encrypted files still
  encrypts the image with SERVICE-key; it is added to the plan's provisioned keys so that the
  build loads (or creates) its wrap key and the policy fragment releases it to this enclave.

Which secrets init asks for, and how the secret server must encode them, is
:func:`releases`: the image key as ``image_key`` in init's text form, every other key raw
under its own name.
"""

from __future__ import annotations

from collections.abc import Iterable

from enclave_build.plugin import (
    FileKind,
    ProvisionedKey,
    SecretRelease,
    ServicePlan,
    deliver_keys_as_files,
)

from .init_ra import KmsKey
from .occlum_json import KEYS_DIR, OcclumConfigError
from .spec_section import plan_options


def image_key_name(plan: ServicePlan) -> str | None:
    """The wrap key that encrypts the SEFS image: the first encrypted file's key, else
    SERVICE-key with ``[occlum] encrypt_image``; None for an integrity-only image."""
    encrypted = [f for f in plan.files if f.kind is FileKind.ENCRYPTED]
    if encrypted:
        return encrypted[0].key_name or f"{plan.service}-key"
    if plan_options(plan).encrypt_image:
        return f"{plan.service}-key"
    return None


def configure_plan(plan: ServicePlan) -> None:
    """Adjust an Occlum plan (idempotent); other libOSes' plans are left alone."""
    if plan.libos != "occlum":
        return
    if plan.needs_quote_device:
        where = plan.origin.locate("service.libos") if plan.origin else "service.libos"
        raise OcclumConfigError(
            where,
            f"framework {plan.framework!r} makes its own SGX quotes "
            "through Gramine's /dev/attestation, which Occlum does not "
            'have: build it with libos = "gramine" (Occlum services '
            "fetch their keys from it over GrSecret)",
        )
    deliver_keys_as_files(plan, KEYS_DIR)
    if plan.python is not None:
        plan.env["PYTHONNOUSERSITE"] = "1"
    name = image_key_name(plan)
    if (
        name is not None
        and plan.secrets is not None
        and all(k.name != name for k in plan.secrets.keys)
    ):
        plan.secrets.keys.append(ProvisionedKey(name))


def releases(kms_keys: Iterable[KmsKey]) -> tuple[SecretRelease, ...]:
    """What the secret server must release to this enclave, from what init fetches."""
    return tuple(SecretRelease(k.wrap_key, k.secret, k.encoding) for k in kms_keys)
