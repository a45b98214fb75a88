"""`enclave-build secrets config`: builds' policy fragments merged into a valid secrets.toml."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path

import pytest

from enclave_build.attestation.config import load_config
from enclave_build.attestation.synthetic import SyntheticPKI, tls_ca_and_server
from enclave_build.builder.errors import UsageError
from enclave_build.builder.secrets_config import (
    SecretsConfigError,
    ServerSide,
    compose_config,
    write_config,
)

from .conftest import run_cli

MEASUREMENTS = (
    '{"service": "%s", "framework": "tflite", "libos": "gramine", "mr_enclave": "%s",'
    ' "mr_signer": "%s", "isv_prod_id": 1, "isv_svn": 1, "debug": false,'
    ' "image": {"ref": "x:1", "digest": null}}'
)


def _build(root: Path, service: str, secrets: dict[str, str]) -> Path:
    """A build output whose fragment names its keys_dir (the directory of its key files) as
    enclave-build writes it."""
    out = root / service
    out.mkdir(parents=True)
    (out / "measurements.json").write_text(MEASUREMENTS % (service, service[0] * 64, "c" * 64))
    text = 'measurements = ["measurements.json"]\n'
    directories = {
        os.path.dirname(os.path.normpath(os.path.join(out, file))) for file in secrets.values()
    }
    if len(directories) == 1:
        text += f'keys_dir = "{os.path.relpath(directories.pop(), out)}"\n'
    for name, file in secrets.items():
        text += f'\n[[secrets]]\nname = "{name}"\nfile = "{file}"\nallow = ["{service}"]\n'
    (out / "secrets-policy.toml").write_text(text)
    return out


def _key(path: Path, size: int = 16, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(range(size)))
    path.chmod(mode)
    return path


@pytest.fixture()
def server_side(tmp_path) -> ServerSide:
    pki = SyntheticPKI()
    pki.save(tmp_path / "pki")
    (tmp_path / "tls").mkdir()
    _, cert, key = tls_ca_and_server(tmp_path / "tls")
    return ServerSide(
        cert=cert,
        key=key,
        listen="127.0.0.1:4433",
        root_ca=str(tmp_path / "pki" / "root.pem"),
        collateral=tmp_path / "pki" / "collateral.json",
    )


def test_fragments_merge_with_absolute_paths_and_load(tmp_path, server_side):
    keys = tmp_path / "keys"
    keys.mkdir()
    for name in ("a-key", "b-key", "shared-key"):
        _key(keys / f"{name}.key")
    a = _build(
        tmp_path / "builds",
        "alpha",
        {"a-key": str(keys / "a-key.key"), "shared-key": str(keys / "shared-key.key")},
    )
    b = _build(
        tmp_path / "builds",
        "beta",
        {"b-key": "../../keys/b-key.key", "shared-key": str(keys / "shared-key.key")},
    )
    config = compose_config([a, b / "secrets-policy.toml"], server_side).config
    assert config.measurements == (str(a / "measurements.json"), str(b / "measurements.json"))
    rules = {r.name: r for r in config.secrets}
    assert rules["b-key"].file == (keys / "b-key.key").resolve()
    assert rules["shared-key"].allow == ("alpha", "beta")  # one key, two services
    target = write_config(tmp_path / "srv" / "secrets.toml", config)
    loaded = load_config(target)
    assert sorted(s.name for s in loaded.secrets) == ["a-key", "b-key", "shared-key"]
    assert tomllib.loads(target.read_text())["server"]["listen"] == "127.0.0.1:4433"
    with pytest.raises(UsageError, match="exists"):
        write_config(target, config)


def test_conflicting_rules_and_bad_fragments_are_refused(tmp_path, server_side):
    one, two = _key(tmp_path / "keys/one.key"), _key(tmp_path / "keys/two.key")
    a = _build(tmp_path, "alpha", {"k": str(one)})
    b = _build(tmp_path, "beta", {"k": str(two)})
    with pytest.raises(SecretsConfigError, match="secret 'k' differs"):
        compose_config([a, b], server_side)
    with pytest.raises(UsageError, match="no such policy fragment"):
        compose_config([tmp_path / "nothing-here"], server_side)
    (tmp_path / "bad.toml").write_text("[server]\nlisten = 1\n")
    with pytest.raises(SecretsConfigError, match="not part of a policy fragment"):
        compose_config([tmp_path / "bad.toml"], server_side)


def test_invalid_result_is_never_written(tmp_path, server_side):
    a = _build(tmp_path, "alpha", {"k": str(_key(tmp_path / "k.key"))})
    composed = compose_config([a], server_side)
    config = dataclasses.replace(
        composed.config, server=dataclasses.replace(composed.config.server, max_tls="1.1")
    )  # the secret server's loader refuses it
    with pytest.raises(SecretsConfigError, match="not valid"):
        write_config(tmp_path / "secrets.toml", config)
    assert not (tmp_path / "secrets.toml").exists()
    assert not list(tmp_path.glob(".secrets.toml.*"))


def test_cli(tmp_path, server_side):
    _key(tmp_path / "k.key")
    a = _build(tmp_path, "alpha", {"k": str(tmp_path / "k.key")})
    proc = run_cli(
        "secrets",
        "config",
        str(a),
        "--cert",
        str(server_side.cert),
        "--key",
        str(server_side.key),
        "--root-ca",
        server_side.root_ca,
        "--collateral",
        str(server_side.collateral),
        "--out",
        str(tmp_path / "s.toml"),
    )
    assert proc.returncode == 0, proc.stderr
    assert b"1 secret(s) for 1 build(s)" in proc.stdout
    assert load_config(tmp_path / "s.toml").secrets[0].name == "k"
    both = run_cli(
        "secrets",
        "config",
        str(a),
        "--cert",
        str(server_side.cert),
        "--key",
        str(server_side.key),
        "--out",
        str(tmp_path / "t.toml"),
    )
    assert both.returncode == 2
    assert b"exactly one of --collateral FILE and --pccs-url URL" in both.stderr


# --------------------------------------------------------------------------- untrusted fragments


def _fragment(root: Path, body: str, service: str = "alpha", keys_dir: str = "..") -> Path:
    """A fragment next to a valid measurements.json of *service*; *body* follows the
    measurements line (or replaces it when it sets measurements itself). Its keys_dir is the
    fragment directory's parent (these tests' key files are there)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "measurements.json").write_text(MEASUREMENTS % (service, "a" * 64, "c" * 64))
    head = (
        "" if body.lstrip().startswith("measurements") else 'measurements = ["measurements.json"]\n'
    )
    (root / "secrets-policy.toml").write_text(f'keys_dir = "{keys_dir}"\n' + head + body)
    return root / "secrets-policy.toml"


def _rule(file: Path | str, name: str = "k", allow: str = '["alpha"]', extra: str = "") -> str:
    return f'\n[[secrets]]\nname = "{name}"\nfile = "{file}"\nallow = {allow}\n{extra}'


@pytest.mark.parametrize(
    "size,mode,message",
    [
        (15, 0o600, "15 bytes; a Gramine wrap key is exactly 16 bytes"),
        (32, 0o600, "32 bytes; a Gramine wrap key is exactly 16 bytes"),
        (
            16,
            0o644,
            "group/others may access it (mode 0644); make it private to the secret "
            "server's user: chmod 600 ",
        ),
        (16, 0o640, "group/others may access it (mode 0640)"),
    ],
)
def test_key_files_must_be_private_16_byte_files(tmp_path, server_side, size, mode, message):
    key = _key(tmp_path / "k.key", size, mode)
    fragment = _fragment(tmp_path / "alpha", _rule(key))
    with pytest.raises(SecretsConfigError) as info:
        compose_config([fragment], server_side)
    assert str(info.value).startswith(f"{fragment}: secret 'k': key file {key}: {message}")


def test_missing_and_non_regular_key_files_are_refused(tmp_path, server_side):
    fragment = _fragment(tmp_path / "alpha", _rule(tmp_path / "nope.key"))
    with pytest.raises(SecretsConfigError, match=f"key file {tmp_path / 'nope.key'}: not found"):
        compose_config([fragment], server_side)
    (tmp_path / "dir.key").mkdir()
    fragment = _fragment(tmp_path / "alpha", _rule(tmp_path / "dir.key"))
    with pytest.raises(SecretsConfigError, match=r"dir.key: not a regular file"):
        compose_config([fragment], server_side)


def test_readable_key_file_only_warns_when_allowed(tmp_path, server_side):
    key = _key(tmp_path / "k.key", mode=0o644)
    fragment = _fragment(tmp_path / "alpha", _rule(key))
    with pytest.warns(UserWarning, match="chmod 600"):
        config = compose_config([fragment], server_side, allow_readable_keys=True).config
    assert config.secrets[0].file == key


def test_measurements_must_parse(tmp_path, server_side):
    key = _key(tmp_path / "k.key")
    fragment = _fragment(tmp_path / "alpha", 'measurements = ["/etc/passwd"]\n' + _rule(key))
    with pytest.raises(SecretsConfigError) as info:
        compose_config([fragment], server_side)
    assert str(info.value).startswith(
        f"{fragment}: measurements: not a measurements.json: "
        "/etc/passwd:1: not JSON (Expecting value"
    )
    fragment = _fragment(tmp_path / "beta", 'measurements = ["none-*.json"]\n' + _rule(key))
    with pytest.raises(SecretsConfigError, match="matches no file"):
        compose_config([fragment], server_side)


def test_one_key_file_under_two_secret_names_is_refused(tmp_path, server_side):
    key = _key(tmp_path / "k.key")
    a = _fragment(tmp_path / "alpha", _rule(key, "first"))
    b = _fragment(tmp_path / "beta", _rule(key, "second", '["beta"]'), service="beta")
    with pytest.raises(SecretsConfigError) as info:
        compose_config([a, b], server_side)
    assert str(info.value).startswith(
        f"{b}: secret 'second': key file {key} is also the key file of secret 'first' (in {a})"
    )
    (tmp_path / "link.key").symlink_to(key)  # the same file by another path
    c = _fragment(tmp_path / "gamma", _rule(key, "first") + _rule(tmp_path / "link.key", "x"))
    with pytest.raises(SecretsConfigError, match=r"secret 'x': key file .*link.key is also"):
        compose_config([c], server_side)
    # The same secret (same name, same file) shared by two builds stays fine.
    d = _fragment(tmp_path / "delta", _rule(key, "first", '["beta"]'), service="beta")
    config = compose_config([a, d], server_side).config
    assert config.secrets[0].allow == ("alpha", "beta")


@pytest.mark.parametrize(
    "allow,message",
    [
        ("[]", "allow = []: the secret would be released to no enclave"),
        (
            '["deadbeef"]',
            "allow entry 'deadbeef' is neither a 64-hex MRENCLAVE nor the service of "
            "one of the merged measurements (services: alpha); an MRENCLAVE has 64 hex "
            "digits, this has 8",
        ),
        (
            '["*"]',
            "allow entry '*' is neither a 64-hex MRENCLAVE nor the service of one of the "
            "merged measurements (services: alpha); there are no wildcards",
        ),
        ('["alpha", "gamma"]', "allow entry 'gamma' is neither"),
        (f'["{"AB" * 32}"]', "MRENCLAVE values are lower-case hex"),
    ],
)
def test_allow_entries_must_be_mrenclaves_or_merged_services(tmp_path, server_side, allow, message):
    key = _key(tmp_path / "k.key")
    fragment = _fragment(tmp_path / "alpha", _rule(key, allow=allow))
    with pytest.raises(SecretsConfigError) as info:
        compose_config([fragment], server_side)
    assert str(info.value).startswith(f"{fragment}: secret 'k': ")
    assert message in str(info.value)


def test_allow_may_name_an_mrenclave_or_another_fragments_service(tmp_path, server_side):
    key, other = _key(tmp_path / "k.key"), _key(tmp_path / "o.key")
    a = _fragment(tmp_path / "alpha", _rule(key, allow=f'["{"ab" * 32}", "beta"]'))
    b = _fragment(tmp_path / "beta", _rule(other, "o", '["beta"]'), service="beta")
    config = compose_config([a, b], server_side)
    write_config(tmp_path / "secrets.toml", config, log=None)
    assert load_config(tmp_path / "secrets.toml").secrets[0].allow == ("ab" * 32, "beta")


def test_match_is_checked_by_the_servers_policy_before_writing(tmp_path, server_side):
    key = _key(tmp_path / "k.key")
    fragment = _fragment(tmp_path / "alpha", _rule(key, extra='match = "bogus"\n'))
    config = compose_config([fragment], server_side)
    with pytest.raises(SecretsConfigError) as info:
        write_config(tmp_path / "secrets.toml", config)
    assert str(info.value) == (
        "the composed configuration is not valid: secret 'k': match must "
        'be "mr_enclave" or "signer", not \'bogus\''
    )
    assert not (tmp_path / "secrets.toml").exists()
    assert not list(tmp_path.glob(".secrets.toml.*"))


@pytest.mark.parametrize(
    "body,messages",
    [
        ("secrets = 5\n", ["3: secrets: expected an array of [[secrets]] tables, got integer 5"]),
        (
            "secrets = [1, 2]\n",
            [
                "3: secrets[0]: expected a [[secrets]] table (name, file, allow), got integer 1",
                "3: secrets[1]: expected a [[secrets]] table (name, file, allow), got integer 2",
            ],
        ),
        (
            "measurements = [5]\n",
            ["2: measurements[0]: expected a measurements.json path (a string), got integer 5"],
        ),
        (
            'measurements = "measurements.json"\n',
            [
                "2: measurements: expected an array of "
                "measurements.json paths, got string "
                "'measurements.json'"
            ],
        ),
        (
            '[[secrets]]\nname = 5\nfile = "k.key"\nallow = ["alpha"]\n',
            ["4: secrets[0].name: expected a string (the secret's name), got integer 5"],
        ),
        (
            '[[secrets]]\nname = "k"\nfile = [1]\nallow = ["alpha"]\n',
            ["5: secrets[0].file: expected a string (the key file's path), got an array"],
        ),
        (
            '[[secrets]]\nname = "k"\nfile = "k.key"\nallow = "alpha"\n',
            [
                "6: secrets[0].allow: expected an array of services and/or MRENCLAVE values, got string "
                "'alpha'"
            ],
        ),
        (
            '[[secrets]]\nname = "k"\nfile = "k.key"\nallow = [1]\n',
            [
                "6: secrets[0].allow[0]: expected a service name or MRENCLAVE (a string), got integer 1"
            ],
        ),
        (
            '[[secrets]]\nname = "k"\nfile = "k.key"\nallow = ["alpha"]\nmatch = 1\n',
            ['7: secrets[0].match: expected a string ("mr_enclave" or "signer"), got integer 1'],
        ),
        (
            '[[secrets]]\nname = "k"\nallow = ["alpha"]\n',
            ["3: secrets[0].file: required key is missing (the key file, relative to this file)"],
        ),
        (
            '[[secrets]]\nname = "k"\nfile = "k.key"\nallow = ["alpha"]\nalow = []\n',
            [
                "7: secrets[0].alow: unknown key; did you mean 'allow'? allowed: name, file, allow, "
                "match, encoding, requested_as"
            ],
        ),
        # every problem at once, each with its line
        (
            '[[secrets]]\nname = 5\nfile = "k.key"\nallow = [1]\nencoding = "b64"\n',
            [
                "4: secrets[0].name: expected a string (the secret's name), got integer 5",
                "6: secrets[0].allow[0]: expected a service name or MRENCLAVE (a string), got integer 1",
                "7: secrets[0].encoding: 'b64' is not allowed; allowed: raw, hex-dashes",
            ],
        ),
    ],
)
def test_wrongly_typed_fragments_exit_2_with_file_line_and_key(
    tmp_path, server_side, body, messages
):
    _key(tmp_path / "alpha" / "k.key")
    fragment = _fragment(tmp_path / "alpha", body)
    proc = run_cli(
        "secrets",
        "config",
        str(fragment),
        "--cert",
        str(server_side.cert),
        "--key",
        str(server_side.key),
        "--root-ca",
        server_side.root_ca,
        "--collateral",
        str(server_side.collateral),
        "--out",
        str(tmp_path / "s.toml"),
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.decode().splitlines()
    assert lines == [f"error: {fragment}:{m}" for m in messages]
    assert not (tmp_path / "s.toml").exists()


def test_cli_prints_which_fragment_contributes_which_key_file(tmp_path, server_side):
    shared, own = _key(tmp_path / "shared.key"), _key(tmp_path / "own.key")
    a = _fragment(tmp_path / "alpha", _rule(shared, "shared") + _rule(own, "own"))
    b = _fragment(tmp_path / "beta", _rule(shared, "shared", '["beta"]'), service="beta")
    proc = run_cli(
        "secrets",
        "config",
        str(a.parent),
        str(b),
        "--cert",
        str(server_side.cert),
        "--key",
        str(server_side.key),
        "--root-ca",
        server_side.root_ca,
        "--collateral",
        str(server_side.collateral),
        "--out",
        str(tmp_path / "s.toml"),
    )
    assert proc.returncode == 0, proc.stderr
    lines = [
        line
        for line in (proc.stdout + proc.stderr).decode().splitlines()
        if line.startswith("key file ")
    ]
    assert lines == [
        f"key file {shared} (secret 'shared') from {a}",
        f"key file {own} (secret 'own') from {a}",
        f"key file {shared} (secret 'shared') from {b}",
    ]


# ------------------------------------------------------- key files stay in the fragment's keys_dir


def _victim(tmp_path: Path) -> Path:
    """Another owner's project: its wrap key, 0600, 16 bytes."""
    return _key(tmp_path / "other-team" / "keys" / "their-key.key")


@pytest.mark.parametrize(
    "file",
    [
        "../../other-team/keys/their-key.key",  # ../
        "{victim}",  # absolute
        "../keys/link.key",
    ],
)  # a link out
def test_a_fragment_may_not_name_a_key_outside_its_keys_dir(tmp_path, server_side, file):
    """Was: any private 16-byte file was read as the fragment's key."""
    victim = _victim(tmp_path)
    own = tmp_path / "mine" / "keys"
    _key(own / "my-key.key")
    (own / "link.key").symlink_to(victim)
    fragment = _fragment(
        tmp_path / "mine" / "out",
        _rule(own / "my-key.key", "my-key") + _rule(file.format(victim=victim), "stolen"),
        keys_dir="../keys",
    )
    args = [
        "secrets",
        "config",
        str(fragment),
        "--cert",
        str(server_side.cert),
        "--key",
        str(server_side.key),
        "--root-ca",
        server_side.root_ca,
        "--collateral",
        str(server_side.collateral),
        "--out",
        str(tmp_path / "secrets.toml"),
    ]
    proc = run_cli(*args)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "secret 'stolen': key file " in err
    assert (
        f"outside the fragment's keys directory {own.resolve()} (its build's [secrets] keys_dir)"
        in err
        and "pass --allow-keys-outside" in err
    )
    assert not (tmp_path / "secrets.toml").exists()
    allowed = run_cli(*args, "--allow-keys-outside")
    assert allowed.returncode == 0, allowed.stderr.decode()
    assert (
        b"warning: " in allowed.stderr and b"used because of --allow-keys-outside" in allowed.stderr
    )
    rules = {
        r["name"]: r for r in tomllib.loads((tmp_path / "secrets.toml").read_text())["secrets"]
    }
    assert Path(rules["stolen"]["file"]).resolve() == victim.resolve()


def test_a_fragment_without_keys_dir_keeps_to_its_own_directory(tmp_path, server_side):
    inside = _key(tmp_path / "build" / "k.key")
    fragment = tmp_path / "build" / "secrets-policy.toml"
    _fragment(tmp_path / "build", _rule("k.key"))
    fragment.write_text(fragment.read_text().replace('keys_dir = ".."\n', ""))
    assert compose_config([fragment], server_side).config.secrets[0].file == inside
    _key(tmp_path / "up.key")
    fragment.write_text(fragment.read_text().replace('"k.key"', '"../up.key"'))
    with pytest.raises(SecretsConfigError, match="outside the fragment's keys directory"):
        compose_config([fragment], server_side)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give a file to another user")
def test_another_users_key_is_refused_even_inside_keys_dir(tmp_path, server_side):
    key = _key(tmp_path / "k.key")
    os.chown(key, 12345, -1)
    fragment = _fragment(tmp_path / "alpha", _rule(key))
    with pytest.raises(
        SecretsConfigError,
        match=r"belongs to another user \(uid 12345\) than "
        r"the fragment \(uid 0\)",
    ) as info:
        compose_config([fragment], server_side)
    assert info.value.exit_code == 2
    with pytest.warns(UserWarning, match="belongs to another user"):
        compose_config([fragment], server_side, allow_keys_outside=True)


def test_the_build_writes_its_keys_dir_into_the_fragment(tmp_path):
    from enclave_build.attestation.measurements import ImageRef, Measurements
    from enclave_build.builder.build import policy_fragment
    from enclave_build.builder.plan import EnclaveResources, ServicePlan
    from enclave_build.contract.identity import EnclaveIdentity

    plan = ServicePlan(
        "svc", "tflite", "gramine", "b", "svc:1", "/bin/x", ["x"], EnclaveResources(1 << 30, 16)
    )
    measurements = Measurements(
        "svc",
        "tflite",
        "gramine",
        EnclaveIdentity("a" * 64, "b" * 64, 0, 0, False),
        ImageRef("svc:1", None),
    )
    text = policy_fragment(
        plan, measurements, {"k": tmp_path / "project/keys/k.key"}, tmp_path / "project/out"
    )
    assert tomllib.loads(text)["keys_dir"] == "../keys"


def test_a_fragment_others_may_write_cannot_name_keys(tmp_path, server_side):
    """The keys directory is read from the fragment: one that group or others may edit could be
    pointed at any key, so it is refused (with --allow-keys-outside: a warning)."""
    own = tmp_path / "mine" / "keys"
    _key(own / "my-key.key")
    fragment = _fragment(
        tmp_path / "mine" / "out", _rule(own / "my-key.key", "my-key"), keys_dir="../keys"
    )
    fragment.chmod(0o664)
    with pytest.raises(SecretsConfigError, match=r"writable by group/others \(mode 0664\)"):
        compose_config([fragment], server_side)
    fragment.chmod(0o644)
    assert compose_config([fragment], server_side).config.secrets[0].name == "my-key"
