"""What ``enclave-build dev`` prints for a served model: a ``curl`` line for a REST JSON
request (its body in a file, written from the model's metadata) and a Python snippet that
sends the same request over gRPC with ``tritonclient`` -- both for the model's real input
names, datatypes and shapes, as the server reports them."""

from __future__ import annotations

import shlex
from pathlib import Path

from .requests import DTYPES, ModelMetadata

#: numpy names of the KServe v2 datatypes, for the snippet's np.zeros(...).
_NUMPY_NAMES = {name: dtype.name for name, dtype in DTYPES.items()}


def curl_metadata(rest_url: str, model: str, tls_options: str = "") -> str:
    """A curl command reading the model's metadata; *tls_options* (already quoted): how curl
    trusts a TLS endpoint."""
    options = f"{tls_options} " if tls_options else ""
    return f"curl -s {options}{shlex.quote(f'{rest_url}/v2/models/{model}')}"


def curl_infer(rest_url: str, model: str, body: Path, tls_options: str = "") -> str:
    """A curl command POSTing the JSON request in *body*."""
    options = f"{tls_options} " if tls_options else ""
    return (
        f"curl -s {options}-H 'Content-Type: application/json' --data-binary "
        f"{shlex.quote('@' + str(body))} {shlex.quote(f'{rest_url}/v2/models/{model}/infer')}"
    )


def tritonclient_snippet(
    grpc_address: str, metadata: ModelMetadata, client_lines: list[str] | None = None
) -> str:
    """Python that sends zeros of each input's shape over gRPC and prints the outputs' shapes
    (``pip install 'tritonclient[grpc]'``). *client_lines*: the lines that make ``client``
    (for a TLS endpoint: how it is trusted), instead of a plain connection."""
    lines = [
        "import numpy as np",
        "import tritonclient.grpc as grpcclient",
        "",
        *(client_lines or [f"client = grpcclient.InferenceServerClient({grpc_address!r})"]),
        "inputs = []",
    ]
    for spec in metadata.inputs:
        shape = list(spec.concrete_shape())
        numpy_name = _NUMPY_NAMES.get(spec.datatype, "float32")
        lines += [
            f"tensor = grpcclient.InferInput({spec.name!r}, {shape}, {spec.datatype!r})",
            f"tensor.set_data_from_numpy(np.zeros({tuple(shape)!r}, np.{numpy_name}))",
            "inputs.append(tensor)",
        ]
    lines += [
        f"result = client.infer({metadata.name!r}, inputs)",
        f"for name in {[o.name for o in metadata.outputs]!r}:",
        "    print(name, result.as_numpy(name).shape)",
    ]
    return "\n".join(lines)


__all__ = ["curl_metadata", "curl_infer", "tritonclient_snippet"]
