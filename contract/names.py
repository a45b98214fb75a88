"""Names shared across the build, the enclave runtime and the secret server, defined once:
paths inside the images, the files a build writes, and environment variables."""

from __future__ import annotations

# --- files a build writes into its output directory ------------------------------------------
MEASUREMENTS_FILE = "measurements.json"
SERVICE_FILE = "service.json"
POLICY_FILE = "secrets-policy.toml"
#: The secret server's configuration (what `enclave-build secrets config` writes).
SECRETS_FILE = "secrets.toml"

# --- paths inside the images -------------------------------------------------------------------
#: Debian's CPython in the base images.
PYTHON = "/usr/bin/python3.11"
#: Where enclave-build's Python code (and backend plugins' code) ships in the image (PYTHONPATH).
SERVER_PYTHONPATH = "/opt/enclave-build/python"
#: The model server's configuration file in the image (trusted: part of the measurement).
SERVER_CONFIG = "/enclave/model-server.json"
#: Encrypted non-model files (TLS material, configs) live here inside the enclave.
SECRETS_DIR = "/enclave/secrets"
#: Models live at MODEL_ROOT/NAME/VERSION/ in every builtin framework.
MODEL_ROOT = "/models"
#: The secret server's CA certificate in the image (trusted).
SECRET_SERVER_CA = "/enclave/secret-server-ca.pem"
#: The model server's client CA bundle in the image ([tls] client_ca; trusted).
CLIENT_CA = "/enclave/client-ca.pem"
#: The marker of a stand-in base (:mod:`.standin_base`), in the base and every image built on it.
STANDIN_MARKER = "/usr/share/enclave-build/stand-in-base.json"

# --- environment variables ---------------------------------------------------------------------
#: Plain-process simulation: the host directory the image is unpacked in; the programs map
#: image paths under it. Never set inside an enclave.
ROOT_ENV = "ENCLAVE_BUILD_ROOT"
#: Plain-process simulation only (with ROOT_ENV): the address that replaces the wildcard listen
#: addresses of the image's configuration (`enclave-build run --simulate` sets 127.0.0.1 unless
#: told --listen-all). The manifest never passes it through.
LISTEN_ENV = "ENCLAVE_BUILD_SIMULATION_LISTEN"
#: HOST:PORT of the simulated quoter where no quote device exists (simulation only; a quote
#: from it verifies only against a synthetic root).
SIMULATED_QUOTER_ENV = "ENCLAVE_BUILD_SIMULATED_QUOTER"
#: The Occlum toolchain image `occlum build` runs in (the operator's override).
OCCLUM_IMAGE_ENV = "ENCLAVE_BUILD_OCCLUM_IMAGE"

#: What `enclave-build secrets tls DIR` writes for the secret server's [issuer]: the issuing CA
#: of serving certificates (clients trust the certificate) and its private key.
ISSUER_CA_CERT = "issuer-ca.pem"
ISSUER_CA_KEY = "issuer-ca.key"


__all__ = [
    "MEASUREMENTS_FILE",
    "SERVICE_FILE",
    "POLICY_FILE",
    "SECRETS_FILE",
    "PYTHON",
    "SERVER_PYTHONPATH",
    "SERVER_CONFIG",
    "SECRETS_DIR",
    "MODEL_ROOT",
    "SECRET_SERVER_CA",
    "CLIENT_CA",
    "STANDIN_MARKER",
    "ROOT_ENV",
    "LISTEN_ENV",
    "ISSUER_CA_CERT",
    "ISSUER_CA_KEY",
    "SIMULATED_QUOTER_ENV",
    "OCCLUM_IMAGE_ENV",
]
