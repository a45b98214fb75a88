"""secrets.toml: the secret server's configuration, as the server starts with it.

The format (every key, with an example) is the contract type
:class:`enclave_build.contract.secrets_config.SecretsConfig`: one definition, one reader, one
writer. :func:`load_config` reads it with that reader, then reads what only the server can
check: the owners' certificates (``[upload]``) and Occlum's client ra_config (``[grsecret]``).
Relative paths are resolved against the file's directory; every error names the file, the line
and the key, all of them at once.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from enclave_build.contract.files import read_text
from enclave_build.contract.locate import KeyLocator
from enclave_build.contract.schema import Problem
from enclave_build.contract.secrets_config import SecretsConfig, SecretsConfigError

from .upload import UploadConfigError, UploadSettings

#: The errors of secrets.toml (a ValueError naming FILE:LINE: KEY for each problem).
ConfigError = SecretsConfigError


def load_config(path: str | Path) -> SecretsConfig:
    """secrets.toml at *path*, checked (the contract's reader), with the owners' certificates
    read and Occlum's client ra_config checked: what the server runs with."""
    config = SecretsConfig.load(path)
    problems: list[Problem] = []
    if config.upload is not None:
        try:
            config = dataclasses.replace(config, upload=UploadSettings.read(config.upload))
        except UploadConfigError as exc:
            key, _, message = str(exc).partition(": ")
            index = int(key.rpartition("[")[2].rstrip("]"))
            problems.append(Problem(("upload", "owners", index), message))
    if config.grsecret is not None and config.grsecret.client_ra_config is not None:
        from .occlum_ra import RaConfig, RaConfigError

        try:
            RaConfig.load(config.grsecret.client_ra_config)
        except RaConfigError as exc:
            problems.append(Problem(("grsecret", "client_ra_config"), str(exc)))
    if problems:
        locator = KeyLocator(read_text(config.path, ConfigError, "the configuration"))
        raise ConfigError(
            str(config.path), [Problem(p.path, p.message, locator.line(p.path)) for p in problems]
        )
    return config


__all__ = ["ConfigError", "load_config"]
