"""ONNX Runtime for enclave-build: a model-server backend plus the framework plugin that builds
enclaves serving ONNX models with it. A template for third-party plugins: it uses only
enclave-build's public APIs (``enclave_build.plugin`` for the build, ``model_server.backends`` for
serving)."""

__version__ = "0.1.0"
