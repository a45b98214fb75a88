"""CLI for Kubernetes: ``enclave-build k8s`` and ``enclave-build plan-capacity``.

Parses arguments, calls :mod:`builder.k8s` and prints; registered by :func:`register`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from enclave_build.plugin import UsageError, hookimpl

from .output import errors, print_json

if TYPE_CHECKING:
    from ..k8s.capacity import CapacityPlan


class Size(click.ParamType):
    """A byte size: 4G, 4Gi, 512M, 512Mi (binary units either way) or plain bytes."""

    name = "SIZE"

    def convert(self, value, param, ctx):
        from enclave_build.contract.size import CLI_SIZE, SizeError
        from enclave_build.contract.size import Size as _Size

        if isinstance(value, int):
            return value
        try:
            return int(_Size.parse(str(value), CLI_SIZE))
        except SizeError as exc:
            self.fail(str(exc), param, ctx)


class BytesQuantity(click.ParamType):
    """A Kubernetes quantity of bytes: 64Gi (binary), 64G (= 64 x 10^9, as Kubernetes reads
    it) or plain bytes."""

    name = "QUANTITY"

    def convert(self, value, param, ctx):
        from ..deploy.quantity import bytes_quantity

        if isinstance(value, int):
            return value
        try:
            return bytes_quantity(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@click.command(
    "k8s",
    epilog="""\b
Example (build and push by digest, then generate and apply):
  enclave-build build examples/tflite/spec.toml --push --tag registry.example.com/face-detect:1
  enclave-build k8s examples/tflite/out --output deploy/face-detect
  S=deploy/face-detect/overlays/production/secrets      # its README.md lists the files
  cp examples/keys/face-detect-key.key $S/              # the wrap key, from keys_dir
  cp TLS_DIR/server.crt $S/tls.crt; cp TLS_DIR/server.key $S/tls.key   # `secrets tls TLS_DIR`
  kubectl apply -k deploy/face-detect/overlays/production
\b
Output (DIR):
  base/                 regenerated each run: Namespace, model-server Deployment, Service,
                        PodDisruptionBudget, [Ingress], [HorizontalPodAutoscaler], aesmd
                        quote-provider ConfigMap; secret-server ConfigMap, Deployment,
                        Service, PodDisruptionBudget, NetworkPolicy
  overlays/production/  written once, then yours; Secrets from files in its secrets/
  monitoring/           prometheus-adapter rules for the autoscaler's custom metrics:
                        its config.yaml rules, and the same as Helm chart values
\b
Exit codes: 0 written, 2 the build output cannot be deployed as it is (the message says what
to change), 1 anything else.
""",
)
@click.argument("build_dir", type=click.Path(path_type=Path))
@click.option(
    "--output",
    "-o",
    "output",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to write the kustomize tree to (new, empty, or written by this "
    "command before).",
)
@click.option(
    "--image",
    metavar="REGISTRY/NAME@sha256:...",
    help="Where the built image was copied to, if not pushed by the build; it must "
    "carry the build's manifest digest (checked).",
)
@click.option("--aesmd-image", metavar="REF", help="Overrides [deploy] aesmd_image.")
@click.option(
    "--secret-server-image", metavar="REF", help="Overrides [deploy] secret_server_image."
)
@click.option("--pccs-url", metavar="URL", help="Overrides [deploy] pccs_url.")
@click.option(
    "--allow-debug",
    is_flag=True,
    help="Deploy a DEBUG enclave (refused otherwise: the host can read its memory); "
    "for test clusters only, with a warning.",
)
@click.option(
    "--profile",
    "profile_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A report of `enclave-build profile --json`: size the EPC request from the measured "
    "recommendation (with EDMM; without it the build's whole size stays, with a note).",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print as JSON: output, files (relative paths), notes."
)
def k8s(
    build_dir: Path,
    output: Path,
    image: str | None,
    aesmd_image: str | None,
    secret_server_image: str | None,
    pccs_url: str | None,
    allow_debug: bool,
    profile_file: Path | None,
    as_json: bool,
) -> None:
    """Generate Kubernetes manifests (a kustomize base and overlay) for BUILD_DIR.

    BUILD_DIR is a build output (`enclave-build build SPEC --output DIR`), or a project
    directory whose build is in out/ (exit 2 for anything else): measurements.json
    names the image, which the Deployment references by digest (a build that was not pushed
    is refused: push it first, or pass --image); service.json carries the enclave size,
    threads, ports, health endpoints, drain and the spec's [deploy] settings;
    secrets-policy.toml becomes the secret server's policy. Key bytes never enter the output.

    \b
    The enclave container requests sgx.intel.com/epc = enclave size + libOS margin and
    sgx.intel.com/enclave; an aesmd sidecar (Gramine pods that fetch keys) gets
    sgx.intel.com/enclave and sgx.intel.com/provision (an Occlum enclave container quotes
    itself and gets sgx.intel.com/provision instead). Nothing is privileged or mounts a host
    path; containers run as the image's non-root user with a read-only root filesystem,
    every capability dropped and seccomp RuntimeDefault. Probes use the model server's
    /v2/health/{live,ready}; the startup probe allows for creating an enclave of that size.
    """
    from enclave_build.contract.names import MEASUREMENTS_FILE

    from ..build_dir import build_output
    from ..k8s.generate import Overrides, generate_k8s

    with errors():
        build_dir = build_output(
            build_dir, needs=(MEASUREMENTS_FILE,), log=lambda line: click.echo(line, err=True)
        )
        manifests, notes = generate_k8s(
            build_dir,
            output,
            Overrides(
                image=image,
                aesmd_image=aesmd_image,
                secret_server_image=secret_server_image,
                pccs_url=pccs_url,
                allow_debug=allow_debug,
                profile=profile_file,
            ),
        )
    files = sorted(manifests.files) + sorted(f"overlays/production/{p}" for p in manifests.overlay)
    if as_json:
        print_json({"output": str(output), "files": files, "notes": notes})
        return
    click.echo(
        f"wrote {len(files)} files to {output}; apply with "
        f"`kubectl apply -k {output}/overlays/production`"
    )
    for note in notes:
        click.echo(f"note: {note}", err=True)


@click.command(
    "plan-capacity",
    epilog="""\b
Examples:
  enclave-build plan-capacity --enclave-size 4G --epc-per-node 64Gi --nodes 3
  enclave-build plan-capacity --enclave-size 4G --epc-per-node 64Gi --nodes 3 --libos occlum \\
      --max-threads 64 --json
  enclave-build plan-capacity out/ --epc-per-node 128Gi --nodes 5   # size etc. from a build
\b
EPC per replica = enclave size + libOS margin (Gramine: 1 MiB for SECS and version-array
pages; Occlum: 96 MiB + 1 MiB per thread for its kernel heap, kernel stacks and LibOS image),
rounded up to MiB, plus 8 MiB for the quoting enclaves of pods that attest (Gramine: in an
aesmd sidecar; Occlum: loaded by the enclave container itself). Replicas per node are
also limited by the SGX device plugin's per-node container limit for /dev/sgx_enclave
(-enclave-limit, default 20; an attesting Gramine pod uses two, an Occlum pod one). A
rolling update starts one replica more before it stops an old one, so run at most the
cluster's replicas minus one.
\b
Exit codes: 0 at least one replica fits per node, 2 none does (the plan is still printed,
then why) or bad arguments.
""",
)
@click.argument("build_dir", required=False, type=click.Path(path_type=Path))
@click.option(
    "--enclave-size",
    type=Size(),
    help="Enclave size in the spec's notation, binary units: 4G = 4 GiB (default: the build's).",
)
@click.option(
    "--epc-per-node",
    type=BytesQuantity(),
    required=True,
    help="Allocatable sgx.intel.com/epc of one node as Kubernetes writes it "
    "(`kubectl describe node` shows it, in bytes): 68719476736, 64Gi, or 64G "
    "(= 64 x 10^9 bytes, as the scheduler reads it; unlike --enclave-size).",
)
@click.option(
    "--nodes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="SGX nodes in the cluster.",
)
@click.option(
    "--libos", type=click.Choice(["gramine", "occlum"]), help="Default: the build's, else gramine."
)
@click.option(
    "--max-threads",
    type=click.IntRange(min=1),
    help="Enclave threads (Occlum's margin grows with them; default: the build's, else 64).",
)
@click.option(
    "--no-attestation",
    is_flag=True,
    help="Pods that do not quote: no aesmd "
    "sidecar or quoting enclaves (services that fetch no keys; default: the build's).",
)
@click.option(
    "--profile",
    "profile_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A report of `enclave-build profile --json`: plan with its recommended size and "
    "threads (with a BUILD_DIR: what `k8s --profile` would request).",
)
@click.option(
    "--enclave-limit",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="The device plugin's -enclave-limit.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print as JSON (sizes in bytes): "
    "libos, enclave_size, margin, sidecar_epc, quoting_epc, epc_per_pod, "
    "epc_per_node, nodes, "
    "enclave_devices_per_pod, enclave_limit, replicas_per_node, replicas, "
    "limited_by, epc_unused_per_node.",
)
def plan_capacity(
    build_dir: Path | None,
    enclave_size: int | None,
    epc_per_node: int,
    nodes: int,
    libos: str | None,
    max_threads: int | None,
    no_attestation: bool,
    profile_file: Path | None,
    enclave_limit: int,
    as_json: bool,
) -> None:
    """How many replicas fit per SGX node and in the cluster, by EPC and device limits.

    Give the enclave size (and libOS), a BUILD_DIR to take them from its service.json, or a
    --profile report to plan with its recommendation.
    """
    from enclave_build.contract.names import SERVICE_FILE

    from ..build_dir import build_output
    from ..deploy.quantity import memory_bytes
    from ..deploy.service_info import ServiceInfo
    from ..k8s.capacity import plan_capacity as plan
    from ..k8s.measured import MeasuredProfile, profiled_enclave

    with errors():
        attests, margin = not no_attestation, None
        measured = MeasuredProfile.load(profile_file) if profile_file is not None else None
        if build_dir is not None:
            build_dir = build_output(
                build_dir, needs=(SERVICE_FILE,), log=lambda line: click.echo(line, err=True)
            )
            info = ServiceInfo.load(build_dir / SERVICE_FILE)
            enclave = info.enclave
            if measured is not None:
                enclave, note = profiled_enclave(info.service, enclave, measured)
                click.echo(f"note: {note}", err=True)
            enclave_size = enclave_size or enclave.size
            libos = libos or info.libos
            max_threads = max_threads or enclave.max_threads
            attests = attests and bool(info.keys)
            if info.deploy.epc_margin:
                margin = memory_bytes(info.deploy.epc_margin)
        elif measured is not None:
            enclave_size = enclave_size or measured.size
            max_threads = max_threads or measured.max_threads
            click.echo(
                f"note: planned with the size and threads {measured.path} recommends "
                f"({measured.size >> 20} MiB, {measured.max_threads}); apply them "
                "(`enclave-build profile --write`, rebuild) before deploying",
                err=True,
            )
        if enclave_size is None:
            raise UsageError("give --enclave-size SIZE, a BUILD_DIR or --profile FILE")
        result = plan(
            enclave_size,
            epc_per_node,
            nodes,
            libos=libos or "gramine",
            max_threads=max_threads or 64,
            attests=attests,
            margin=margin,
            enclave_limit=enclave_limit,
        )
    if as_json:
        print_json(result.to_json())
    else:
        _print_plan(result)
    reason = result.why_none_fit()
    if reason:
        with errors():
            raise UsageError(reason)


def _print_plan(result: CapacityPlan) -> None:
    from ..deploy.quantity import MI, format_mebibytes

    mib = format_mebibytes
    click.echo(f"libos              {result.libos}")
    click.echo(
        f"enclave            {mib(result.enclave_size)} + margin {mib(result.margin)}"
        + (f" + aesmd {mib(result.sidecar_epc)}" if result.sidecar_epc else "")
        + (
            f" + quoting enclaves {mib(result.quoting_epc)} (loaded by the enclave container)"
            if result.quoting_epc
            else ""
        )
    )
    click.echo(f"EPC per replica    {mib(result.epc_per_pod)}")
    click.echo(
        f"EPC per node       {result.epc_per_node} bytes = "
        f"{result.epc_per_node / MI:.0f}Mi ({result.epc_unused_per_node // MI}Mi left "
        "over)"
    )
    click.echo(
        f"per node           {result.replicas_per_node} replicas (limited by "
        f"{result.limited_by}; enclave-limit {result.enclave_limit}, "
        f"{result.enclave_devices_per_pod} per pod)"
    )
    click.echo(f"cluster            {result.replicas} replicas on {result.nodes} node(s)")
    if result.replicas:
        click.echo(
            f"rolling update     the Deployment surges by one replica: at most "
            f"{result.replicas - 1} replicas (and HPA max_replicas) leave it room"
        )


@hookimpl
def enclave_build_register_commands(cli: click.Group) -> None:
    """``enclave-build k8s`` and ``enclave-build plan-capacity`` (a builtin plugin)."""
    cli.add_command(k8s)
    cli.add_command(plan_capacity)
