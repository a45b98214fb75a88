"""`enclave-build k8s` and `plan-capacity`: generated objects checked against the Kubernetes API
schema (two versions), golden trees per example, security invariants, EPC sizing.

Build outputs are made without Docker: the example specs are planned by the real framework
plugins, and the output files are written by the same code the build uses (service.json from
the plan, the policy fragment by builder.build.policy_fragment); only the enclave identity and
the image digest are fixed values.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from enclave_build.attestation.measurements import ImageRef, Measurements
from enclave_build.builder.build import load, make_plan, policy_fragment
from enclave_build.builder.cli import main
from enclave_build.builder.deploy.service_info import ServiceInfo, ServiceInfoError, service_info
from enclave_build.builder.k8s import capacity, timing
from enclave_build.builder.k8s.generate import Overrides, generate_k8s, render
from enclave_build.builder.k8s.inputs import K8sError, pinned_image
from enclave_build.builder.k8s.layout import MARKER, OVERLAY, Manifests
from enclave_build.builder.spec import SpecError
from enclave_build.contract.identity import EnclaveIdentity
from enclave_build.contract.names import SERVICE_FILE

from .conftest import run_cli, sgx_key_pem, tflite_bytes

kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).parent / "golden" / "k8s"
EXAMPLES = ("tflite", "openvino", "tfserving")
#: The oldest Kubernetes the manifests need (native sidecars, preStop sleep) and the newest
#: schema kubernetes-validate ships.
K8S_VERSIONS = ("1.30.0", "1.37.0")
DIGEST = "sha256:" + "1" * 64
AESMD = "registry.example.com/sgx-aesmd@sha256:" + "2" * 64
SECRET_SERVER = "registry.example.com/enclave-build@sha256:" + "3" * 64
DEPLOY = f"""
[deploy]
max_replicas = 6
pccs_url = "https://pccs.example.com:8081/sgx/certification/v4/"
aesmd_image = "{AESMD}"
secret_server_image = "{SECRET_SERVER}"
"""


def _model_files(models: Path, example: str) -> None:
    if example == "tflite":
        models.mkdir(parents=True, exist_ok=True)
        (models / "face_detection_short_range.tflite").write_bytes(tflite_bytes(bytes(60)))
    elif example == "openvino":
        d = models / "face_detection_ov"
        d.mkdir(parents=True, exist_ok=True)
        (d / "face_detection.xml").write_text("<net/>\n")
        (d / "face_detection.bin").write_bytes(bytes(64))
    else:
        d = models / "half_plus_two" / "variables"
        d.mkdir(parents=True, exist_ok=True)
        (d.parent / "saved_model.pb").write_bytes(b"\x08\x01")
        (d / "variables.index").write_bytes(b"\x00")


#: What the tflite example's loopback [secrets] server (made for `run --simulate` on one host)
#: becomes in the builds these tests deploy (as in the other examples' specs).
NOT_LOOPBACK = 'server = "secrets.example.com:4433"'


def make_build(
    tmp: Path,
    example: str,
    *,
    deploy: str = DEPLOY,
    size: str | None = None,
    extra: str = "",
    image_ref: str | None = None,
    replace: dict[str, str] | None = None,
    loopback: bool = False,
) -> Path:
    """A build output directory for examples/EXAMPLE/spec.toml (+ *deploy*), without Docker;
    *replace* maps text of the example spec to what it becomes. A loopback [secrets] server
    left in the spec becomes secrets.example.com (`k8s` refuses a loopback one), unless
    *loopback*."""
    base = tmp / "examples"
    spec_dir = base / example
    spec_dir.mkdir(parents=True, exist_ok=True)
    text = (ROOT / "examples" / example / "spec.toml").read_text()
    if size is not None:
        text = re.sub(r'(?m)^size = "[0-9]+[KMG]"', f'size = "{size}"', text)
    for old, new in (replace or {}).items():
        assert old in text, f"{old!r} is not in examples/{example}/spec.toml"
        text = text.replace(old, new)
    if not loopback:
        text = text.replace('server = "localhost:4433"', NOT_LOOPBACK)
    (spec_dir / "spec.toml").write_text(text + deploy + extra)
    _model_files(base / "models", example)
    keys = base / "keys"
    keys.mkdir(exist_ok=True)
    for name in ("demo-ca.pem", "tls.crt", "tls.key"):
        (keys / name).write_text("placeholder\n")
    (keys / "enclave-key.pem").write_bytes(sgx_key_pem())
    spec, registry = load(spec_dir / "spec.toml")
    plan = make_plan(spec, registry)
    out = spec_dir / "out"
    out.mkdir(exist_ok=True)
    measurements = Measurements(
        service=plan.service,
        framework=plan.framework,
        libos=plan.libos,
        identity=EnclaveIdentity(
            "ab" * 32, "cd" * 32, plan.enclave.isv_prod_id, plan.enclave.isv_svn, False
        ),
        image=ImageRef(image_ref or f"registry.example.com/{plan.service}@{DIGEST}", DIGEST),
    )
    (out / "measurements.json").write_text(measurements.to_json())
    info = service_info(plan, spec.deploy, (10001, 0), tls=spec.tls is not None)
    (out / SERVICE_FILE).write_text(info.to_json())
    if plan.secrets is not None and plan.secrets.keys:
        key_files = {k.name: spec.secrets.keys_dir / f"{k.name}.key" for k in plan.secrets.keys}
        (out / "secrets-policy.toml").write_text(
            policy_fragment(plan, measurements, key_files, out)
        )
    return out


def walk(node, path=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield path + (key,), key, value
            yield from walk(value, path + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, path + (index,))


def containers(obj):
    pod = obj.get("spec", {}).get("template", {}).get("spec", {})
    return pod.get("containers", []) + pod.get("initContainers", [])


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> dict[str, Manifests]:
    out = {}
    for example in EXAMPLES:
        build = make_build(tmp_path_factory.mktemp(example), example)
        out[example] = render(build)
    return out


@pytest.mark.parametrize("example", EXAMPLES)
def test_golden_tree(examples, example):
    """The whole generated tree per example; UPDATE_GOLDEN=1 rewrites tests/golden/k8s/."""
    manifests = examples[example]
    files = dict(manifests.files)
    files.update({f"{OVERLAY}/{k}": v for k, v in manifests.overlay.items()})
    golden = GOLDEN / example
    if os.environ.get("UPDATE_GOLDEN"):
        shutil.rmtree(golden, ignore_errors=True)
        for rel, text in files.items():
            (golden / rel).parent.mkdir(parents=True, exist_ok=True)
            (golden / rel).write_text(text)
    have = {str(p.relative_to(golden)) for p in golden.rglob("*") if p.is_file()}
    assert have == set(files), "generated files differ from the golden tree (UPDATE_GOLDEN=1)"
    for rel, text in files.items():
        assert (golden / rel).read_text() == text, f"{example}/{rel} differs (UPDATE_GOLDEN=1)"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("example", EXAMPLES)
def test_every_object_matches_the_api_schema(examples, example, version):
    for path, obj in examples[example].objects.items():
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(
                f"{example}/{path} ({obj['kind']}) is not valid for Kubernetes "
                f"{version}: {str(exc).splitlines()[0]} at {list(exc.path)}"
            )


def test_the_schema_check_catches_a_wrong_field(examples):
    """The validation above can fail: a misspelt field in our Deployment is rejected."""
    deployment = json.loads(
        json.dumps(examples["tflite"].objects["base/model-server/deployment.yaml"])
    )
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)


@pytest.mark.parametrize("example", EXAMPLES)
def test_nothing_is_privileged_or_mounts_a_host_path(examples, example):
    objects = examples[example].objects
    assert objects
    for path, obj in objects.items():
        for where, key, value in walk(obj):
            assert key != "hostPath", f"{path}: hostPath at {where}"
            assert not (key == "privileged" and value is True), f"{path}: privileged at {where}"
            assert not (key in ("hostNetwork", "hostPID", "hostIPC") and value), f"{path}: {key}"
            assert not (key == "add" and "capabilities" in where), f"{path}: adds capabilities"
            assert not (key == "allowPrivilegeEscalation" and value is not False)
        if obj["kind"] != "Deployment":
            continue
        pod = obj["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for c in containers(obj):
            ctx = c["securityContext"]
            assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] > 0, c["name"]
            assert ctx["allowPrivilegeEscalation"] is False, c["name"]
            assert ctx["capabilities"] == {"drop": ["ALL"]}, c["name"]
            assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}, c["name"]
            assert ctx["readOnlyRootFilesystem"] is True, c["name"]
            assert "@sha256:" in c["image"], c["name"]
    assert (
        objects["base/namespace.yaml"]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
        == "restricted"
    )


def test_model_server_deployment_for_the_tflite_example(examples):
    d = examples["tflite"].objects["base/model-server/deployment.yaml"]
    pod = d["spec"]["template"]["spec"]
    enclave = pod["containers"][0]
    assert enclave["image"] == f"registry.example.com/face-detect@{DIGEST}"
    limits = enclave["resources"]["limits"]
    # 2G enclave + Gramine's 1 MiB margin; one enclave device; no provisioning key.
    assert (
        limits["sgx.intel.com/epc"]
        == "2049Mi"
        == enclave["resources"]["requests"]["sgx.intel.com/epc"]
    )
    assert limits["sgx.intel.com/enclave"] == "1" and "sgx.intel.com/provision" not in limits
    assert limits["cpu"] == "4"  # min(max_threads 32, 4)
    aesmd = next(c for c in pod["initContainers"] if c["name"] == "aesmd")
    assert aesmd["restartPolicy"] == "Always"
    assert aesmd["resources"]["limits"]["sgx.intel.com/provision"] == "1"
    assert enclave["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert enclave["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert enclave["startupProbe"]["failureThreshold"] == timing.startup_failure_threshold(
        2 << 30, edmm=False, keys=1
    )
    assert pod["terminationGracePeriodSeconds"] == timing.grace_period(2 << 30, 20.0)
    # The encrypted model directory is copied into an emptyDir (Gramine opens it read-write).
    stage = next(c for c in pod["initContainers"] if c["name"].startswith("stage-"))
    assert stage["command"][:2] == ["cp", "-R"] and stage["image"] == enclave["image"]
    mounted = {m["mountPath"] for m in enclave["volumeMounts"]}
    assert "/var/run/aesmd" in mounted and any(p.startswith("/models/") for p in mounted)
    assert [
        m["pods"]["metric"]["name"]
        for m in examples["tflite"].objects["base/model-server/hpa.yaml"]["spec"]["metrics"]
    ] == [
        "model_server_queue_depth",
        "model_server_request_latency_p95_seconds",
        "model_server_memory_in_use_ratio",
    ]


def test_tfserving_gets_tcp_probes_and_no_hpa(examples):
    m = examples["tfserving"]
    enclave = m.objects["base/model-server/deployment.yaml"]["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert enclave["readinessProbe"]["tcpSocket"] == {"port": "grpc"}
    assert "base/model-server/hpa.yaml" not in m.objects
    assert any("HorizontalPodAutoscaler" in n and "CPU alone" in n for n in m.notes)
    assert enclave["resources"]["limits"]["sgx.intel.com/epc"] == "8193Mi"


def test_secret_server_config_is_the_builds_policy(examples):
    m = examples["tflite"]
    data = m.objects["base/secret-server/configmap.yaml"]["data"]
    config = tomllib.loads(data["secrets.toml"])
    assert config["attestation"] == {
        "root_ca": "intel",
        "pccs_url": "https://pccs.example.com:8081/sgx/certification/v4/",
    }
    assert config["secrets"] == [
        {"name": "face-detect-key", "file": "../keys/face-detect-key.key", "allow": ["face-detect"]}
    ]
    assert json.loads(data["face-detect.measurements.json"])["mr_enclave"] == "ab" * 32
    overlay = yaml.safe_load(m.overlay["kustomization.yaml"])
    assert overlay["secretGenerator"][1]["files"] == [
        "face-detect-key.key=secrets/face-detect-key.key"
    ]


def test_key_bytes_never_enter_the_output(tmp_path):
    out = make_build(tmp_path, "tflite")
    key = os.urandom(16)
    key_file = tmp_path / "examples" / "keys" / "face-detect-key.key"
    key_file.write_bytes(key)
    key_file.chmod(0o600)
    target = tmp_path / "deploy"
    generate_k8s(out, target)
    needles = [key, key.hex().encode(), base64.b64encode(key)]
    for path in target.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert not any(n in content for n in needles), path


def test_enclave_size_changes_the_epc_request_and_the_capacity_plan(tmp_path):
    small = render(make_build(tmp_path / "a", "tflite", size="2G"))
    large = render(make_build(tmp_path / "b", "tflite", size="4G"))

    def epc(m):
        return m.objects["base/model-server/deployment.yaml"]["spec"]["template"]["spec"][
            "containers"
        ][0]["resources"]["requests"]["sgx.intel.com/epc"]

    assert (epc(small), epc(large)) == ("2049Mi", "4097Mi")
    plans = [capacity.plan_capacity(size << 30, 32 << 30, 3) for size in (2, 4)]
    assert [p.replicas_per_node for p in plans] == [10, 7]  # 2G: device limit; 4G: EPC
    assert [p.limited_by for p in plans] == ["enclave-limit", "epc"]
    assert plans[1].replicas == 21 and plans[1].epc_per_pod == (4096 + 1 + 8) << 20


def test_capacity_margins():
    gramine = capacity.plan_capacity(8 << 30, 64 << 30, 2, attests=False)
    assert gramine.margin == 1 << 20 and gramine.sidecar_epc == 0
    assert gramine.replicas_per_node == 7 and gramine.replicas == 14
    occlum = capacity.plan_capacity(4 << 30, 64 << 30, 1, libos="occlum", max_threads=64)
    assert occlum.margin == (32 + 64 + 64) << 20
    with pytest.raises(Exception, match="no EPC margin known"):
        capacity.plan_capacity(4 << 30, 64 << 30, 1, libos="sgx-lkl")


def test_an_unpushed_build_is_refused_with_what_to_do(tmp_path):
    out = make_build(tmp_path, "tflite", image_ref="face-detect:demo")
    with pytest.raises(K8sError, match=r"push it first.*--push"):
        render(out)
    good = f"registry.example.com/ml/face-detect@{DIGEST}"
    assert (
        render(out, Overrides(image=good)).objects["base/model-server/deployment.yaml"]["spec"][
            "template"
        ]["spec"]["containers"][0]["image"]
        == good
    )
    with pytest.raises(K8sError, match="another image than the one measured"):
        render(out, Overrides(image="registry.example.com/x@sha256:" + "9" * 64))
    m = Measurements.load(out / "measurements.json")
    assert (
        pinned_image(m, f"reg.example.com:5000/a/b:v1@{DIGEST}")
        == f"reg.example.com:5000/a/b@{DIGEST}"
    )


def test_missing_deploy_settings_are_named(tmp_path):
    out = make_build(tmp_path, "tflite", deploy="")
    with pytest.raises(K8sError) as info:
        render(out)
    for key in ("pccs_url (or --pccs-url)", "aesmd_image", "secret_server_image"):
        assert f"[deploy] {key}" in str(info.value)
    with pytest.raises(K8sError) as info:
        render(out, Overrides(pccs_url="https://pccs.example.com/", aesmd_image=AESMD))
    assert "pccs_url" not in str(info.value) and "secret_server_image" in str(info.value)
    assert render(
        out,
        Overrides(
            pccs_url="https://pccs.example.com/",
            aesmd_image=AESMD,
            secret_server_image=SECRET_SERVER,
        ),
    ).objects


def test_ingress_needs_tls_and_passes_it_through(tmp_path):
    plain = make_build(
        tmp_path / "a", "tflite", deploy=DEPLOY + 'ingress_host = "infer.example.com"\n'
    )
    with pytest.raises(K8sError, match="TLS passthrough"):
        render(plain)
    tls = make_build(
        tmp_path / "b",
        "tflite",
        deploy=DEPLOY + 'ingress_host = "infer.example.com"\n',
        extra='\n[tls]\ncert = "../keys/tls.crt"\nkey = "../keys/tls.key"\n',
    )
    m = render(tls)
    ingress = m.objects["base/model-server/ingress.yaml"]
    assert (
        ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/ssl-passthrough"] == "true"
    )
    assert ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["port"] == {
        "name": "grpc"
    }
    probe = m.objects["base/model-server/deployment.yaml"]["spec"]["template"]["spec"][
        "containers"
    ][0]["readinessProbe"]["httpGet"]
    assert probe["scheme"] == "HTTPS"
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(ingress, version, strict=True)


@pytest.mark.parametrize(
    "deploy, key, message",
    [
        ('[deploy]\ncpu_limit = "64"\n', "deploy.cpu_limit", "more than [enclave] max_threads"),
        ("[deploy]\nreplicas = 4\nmax_replicas = 2\n", "deploy.max_replicas", "less than replicas"),
        ('[deploy]\ncpu = "lots"\n', "deploy.cpu", "allowed: CPUs"),
        ("[deploy]\nreplica = 2\n", "deploy.replica", "did you mean 'replicas'"),
        ('[deploy]\npccs_url = "http://pccs"\n', "deploy.pccs_url", "https://"),
    ],
)
def test_deploy_spec_errors_name_file_line_and_key(tmp_path, deploy, key, message):
    with pytest.raises(SpecError) as info:
        make_build(tmp_path, "tflite", deploy="\n" + deploy)
    text = str(info.value)
    assert re.search(r"spec\.toml:\d+: " + re.escape(key) + ":", text), text
    assert message in text


def test_service_json_round_trips(tmp_path):
    out = make_build(tmp_path, "openvino")
    info = ServiceInfo.load(out / SERVICE_FILE)
    assert ServiceInfo.from_dict(json.loads(info.to_json()), "x") == info
    assert info.health.kind == "kserve-v2" and info.drain_seconds == 20.0
    assert info.deploy.max_replicas == 6
    bad = json.loads(info.to_json())
    bad["health"]["port"] = "nope"
    with pytest.raises(
        ServiceInfoError,
        match=r"service\.json: health\.port: 'nope' is not "
        "allowed; allowed: grpc, http",
    ):
        ServiceInfo.from_dict(bad, "service.json")


def test_rewriting_keeps_the_operators_overlay(tmp_path):
    out = make_build(tmp_path, "tflite")
    target = tmp_path / "deploy"
    generate_k8s(out, target)
    secret = target / OVERLAY / "secrets" / "face-detect-key.key"
    secret.write_bytes(bytes(16))
    (target / "base" / "stale.yaml").write_text("x")
    _, notes = generate_k8s(out, target)
    assert secret.read_bytes() == bytes(16)
    assert not (target / "base" / "stale.yaml").exists() and (target / MARKER).exists()
    assert not notes or all("overlay" not in n for n in notes)
    other = tmp_path / "not-ours"
    other.mkdir()
    (other / "x").write_text("x")
    with pytest.raises(K8sError, match="not written by `enclave-build k8s`"):
        generate_k8s(out, other)


def test_cli_k8s_and_plan_capacity(tmp_path):
    out = make_build(tmp_path, "tflite")
    runner = CliRunner()
    result = runner.invoke(main, ["k8s", str(out), "--output", str(tmp_path / "d"), "--json"])
    assert result.exit_code == 0, result.output
    assert "base/model-server/deployment.yaml" in json.loads(result.output)["files"]
    result = runner.invoke(
        main, ["plan-capacity", str(out), "--epc-per-node", "64G", "--nodes", "3", "--json"]
    )
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["enclave_size"] == 2 << 30 and plan["replicas"] == 30
    result = runner.invoke(
        main,
        [
            "plan-capacity",
            "--enclave-size",
            "4G",
            "--epc-per-node",
            "64Gi",
            "--nodes",
            "3",
            "--libos",
            "occlum",
        ],
    )
    assert result.exit_code == 0, result.output
    # 4096 + 160 + 8 MiB (quoting enclaves in the enclave container, no sidecar): 15 a node
    assert "margin 160Mi + quoting enclaves 8Mi" in result.output
    assert "45 replicas on 3 node(s)" in result.output and "aesmd" not in result.output
    unpushed = make_build(tmp_path / "u", "tflite", image_ref="face-detect:demo")
    result = runner.invoke(main, ["k8s", str(unpushed), "--output", str(tmp_path / "e")])
    assert result.exit_code == 2 and "push it first" in result.output
    assert not (tmp_path / "e").exists()
    for command in ("k8s", "plan-capacity"):
        assert "Example" in runner.invoke(main, [command, "--help"]).output


@pytest.mark.integration
@pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl (with kustomize) not installed"
)
def test_kubectl_kustomize_builds_the_overlay(tmp_path):
    """What `kubectl apply -k` would send: the generated Secrets get hashed names and the
    base's references follow them; every object passes the schema."""
    out = make_build(tmp_path, "tflite")
    target = tmp_path / "deploy"
    generate_k8s(out, target)
    secrets = target / OVERLAY / "secrets"
    for name in ("tls.crt", "tls.key"):
        (secrets / name).write_text("placeholder\n")
    (secrets / "face-detect-key.key").write_bytes(bytes(16))
    built = subprocess.run(
        ["kubectl", "kustomize", str(target / OVERLAY)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    docs = [d for d in yaml.safe_load_all(built) if d]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds.count("Secret") == 2 and "HorizontalPodAutoscaler" in kinds
    names = {d["metadata"]["name"] for d in docs if d["kind"] == "Secret"}
    server = next(
        d
        for d in docs
        if d["kind"] == "Deployment" and d["metadata"]["name"] == "face-detect-secrets"
    )
    used = {
        v["secret"]["secretName"]
        for v in server["spec"]["template"]["spec"]["volumes"]
        if "secret" in v
    }
    assert used == names and all(re.search(r"-[a-z0-9]{10}$", n) for n in names)
    for doc in docs:
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


def test_a_real_build_writes_service_json_that_k8s_deploys(tmp_path, standin_root, signing_key):
    """A stand-in build (no Docker) writes service.json; k8s refuses the unpushed image and
    deploys it once the operator names where the image (same digest) was copied."""
    from enclave_build.builder.build import build

    (tmp_path / "model.tflite").write_bytes(tflite_bytes(bytes(range(256)) * 4))
    shutil.copy(signing_key, tmp_path / "key.pem")
    (tmp_path / "ca.pem").write_text("placeholder\n")
    (tmp_path / "spec.toml").write_text(f"""
[service]
name = "face"
framework = "tflite"

[[models]]
name = "face"
path = "model.tflite"

[enclave]
size = "1G"
max_threads = 16

[secrets]
server = "face-secrets.face.svc.cluster.local:4433"
ca = "ca.pem"
keys_dir = "keys"

[signing]
key = "key.pem"
{DEPLOY}
cpu = "2"
""")
    result = build(tmp_path / "spec.toml", output=tmp_path / "out", base=f"dir:{standin_root}")
    info = ServiceInfo.load(tmp_path / "out" / SERVICE_FILE)
    assert (info.enclave.size, info.enclave.max_threads) == (1 << 30, 16)
    assert info.keys == ("face-key",) and info.health.kind == "kserve-v2"
    assert info.run_as.user == 10001 and info.writable_paths
    with pytest.raises(K8sError, match="push it first"):
        render(tmp_path / "out")
    digest = result.measurements.image.digest
    m = render(tmp_path / "out", Overrides(image=f"registry.example.com/face@{digest}"))
    pod = m.objects["base/model-server/deployment.yaml"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["requests"]["cpu"] == "2"
    assert pod["containers"][0]["resources"]["limits"]["sgx.intel.com/epc"] == "1025Mi"
    # The build's [secrets] server is a cluster name: the Service takes that name and port.
    assert m.objects["base/secret-server/service.yaml"]["metadata"]["name"] == "face-secrets"
    assert not m.notes


def test_secret_server_address_note_fits_the_address(examples):
    """A name that is not the Service's may be made to resolve to it (DNS): a note says how."""
    for example in EXAMPLES:
        notes = [n for n in examples[example].notes if "dials the secret server" in n]
        assert len(notes) == 1 and "secrets.example.com:4433" in notes[0]
        assert "make that name resolve to the Service" in notes[0]


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "LOCALHOST.",
        "keys.localhost",
        "127.0.0.1",
        "127.1.2.3",
        "[::1]",
        "0.0.0.0",
        "[::]",
        "[::ffff:127.0.0.1]",
    ],
)
def test_a_loopback_secret_server_is_refused_with_the_rebuild(tmp_path, host):
    """Inside a pod a loopback address is the pod itself: the enclave (which measured that
    address) never gets its keys. Refused (exit 2 at the CLI), naming the in-cluster Service
    to rebuild with; nothing is rendered."""
    out = make_build(
        tmp_path,
        "tflite",
        loopback=True,
        replace={'server = "localhost:4433"': f'server = "{host}:4433"'},
    )
    with pytest.raises(K8sError) as caught:
        render(out)
    message = str(caught.value)
    assert f"{out}/service.json: secret_server:" in message
    assert f"{host}:4433, a loopback address measured into it" in message
    assert '[secrets] server = "face-detect-secrets.face-detect.svc.cluster.local:4433"' in message
    assert "--host face-detect-secrets.face-detect.svc.cluster.local" in message
    assert "enclave-build build SPEC" in message and "init --k8s face-detect" in message


@pytest.mark.parametrize(
    "host, loopback",
    [
        ("localhost", True),
        ("a.b.localhost", True),
        ("127.255.0.1", True),
        ("::1", True),
        ("0.0.0.0", True),
        ("::", True),
        ("::ffff:127.0.0.1", True),
        ("localhost.example.com", False),
        ("mylocalhost", False),
        ("10.0.0.1", False),
        ("128.0.0.1", False),
        ("::2", False),
        ("secrets.example.com", False),
    ],
)
def test_is_loopback(host, loopback):
    from enclave_build.builder.k8s.secret_server import is_loopback

    assert is_loopback(host) is loopback


def test_k8s_cli_exits_2_for_a_loopback_secret_server(tmp_path):
    """The user's view: `enclave-build k8s` (a subprocess) exits 2 with the rebuild line and
    writes nothing, where it used to exit 0 with YAML that could never become ready."""
    out = make_build(tmp_path, "tflite", loopback=True)
    target = tmp_path / "deploy"
    result = subprocess.run(
        [sys.executable, "-m", "enclave_build", "k8s", str(out), "-o", str(target)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "error: " in result.stderr and "localhost:4433, a loopback address" in result.stderr
    assert (
        'error:   [secrets] server = "face-detect-secrets.face-detect.svc.cluster.local:4433"'
        in result.stderr
    )
    assert not target.exists()


def test_inspect_run_and_k8s_take_the_project_directory(tmp_path, standin_root):
    """`inspect DIR`, `run DIR --simulate` and `k8s DIR -o X` take the project directory that
    `build` and `dev` take (its build in out/), saying so; a project without a build, or a
    directory that is neither, is exit 2 for all three, naming what to run or give."""
    model = tmp_path / "face.tflite"
    model.write_bytes(tflite_bytes(bytes(range(256)) * 4))
    assert run_cli("init", "--model", str(model), "proj", cwd=tmp_path).returncode == 0
    for command in (
        ["inspect", "proj"],
        ["run", "proj", "--simulate"],
        ["k8s", "proj", "-o", "deploy"],
        ["plan-capacity", "proj", "--epc-per-node", "64G"],
    ):
        proc = run_cli(*command, cwd=tmp_path)
        assert proc.returncode == 2, (command, proc.stderr.decode())
        assert (
            "proj is a project directory (spec.toml), and proj/out holds no build: "
            "`enclave-build build proj` writes one there" in proc.stderr.decode()
        ), command
    (tmp_path / "other").mkdir()
    for command in (
        ["inspect", "other"],
        ["run", "other", "--simulate"],
        ["k8s", "other", "-o", "deploy"],
        ["run", "missing", "--simulate"],
        ["k8s", "missing", "-o", "deploy"],
    ):
        proc = run_cli(*command, cwd=tmp_path)
        assert proc.returncode == 2, (command, proc.stderr.decode())
        assert "give the --output directory of `enclave-build build`" in proc.stderr.decode()
    assert not (tmp_path / "deploy").exists()

    built = run_cli("build", "-q", "proj", "--base", f"dir:{standin_root}", cwd=tmp_path)
    assert built.returncode == 0, built.stderr.decode()
    note = "proj is a project directory: reading its build output proj/out"
    inspected = run_cli("inspect", "proj", cwd=tmp_path)
    assert inspected.returncode == 0, inspected.stderr.decode()
    assert (
        note in inspected.stderr.decode() and "agrees           true" in inspected.stdout.decode()
    )
    capacity = run_cli("plan-capacity", "proj", "--epc-per-node", "64G", "--json", cwd=tmp_path)
    assert capacity.returncode == 0 and note in capacity.stderr.decode()
    # k8s reads the build (and refuses it for its own reason: not pushed)
    deploy = run_cli("k8s", "proj", "-o", "deploy", cwd=tmp_path)
    assert note in deploy.stderr.decode() and "push it first" in deploy.stderr.decode()
    # run reads and checks the build (then cannot boot a stand-in under gramine-direct)
    ran = run_cli("run", "proj", "--simulate", "--mode", "gramine-direct", cwd=tmp_path)
    assert note in ran.stderr.decode() and "STAND-IN base" in ran.stderr.decode()


def _profile_report(path: Path, service: str, size: int, threads: int) -> Path:
    """A report as `enclave-build profile --json` prints it (its recommendation part)."""
    path.write_text(
        json.dumps(
            {
                "schema": 1,
                "service": service,
                "mode": "gramine-direct",
                "memory": {"peak_virtual_bytes": size // 2},
                "recommendation": {"size_bytes": size, "max_threads": threads},
            }
        )
    )
    return path


def _epc(manifests: Manifests) -> str:
    return manifests.objects["base/model-server/deployment.yaml"]["spec"]["template"]["spec"][
        "containers"
    ][0]["resources"]["requests"]["sgx.intel.com/epc"]


def test_k8s_sizes_the_epc_request_from_a_profile(tmp_path):
    edmm = make_build(
        tmp_path / "e",
        "tflite",
        size="8G",
        replace={"max_threads = 32": "max_threads = 32\nedmm = true"},
    )
    report = _profile_report(tmp_path / "p.json", "face-detect", 1 << 30, 20)
    assert _epc(render(edmm)) == "8193Mi"
    measured = render(edmm, Overrides(profile=report))
    assert _epc(measured) == "1025Mi"  # the recommendation + the Gramine margin
    assert any("EPC sized from" in n for n in measured.notes)
    # without EDMM the whole enclave is committed at start: the request stays, with a note
    plain = render(make_build(tmp_path / "n", "tflite", size="8G"), Overrides(profile=report))
    assert _epc(plain) == "8193Mi"
    assert any("the EPC request stays 8G" in n for n in plain.notes)
    # a build smaller than the run needed, or another service's profile: exit 2
    big = _profile_report(tmp_path / "big.json", "face-detect", 16 << 30, 20)
    with pytest.raises(K8sError, match="would run out"):
        render(edmm, Overrides(profile=big))
    other = _profile_report(tmp_path / "o.json", "other", 1 << 30, 20)
    with pytest.raises(K8sError, match="a profile of 'other'"):
        render(edmm, Overrides(profile=other))
    # the CLI
    result = CliRunner().invoke(
        main, ["k8s", str(edmm), "-o", str(tmp_path / "d"), "--profile", str(report), "--json"]
    )
    assert result.exit_code == 0, result.output
    deployment = yaml.safe_load((tmp_path / "d/base/model-server/deployment.yaml").read_text())
    resources = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources["requests"]["sgx.intel.com/epc"] == "1025Mi"
    assert resources["limits"]["sgx.intel.com/epc"] == "1025Mi"
    result = CliRunner().invoke(
        main, ["k8s", str(edmm), "-o", str(tmp_path / "f"), "--profile", str(tmp_path / "nope")]
    )
    assert result.exit_code == 2 and "no such file" in result.output


def test_plan_capacity_takes_a_profile(tmp_path):
    report = _profile_report(tmp_path / "p.json", "face-detect", 1 << 30, 20)
    runner = CliRunner()
    args = ["plan-capacity", "--epc-per-node", "64Gi", "--nodes", "1", "--json"]
    result = runner.invoke(main, [*args, "--profile", str(report)])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output[result.output.index("{") :])
    assert plan["enclave_size"] == 1 << 30
    edmm = make_build(
        tmp_path / "e",
        "tflite",
        size="8G",
        replace={"max_threads = 32": "max_threads = 32\nedmm = true"},
    )
    result = runner.invoke(main, [*args, str(edmm), "--profile", str(report)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output[result.output.index("{") :])["enclave_size"] == 1 << 30
    without = runner.invoke(main, [*args, str(edmm)])
    assert json.loads(without.output)["enclave_size"] == 8 << 30
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": 1, "service": "x", "recommendation": {"size_bytes": null}}')
    result = runner.invoke(main, [*args, "--profile", str(bad)])
    assert result.exit_code == 2 and "gramine-direct" in result.output
