"""The KServe Open Inference Protocol v2 gRPC messages, built at run time.

The message set is declared here as plain Python data and turned into a
``FileDescriptorProto`` when the module is imported; protobuf's message factory then makes the
classes. No generated ``_pb2`` code is shipped, so there is no gencode/runtime version check to
trip over: whichever protobuf (5.x to 7.x) the base image carries builds the same wire format.

Field names and numbers follow the public protocol definition (package ``inference``, service
``GRPCInferenceService``), including the two extra ``InferParameter`` choices Triton's clients
know (``double_param`` 4, ``uint64_param`` 5), so tritonclient[grpc] talks to this server as to
any KServe v2 server.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "inference"
SERVICE = "GRPCInferenceService"
SERVICE_FULL_NAME = f"{PACKAGE}.{SERVICE}"
FILE_NAME = "enclave_model_server/inference_v2.proto"

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "bool": _F.TYPE_BOOL,
    "int32": _F.TYPE_INT32,
    "int64": _F.TYPE_INT64,
    "uint32": _F.TYPE_UINT32,
    "uint64": _F.TYPE_UINT64,
    "float": _F.TYPE_FLOAT,
    "double": _F.TYPE_DOUBLE,
    "string": _F.TYPE_STRING,
    "bytes": _F.TYPE_BYTES,
}

# message name -> fields (name, number, type, label); type is a scalar name, a message name
# (".inference.X" is added), or "map:Value" for map<string, Value>. label: "" | "repeated" |
# "oneof:NAME". Nested messages are written "Outer.Inner".
MESSAGES: dict[str, list[tuple[str, int, str, str]]] = {
    "ServerLiveRequest": [],
    "ServerLiveResponse": [("live", 1, "bool", "")],
    "ServerReadyRequest": [],
    "ServerReadyResponse": [("ready", 1, "bool", "")],
    "ModelReadyRequest": [("name", 1, "string", ""), ("version", 2, "string", "")],
    "ModelReadyResponse": [("ready", 1, "bool", "")],
    "ServerMetadataRequest": [],
    "ServerMetadataResponse": [
        ("name", 1, "string", ""),
        ("version", 2, "string", ""),
        ("extensions", 3, "string", "repeated"),
    ],
    "ModelMetadataRequest": [("name", 1, "string", ""), ("version", 2, "string", "")],
    "ModelMetadataResponse": [
        ("name", 1, "string", ""),
        ("versions", 2, "string", "repeated"),
        ("platform", 3, "string", ""),
        ("inputs", 4, "ModelMetadataResponse.TensorMetadata", "repeated"),
        ("outputs", 5, "ModelMetadataResponse.TensorMetadata", "repeated"),
    ],
    "ModelMetadataResponse.TensorMetadata": [
        ("name", 1, "string", ""),
        ("datatype", 2, "string", ""),
        ("shape", 3, "int64", "repeated"),
    ],
    "ModelInferRequest": [
        ("model_name", 1, "string", ""),
        ("model_version", 2, "string", ""),
        ("id", 3, "string", ""),
        ("parameters", 4, "map:InferParameter", ""),
        ("inputs", 5, "ModelInferRequest.InferInputTensor", "repeated"),
        ("outputs", 6, "ModelInferRequest.InferRequestedOutputTensor", "repeated"),
        ("raw_input_contents", 7, "bytes", "repeated"),
    ],
    "ModelInferRequest.InferInputTensor": [
        ("name", 1, "string", ""),
        ("datatype", 2, "string", ""),
        ("shape", 3, "int64", "repeated"),
        ("parameters", 4, "map:InferParameter", ""),
        ("contents", 5, "InferTensorContents", ""),
    ],
    "ModelInferRequest.InferRequestedOutputTensor": [
        ("name", 1, "string", ""),
        ("parameters", 2, "map:InferParameter", ""),
    ],
    "ModelInferResponse": [
        ("model_name", 1, "string", ""),
        ("model_version", 2, "string", ""),
        ("id", 3, "string", ""),
        ("parameters", 4, "map:InferParameter", ""),
        ("outputs", 5, "ModelInferResponse.InferOutputTensor", "repeated"),
        ("raw_output_contents", 6, "bytes", "repeated"),
    ],
    "ModelInferResponse.InferOutputTensor": [
        ("name", 1, "string", ""),
        ("datatype", 2, "string", ""),
        ("shape", 3, "int64", "repeated"),
        ("parameters", 4, "map:InferParameter", ""),
        ("contents", 5, "InferTensorContents", ""),
    ],
    "InferParameter": [
        ("bool_param", 1, "bool", "oneof:parameter_choice"),
        ("int64_param", 2, "int64", "oneof:parameter_choice"),
        ("string_param", 3, "string", "oneof:parameter_choice"),
        ("double_param", 4, "double", "oneof:parameter_choice"),
        ("uint64_param", 5, "uint64", "oneof:parameter_choice"),
    ],
    "InferTensorContents": [
        ("bool_contents", 1, "bool", "repeated"),
        ("int_contents", 2, "int32", "repeated"),
        ("int64_contents", 3, "int64", "repeated"),
        ("uint_contents", 4, "uint32", "repeated"),
        ("uint64_contents", 5, "uint64", "repeated"),
        ("fp32_contents", 6, "float", "repeated"),
        ("fp64_contents", 7, "double", "repeated"),
        ("bytes_contents", 8, "bytes", "repeated"),
    ],
}

# rpc name -> (request message, response message); all unary.
RPCS: dict[str, tuple[str, str]] = {
    name: (f"{name}Request", f"{name}Response")
    for name in (
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
    )
}


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def _fill(msg: descriptor_pb2.DescriptorProto, full: str, fields) -> None:
    oneofs: dict[str, int] = {}
    for fname, number, ftype, label in fields:
        f = msg.field.add(name=fname, number=number, json_name=_json_name(fname))
        f.label = _F.LABEL_REPEATED if label == "repeated" else _F.LABEL_OPTIONAL
        if label.startswith("oneof:"):
            oneof = label.split(":", 1)[1]
            if oneof not in oneofs:
                oneofs[oneof] = len(msg.oneof_decl)
                msg.oneof_decl.add(name=oneof)
            f.oneof_index = oneofs[oneof]
        if ftype.startswith("map:"):
            # map<string, V>: a nested repeated XxxEntry message with map_entry set
            value = ftype.split(":", 1)[1]
            entry_name = _camel(fname) + "Entry"
            entry = msg.nested_type.add(name=entry_name)
            entry.options.map_entry = True
            entry.field.add(
                name="key", number=1, label=_F.LABEL_OPTIONAL, type=_F.TYPE_STRING, json_name="key"
            )
            entry.field.add(
                name="value",
                number=2,
                label=_F.LABEL_OPTIONAL,
                type=_F.TYPE_MESSAGE,
                type_name=f".{PACKAGE}.{value}",
                json_name="value",
            )
            f.label = _F.LABEL_REPEATED
            f.type = _F.TYPE_MESSAGE
            f.type_name = f".{full}.{entry_name}"
        elif ftype in _SCALARS:
            f.type = _SCALARS[ftype]
        else:
            f.type = _F.TYPE_MESSAGE
            f.type_name = f".{PACKAGE}.{ftype}"


def _json_name(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def file_descriptor_proto() -> descriptor_pb2.FileDescriptorProto:
    """The protocol as a FileDescriptorProto (also used by the tests to compare wire layouts)."""
    fdp = descriptor_pb2.FileDescriptorProto(name=FILE_NAME, package=PACKAGE, syntax="proto3")
    protos: dict[str, descriptor_pb2.DescriptorProto] = {}
    for name in sorted(MESSAGES, key=lambda n: n.count(".")):
        outer, _, inner = name.rpartition(".")
        if outer:
            protos[name] = protos[outer].nested_type.add(name=inner)
        else:
            protos[name] = fdp.message_type.add(name=name)
    for name, fields in MESSAGES.items():
        _fill(protos[name], f"{PACKAGE}.{name}", fields)
    service = fdp.service.add(name=SERVICE)
    for rpc, (req, resp) in RPCS.items():
        service.method.add(
            name=rpc, input_type=f".{PACKAGE}.{req}", output_type=f".{PACKAGE}.{resp}"
        )
    return fdp


def _build():
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(file_descriptor_proto().SerializeToString())
    classes = {}
    for name in MESSAGES:
        desc = pool.FindMessageTypeByName(f"{PACKAGE}.{name}")
        classes[name] = message_factory.GetMessageClass(desc)
    return pool, classes


POOL, _CLASSES = _build()

ServerLiveRequest = _CLASSES["ServerLiveRequest"]
ServerLiveResponse = _CLASSES["ServerLiveResponse"]
ServerReadyRequest = _CLASSES["ServerReadyRequest"]
ServerReadyResponse = _CLASSES["ServerReadyResponse"]
ModelReadyRequest = _CLASSES["ModelReadyRequest"]
ModelReadyResponse = _CLASSES["ModelReadyResponse"]
ServerMetadataRequest = _CLASSES["ServerMetadataRequest"]
ServerMetadataResponse = _CLASSES["ServerMetadataResponse"]
ModelMetadataRequest = _CLASSES["ModelMetadataRequest"]
ModelMetadataResponse = _CLASSES["ModelMetadataResponse"]
ModelInferRequest = _CLASSES["ModelInferRequest"]
ModelInferResponse = _CLASSES["ModelInferResponse"]
InferParameter = _CLASSES["InferParameter"]
InferTensorContents = _CLASSES["InferTensorContents"]
