"""One error root per package, mapped to exit codes once, at the command line's boundary."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

from enclave_build.attestation.errors import AttestationConfigError, AttestationError
from enclave_build.builder.cli.output import EXIT_CODES, errors, exit_code, exit_codes_help
from enclave_build.builder.errors import EnclaveBuildError, UsageError
from enclave_build.contract.errors import ContractError
from enclave_build.model_server.errors import ModelServerError

ROOTS = {
    "enclave_build.contract": ContractError,
    "enclave_build.attestation": AttestationError,
    "enclave_build.model_server": ModelServerError,
    "enclave_build.builder": EnclaveBuildError,
    "enclave_build.plugins": EnclaveBuildError,
}


def _error_classes(package: str):
    root = importlib.import_module(package)
    for info in pkgutil.walk_packages(root.__path__, package + "."):
        if info.name.endswith("__main__") or info.name.endswith("plugin_api"):
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, Exception)
                and not issubclass(value, Warning)
                and value.__module__ == module.__name__
                and not name.startswith("_")
            ):
                yield module.__name__, name, value


@pytest.mark.parametrize("package", sorted(ROOTS))
def test_every_error_derives_from_its_package_root(package):
    # (the secret server's launcher runs inside the enclave, without the builder)
    outside = [
        f"{module}.{name}"
        for module, name, cls in _error_classes(package)
        if not issubclass(cls, ROOTS[package])
        and module != "enclave_build.plugins.secret_server.launcher"
    ]
    assert outside == []


def test_exit_codes_are_one_table():
    assert [(c.code, c.name) for c in EXIT_CODES] == [
        (0, "ok"),
        (1, "failure"),
        (2, "usage"),
        (3, "signature pending"),
        (130, "interrupted"),
    ]
    assert exit_codes_help() == (
        "Exit codes: 0 ok, 1 failure, 2 usage, 3 signature pending, 130 interrupted."
    )
    from enclave_build.attestation.config import ConfigError
    from enclave_build.attestation.verify import QuoteRejected
    from enclave_build.builder.build import SignatureNeeded
    from enclave_build.builder.spec import SpecError
    from enclave_build.model_server.keys import KeyFetchError

    assert exit_code(EnclaveBuildError("x")) == 1
    assert exit_code(UsageError("x")) == exit_code(SpecError("spec.toml", [])) == 2
    assert exit_code(SignatureNeeded("x")) == 3
    assert exit_code(ConfigError("x")) == exit_code(AttestationConfigError("x")) == 2
    assert exit_code(QuoteRejected("x")) == exit_code(KeyFetchError("x")) == 1
    assert exit_code(KeyError("bug")) is None


def test_package_errors_end_a_command_with_their_exit_code(capsys):
    from enclave_build.attestation.policy import PolicyError
    from enclave_build.attestation.synthetic import PKIError

    for error, code in (
        (PolicyError("secrets.toml: [[secrets]] name: missing"), 2),
        (PKIError("cannot write pki/"), 1),
    ):
        with pytest.raises(SystemExit) as info:
            with errors():
                raise error
        assert info.value.code == code
        assert capsys.readouterr().err == f"error: {error}\n"


def test_ctrl_c_exits_130():
    import click
    from click.testing import CliRunner

    from enclave_build.builder.cli import main

    @click.command("boom")
    def boom():
        raise KeyboardInterrupt

    group = type(main)(name="enclave-build", commands={"boom": boom})  # main's own class
    result = CliRunner().invoke(group, ["boom"])
    assert (result.exit_code, result.output) == (130, "interrupted\n")
