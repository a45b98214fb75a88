"""Demo, step 7: the secret server releases the model key to the enclave the build produced.

SIMULATED ATTESTATION: there is no SGX here, so the "enclave" is a synthetic quote (see
attestation/synthetic.py) carrying the build's MRENCLAVE/MRSIGNER, under a synthetic root CA the
server is explicitly configured to trust (it warns about that on start). With real hardware the
enclave's Gramine constructor does this fetch, and the server trusts Intel's root.

    python examples/demo_secret_server.py OUTPUT_DIR KEYS_DIR
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from attestation.client import ProvisioningError, fetch_secret
from attestation.measurements import Measurements
from attestation.ratls import create_certificate
from attestation.synthetic import SyntheticPKI
from builder.gramine import protected_files


def main(out: Path, keys: Path) -> None:
    work = out / "secret-server"
    work.mkdir(exist_ok=True)
    build = Measurements.load(out / "face-detect" / "measurements.json")
    pki = SyntheticPKI()
    (work / "collateral.json").write_text(pki.collateral_json())
    (work / "synthetic-root.pem").write_bytes(pki.root_pem)
    fragment = (out / "face-detect" / "secrets-policy.toml").read_text()
    fragment = fragment.replace('measurements = ["measurements.json"]',
                                f'measurements = ["{out / "face-detect" / "measurements.json"}"]')
    head, _, secrets = fragment.partition("[[secrets]]")
    (work / "secrets.toml").write_text(f"""{head}
[server]
listen = "127.0.0.1:0"
cert = "{keys / 'secret-server.crt'}"
key = "{keys / 'secret-server.key'}"
audit_log = "audit.jsonl"

[attestation]
root_ca = "synthetic-root.pem"
collateral = "collateral.json"

[[secrets]]{secrets}""")
    server = subprocess.Popen([sys.executable, "-m", "builder.cli", "secrets", "serve",
                               "--config", str(work / "secrets.toml")],
                              stderr=subprocess.PIPE, text=True)
    try:
        while not (line := server.stderr.readline()).startswith("serving on "):
            if not line:
                raise SystemExit("the secret server did not start")
            print(line, end="")
        port = int(line.rsplit(":", 1)[1])
        print(line, end="")

        def enclave(mr_enclave: str):
            return create_certificate("tcg-dice", lambda rd: pki.quote(
                bytes.fromhex(mr_enclave), bytes.fromhex(build.mr_signer), rd, build.isv_prod_id,
                build.isv_svn))

        key = fetch_secret("127.0.0.1", port, keys / "demo-ca.pem", *enclave(build.mr_enclave),
                           server_name="localhost")
        print(f"enclave {build.mr_enclave[:16]}… received its 16-byte key over RA-TLS")
        model = out / "model.enc"
        protected_files.decrypt_file(
            key, model, out / "decrypted-by-enclave.tflite",
            "/models/face_detection/1/face_detection_short_range.tflite")
        print("…and decrypted the model with it")
        try:
            fetch_secret("127.0.0.1", port, keys / "demo-ca.pem", *enclave("00" * 32),
                         server_name="localhost")
            raise SystemExit("an unknown enclave got the key!")
        except ProvisioningError:
            print("an enclave with another MRENCLAVE was refused")
        print("audit log:", (work / "audit.jsonl").read_text().strip().splitlines()[-1][:160], "…")
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve())
