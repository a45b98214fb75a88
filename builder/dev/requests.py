"""KServe v2 requests for ``enclave-build dev``: a model's metadata as the server reports it,
a request made from it (or read from a file), one inference over REST, and a digest of the
outputs.

* :func:`fetch_metadata` reads ``GET /v2/models/NAME`` (the server's own answer: the input
  names, datatypes and shapes of the model as it is served);
* :func:`generated_request` makes one input per metadata input, zeros of its datatype, a
  variable dimension (``-1``) taken as 1;
* :func:`read_input` reads ``--input FILE``: JSON in KServe v2 form (``{"inputs": [{"name",
  "datatype", "shape", "data"}]}``; a nameless input of a one-input model takes its name), a
  ``.npy`` array (the model's only input), or a ``.npz`` archive (arrays by input name);
* :func:`infer` POSTs the request as JSON to ``/v2/models/NAME/infer``;
* :func:`output_digest` is a SHA-256 over each output's name, datatype, shape and raw
  little-endian bytes, in name order: the same outputs give the same digest, whatever the
  transport.
"""

from __future__ import annotations

import hashlib
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EnclaveBuildError, UsageError

#: KServe v2 datatype -> numpy dtype (little-endian), the numeric types a request can carry
#: as JSON.
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_BY_KIND = {dtype.str.lstrip("<>|="): name for name, dtype in DTYPES.items()}
#: Largest request :func:`generated_request` makes (elements): a metadata shape is the model's
#: own, but a huge one is refused rather than allocated.
MAX_GENERATED_ELEMENTS = 16 << 20
#: Largest answer :func:`infer` and :func:`fetch_metadata` read (bytes).
MAX_RESPONSE_BYTES = 256 << 20


class RequestError(EnclaveBuildError):
    """The model server did not answer as expected."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]

    def concrete_shape(self) -> tuple[int, ...]:
        """The shape with every variable dimension (-1) taken as 1."""
        return tuple(1 if d < 0 else d for d in self.shape)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @classmethod
    def from_json(cls, data: Any, where: str = "model metadata") -> ModelMetadata:
        """Parse the answer of ``GET /v2/models/NAME``; RequestError naming what is wrong."""
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            raise RequestError(f"{where}: not a KServe v2 model metadata object")

        def tensors(key: str) -> tuple[TensorSpec, ...]:
            items = data.get(key)
            if not isinstance(items, list):
                raise RequestError(f"{where}: {key!r} is not a list")
            out = []
            for index, item in enumerate(items):
                if not (
                    isinstance(item, dict)
                    and isinstance(item.get("name"), str)
                    and isinstance(item.get("datatype"), str)
                    and isinstance(item.get("shape"), list)
                    and all(isinstance(d, int) and not isinstance(d, bool) for d in item["shape"])
                ):
                    raise RequestError(f"{where}: {key}[{index}] is not {{name, datatype, shape}}")
                out.append(TensorSpec(item["name"], item["datatype"], tuple(item["shape"])))
            return tuple(out)

        versions = data.get("versions") or []
        return cls(
            data["name"],
            tuple(str(v) for v in versions),
            str(data.get("platform", "")),
            tensors("inputs"),
            tensors("outputs"),
        )


@dataclass(frozen=True)
class InferRequest:
    """One request: each input's name, datatype and array."""

    inputs: tuple[tuple[str, str, np.ndarray], ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "inputs": [
                {
                    "name": name,
                    "datatype": datatype,
                    "shape": list(array.shape),
                    "data": array.reshape(-1).tolist(),
                }
                for name, datatype, array in self.inputs
            ]
        }

    def describe(self) -> str:
        return ", ".join(
            f"{name} {datatype}{list(array.shape)}" for name, datatype, array in self.inputs
        )


@dataclass(frozen=True)
class InferResult:
    outputs: tuple[tuple[str, str, np.ndarray], ...]

    def digest(self) -> str:
        return output_digest(self.outputs)


# --------------------------------------------------------------------------- requests


def generated_request(metadata: ModelMetadata) -> InferRequest:
    """Zeros for every input of *metadata* (variable dimensions as 1)."""
    inputs = []
    for spec in metadata.inputs:
        dtype = DTYPES.get(spec.datatype)
        if dtype is None:
            raise UsageError(
                f"model {metadata.name!r}: input {spec.name!r} has datatype "
                f"{spec.datatype}, for which no request is generated; give one "
                "with --input FILE"
            )
        shape = spec.concrete_shape()
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if count > MAX_GENERATED_ELEMENTS:
            raise UsageError(
                f"model {metadata.name!r}: input {spec.name!r} of shape "
                f"{list(shape)} is too large to generate ({count} elements); give "
                "a request with --input FILE"
            )
        inputs.append((spec.name, spec.datatype, np.zeros(shape, dtype)))
    return InferRequest(tuple(inputs))


def _datatype_of(array: np.ndarray, where: str) -> str:
    name = _BY_KIND.get(array.dtype.str.lstrip("<>|="))
    if name is None:
        raise UsageError(
            f"{where}: numpy dtype {array.dtype} has no KServe v2 datatype "
            f"(supported: {', '.join(DTYPES)})"
        )
    return name


def read_input(path: Path, metadata: ModelMetadata) -> InferRequest:
    """The request in *path* (see the module doc); UsageError naming the file and what is
    wrong."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
            if len(metadata.inputs) != 1:
                raise UsageError(
                    f"{path}: a .npy file is one array, but model "
                    f"{metadata.name!r} has {len(metadata.inputs)} inputs; give "
                    "a .npz (arrays by input name) or JSON"
                )
            name = metadata.inputs[0].name
            return InferRequest(((name, _datatype_of(array, str(path)), array),))
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                known = {s.name for s in metadata.inputs}
                unknown = sorted(set(archive.files) - known)
                if unknown:
                    raise UsageError(
                        f"{path}: arrays {unknown} are not inputs of model "
                        f"{metadata.name!r} ({sorted(known)})"
                    )
                return InferRequest(
                    tuple(
                        (name, _datatype_of(archive[name], f"{path}: {name}"), archive[name])
                        for name in archive.files
                    )
                )
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:  # a malformed .npy/.npz, or one holding objects
        raise UsageError(f"{path}: not a numpy array file: {exc}") from None
    return _json_request(path, text, metadata)


def _json_request(path: Path, text: str, metadata: ModelMetadata) -> InferRequest:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UsageError(
            f"{path}: not JSON ({exc}); --input takes KServe v2 JSON "
            '({"inputs": [{"name", "datatype", "shape", "data"}]}), .npy or .npz'
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("inputs"), list):
        raise UsageError(f'{path}: expected a KServe v2 request, {{"inputs": [...]}}')
    inputs = []
    for index, item in enumerate(data["inputs"]):
        where = f"{path}: inputs[{index}]"
        if not isinstance(item, dict):
            raise UsageError(f"{where}: not an object")
        name = item.get("name")
        if name is None and len(metadata.inputs) == 1 and len(data["inputs"]) == 1:
            name = metadata.inputs[0].name
        spec = next((s for s in metadata.inputs if s.name == name), None)
        datatype = item.get("datatype") or (spec.datatype if spec else None)
        if not isinstance(name, str):
            raise UsageError(
                f'{where}: no "name" (inputs of model {metadata.name!r}: '
                f"{[s.name for s in metadata.inputs]})"
            )
        if datatype not in DTYPES:
            raise UsageError(f"{where}: datatype {datatype!r} is not one of {', '.join(DTYPES)}")
        shape = item.get("shape", list(spec.concrete_shape()) if spec else None)
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise UsageError(f'{where}: "shape" must be a list of dimensions')
        try:
            array = np.asarray(item.get("data"), dtype=DTYPES[datatype]).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise UsageError(f'{where}: "data" is not a list of {datatype} values: {exc}') from None
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if array.size != count:
            raise UsageError(
                f'{where}: "data" holds {array.size} values, shape {shape} needs {count}'
            )
        inputs.append((name, datatype, array.reshape(shape)))
    return InferRequest(tuple(inputs))


def output_digest(outputs: Sequence[tuple[str, str, np.ndarray]]) -> str:
    h = hashlib.sha256()
    for name, datatype, array in sorted(outputs, key=lambda o: o[0]):
        data = np.ascontiguousarray(array, dtype=DTYPES[datatype]).tobytes()
        h.update(f"{name}\0{datatype}\0{list(array.shape)}\0{len(data)}\0".encode())
        h.update(data)
    return "sha256:" + h.hexdigest()


# --------------------------------------------------------------------------- HTTP


def _get_json(
    url: str, timeout: float, body: bytes | None = None, context: ssl.SSLContext | None = None
) -> Any:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"} if body is not None else {}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as answer:
            raw = answer.read(MAX_RESPONSE_BYTES + 1)
    except urllib.error.HTTPError as exc:
        detail = exc.read(4096).decode("utf-8", "replace").strip()
        raise RequestError(f"{url}: HTTP {exc.code}: {detail or exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise RequestError(f"{url}: {getattr(exc, 'reason', exc)}") from None
    if len(raw) > MAX_RESPONSE_BYTES:
        raise RequestError(f"{url}: answer larger than {MAX_RESPONSE_BYTES} bytes")
    try:
        return json.loads(raw)
    except ValueError:
        raise RequestError(f"{url}: the answer is not JSON") from None


def fetch_metadata(
    base_url: str, model: str, timeout: float = 10.0, context: ssl.SSLContext | None = None
) -> ModelMetadata:
    """The model's metadata; over TLS with *context* for an https *base_url*."""
    url = f"{base_url}/v2/models/{model}"
    return ModelMetadata.from_json(_get_json(url, timeout, context=context), url)


def infer(
    base_url: str,
    model: str,
    request: InferRequest,
    timeout: float = 60.0,
    context: ssl.SSLContext | None = None,
) -> InferResult:
    """One inference over REST (JSON); RequestError naming the URL and the server's answer."""
    url = f"{base_url}/v2/models/{model}/infer"
    answer = _get_json(url, timeout, json.dumps(request.to_json()).encode(), context)
    if not isinstance(answer, dict) or not isinstance(answer.get("outputs"), list):
        raise RequestError(f'{url}: the answer has no "outputs" list')
    outputs = []
    for index, item in enumerate(answer["outputs"]):
        if not (
            isinstance(item, dict)
            and isinstance(item.get("name"), str)
            and item.get("datatype") in DTYPES
            and isinstance(item.get("shape"), list)
        ):
            raise RequestError(f"{url}: outputs[{index}] is not a numeric KServe v2 tensor")
        try:
            array = np.asarray(item.get("data"), dtype=DTYPES[item["datatype"]]).reshape(
                item["shape"]
            )
        except (TypeError, ValueError) as exc:
            raise RequestError(f"{url}: outputs[{index}] ({item['name']}): {exc}") from None
        outputs.append((item["name"], item["datatype"], array))
    return InferResult(tuple(outputs))


__all__ = [
    "TensorSpec",
    "ModelMetadata",
    "InferRequest",
    "InferResult",
    "RequestError",
    "generated_request",
    "read_input",
    "output_digest",
    "fetch_metadata",
    "infer",
    "DTYPES",
]
