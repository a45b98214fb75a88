"""init_ra_conf.json for Occlum's grpc_ratls init, and what init fetches.

Occlum's init (tools/init_grpc_ratls, built in by ``occlum new --init-ra grpc_ratls``) runs
before the service, attests to the secret server over mutual RA-TLS (gRPC
``ratls.GrSecret/GetSecret``) and:

1. when the SEFS image is encrypted, asks for the secret named ``image_key`` (a fixed name in
   init) and expects it as text: 16 hex bytes joined by '-' (``parse_str_to_bytes``), the format
   ``occlum gen-image-key`` writes and ``occlum build --image-key FILE`` reads; it keeps that key
   in memory and hands it to the mount syscall;
2. then fetches every ``kms_keys`` entry and, after the root is mounted, writes each one raw to
   its ``path``.

Encrypted models on Occlum therefore work like this (no Gramine protected files): the plan's
ENCRYPTED files go into the SEFS image, which ``occlum build --image-key`` encrypts as a whole;
the image key is the plan's first encrypted file's wrap key (the service key for tfserving/ovms,
the first model's key for the Python server), served to this enclave under the name
``image_key``; every key the plan provisions is also fetched to ``KEYS_DIR/NAME`` (a ramfs), so
a server that wants its keys finds them there.

``ra_config`` is what init requires of the *server's* enclave (Occlum's RA-TLS is mutual): one
``sgx_mrs`` entry per ``occlum.server_measurements`` file, with mr_signer, isv_prod_id, isv_svn
(grpc_ratls compares it for equality) and debuggable checked, and mr_enclave too unless
``occlum.server_pin = "mr_signer"``. config_svn is not checked (enclave-build sets none). The
host can redirect init with OCCLUM_INIT_RA_KMS_SERVER; that is harmless because the server is
verified by its quote, not its address. Occlum's init uses no CA certificate, so
``[secrets] ca`` is not used on Occlum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from enclave_build.contract.secrets_config import hex_dashes

from ..plan import ServicePlan
from .rules import IMAGE_KEY_SECRET
from .spec_section import OcclumPlanOptions


@dataclass(frozen=True)
class KmsKey:
    """One secret Occlum's init fetches at start."""

    secret: str  # the name init asks the server for (GetSecret name)
    wrap_key: str  # which of the plan's keys (keys_dir/NAME) the server answers with
    path: str | None  # where init writes it in the enclave; None: the image key (in memory)
    encoding: str  # "raw" (the 16 key bytes) or "hex-dashes" (init's image-key text)


def image_key_text(key: bytes) -> bytes:
    """A 16-byte key in the text form init and ``occlum build --image-key`` read (the secret
    server serves the same text for rules with ``encoding = "hex-dashes"``)."""
    return hex_dashes(key)


def ra_config(opts: OcclumPlanOptions) -> dict[str, Any]:
    pin_enclave = opts.server_pin == "mr_enclave"
    return {
        "verify_mr_enclave": "on" if pin_enclave else "off",
        "verify_mr_signer": "on",
        "verify_isv_prod_id": "on",
        "verify_isv_svn": "on",
        "verify_config_svn": "off",
        "verify_enclave_debuggable": "on",
        "sgx_mrs": [
            {
                "mr_enclave": s.mr_enclave,
                "mr_signer": s.mr_signer,
                "isv_prod_id": s.isv_prod_id,
                "isv_svn": s.isv_svn,
                "config_svn": 0,
                "debuggable": s.debug,
            }
            for s in opts.server_identities
        ],
    }


def init_ra_conf(
    plan: ServicePlan, opts: OcclumPlanOptions, keys: tuple[KmsKey, ...]
) -> dict[str, Any]:
    assert plan.secrets is not None
    return {
        "kms_server": plan.secrets.server,
        "kms_keys": [{"key": k.secret, "path": k.path} for k in keys if k.path is not None],
        "ra_config": ra_config(opts),
    }


def kms_keys(plan: ServicePlan, image_key: str | None, keys_dir: str) -> tuple[KmsKey, ...]:
    out = []
    if image_key is not None:
        out.append(KmsKey(IMAGE_KEY_SECRET, image_key, None, "hex-dashes"))
    if plan.secrets is not None:
        for key in plan.secrets.keys:
            out.append(KmsKey(key.name, key.name, f"{keys_dir}/{key.name}", "raw"))
    return tuple(out)
