"""What `enclave-build k8s` deploys, case by case: the disruption budget and rollout strategy
with one replica, the autoscaler's latency metric for idle pods, secret servers the generator
cannot deploy (an enclave that accepts only an attested secret server, Occlum's init, the
secret-server framework's own build), and the capacity plan that follows the build's enclave
size."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from enclave_build.attestation.measurements import ImageRef, Measurements
from enclave_build.builder.build import load, make_plan
from enclave_build.builder.cli import main
from enclave_build.builder.deploy.service_info import ServiceInfo, service_info
from enclave_build.builder.k8s.autoscaling import LATENCY, adapter_helm_values, adapter_rules
from enclave_build.builder.k8s.generate import render
from enclave_build.builder.k8s.inputs import K8sError
from enclave_build.contract.identity import EnclaveIdentity
from enclave_build.contract.names import SERVICE_FILE
from tests.conftest import sgx_key_pem
from tests.test_k8s import DEPLOY, DIGEST, K8S_VERSIONS, make_build, walk

kubernetes_validate = pytest.importorskip("kubernetes_validate")

PCCS = "https://pccs.example.com:8081/sgx/certification/v4/"


def _objects(manifests, kind: str) -> list[dict]:
    return [o for o in manifests.objects.values() if o["kind"] == kind]


def test_one_replica_can_still_be_drained_and_rollouts_surge_by_one(tmp_path):
    """A minAvailable: 1 budget over one replica would block every node drain forever."""
    m = render(
        make_build(
            tmp_path,
            "tflite",
            deploy=DEPLOY.replace("max_replicas = 6", "replicas = 1\nsecret_server_replicas = 1"),
        )
    )
    budgets = _objects(m, "PodDisruptionBudget")
    assert len(budgets) == 2  # model server and secret server
    for pdb in budgets:
        assert pdb["spec"]["maxUnavailable"] == 1 and "minAvailable" not in pdb["spec"]
    deployment = m.objects["base/model-server/deployment.yaml"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }


def test_the_latency_metric_is_zero_not_nan_for_an_idle_pod():
    """histogram_quantile over all-zero rates is NaN; an HPA that cannot read a metric never
    scales down. The rule keeps the quantile only where it is a number (``>= 0`` drops NaN)
    and falls back, per pod, to the request rate times zero."""
    rule = next(r for r in adapter_rules()["rules"] if r["name"]["as"] == LATENCY)
    quantile, fallback = rule["metricsQuery"].split(" >= 0 or ")
    assert quantile.startswith("histogram_quantile(0.95, ") and "by (le, <<.GroupBy>>)" in quantile
    # Both sides are grouped by the same labels, so `or` fills in exactly the missing pods.
    assert fallback == "sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) by (<<.GroupBy>>) * 0"
    assert re.search(r"\[2m\]", quantile)
    assert adapter_helm_values() == {"rules": {"custom": adapter_rules()["rules"]}}


def test_the_helm_values_carry_the_same_rules_as_the_adapter_config(tmp_path):
    m = render(make_build(tmp_path, "tflite"))
    rules = yaml.safe_load(m.files["monitoring/prometheus-adapter-rules.yaml"])
    values = yaml.safe_load(m.files["monitoring/prometheus-adapter-values.yaml"])
    assert values == {"rules": {"custom": rules["rules"]}}


def _server_measurements(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        Measurements(
            "keys",
            "secret-server",
            "gramine",
            EnclaveIdentity("ee" * 32, "cd" * 32, 9, 1, False),
            ImageRef(f"registry.example.com/keys@{DIGEST}", DIGEST),
        ).to_json()
    )
    return path


def test_an_enclave_that_trusts_only_an_attested_secret_server_gets_none_in_cluster(tmp_path):
    """The in-cluster secret server has a CA-signed certificate, which such an enclave refuses:
    the pods still quote (aesmd sidecar), but no secret server, Secret or NetworkPolicy is
    generated, and nothing asks for a secret-server image."""
    _server_measurements(tmp_path / "examples" / "keys" / "keys.measurements.json")
    out = make_build(
        tmp_path,
        "tflite",
        deploy=DEPLOY.replace('secret_server_image = "', '# secret_server_image = "'),
        replace={
            'ca = "../keys/demo-ca.pem"': 'server_measurements = ["../keys/keys.measurements.json"]\n'
            'server_pin = "mr_signer"\n'
            f'server_pccs_url = "{PCCS}"',
            'server = "localhost:4433"': 'server = "keys.example.com:4433"',
        },
    )
    info = ServiceInfo.load(out / SERVICE_FILE)
    assert info.secret_server_enclave and info.keys == ("face-detect-key",)
    m = render(out)
    assert not [p for p in m.objects if p.startswith("base/secret-server/")]
    assert "secretGenerator" not in yaml.safe_load(m.overlay["kustomization.yaml"])
    assert "secrets/README.md" not in m.overlay
    pod = m.objects["base/model-server/deployment.yaml"]["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]][-1] == "aesmd"
    assert "base/model-server/qcnl-configmap.yaml" in m.objects
    note = next(n for n in m.notes if "no in-cluster secret server" in n)
    assert "keys.example.com:4433" in note and "attested enclave" in note
    assert "secrets/README.md" not in m.files["README.md"]
    for obj in m.objects.values():
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)


def test_an_attested_secret_server_at_a_loopback_address_is_refused_too(tmp_path):
    """The secret server is an enclave `k8s` does not deploy: still unreachable at localhost."""
    _server_measurements(tmp_path / "examples" / "keys" / "keys.measurements.json")
    out = make_build(
        tmp_path,
        "tflite",
        loopback=True,
        deploy=DEPLOY.replace('secret_server_image = "', '# secret_server_image = "'),
        replace={
            'ca = "../keys/demo-ca.pem"': 'server_measurements = ["../keys/keys.measurements.json"]\n'
            'server_pin = "mr_signer"\n'
            f'server_pccs_url = "{PCCS}"'
        },
    )
    with pytest.raises(K8sError, match="the secret-server enclave's address as the pods reach"):
        render(out)


def test_an_occlum_enclave_that_fetches_keys_needs_an_attested_secret_server(tmp_path):
    """Occlum's init fetches every key over mutual RA-TLS (ratls.GrSecret): the plain
    in-cluster secret server could not answer it."""
    occlum = {'libos = "gramine"': 'libos = "occlum"'}
    encrypted = ServiceInfo.load(
        make_build(tmp_path / "a", "tflite", replace=occlum) / SERVICE_FILE
    )
    assert encrypted.libos == "occlum" and encrypted.keys and encrypted.secret_server_enclave
    clear = make_build(
        tmp_path / "b", "tflite", replace={**occlum, "encrypt = true": "encrypt = false"}
    )
    assert not ServiceInfo.load(clear / SERVICE_FILE).secret_server_enclave
    m = render(clear)
    assert not [p for p in m.objects if "secret-server" in p]
    # 2G + Occlum's margin: 96 MiB + 1 MiB for each of the 32 threads.
    assert (
        m.objects["base/model-server/deployment.yaml"]["spec"]["template"]["spec"]["containers"][0][
            "resources"
        ]["limits"]["sgx.intel.com/epc"]
        == f"{2048 + 96 + 32}Mi"
    )


def test_an_occlum_pod_quotes_in_its_enclave_container(tmp_path):
    """Occlum's runtime loads Intel's quoting enclaves itself (its PAL calls the DCAP quote
    library; Occlum runs with /dev/sgx_provision and /etc/sgx_default_qcnl.conf in its own
    container): the enclave container gets sgx.intel.com/provision, the quote provider's
    configuration and the quoting enclaves' EPC; the pod has no aesmd sidecar, so none is
    asked for; the capacity plan counts one device per pod."""
    out = make_build(
        tmp_path,
        "tflite",
        replace={'libos = "gramine"': 'libos = "occlum"'},
        deploy=DEPLOY.replace("aesmd_image", "# aesmd_image"),
    )
    info = ServiceInfo.load(out / SERVICE_FILE)
    assert info.libos == "occlum" and info.keys and not info.deploy.aesmd_image
    m = render(out)
    spec = m.objects["base/model-server/deployment.yaml"]["spec"]["template"]["spec"]
    assert "initContainers" not in spec  # no aesmd sidecar
    (enclave,) = spec["containers"]
    for kind in ("requests", "limits"):
        sgx = {k: v for k, v in enclave["resources"][kind].items() if k.startswith("sgx.")}
        # 2G + Occlum's margin (96 MiB + 32 threads) + 8 MiB for QE3 and PCE
        assert sgx == {
            "sgx.intel.com/epc": f"{2048 + 96 + 32 + 8}Mi",
            "sgx.intel.com/enclave": "1",
            "sgx.intel.com/provision": "1",
        }
    assert {
        "name": "qcnl-config",
        "mountPath": "/etc/sgx_default_qcnl.conf",
        "subPath": "sgx_default_qcnl.conf",
        "readOnly": True,
    } in enclave["volumeMounts"]
    assert {"name": "qcnl-config", "configMap": {"name": "face-detect-qcnl"}} in spec["volumes"]
    qcnl = m.objects["base/model-server/qcnl-configmap.yaml"]
    assert json.loads(qcnl["data"]["sgx_default_qcnl.conf"])["pccs_url"] == PCCS
    assert any("quotes in the enclave container" in n for n in m.notes)
    for path, obj in m.objects.items():
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
        for _where, key, value in walk(obj):  # the provisioning device is a plugin resource
            assert key != "hostPath" and not (key == "privileged" and value is True), path
    assert enclave["securityContext"]["allowPrivilegeEscalation"] is False
    assert enclave["securityContext"]["runAsNonRoot"] is True
    result = CliRunner().invoke(
        main, ["plan-capacity", str(out), "--epc-per-node", "64Gi", "--json"]
    )
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert (plan["sidecar_epc"], plan["quoting_epc"], plan["enclave_devices_per_pod"]) == (
        0,
        8 << 20,
        1,
    )
    assert plan["epc_per_pod"] == (2048 + 96 + 32 + 8) << 20
    # ... while a Gramine pod still quotes through its aesmd sidecar
    gramine = render(make_build(tmp_path / "g", "tflite"))
    gspec = gramine.objects["base/model-server/deployment.yaml"]["spec"]["template"]["spec"]
    assert "sgx.intel.com/provision" not in gspec["containers"][0]["resources"]["limits"]
    assert [c["name"] for c in gspec["initContainers"]][-1] == "aesmd"


def _owner_cert(path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "owner")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_the_secret_server_frameworks_own_build_is_refused_clearly(tmp_path):
    """Planned by the real secret-server plugin: its service.json says it presents its own
    RA-TLS identity, and `k8s` refuses it (exit 2) saying why replicas would be wrong."""
    model = make_build(tmp_path / "model", "tflite")
    project = tmp_path / "keys"
    project.mkdir()
    (project / "key.pem").write_bytes(sgx_key_pem())
    spec_path = project / "spec.toml"
    spec_path.write_text(f'''[service]
name = "keys"
framework = "secret-server"

[secret-server]
policies = ["{model}"]
owners = ["{_owner_cert(project / "owner.crt")}"]
pccs_url = "{PCCS}"

[signing]
key = "key.pem"
{DEPLOY}''')
    spec, registry = load(spec_path)
    plan = make_plan(spec, registry)
    info = service_info(plan, spec.deploy, (10001, 10001), tls=False)
    assert info.ra_tls_identity and not info.keys
    out = project / "out"
    out.mkdir()
    (out / SERVICE_FILE).write_text(info.to_json())
    _server_measurements(out / "measurements.json")
    result = CliRunner().invoke(main, ["k8s", str(out), "--output", str(tmp_path / "deploy")])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "ra_tls_identity" in text and "not be interchangeable" in text
    assert not (tmp_path / "deploy").exists()


def test_the_capacity_plan_follows_the_builds_enclave_size(tmp_path):
    """plan-capacity BUILD_DIR reads the size from service.json: a larger enclave, fewer
    replicas; and it says how many leave a rolling update room."""
    plans = {}
    for size in ("2G", "8G"):
        out = make_build(tmp_path / size, "tflite", size=size)
        result = CliRunner().invoke(
            main, ["plan-capacity", str(out), "--epc-per-node", "64Gi", "--nodes", "2", "--json"]
        )
        assert result.exit_code == 0, result.output
        plans[size] = json.loads(result.output)
    assert (plans["2G"]["epc_per_pod"], plans["8G"]["epc_per_pod"]) == (
        (2048 + 1 + 8) << 20,
        (8192 + 1 + 8) << 20,
    )
    assert (plans["2G"]["replicas"], plans["8G"]["replicas"]) == (20, 14)
    text = (
        CliRunner()
        .invoke(
            main,
            [
                "plan-capacity",
                str(tmp_path / "8G" / "examples" / "tflite" / "out"),
                "--epc-per-node",
                "64Gi",
                "--nodes",
                "2",
            ],
        )
        .output
    )
    assert "at most 13 replicas" in text


@pytest.mark.parametrize(
    "registry, noted",
    [
        ("127.0.0.1:5000", True),
        ("localhost:5000", True),
        ("[::1]:5000", True),
        ("registry.example.com", False),
        ("reg.example.com:5000", False),
    ],
)
def test_an_image_in_a_loopback_registry_is_noted(tmp_path, registry, noted):
    m = render(make_build(tmp_path, "tflite", image_ref=f"{registry}/face-detect@{DIGEST}"))
    assert any("loopback registry" in n for n in m.notes) is noted
