"""Fixtures several test modules share (tests/conftest.py registers this module).

* ``plugin_registry``: the builtin plugins, registered once per test module;
* ``pccs``: a PCCS stand-in on 127.0.0.1 serving a synthetic PKI's collateral (``SLOW`` makes
  its TCB-info answers stall), yielding (base URL, the PKI, the paths it was asked for);
* ``ratls_stubs``: the GrSecret client stubs (ratls_pb2, ratls_pb2_grpc) compiled from
  tests/protos/ratls.proto by grpcio-tools, not from our code.
"""

from __future__ import annotations

import importlib
import importlib.resources
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote as urlquote
from urllib.parse import urlparse

import pytest

from enclave_build.attestation.synthetic import SyntheticPKI
from enclave_build.builder.plugins import PluginRegistry

PROTOS = Path(__file__).parent / "protos"
SLOW = {"seconds": 0.0}  # how long the stand-in stalls before answering a TCB info request


@pytest.fixture(scope="module")
def plugin_registry():
    return PluginRegistry()


@pytest.fixture
def pccs():
    pki = SyntheticPKI()
    collateral = json.loads(pki.collateral_json())
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def do_GET(self):
            path = urlparse(self.path).path
            hits.append(path)
            prefix = "/sgx/certification/v4/"
            if path == prefix + "pckcrl":
                body = bytes.fromhex(collateral["pck_crl"])
                header = ("SGX-PCK-CRL-Issuer-Chain", collateral["pck_crl_issuer_chain"])
            elif path == prefix + "tcb":
                time.sleep(SLOW["seconds"])
                body = (
                    '{"tcbInfo":'
                    + collateral["tcb_info"]
                    + ',"signature":"'
                    + collateral["tcb_info_signature"]
                    + '"}'
                ).encode()
                header = ("SGX-TCB-Info-Issuer-Chain", collateral["tcb_info_issuer_chain"])
            elif path == prefix + "qe/identity":
                body = (
                    '{"enclaveIdentity":'
                    + collateral["qe_identity"]
                    + ',"signature":"'
                    + collateral["qe_identity_signature"]
                    + '"}'
                ).encode()
                header = (
                    "SGX-Enclave-Identity-Issuer-Chain",
                    collateral["qe_identity_issuer_chain"],
                )
            elif path == prefix + "rootcacrl":
                body, header = collateral["root_ca_crl"].encode(), None
            else:
                self.send_error(404)
                return
            self.send_response(200)
            if header:
                self.send_header(header[0], urlquote(header[1], safe=""))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.handle_error = lambda request, address: None  # clients that gave up on a stall
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/sgx/certification/v4/", pki, hits
    server.shutdown()


@pytest.fixture(scope="module")
def ratls_stubs(tmp_path_factory):
    """ratls_pb2 / ratls_pb2_grpc generated from tests/protos/ratls.proto by grpcio-tools."""
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("ratls-stubs")
    include = str(importlib.resources.files("grpc_tools") / "_proto")
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            f"-I{include}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(PROTOS / "ratls.proto"),
        ]
    )
    assert status == 0, "grpcio-tools could not compile tests/protos/ratls.proto"
    sys.path.insert(0, str(out))
    for name in ("ratls_pb2", "ratls_pb2_grpc"):  # generated once per module that uses them
        sys.modules.pop(name, None)
    try:
        pb2 = importlib.import_module("ratls_pb2")
        pb2_grpc = importlib.import_module("ratls_pb2_grpc")
    finally:
        sys.path.remove(str(out))
    assert Path(pb2.__file__).parent == out and Path(pb2_grpc.__file__).parent == out
    return pb2, pb2_grpc
