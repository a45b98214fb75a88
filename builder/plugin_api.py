"""Deprecated: the plugin API's old name. Import :mod:`enclave_build.plugin` instead.

Importing this module warns (DeprecationWarning); it re-exports the names it had, from where
they live now. It will be removed in a later release.
"""

from __future__ import annotations

import warnings

warnings.warn(
    "enclave_build.builder.plugin_api is deprecated: import enclave_build.plugin, "
    "the stable plugin API",
    DeprecationWarning,
    stacklevel=2,
)

from enclave_build.contract.identity import EnclaveIdentity
from enclave_build.contract.schema import Field, Section

from .errors import EnclaveBuildError
from .hookspecs import hookimpl
from .plan import (
    STDLIB_UNUSED,
    EnclaveResources,
    FileKind,
    KeyDelivery,
    Mount,
    MountType,
    PlanFile,
    Port,
    ProvisionedKey,
    PythonRuntime,
    SecretProvisioning,
    ServicePlan,
)
from .planning import (
    MODEL_ROOT,
    SECRET_SERVER_CA,
    SECRETS_DIR,
    add_model,
    add_secret_file,
    base_plan,
    default_key_name,
    model_image_path,
    model_key_name,
    refuse_model_server_keys,
    require_models,
    require_one_key,
    service_key_name,
    spec_error,
)
from .plugin_types import (
    SECRET_ENCODINGS,
    ArtifactFile,
    BuildOptions,
    Framework,
    LibOS,
    LibOSArtifacts,
    NullProgress,
    PendingSignature,
    Progress,
    SecretRelease,
)
from .python_server import (
    BACKEND_ENTRY_POINTS,
    PYTHON,
    SERVER_CONFIG,
    SERVER_DISTRIBUTIONS,
    SERVER_MODULES,
    SERVER_PYTHONPATH,
    deliver_keys_as_files,
    python_server_plan,
    server_config,
    server_open_files,
    ship_enclave_runtime,
    ship_python_package,
)
from .rootfs import RootFS
from .spec import ModelSpec, Spec, SpecError

__all__ = [
    "hookimpl",
    "Framework",
    "LibOS",
    "BuildOptions",
    "Progress",
    "NullProgress",
    "LibOSArtifacts",
    "ArtifactFile",
    "EnclaveIdentity",
    "PendingSignature",
    "SecretRelease",
    "SECRET_ENCODINGS",
    "EnclaveResources",
    "FileKind",
    "KeyDelivery",
    "Mount",
    "MountType",
    "PlanFile",
    "Port",
    "ProvisionedKey",
    "PythonRuntime",
    "SecretProvisioning",
    "ServicePlan",
    "Field",
    "Section",
    "Spec",
    "ModelSpec",
    "RootFS",
    "EnclaveBuildError",
    "SpecError",
    "STDLIB_UNUSED",
    "SECRETS_DIR",
    "MODEL_ROOT",
    "SECRET_SERVER_CA",
    "PYTHON",
    "SERVER_PYTHONPATH",
    "SERVER_CONFIG",
    "SERVER_DISTRIBUTIONS",
    "SERVER_MODULES",
    "BACKEND_ENTRY_POINTS",
    "base_plan",
    "service_key_name",
    "model_key_name",
    "default_key_name",
    "require_one_key",
    "require_models",
    "spec_error",
    "add_model",
    "add_secret_file",
    "model_image_path",
    "python_server_plan",
    "ship_python_package",
    "ship_enclave_runtime",
    "server_config",
    "deliver_keys_as_files",
    "server_open_files",
    "refuse_model_server_keys",
]
