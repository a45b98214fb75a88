"""The model server's objects: Namespace, Deployment, Service, PodDisruptionBudget, Ingress and
the aesmd sidecar's quote-provider ConfigMap.

Security posture (the namespace enforces Pod Security "restricted"): no privileged container,
no host path, no host network; non-root numeric user, no privilege escalation, every capability
dropped, seccomp RuntimeDefault, no service-account token, read-only root filesystem. The SGX
devices come from the Intel SGX device plugin as extended resources:

* enclave container: ``sgx.intel.com/epc`` (enclave size + libOS margin,
  :mod:`builder.k8s.capacity`) and ``sgx.intel.com/enclave`` (/dev/sgx_enclave);
* aesmd sidecar (Gramine pods that attest): ``sgx.intel.com/enclave`` and
  ``sgx.intel.com/provision`` (/dev/sgx_provision: only the quoting enclaves need the
  provisioning key; the application enclave's container need not have it) plus its own small
  EPC. Gramine asks aesmd for quotes over ``/var/run/aesmd/aesm.socket``, shared through an
  emptyDir, so no host path is needed.
* Occlum pods that attest have no sidecar: Occlum's runtime quotes in-process (its PAL calls
  the DCAP quote library, which loads QE3 and PCE itself, as Occlum's own demos run it with
  ``--device /dev/sgx/provision`` and ``/etc/sgx_default_qcnl.conf``), so the enclave
  container gets ``sgx.intel.com/provision``, the quoting enclaves' EPC and the quote
  provider's configuration.

Gramine opens an encrypted file's host file read-write, so with a read-only root the encrypted
mount directories are copied by an init container (the same image, by digest) into emptyDir
volumes mounted over them.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..deploy.quantity import MI, cpu_millis, format_cpu, format_mebibytes, memory_bytes
from ..deploy.service_info import ServiceInfo
from .capacity import AESMD_EPC, EpcRequest, epc_request, quotes_in_process
from .inputs import BuildOutput, K8sError
from .timing import PERIOD, PRESTOP_SECONDS, grace_period, startup_failure_threshold

EPC = "sgx.intel.com/epc"
ENCLAVE = "sgx.intel.com/enclave"
PROVISION = "sgx.intel.com/provision"
AESMD_SOCKET_DIR = "/var/run/aesmd"
QCNL_CONFIG = "/etc/sgx_default_qcnl.conf"
ANNOTATION = "enclave-build"  # prefix of our annotations
DEFAULT_CPU_LIMIT = 4000  # millicores, when [deploy] cpu_limit is unset
_PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")

Obj = dict[str, Any]


_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?\Z")


def check_object_name(name: str, what: str) -> str:
    """*name* if it can name a Service (a DNS-1035 label: what Kubernetes requires of
    Services, the strictest of the names used here), else a K8sError saying why."""
    if not _DNS1035.match(name):
        raise K8sError(
            f"{what} {name!r} cannot name a Kubernetes Service: it must be a "
            "DNS-1035 label (at most 63 lower-case letters, digits and '-', starting "
            "with a letter and ending with a letter or digit)"
        )
    return name


def namespace(info: ServiceInfo) -> str:
    return info.deploy.namespace or info.service


def labels(info: ServiceInfo, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": info.service,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": info.service,
        "app.kubernetes.io/managed-by": "enclave-build",
    }


def selector(info: ServiceInfo, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": info.service, "app.kubernetes.io/component": component}


def metadata(info: ServiceInfo, name: str, component: str, **extra: Any) -> Obj:
    return {"name": name, "namespace": namespace(info), "labels": labels(info, component), **extra}


def restricted_context(user: int, group: int, read_only: bool = True) -> Obj:
    """A container securityContext that Pod Security "restricted" admits."""
    return {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": read_only,
        "runAsNonRoot": True,
        "runAsUser": user,
        "runAsGroup": group,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_context(user: int, group: int, fs_group: int | None = None) -> Obj:
    ctx: Obj = {
        "runAsNonRoot": True,
        "runAsUser": user,
        "runAsGroup": group,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if fs_group is not None:
        ctx["fsGroup"] = fs_group
    return ctx


def namespace_object(info: ServiceInfo) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": namespace(info),
            "labels": {
                "app.kubernetes.io/managed-by": "enclave-build",
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest",
            },
        },
    }


def attests(info: ServiceInfo) -> bool:
    return bool(info.keys)


def quotes_in_enclave_container(info: ServiceInfo) -> bool:
    """The enclave container itself loads the quoting enclaves (Occlum pods that attest), so
    it needs /dev/sgx_provision and the quote provider's configuration, and no aesmd."""
    return attests(info) and quotes_in_process(info.libos)


def deploys_secret_server(info: ServiceInfo) -> bool:
    """The in-cluster secret server (``enclave-build secrets serve``, a CA-signed TLS identity)
    can serve the enclave's keys; an enclave that accepts only an attested secret-server
    enclave gets none (see :func:`builder.k8s.layout.external_secret_server_note`)."""
    return attests(info) and not info.secret_server_enclave


def epc_for(info: ServiceInfo) -> EpcRequest:
    margin = memory_bytes(info.deploy.epc_margin) if info.deploy.epc_margin else None
    return epc_request(
        info.enclave.size,
        info.libos,
        info.enclave.max_threads,
        attests=attests(info),
        margin=margin,
    )


def cpu_resources(info: ServiceInfo) -> tuple[str, str]:
    """(request, limit): the limit never exceeds max_threads (the enclave cannot run more
    threads at once) and is at least the request."""
    request = cpu_millis(info.deploy.cpu)
    ceiling = info.enclave.max_threads * 1000
    if request > ceiling:
        raise K8sError(
            f"[deploy] cpu = {info.deploy.cpu!r} is more than [enclave] max_threads "
            f"({info.enclave.max_threads}): the enclave cannot use it"
        )
    if info.deploy.cpu_limit is not None:
        limit = cpu_millis(info.deploy.cpu_limit)
        if limit > ceiling:
            raise K8sError(
                f"[deploy] cpu_limit = {info.deploy.cpu_limit!r} is more than "
                f"[enclave] max_threads ({info.enclave.max_threads})"
            )
    else:
        limit = max(request, min(ceiling, DEFAULT_CPU_LIMIT))
    return format_cpu(request), format_cpu(limit)


def _probe_handler(info: ServiceInfo, path: str | None) -> Obj:
    health = info.health
    if health.kind == "kserve-v2":
        return {"httpGet": {"path": path, "port": health.port, "scheme": health.scheme}}
    return {"tcpSocket": {"port": health.port}}


def probes(info: ServiceInfo) -> Obj:
    health = info.health
    threshold = startup_failure_threshold(
        info.enclave.size, edmm=info.enclave.edmm, keys=len(info.keys)
    )
    return {
        "startupProbe": {
            **_probe_handler(info, health.live),
            "periodSeconds": PERIOD,
            "timeoutSeconds": 5,
            "failureThreshold": threshold,
        },
        "livenessProbe": {
            **_probe_handler(info, health.live),
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            **_probe_handler(info, health.ready),
            "periodSeconds": 5,
            "timeoutSeconds": 3,
            "failureThreshold": 2,
        },
    }


def _check_ports(info: ServiceInfo) -> None:
    for port in info.ports:
        if (
            not _PORT_NAME.match(port.name)
            or len(port.name) > 15
            or not re.search("[a-z]", port.name)
        ):
            raise K8sError(
                f"port name {port.name!r} of service {info.service!r} is not a "
                "Kubernetes port name (at most 15 lower-case letters, digits, '-')"
            )


def read_only_root(info: ServiceInfo) -> bool:
    """Gramine writes nothing on the host besides encrypted files (staged in emptyDirs);
    other libOSes keep run-time state in their instance directory, so their root stays
    writable."""
    return info.deploy.read_only_root and info.libos == "gramine"


def _staging(build: BuildOutput) -> tuple[list[Obj], list[Obj], list[Obj]]:
    """(init containers, volumes, enclave volume mounts) copying the encrypted directories."""
    info = build.service
    if not read_only_root(info):
        return [], [], []
    inits, volumes, mounts = [], [], []
    ctx = restricted_context(info.run_as.user, info.run_as.group)
    for index, path in enumerate(info.writable_paths):
        name = f"encrypted-{index}"
        volumes.append({"name": name, "emptyDir": {}})
        mounts.append({"name": name, "mountPath": path})
        inits.append(
            {
                "name": f"stage-{name}",
                "image": build.image,
                "imagePullPolicy": "IfNotPresent",
                # -R, not -a: the emptyDir's root belongs to root, and preserving the source
                # directory's times or mode on it fails for a non-root user (cp exits 1).
                "command": ["cp", "-R", f"{path.rstrip('/')}/.", "/staged/"],
                "resources": {
                    "requests": {"cpu": "100m", "memory": "64Mi"},
                    "limits": {"cpu": "1", "memory": "256Mi"},
                },
                "securityContext": ctx,
                "volumeMounts": [{"name": name, "mountPath": "/staged"}],
            }
        )
    return inits, volumes, mounts


def aesmd_sidecar(build: BuildOutput) -> Obj:
    info = build.service
    image = info.deploy.aesmd_image
    if not image:
        raise K8sError(
            f"{build.directory}/service.json: the service fetches keys "
            f"({', '.join(info.keys)}), so its pod needs an aesmd sidecar to quote; "
            "set [deploy] aesmd_image in the spec (an image of Intel's SGX PSW with "
            "the DCAP quote provider, running as a non-root user) and rebuild, or "
            "pass --aesmd-image"
        )
    epc = format_mebibytes(AESMD_EPC)
    sgx = {EPC: epc, ENCLAVE: "1", PROVISION: "1"}
    return {
        "name": "aesmd",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        # A native sidecar: started before the enclave, stopped after it.
        "restartPolicy": "Always",
        "resources": {
            "requests": {"cpu": "100m", "memory": "64Mi", **sgx},
            "limits": {"cpu": "500m", "memory": "256Mi", **sgx},
        },
        "securityContext": restricted_context(info.run_as.user, info.run_as.group),
        "startupProbe": {
            "exec": {"command": ["test", "-S", f"{AESMD_SOCKET_DIR}/aesm.socket"]},
            "periodSeconds": 2,
            "failureThreshold": 30,
        },
        "volumeMounts": [
            {"name": "aesmd-socket", "mountPath": AESMD_SOCKET_DIR},
            {"name": "aesmd-data", "mountPath": "/var/opt/aesmd"},
            {
                "name": "qcnl-config",
                "mountPath": QCNL_CONFIG,
                "subPath": "sgx_default_qcnl.conf",
                "readOnly": True,
            },
        ],
    }


def qcnl_name(info: ServiceInfo) -> str:
    return f"{info.service}-qcnl"


def qcnl_configmap(build: BuildOutput) -> Obj:
    """The DCAP quote provider's configuration (JSON): which PCCS the quoting enclave gets the
    platform's PCK certificate from."""
    info = build.service
    if not info.deploy.pccs_url:
        raise K8sError(
            f"{build.directory}/service.json: the service fetches keys, so quotes "
            "need PCK certificates from a PCCS: set [deploy] pccs_url in the spec "
            "and rebuild, or pass --pccs-url"
        )
    config = {
        "pccs_url": info.deploy.pccs_url,
        "use_secure_cert": True,
        "retry_times": 6,
        "retry_delay": 10,
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(info, qcnl_name(info), "model-server"),
        "data": {"sgx_default_qcnl.conf": json.dumps(config, indent=2) + "\n"},
    }


def model_server_deployment(build: BuildOutput) -> Obj:
    info = build.service
    _check_ports(info)
    check_object_name(info.service, f"{build.directory}/service.json: service")
    if info.run_as.user == 0:
        raise K8sError(
            f"{build.directory}/service.json: run_as.user: the image runs as root "
            '(uid 0); Pod Security "restricted" admits only non-root containers: '
            "build on a base image whose User is a non-root user and rebuild"
        )
    epc = format_mebibytes(epc_for(info).enclave_container)
    cpu, cpu_limit = cpu_resources(info)
    sgx = {EPC: epc, ENCLAVE: "1"}
    inits, volumes, mounts = _staging(build)
    if quotes_in_enclave_container(info):
        sgx[PROVISION] = "1"
        volumes.append({"name": "qcnl-config", "configMap": {"name": qcnl_name(info)}})
        mounts.append(
            {
                "name": "qcnl-config",
                "mountPath": QCNL_CONFIG,
                "subPath": "sgx_default_qcnl.conf",
                "readOnly": True,
            }
        )
    elif attests(info):
        inits.append(aesmd_sidecar(build))
        volumes += [
            {"name": "aesmd-socket", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
            {"name": "aesmd-data", "emptyDir": {"sizeLimit": "64Mi"}},
            {"name": "qcnl-config", "configMap": {"name": qcnl_name(info)}},
        ]
        mounts.append({"name": "aesmd-socket", "mountPath": AESMD_SOCKET_DIR})
    container: Obj = {
        "name": "enclave",
        "image": build.image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [
            {"name": p.name, "containerPort": p.number, "protocol": p.protocol} for p in info.ports
        ],
        "resources": {
            "requests": {"cpu": cpu, "memory": info.deploy.memory, **sgx},
            "limits": {"cpu": cpu_limit, "memory": info.deploy.memory_limit, **sgx},
        },
        "securityContext": restricted_context(
            info.run_as.user, info.run_as.group, read_only_root(info)
        ),
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SECONDS}}},
        **probes(info),
    }
    if mounts:
        container["volumeMounts"] = mounts
    m = build.measurements
    annotations = {
        f"{ANNOTATION}/mr-enclave": m.mr_enclave,
        f"{ANNOTATION}/mr-signer": m.mr_signer,
        f"{ANNOTATION}/libos": info.libos,
        f"{ANNOTATION}/epc-request": epc,
    }
    if info.metrics is not None:
        port = info.port(info.metrics.port)
        annotations.update(
            {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(port.number),
                "prometheus.io/path": info.metrics.path,
                "prometheus.io/scheme": info.metrics.scheme.lower(),
            }
        )
    pod: Obj = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "nodeSelector": dict(info.deploy.node_selector),
        "securityContext": pod_context(info.run_as.user, info.run_as.group),
        "terminationGracePeriodSeconds": grace_period(info.enclave.size, info.drain_seconds),
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": selector(info, "model-server")},
            }
        ],
        "containers": [container],
    }
    if inits:
        pod["initContainers"] = inits
    if volumes:
        pod["volumes"] = volumes
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(info, info.service, "model-server"),
        "spec": {
            "replicas": info.deploy.replicas,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": selector(info, "model-server")},
            # A new replica needs EPC next to the old ones: surge by one, never drop below.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {"labels": labels(info, "model-server"), "annotations": annotations},
                "spec": pod,
            },
        },
    }


def app_protocol(info: ServiceInfo, port_name: str) -> str | None:
    """A Service port's appProtocol, so meshes, Gateway API implementations and ingress
    controllers speak the right protocol to it: gRPC is HTTP/2, in clear text
    ``kubernetes.io/h2c``; with [tls] both ports are TLS ending in the enclave (``https``:
    a proxy must pass it through, not speak clear text to it). Other ports get none."""
    if port_name not in ("grpc", "http"):
        return None
    if info.tls:
        return "https"
    return "kubernetes.io/h2c" if port_name == "grpc" else "http"


def model_server_service(info: ServiceInfo) -> Obj:
    ports = []
    for p in info.ports:
        port: Obj = {"name": p.name, "port": p.number, "targetPort": p.name, "protocol": p.protocol}
        if (protocol := app_protocol(info, p.name)) is not None:
            port["appProtocol"] = protocol
        ports.append(port)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(info, info.service, "model-server"),
        "spec": {"type": "ClusterIP", "selector": selector(info, "model-server"), "ports": ports},
    }


def disruption_budget(info: ServiceInfo, name: str, component: str) -> Obj:
    """At most one replica down for voluntary disruptions (node drains, upgrades); with one
    replica, a drain still proceeds (minAvailable would block it forever)."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(info, name, component),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(info, component)}},
    }


def ingress(info: ServiceInfo) -> Obj | None:
    """gRPC from outside the cluster with TLS passthrough (ingress-nginx: the controller runs
    with --enable-ssl-passthrough and routes on SNI without terminating TLS), so TLS ends in
    the enclave. Plain-text services get no Ingress.

    Passthrough works at layer 4, so ingress-nginx ignores every other annotation (and the
    path); none is set. In particular no ``backend-protocol: GRPCS``: on a controller without
    the flag it would make nginx terminate TLS itself and re-encrypt to the enclave, which
    must fail instead."""
    host = info.deploy.ingress_host
    if not host:
        return None
    if not info.tls:
        raise K8sError(
            f"[deploy] ingress_host = {host!r}: the service serves plain text "
            "([tls] is not set), and TLS passthrough needs TLS that ends in the "
            "enclave; add [tls] to the spec and rebuild, or remove ingress_host and "
            "expose the Service another way"
        )
    grpc = next((p.name for p in info.ports if p.name == "grpc"), info.ports[0].name)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": metadata(
            info,
            info.service,
            "model-server",
            annotations={"nginx.ingress.kubernetes.io/ssl-passthrough": "true"},
        ),
        "spec": {
            "ingressClassName": info.deploy.ingress_class,
            "rules": [
                {
                    "host": host,
                    "http": {
                        "paths": [
                            {
                                "path": "/",
                                "pathType": "Prefix",
                                "backend": {
                                    "service": {"name": info.service, "port": {"name": grpc}}
                                },
                            }
                        ]
                    },
                }
            ],
        },
    }


__all__ = [
    "EPC",
    "ENCLAVE",
    "PROVISION",
    "MI",
    "model_server_deployment",
    "model_server_service",
    "disruption_budget",
    "ingress",
    "qcnl_configmap",
    "namespace_object",
    "epc_for",
    "attests",
    "deploys_secret_server",
    "quotes_in_enclave_container",
]
