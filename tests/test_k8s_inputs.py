"""`enclave-build k8s` and `plan-capacity` under hostile or broken input: [deploy] values that
would make invalid or mis-typed objects, tampered build outputs, YAML that another reader
could take for something else, and the details a platform engineer checks in what is
generated (appProtocol, passthrough annotations, the staging copy as a non-root user)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from enclave_build.builder.cli import main
from enclave_build.builder.k8s.generate import Overrides, render
from enclave_build.builder.k8s.inputs import K8sError
from enclave_build.builder.k8s.layout import dump
from enclave_build.builder.spec import SpecError
from enclave_build.contract.names import SERVICE_FILE
from tests.test_k8s import DEPLOY, DIGEST, K8S_VERSIONS, make_build

kubernetes_validate = pytest.importorskip("kubernetes_validate")

#: Strings PyYAML would leave plain but go-yaml (kubectl: YAML 1.1 booleans y/n, Go number
#: syntax) or kustomize (YAML 1.2: 1e3 is a float, 0o17 an int) read as another type.
AMBIGUOUS = [
    "y",
    "n",
    "Y",
    "N",
    "1e3",
    "1E+3",
    "-1e3",
    "12e5",
    "1.5e3",
    "0o17",
    "08",
    "0777",
    "0x1f",
    "yes",
    "off",
    "null",
    "~",
    ".inf",
    "1_000",
]


@pytest.fixture(scope="module")
def tflite_build(tmp_path_factory) -> Path:
    return make_build(tmp_path_factory.mktemp("tflite"), "tflite")


def _copy(build: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(build, out)
    return out


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


def _pod(manifests) -> dict:
    return manifests.objects["base/model-server/deployment.yaml"]["spec"]["template"]["spec"]


# -- YAML ---------------------------------------------------------------------------------


def test_no_string_is_written_so_that_another_yaml_reader_retypes_it():
    text = dump({"values": AMBIGUOUS, "plain": ["face-detect", "2049Mi", "nginx"]})
    assert yaml.safe_load(text)["values"] == AMBIGUOUS
    for value in AMBIGUOUS:
        assert f"- '{value}'\n" in text, value  # quoted, whatever the reader
    assert "- face-detect\n- 2049Mi\n" in text  # the rest stays readable


def test_an_object_used_twice_is_written_twice_not_as_an_alias():
    probe = {"tcpSocket": {"port": "ra-tls"}}
    text = dump({"a": probe, "b": probe})
    assert "&" not in text and "*" not in text


def test_user_values_that_look_like_numbers_stay_strings_in_the_manifests(tmp_path):
    out = make_build(
        tmp_path,
        "tflite",
        deploy=DEPLOY + 'namespace = "1e3"\nnode_selector = { "y" = "n", "sgx" = "0o17" }\n',
    )
    m = render(out)
    text = m.files["base/model-server/deployment.yaml"]
    assert "namespace: '1e3'" in text and "'y': 'n'" in text and "sgx: '0o17'" in text
    d = yaml.safe_load(text)
    assert d["metadata"]["namespace"] == "1e3"
    assert d["spec"]["template"]["spec"]["nodeSelector"] == {"y": "n", "sgx": "0o17"}


@pytest.mark.integration
@pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl (with kustomize) not installed"
)
def test_kustomize_reads_ambiguous_values_as_strings(tmp_path):
    """kustomize (YAML 1.2) read an unquoted `namespace: 1e3` as the number 1000."""
    from enclave_build.builder.k8s.generate import generate_k8s

    out = make_build(
        tmp_path,
        "tflite",
        deploy=DEPLOY + 'namespace = "1e3"\nnode_selector = { "sgx" = "0o17" }\n',
    )
    target = tmp_path / "deploy"
    generate_k8s(out, target)
    built = subprocess.run(
        ["kubectl", "kustomize", str(target / "base")],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    docs = [d for d in yaml.safe_load_all(built) if d]
    assert {d["metadata"].get("namespace", d["metadata"]["name"]) for d in docs} == {"1e3"}
    deployment = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "face-detect"
    )
    assert deployment["spec"]["template"]["spec"]["nodeSelector"] == {"sgx": "0o17"}


# -- [deploy] in the spec -----------------------------------------------------------------


@pytest.mark.parametrize(
    "deploy, key, message",
    [
        (
            'aesmd_image = "registry.example.com/sgx-aesmd:latest"',
            "deploy.aesmd_image",
            "not pinned by digest",
        ),
        ('aesmd_image = "x\\ny: z"', "deploy.aesmd_image", "invalid"),
        ('secret_server_image = ""', "deploy.secret_server_image", "empty; allowed: an image"),
        (
            'secret_server_image = "reg.example.com/eb@sha256:abc"',
            "deploy.secret_server_image",
            "digest must be sha256:<64 hex>",
        ),
        ('node_selector = { "bad key!" = "true" }', "deploy.node_selector.bad key!", "label key"),
        ('node_selector = { "sgx" = "a b" }', "deploy.node_selector.sgx", "label value"),
        ('node_selector = { "sgx" = "true\\n" }', "deploy.node_selector.sgx", "label value"),
        ('node_selector = { "sgx\\n" = "true" }', "deploy.node_selector.sgx\n", "label key"),
        (
            'node_selector = { "Bad_Prefix/sgx" = "true" }',
            "deploy.node_selector.Bad_Prefix/sgx",
            "DNS subdomain",
        ),
        ('cpu = "0"', "deploy.cpu", "no CPU at all"),
        ('cpu = "64"', "deploy.cpu", "more than [enclave] max_threads"),
        ('ingress_host = "' + "a" * 64 + '.example.com"', "deploy.ingress_host", "too long"),
    ],
)
def test_hostile_deploy_values_are_refused_at_the_spec(tmp_path, deploy, key, message):
    base = "\n".join(
        line for line in DEPLOY.splitlines() if not line.startswith(deploy.split(" =")[0] + " =")
    )
    with pytest.raises(SpecError) as info:
        make_build(tmp_path, "tflite", deploy=base + "\n" + deploy + "\n")
    text = str(info.value)
    assert re.search(r"spec\.toml:\d+: " + re.escape(key) + ":", text), text
    assert message in text, text


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--aesmd-image", "registry.example.com/sgx-aesmd:2.24", "not pinned by digest"),
        ("--secret-server-image", "not a reference", "invalid"),
        ("--pccs-url", "http://pccs.example.com/", "https://"),
    ],
)
def test_command_line_overrides_get_the_same_checks(tflite_build, tmp_path, flag, value, message):
    result = CliRunner().invoke(
        main, ["k8s", str(tflite_build), "-o", str(tmp_path / "d"), flag, value]
    )
    assert result.exit_code == 2, result.output
    assert f"error: {flag}: " in result.output and message in result.output
    assert not (tmp_path / "d").exists()


# -- tampered build outputs ---------------------------------------------------------------


def _set(path, value):
    def change(data):
        node = data
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value

    return change


SERVICE_CASES = [
    (("enclave", "size"), "2G", "enclave.size: expected an integer"),
    (("enclave", "size"), True, "enclave.size: expected an integer"),
    (("enclave", "max_threads"), 2.5, "enclave.max_threads: expected an integer"),
    (("ports", 0, "number"), 70000, "ports[0].number: 70000 is out of range"),
    (("ports", 0, "protocol"), "ICMP", "ports[0].protocol: 'ICMP' is not allowed"),
    (("run_as", "user"), "10001", "run_as.user: expected an integer"),
    (("drain_seconds",), "20", "drain_seconds: expected seconds"),
    (
        ("writable_paths",),
        ["models/x"],
        "writable_paths[0]: 'models/x' is not allowed; allowed: an absolute path",
    ),
    (("keys",), "face-detect-key", "keys: expected an array"),
    (("secret_server",), "secrets", "secret_server: 'secrets' is not allowed"),
    (("tls",), "no", "tls: expected a boolean (true or false)"),
    (("health", "live"), "v2/health/live", "health.live: 'v2/health/live' is not allowed"),
    (("deploy", "replicas"), -1, "deploy.replicas: -1 is out of range"),
    (("deploy", "replicas"), "2", "deploy.replicas: expected an integer"),
    (("deploy", "namespace"), "Face", "deploy.namespace: 'Face' is not allowed"),
    (("deploy", "cpu"), "lots", "deploy.cpu: 'lots' is not allowed"),
    (("deploy", "node_selector"), ["sgx"], "deploy.node_selector: expected a JSON object"),
    (("deploy", "aesmd_image"), "sgx-aesmd", "deploy.aesmd_image: 'sgx-aesmd' is not pinned"),
    (("deploy",), [], "deploy: expected a JSON object"),
    (("libos",), "sgx-lkl", "libos: 'sgx-lkl': no EPC margin known"),
    (("surprise",), 1, "surprise: unknown key; allowed: version, service, "),
    # a trailing newline is not the end of a name: full matches only
    (("service",), "face-detect\n", "service: 'face-detect\\n' is not allowed"),
    (
        ("keys",),
        ["face-detect-key\n"],
        "keys[0]: 'face-detect-key\\n' is not allowed; allowed: a key name",
    ),
    (("secret_server",), "localhost:4433\n", "secret_server: 'localhost:4433\\n' is not allowed"),
    (("health", "live"), "/v2/health/live\n", "health.live: '/v2/health/live\\n' is not allowed"),
    (("writable_paths",), ["/models/x\n"], "writable_paths[0]: '/models/x\\n' is not allowed"),
]


@pytest.mark.parametrize(
    "path, value, message",
    SERVICE_CASES,
    ids=[".".join(map(str, c[0])) + "=" + repr(c[1]) for c in SERVICE_CASES],
)
def test_a_tampered_service_json_is_named_exit_2_nothing_written(
    tflite_build, tmp_path, path, value, message
):
    out = _copy(tflite_build, tmp_path)
    _edit_json(out / SERVICE_FILE, _set(path, value))
    for command in (
        ["k8s", str(out), "-o", str(tmp_path / "d")],
        ["plan-capacity", str(out), "--epc-per-node", "64Gi"],
    ):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 2, (command, result.output)
        assert "Traceback" not in result.output
        # FILE:LINE: KEY: message (the line of the key, or of its table)
        assert re.search(
            re.escape(f"{out / SERVICE_FILE}:") + r"\d+: " + re.escape(message), result.output
        ), result.output
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    "file, change, message",
    [
        ("measurements.json", _set(("mr_enclave",), "ab"), "mr_enclave"),
        (
            "measurements.json",
            _set(("image",), "x"),
            "image: expected a JSON object, got string 'x'",
        ),
        ("measurements.json", _set(("debug",), True), "debug: the build is a DEBUG enclave"),
        ("secrets-policy.toml", None, "not TOML"),
    ],
)
def test_a_tampered_measurements_or_policy_is_named_exit_2(
    tflite_build, tmp_path, file, change, message
):
    out = _copy(tflite_build, tmp_path)
    if change is None:
        (out / file).write_text("[[[ not toml")
    else:
        _edit_json(out / file, change)
    result = CliRunner().invoke(main, ["k8s", str(out), "-o", str(tmp_path / "d")])
    assert result.exit_code == 2, result.output
    assert f"{out / file}:" in result.output and message in result.output, result.output
    assert not (tmp_path / "d").exists()


def test_a_debug_enclave_needs_allow_debug_and_gets_a_warning(tflite_build, tmp_path):
    out = _copy(tflite_build, tmp_path)
    _edit_json(out / "measurements.json", _set(("debug",), True))
    m = render(out, Overrides(allow_debug=True))
    assert m.notes[0].startswith("WARNING: this is a DEBUG enclave")


def test_a_root_image_is_refused(tflite_build, tmp_path):
    out = _copy(tflite_build, tmp_path)
    _edit_json(out / SERVICE_FILE, _set(("run_as", "user"), 0))
    with pytest.raises(K8sError, match=r"run_as\.user: the image runs as root"):
        render(out)


@pytest.mark.parametrize(
    "service, message",
    [
        ("1face", "cannot name a Kubernetes Service"),
        ("f" * 56, "the secret server's Service name"),  # + "-secrets" is longer than 63
    ],
)
def test_names_kubernetes_would_refuse_are_caught(tflite_build, tmp_path, service, message):
    out = _copy(tflite_build, tmp_path)
    _edit_json(out / SERVICE_FILE, _set(("service",), service))
    _edit_json(out / "measurements.json", _set(("service",), service))
    with pytest.raises(K8sError, match=message):
        render(out)


def test_a_secret_server_host_kubernetes_cannot_name_is_caught(tflite_build, tmp_path):
    out = _copy(tflite_build, tmp_path)
    _edit_json(out / SERVICE_FILE, _set(("secret_server",), "Secrets.face-detect.svc:4433"))
    with pytest.raises(K8sError, match=r"secret_server .*'Secrets' cannot name"):
        render(out)


# -- what is generated --------------------------------------------------------------------


def test_service_ports_say_their_protocol(tflite_build, tmp_path):
    ports = render(tflite_build).objects["base/model-server/service.yaml"]["spec"]["ports"]
    assert {p["name"]: p["appProtocol"] for p in ports} == {
        "grpc": "kubernetes.io/h2c",
        "http": "http",
    }
    tls = make_build(
        tmp_path,
        "tflite",
        deploy=DEPLOY + 'ingress_host = "infer.example.com"\n',
        extra='\n[tls]\ncert = "../keys/tls.crt"\nkey = "../keys/tls.key"\n',
    )
    m = render(tls)
    ports = m.objects["base/model-server/service.yaml"]["spec"]["ports"]
    assert {p["appProtocol"] for p in ports} == {"https"}
    ingress = m.objects["base/model-server/ingress.yaml"]
    # Passthrough is layer 4: any other annotation is ignored, and backend-protocol GRPCS would
    # make a controller without --enable-ssl-passthrough terminate TLS itself.
    assert ingress["metadata"]["annotations"] == {
        "nginx.ingress.kubernetes.io/ssl-passthrough": "true"
    }
    assert any("--enable-ssl-passthrough" in n and "infer.example.com" in n for n in m.notes)
    for obj in (ingress, m.objects["base/model-server/service.yaml"]):
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)


def test_extended_resources_requests_equal_limits_in_every_container(tflite_build):
    for c in (
        _pod(render(tflite_build))["containers"] + _pod(render(tflite_build))["initContainers"]
    ):
        res = c["resources"]
        sgx = {
            k
            for k in {**res.get("limits", {}), **res.get("requests", {})}
            if k.startswith("sgx.intel.com/")
        }
        for key in sgx:
            assert res["limits"][key] == res["requests"][key], (c["name"], key)


@pytest.mark.integration
@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to act as the pod's non-root user",
)
def test_the_staging_copy_works_as_the_pods_user_into_a_root_owned_empty_dir(tflite_build, request):
    """The init container runs as the image's user; kubelet makes the emptyDir root's, 0777.
    `cp -a` failed there (preserving the directory's times), so the pod never started."""
    pod = _pod(render(tflite_build))
    stage = next(c for c in pod["initContainers"] if c["name"].startswith("stage-"))
    user, group = stage["securityContext"]["runAsUser"], stage["securityContext"]["runAsGroup"]
    # pytest's own temporary directories are root's and 0700: the user could not reach them.
    tmp_path = Path(tempfile.mkdtemp(prefix="enclave-build-stage-"))
    request.addfinalizer(lambda: shutil.rmtree(tmp_path, ignore_errors=True))
    os.chmod(tmp_path, 0o755)
    source = tmp_path / stage["command"][2].lstrip("/")
    (source / "sub").mkdir(parents=True)
    (source / "model.tflite").write_bytes(b"PF" * 100)
    for path in (source, source / "sub", source / "model.tflite"):
        os.chown(path, user, group)
    for path in source.parents:
        if path == tmp_path:
            break
        path.chmod(0o755)
    staged = tmp_path / "staged"
    staged.mkdir(mode=0o777)
    staged.chmod(0o777)
    # The pod's command with its two paths moved under tmp_path ("SRC/." kept as it is).
    program, flag, src, dst = stage["command"]
    assert src.endswith("/.") and dst == "/staged/", stage["command"]
    command = [program, flag, f"{tmp_path}{src}", f"{staged}/"]
    result = subprocess.run(
        ["setpriv", f"--reuid={user}", f"--regid={group}", "--clear-groups", *command],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    copied = staged / "model.tflite"
    assert copied.read_bytes() == b"PF" * 100 and copied.stat().st_uid == user
    assert os.access(copied, os.W_OK) or copied.stat().st_mode & 0o200  # Gramine opens it rw


# -- plan-capacity ------------------------------------------------------------------------


def test_epc_per_node_is_a_kubernetes_quantity():
    runner = CliRunner()

    def replicas(epc: str) -> int:
        result = runner.invoke(
            main,
            [
                "plan-capacity",
                "--enclave-size",
                "1G",
                "--epc-per-node",
                epc,
                "--no-attestation",
                "--enclave-limit",
                "100",
                "--json",
            ],
        )
        assert result.exit_code == 0, result.output
        return json.loads(result.output)["replicas_per_node"]

    # 1025 MiB per replica: 64Gi holds 63, 64G (64 x 10^9 bytes, as the scheduler reads it) 59.
    assert replicas("64Gi") == replicas(str(64 << 30)) == 63
    assert replicas("64G") == replicas("64000000000") == 59
    for bad in ("64GB", "64g", "-1", "0", "1.5Gi", f"{1 << 63}"):
        result = runner.invoke(
            main, ["plan-capacity", "--enclave-size", "1G", "--epc-per-node", bad]
        )
        assert result.exit_code == 2 and "--epc-per-node" in result.output, (bad, result.output)


@pytest.mark.parametrize(
    "args, reason",
    [
        (["--enclave-size", "128G", "--epc-per-node", "64Gi"], "but a node has 68719476736"),
        (
            ["--enclave-size", "4G", "--epc-per-node", "64Gi", "--enclave-limit", "1"],
            "the device plugin allows 1 per node",
        ),
    ],
)
def test_a_plan_where_nothing_fits_says_why_and_exits_2(args, reason):
    result = CliRunner().invoke(main, ["plan-capacity", *args, "--nodes", "3", "--json"])
    assert result.exit_code == 2
    assert "error: no replica fits: " in result.output and reason in result.output
    plan = json.loads(result.output[: result.output.index("error:")])
    assert plan["replicas_per_node"] == 0 and plan["replicas"] == 0


def test_plan_capacity_json_schema():
    result = CliRunner().invoke(
        main,
        [
            "plan-capacity",
            "--enclave-size",
            "4G",
            "--epc-per-node",
            "64Gi",
            "--nodes",
            "2",
            "--json",
        ],
    )
    plan = json.loads(result.output)
    assert set(plan) == {
        "libos",
        "enclave_size",
        "margin",
        "sidecar_epc",
        "quoting_epc",
        "epc_per_pod",
        "epc_per_node",
        "nodes",
        "enclave_devices_per_pod",
        "enclave_limit",
        "replicas_per_node",
        "replicas",
        "limited_by",
        "epc_unused_per_node",
    }
    assert all(isinstance(plan[k], int) for k in plan if k not in ("libos", "limited_by"))
    assert (
        plan["epc_unused_per_node"]
        == plan["epc_per_node"] - plan["replicas_per_node"] * plan["epc_per_pod"]
    )


def test_the_image_digest_is_the_builds(tflite_build):
    pod = _pod(render(tflite_build))
    for c in pod["containers"] + pod["initContainers"]:
        assert re.search(r"@sha256:[0-9a-f]{64}$", c["image"]), c["name"]
    assert pod["containers"][0]["image"].endswith(DIGEST)


def test_selectors_pick_exactly_the_pods_they_mean(tflite_build):
    m = render(tflite_build)
    pods = {
        path: obj["spec"]["template"]["metadata"]["labels"]
        for path, obj in m.objects.items()
        if obj["kind"] == "Deployment"
    }
    model, secrets = (
        pods["base/model-server/deployment.yaml"],
        pods["base/secret-server/deployment.yaml"],
    )

    def picks(selector: dict) -> list[str]:
        return [
            p for p, labels in pods.items() if all(labels.get(k) == v for k, v in selector.items())
        ]

    for path, obj in m.objects.items():
        want = (
            "base/secret-server/deployment.yaml"
            if "secret-server" in path
            else "base/model-server/deployment.yaml"
        )
        spec = obj.get("spec", {})
        if obj["kind"] in ("Deployment", "PodDisruptionBudget"):
            assert picks(spec["selector"]["matchLabels"]) == [want], path
        elif obj["kind"] == "Service":
            assert picks(spec["selector"]) == [want], path
        elif obj["kind"] == "NetworkPolicy":
            assert picks(spec["podSelector"]["matchLabels"]) == [want], path
            sources = [
                s["podSelector"]["matchLabels"] for rule in spec["ingress"] for s in rule["from"]
            ]
            assert [picks(s) for s in sources] == [["base/model-server/deployment.yaml"]]
            assert [p["port"] for rule in spec["ingress"] for p in rule["ports"]] == [
                c["ports"][0]["name"]
                for c in m.objects[want]["spec"]["template"]["spec"]["containers"]
            ]
        elif obj["kind"] == "HorizontalPodAutoscaler":
            assert (
                spec["scaleTargetRef"]["name"]
                == m.objects["base/model-server/deployment.yaml"]["metadata"]["name"]
            )
    assert model != secrets


def test_the_kustomizations_name_only_files_that_exist(tflite_build):
    m = render(tflite_build)
    base = yaml.safe_load(m.files["base/kustomization.yaml"])
    assert sorted(f"base/{r}" for r in base["resources"]) == sorted(
        p for p in m.objects if p.startswith("base/")
    )
    overlay = yaml.safe_load(m.overlay["kustomization.yaml"])
    assert overlay["resources"] == ["../../base"]
    namespaces = {obj["metadata"].get("namespace") for obj in m.objects.values()} - {None}
    for generator in overlay["secretGenerator"]:
        assert generator["namespace"] in namespaces
        for entry in generator["files"]:
            key, _, path = entry.partition("=")
            assert path == f"secrets/{key}", entry  # listed in secrets/README.md
            assert f"`{key}`" in m.overlay["secrets/README.md"], key
