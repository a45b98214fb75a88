#!/usr/bin/env bash
# Make the keys the example specs name, in examples/keys/ (or the directory given); never
# committed. Re-running keeps what exists. Needs `enclave-build` on PATH (source .venv/bin/activate).
#
#   enclave-key.pem                      the enclave signing key (RSA-3072, e=3, mode 0600)
#   demo-ca.pem                          a demo CA the enclaves trust for the secret server ...
#   secret-server.crt, secret-server.key ... and the secret server's certificate for localhost
#                                        and 127.0.0.1 (key mode 0600)
#   pki/                                 a SYNTHETIC SGX PKI for `run --simulate` (test only)
#   owner.crt, owner.key                 a key owner's certificate for examples/secret-server
#                                        (needs openssl; key mode 0600)
#
# Wrap keys (NAME.key) appear here on the first build that encrypts a model.
set -euo pipefail
keys="${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/keys}"
mkdir -p "$keys"
chmod 700 "$keys"
[ -f "$keys/enclave-key.pem" ] || enclave-build keygen --out "$keys/enclave-key.pem"
if [ ! -f "$keys/demo-ca.pem" ]; then
  tls="$(mktemp -d "$keys/.tls-XXXXXX")"
  trap 'rm -rf "$tls"' EXIT
  said="$(enclave-build secrets tls "$tls" --host localhost --host 127.0.0.1 --days 365 2>&1)" \
    || { printf '%s\n' "$said" >&2; exit 1; }
  mv "$tls/server.key" "$keys/secret-server.key"
  mv "$tls/server.crt" "$keys/secret-server.crt"
  mv "$tls/ca.pem" "$keys/demo-ca.pem"
  echo "wrote $keys/demo-ca.pem, secret-server.crt, secret-server.key (demo CA; key mode 0600)" >&2
fi
[ -f "$keys/pki/root.pem" ] || enclave-build secrets simulate-pki "$keys/pki" >/dev/null
if [ ! -f "$keys/owner.crt" ]; then   # examples/secret-server: who may upload keys to it
  (umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
     -subj "/CN=example model owner" -keyout "$keys/owner.key" -out "$keys/owner.crt" 2>/dev/null)
  chmod 644 "$keys/owner.crt"
  echo "wrote $keys/owner.crt, owner.key (the secret-server example's key owner; key mode 0600)" >&2
fi
echo "keys in $keys"
