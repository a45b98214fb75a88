"""The secret server as its own Deployment + Service: stateless replicas behind one Service.

* ``secrets.toml`` and the build's ``measurements.json`` go into a ConfigMap. The rules come
  from the build's ``secrets-policy.toml``, read and checked by :mod:`builder.secrets_config`
  (the same code ``enclave-build secrets config`` uses), with the key files moved to where the
  Secret is mounted; the result is loaded by the secret server's own loader and policy before
  anything is written.
* The TLS certificate and the wrap keys are Secrets the operator supplies: the kustomize
  overlay generates them from files put into ``overlays/NAME/secrets/`` (never from the
  build's keys_dir: key bytes never enter generated files).
* The enclave was built to reach ``[secrets] server`` (HOST:PORT, measured into it), so the
  Service takes its name and namespace from HOST when HOST is a cluster name
  (``NAME.NAMESPACE.svc[.cluster.local]``); otherwise HOST must be made to resolve to the
  Service (DNS), which :func:`address_note` says. A loopback HOST (``localhost``, 127.0.0.1,
  ...) is the pod itself in a cluster: :func:`check_address` refuses it.
* A NetworkPolicy admits only the service's model-server pods to the secret server.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enclave_build.contract.names import SECRETS_FILE
from enclave_build.contract.policy_fragment import PolicyFragment
from enclave_build.contract.secrets_config import AttestationSettings, SecretsConfig, ServerSettings

from ..secrets_config import SecretsConfigError, check_allow, read_fragment
from .deployment import (
    ANNOTATION,
    check_object_name,
    disruption_budget,
    labels,
    metadata,
    namespace,
    pod_context,
    restricted_context,
    selector,
)
from .inputs import BuildOutput, K8sError

PORT = 4433
CONFIG_DIR = "/etc/enclave-build/config"
TLS_DIR = "/etc/enclave-build/tls"
KEYS_DIR = "/etc/enclave-build/keys"
USER = 10001
COMPONENT = "secret-server"
PROCESSES = 2

Obj = dict[str, Any]


@dataclass(frozen=True)
class SecretServerNames:
    service: str  # the Service (and Deployment) name
    namespace: str
    port: int  # the Service port the enclave dials
    matches_build: bool  # HOST is this Service's cluster name

    @property
    def config(self) -> str:
        return f"{self.service}-config"

    @property
    def tls(self) -> str:
        return f"{self.service}-tls"

    @property
    def keys(self) -> str:
        return f"{self.service}-keys"

    def fqdn(self) -> str:
        return f"{self.service}.{self.namespace}.svc.cluster.local"


def names(build: BuildOutput) -> SecretServerNames:
    info = build.service
    ns = namespace(info)
    host, _, port = (info.secret_server or f"{info.service}-secrets:{PORT}").rpartition(":")
    parts = host.split(".")
    if (
        len(parts) >= 3
        and parts[2] == "svc"
        and (len(parts) == 3 or parts[3:] == ["cluster", "local"])
    ):
        if parts[1] != ns:
            raise K8sError(
                f"the enclave was built to reach the secret server at {host} (in "
                f"namespace {parts[1]!r}) but [deploy] namespace is {ns!r}; set "
                f"[deploy] namespace = {parts[1]!r} or rebuild with [secrets] server "
                f"in namespace {ns!r}"
            )
        check_object_name(
            parts[0], f"{build.directory}/service.json: secret_server {host}: the Service name"
        )
        return SecretServerNames(parts[0], ns, int(port), True)
    name = check_object_name(
        f"{info.service}-secrets",
        "the secret server's Service name "
        "(the service's name + '-secrets'; shorten [service] name)",
    )
    return SecretServerNames(name, ns, int(port), False)


def is_loopback(host: str) -> bool:
    """A loopback (or unspecified) address: inside a pod it is the pod itself, whatever DNS
    says: ``localhost`` and ``*.localhost`` (RFC 6761), 127.0.0.0/8, ::1, 0.0.0.0 and ::
    (IPv4-mapped forms too)."""
    import ipaddress

    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback or address.is_unspecified


def check_address(build: BuildOutput) -> None:
    """Refuse (K8sError, exit 2) a service that fetches keys from a loopback secret-server
    address: that address is measured into the enclave, and in a pod it is the pod itself, so
    the model server would never get its keys and never become ready. The message gives the
    rebuild with the in-cluster Service name the generated YAML uses."""
    info = build.service
    if not info.keys or not info.secret_server:
        return
    host = info.secret_server.rpartition(":")[0]
    if not is_loopback(host):
        return
    n = names(build)
    target = f"{n.fqdn()}:{n.port}"
    if info.secret_server_enclave:
        where = (
            "the secret-server enclave's address as the pods reach it (e.g. its Service "
            f"name, {n.fqdn()} if it runs in namespace {n.namespace!r})"
        )
        cert = ""
    else:
        where = f"the Service this command deploys for it, {n.fqdn()}"
        cert = (
            f"\n  enclave-build secrets tls TLS_DIR --host {n.fqdn()}   # its certificate; "
            'set [secrets] ca = "TLS_DIR/ca.pem"'
        )
    raise K8sError(
        f"{build.directory}/service.json: secret_server: the enclave was built to fetch its "
        f"keys ({', '.join(info.keys)}) from {info.secret_server}, a loopback address measured "
        f"into it; inside a pod that is the pod itself, so the model server would never get "
        f"its keys and never become ready. Rebuild it to dial {where}:\n"
        f'  [secrets] server = "{target}"   # in the spec{cert}\n'
        f"  enclave-build build SPEC --push --tag REGISTRY/NAME:TAG\n"
        f"  enclave-build k8s BUILD_DIR --output DIR\n"
        f"(`enclave-build init --k8s {n.namespace}` writes a spec that measures that name from "
        "the start)"
    )


def address_note(build: BuildOutput) -> str | None:
    """What the operator must do when the build's [secrets] server is not a cluster name
    (a loopback one is refused before: :func:`check_address`)."""
    n = names(build)
    if n.matches_build or not build.service.keys:
        return None
    rebuild = (
        f'rebuild with [secrets] server = "{n.fqdn()}:{n.port}" (and a certificate '
        "for that name: `enclave-build secrets tls DIR --host ...`)"
    )
    return (
        f"the enclave dials the secret server at {build.service.secret_server} (measured "
        f"into it), not at the Service {n.fqdn()}:{n.port}; make that name resolve to the "
        f"Service (DNS), or {rebuild}"
    )


def _policy(build: BuildOutput) -> PolicyFragment:
    """The build's secrets-policy.toml, read and type-checked (a bad one is the build
    output's fault: exit 2)."""
    assert build.policy is not None
    try:
        return read_fragment(build.policy)
    except SecretsConfigError as exc:
        raise K8sError(str(exc)) from None


def secrets_toml(build: BuildOutput) -> str:
    """The in-cluster secrets.toml, paths relative to its ConfigMap mount."""
    info = build.service
    fragment = _policy(build)
    assert fragment.path is not None
    measurements_file = f"{info.service}.measurements.json"
    rules = []
    for rule in fragment.secrets:
        try:
            check_allow(fragment.path, rule.name, rule.allow, {build.measurements.service})
        except SecretsConfigError as exc:
            raise K8sError(str(exc)) from None
        rules.append(
            dataclasses.replace(
                rule, file=Path(os.path.relpath(f"{KEYS_DIR}/{rule.name}.key", CONFIG_DIR))
            )
        )
    missing = sorted(set(info.keys) - {r.name for r in rules})
    if missing:
        raise K8sError(
            f"{fragment.path}: releases no secret named {', '.join(missing)}, but "
            f"the service fetches it (service.json keys): files of two builds?"
        )
    if not info.deploy.pccs_url:
        raise K8sError(
            f"{build.directory}/service.json: the secret server verifies quotes "
            "against collateral from a PCCS: set [deploy] pccs_url in the spec and "
            "rebuild, or pass --pccs-url"
        )
    config = SecretsConfig(
        Path(CONFIG_DIR) / SECRETS_FILE,
        ServerSettings(
            "0.0.0.0",
            PORT,
            Path(os.path.relpath(f"{TLS_DIR}/tls.crt", CONFIG_DIR)),
            Path(os.path.relpath(f"{TLS_DIR}/tls.key", CONFIG_DIR)),
            audit_log="-",
            processes=PROCESSES,
        ),
        AttestationSettings(None, None, info.deploy.pccs_url),
        (measurements_file,),
        tuple(rules),
    )
    text = config.to_toml(
        "secrets.toml of the in-cluster secret server, written by `enclave-build k8s` from the "
        "build's\nsecrets-policy.toml. Paths are relative to this file "
        f"({CONFIG_DIR}); key files and the TLS\ncertificate are mounted from Secrets the "
        "operator supplies."
    )
    _check_loads(text, measurements_file, build.measurements_text, [r.name for r in rules])
    return text


def _check_loads(
    text: str, measurements_file: str, measurements: str, key_names: list[str]
) -> None:
    """Load *text* with the secret server's own loader and policy, laid out as in the pod
    (placeholder key and certificate files in a private temporary tree)."""
    from enclave_build.attestation.config import ConfigError, load_config
    from enclave_build.attestation.policy import Policy, PolicyError

    with tempfile.TemporaryDirectory(prefix="enclave-build-k8s-") as tmp:
        root = Path(tmp)
        config_dir = root / CONFIG_DIR.lstrip("/")
        for directory in (config_dir, root / TLS_DIR.lstrip("/"), root / KEYS_DIR.lstrip("/")):
            directory.mkdir(parents=True, mode=0o700)
        (config_dir / SECRETS_FILE).write_text(text)
        (config_dir / measurements_file).write_text(measurements)
        for name in ("tls.crt", "tls.key"):
            (root / TLS_DIR.lstrip("/") / name).write_bytes(b"placeholder\n")
        for name in key_names:
            path = root / KEYS_DIR.lstrip("/") / f"{name}.key"
            path.write_bytes(bytes(16))
            path.chmod(0o600)
        try:
            loaded = load_config(config_dir / SECRETS_FILE)
            Policy.build(list(loaded.measurements), list(loaded.secrets), loaded.path.parent)
        except (ConfigError, PolicyError) as exc:
            message = str(exc).replace(str(root), "")
            raise K8sError(f"the generated secrets.toml is not valid: {message}") from None


def config_map(build: BuildOutput, toml_text: str) -> Obj:
    n = names(build)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(build.service, n.config, COMPONENT),
        "data": {
            SECRETS_FILE: toml_text,
            f"{build.service.service}.measurements.json": build.measurements_text,
        },
    }


def deployment(build: BuildOutput, toml_text: str) -> Obj:
    info = build.service
    n = names(build)
    image = info.deploy.secret_server_image
    if not image:
        raise K8sError(
            f"{build.directory}/service.json: the service fetches keys, so a secret "
            "server is deployed; set [deploy] secret_server_image in the spec (an "
            "image with enclave-build installed) and rebuild, or pass "
            "--secret-server-image"
        )
    # Pods restart when the configuration changes (the server also reloads on SIGHUP).
    digest = hashlib.sha256((toml_text + build.measurements_text).encode()).hexdigest()
    probe = {"tcpSocket": {"port": "ra-tls"}}
    container = {
        "name": "secret-server",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": [
            "enclave-build",
            "secrets",
            "serve",
            "--config",
            f"{CONFIG_DIR}/{SECRETS_FILE}",
        ],
        "env": [{"name": "PYTHONDONTWRITEBYTECODE", "value": "1"}],
        "ports": [{"name": "ra-tls", "containerPort": PORT, "protocol": "TCP"}],
        "resources": {
            "requests": {"cpu": "250m", "memory": "128Mi"},
            "limits": {"cpu": str(PROCESSES), "memory": "512Mi"},
        },
        "securityContext": restricted_context(USER, USER),
        "readinessProbe": {**probe, "periodSeconds": 5, "failureThreshold": 2},
        "livenessProbe": {**probe, "periodSeconds": 10, "failureThreshold": 3},
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "tls", "mountPath": TLS_DIR, "readOnly": True},
            {"name": "keys", "mountPath": KEYS_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(info, n.service, COMPONENT),
        "spec": {
            "replicas": info.deploy.secret_server_replicas,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": selector(info, COMPONENT)},
            "template": {
                "metadata": {
                    "labels": labels(info, COMPONENT),
                    "annotations": {f"{ANNOTATION}/config-sha256": digest},
                },
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    # Secret files are root-owned; fsGroup lets the server's group read them.
                    "securityContext": pod_context(USER, USER, fs_group=USER),
                    "terminationGracePeriodSeconds": 30,
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": "kubernetes.io/hostname",
                            "whenUnsatisfiable": "ScheduleAnyway",
                            "labelSelector": {"matchLabels": selector(info, COMPONENT)},
                        }
                    ],
                    "containers": [container],
                    "volumes": [
                        {"name": "config", "configMap": {"name": n.config}},
                        {"name": "tls", "secret": {"secretName": n.tls, "defaultMode": 0o440}},
                        {"name": "keys", "secret": {"secretName": n.keys, "defaultMode": 0o440}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
                    ],
                },
            },
        },
    }


def service(build: BuildOutput) -> Obj:
    n = names(build)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(build.service, n.service, COMPONENT),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(build.service, COMPONENT),
            "ports": [
                {"name": "ra-tls", "port": n.port, "targetPort": "ra-tls", "protocol": "TCP"}
            ],
        },
    }


def network_policy(build: BuildOutput) -> Obj:
    info = build.service
    n = names(build)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(info, n.service, COMPONENT),
        "spec": {
            "podSelector": {"matchLabels": selector(info, COMPONENT)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": selector(info, "model-server")}}],
                    "ports": [{"port": "ra-tls", "protocol": "TCP"}],
                }
            ],
        },
    }


def pdb(build: BuildOutput) -> Obj:
    return disruption_budget(build.service, names(build).service, COMPONENT)


def key_files(build: BuildOutput) -> list[str]:
    """The key files the overlay's Secret is generated from (names only)."""
    rules = _policy(build).secrets if build.policy else ()
    return sorted(f"{rule.name}.key" for rule in rules)
